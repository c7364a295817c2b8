"""Training-time test: the unrolled training forward computes exactly what the drafter computes at inference.

Bugs this catches (tests/mutations.py): `unroll-positions` (step i's rotary positions not offset, q - i instead of
q) and `unroll-mask` (step i also sees the real feature one position past its anchor).
"""

from __future__ import annotations

import pytest
import torch
from test_eagle import make_head
from test_greedy_identity import make_batch

from scylla.drafters.eagle import EagleDrafter
from scylla.engine import SpeculativeDecoder
from train.unroll import unroll_mask, unrolled_forward


@pytest.mark.parametrize("layout", ["eagle", "eagle3"])
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_unrolled_logits_equal_inference_drafts(target, steps, layout):
    """Step i's logits at the position of draft i+1 equal the drafter's (i+1)-th draft logits (two left-padded
    rows of different lengths at inference; each row alone, unpadded, in training), to fp32 tolerance."""
    head = make_head(target, layers=2, feature_layers=(1, -1), layout=layout, seed=steps)
    recorded, contexts = [], []
    hook = head.register_forward_hook(lambda module, args, out: recorded.append(out.logits[:, -1].clone()))
    drafter = EagleDrafter(head, num_draft_tokens=steps)
    propose = drafter.propose
    drafter.propose = lambda ctx: contexts.append((ctx.tokens.clone(), ctx.lengths.clone())) or propose(ctx)
    ids, mask = make_batch(2, seed=3)
    ids[0, :2], mask[0, :2] = 0, 0  # row 0: 7 tokens, row 1: 9
    ids[1], mask[1] = torch.arange(1, 10), 1
    with torch.no_grad():
        SpeculativeDecoder(target, drafter).generate(ids, mask, max_new_tokens=steps + 2)
    hook.remove()
    drafts = recorded[:steps]  # the first propose: the context's pairs, then steps - 1 draft forwards
    context, lengths = contexts[0]  # the prompt and the target's first token, left-padded
    for b in range(2):
        prefix = context[b, context.shape[1] - int(lengths[b]):]
        drafted = torch.stack([head.draft_to_target[d[b].argmax()] for d in drafts])
        tokens = torch.cat([prefix, drafted])[None]
        with torch.no_grad():
            hs = target(tokens, output_hidden_states=True).hidden_states
            feats = torch.cat([hs[1], hs[-1]], dim=-1)
            outs = unrolled_forward(head, tokens[:, 1:], feats[:, :-1], steps)
        anchor = len(prefix) - 2  # the last pair of real features: (f_{k-1}, x_k)
        for i in range(steps):
            torch.testing.assert_close(outs[i].logits[0, anchor + i], drafts[i][b], rtol=1e-5, atol=1e-5)


def test_unroll_mask_sees_real_keys_up_to_the_anchor_and_its_own_drafts():
    seen = unroll_mask(5, 2, torch.float32, torch.device("cpu"))[0, 0] == 0  # (5, 15)
    q = 4  # anchor 2: real keys 0..2, step 1's key at 3, step 2's (itself) at 4
    assert seen[q, :5].tolist() == [True, True, True, False, False]
    assert seen[q, 5:10].tolist() == [False, False, False, True, False]
    assert seen[q, 10:].tolist() == [False, False, False, False, True]


def test_step_i_of_the_unrolled_loss_weighs_unroll_decay_to_the_i(target, tmp_path):
    """The objective (train.pretrain_draft.Objective, what DeepSpeed steps) is sum_i decay**i L_i / sum_i decay**i,
    L_i step i's token loss over the positions with an anchor: the real-feature step weighs most (the mutation
    unroll-weights-reversed weighs the last step most)."""
    import torch.nn.functional as F
    from conftest import lag_sequences

    from train.config import TrainConfig
    from train.pretrain_draft import Data, Objective

    steps, decay = 3, 0.5
    cfg = TrainConfig.from_dict(dict(run_dir=str(tmp_path), target="positional", feature_layers=[1, -1],
                                     draft_vocab=64, unroll=steps, unroll_decay=decay, optim={"feature_weight": 0.0}))
    head = make_head(target, layers=1, feature_layers=(1, -1), vocab=64)
    head.draft_to_target.copy_(torch.arange(64))
    tokens = lag_sequences(4, 24, torch.Generator().manual_seed(5))
    with torch.no_grad():
        hs = target(tokens, output_hidden_states=True).hidden_states
        feats = torch.cat([hs[1], hs[-1]], dim=-1)
        loss, metrics = Objective(cfg, target, Data(tokens, tokens, [], torch.arange(64)))(head, tokens, feats)
        outs = unrolled_forward(head, tokens[:, 1:], feats[:, :-1], steps)
    labels = tokens[:, 2:]  # pair q predicts x_{q+2}; step i's first i positions have no anchor
    per_step = [F.cross_entropy(outs[i].logits[:, i:-1].reshape(-1, 64), labels[:, i:].reshape(-1)).item()
                for i in range(steps)]
    weights = [1.0, 0.5, 0.25]
    assert metrics["loss"] == pytest.approx(per_step[0], rel=1e-5)
    assert loss.item() == pytest.approx(sum(w * v for w, v in zip(weights, per_step)) / sum(weights), rel=1e-5)
    reversed_loss = sum(w * v for w, v in zip(weights[::-1], per_step)) / sum(weights)
    assert abs(reversed_loss - loss.item()) > 0.01  # the steps' losses differ enough to tell the weights apart
