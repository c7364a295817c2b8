"""The draft-training objective teaches a head what the target will say next (tests/mutations.md: label-shift).

A head trained a few dozen steps with train.pretrain_draft.Objective (plain torch, no DeepSpeed: the objective is
the same function DeepSpeed steps) on the position-sensitive target's own task must predict held-out tokens and be
accepted far more often than the same head untrained. Labels shifted by one position teach it to repeat its input
token instead, which the target never accepts.
"""

from __future__ import annotations

import pytest
import torch

from conftest import lag_sequences
from scylla import SpeculativeDecoder
from scylla.drafters.eagle import EagleConfig, EagleDrafter, EagleHead
from train.config import TrainConfig
from train.pretrain_draft import Data, Objective

LAYERS = [1, -1]


def features(target, tokens: torch.Tensor, layers: list[int] = LAYERS) -> torch.Tensor:
    with torch.no_grad():
        hs = target(tokens, output_hidden_states=True).hidden_states
    return torch.cat([hs[i] for i in layers], dim=-1)


def acceptance(target, head: EagleHead, prompts: torch.Tensor) -> float:
    out = SpeculativeDecoder(target, EagleDrafter(head.eval(), num_draft_tokens=3)).generate(prompts, max_new_tokens=24)
    return out.stats.mean_accepted_length


@pytest.mark.parametrize("layout,unroll,loss", [("eagle", 1, "ce"), ("eagle3", 3, "kl")])
def test_training_lifts_accuracy_and_acceptance(target, tmp_path, layout, unroll, loss):
    generator = torch.Generator().manual_seed(7)
    train, heldout = lag_sequences(512, 40, generator), lag_sequences(32, 40, generator)
    vocab = torch.arange(64)
    cfg = TrainConfig.from_dict(dict(run_dir=str(tmp_path), target="positional", feature_layers=LAYERS,
                                     draft_vocab=64, layout=layout, unroll=unroll, optim={"loss": loss}), "test")
    objective = Objective(cfg, target, Data(train, heldout, [], vocab))
    torch.manual_seed(0)
    head = EagleHead(EagleConfig.for_target(target, num_layers=2, feature_layers=LAYERS, draft_vocab_size=64,
                                            layout=layout), target.get_input_embeddings())
    head.draft_to_target.copy_(vocab)
    layers = LAYERS + ([-1] if loss == "kl" else [])  # kl reads the target's final features too
    held_feats, prompts = features(target, heldout, layers), heldout[:8, :6]
    with torch.no_grad():
        untrained_loss, untrained = objective(head, heldout, held_feats)
    untrained_mat = acceptance(target, head, prompts)

    head.train()
    optimizer = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=1e-2)
    for step in range(150):
        batch = train[step * 16 % len(train):][:16]
        value, _ = objective(head, batch, features(target, batch, layers))
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    head.eval()
    with torch.no_grad():
        trained_loss, trained = objective(head, heldout, held_feats)
    trained_mat = acceptance(target, head, prompts)
    if loss == "kl":  # the target's own distribution; its top token is always in the draft vocabulary here
        with torch.no_grad():
            hs = target(heldout, output_hidden_states=True).hidden_states
        assert objective._target_logp(hs[-1])[1].all()
    print(f"held-out loss {untrained['loss']:.2f} -> {trained['loss']:.2f}, accuracy {untrained['accuracy']:.2f} -> "
          f"{trained['accuracy']:.2f}, MAT {untrained_mat:.2f} -> {trained_mat:.2f}")
    assert trained_loss < 0.5 * untrained_loss
    assert trained["accuracy"] > 0.75 > 0.2 > untrained["accuracy"]
    assert trained_mat > 2.5 > 1.3 > untrained_mat  # 3 drafts: MAT 4 is perfect, 1 is nothing accepted
