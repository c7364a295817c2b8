"""Targets beyond Llama (issue 17, first part): Qwen2, Qwen3, Mistral and Gemma 3 decode losslessly with every
kind of drafter (a draft model, prompt lookup, an EAGLE-style head), chains and trees, at batch 1 and 3; sampling
follows a sliding-window target exactly; one head training step runs on each.

Each tiny model is trained on the positional task of conftest (so it notices positions and cache order), and the
Mistral and Gemma 3 ones have a sliding window of 8 tokens that the decoding runs far past (prompts of up to 9
tokens, 16 new ones). Bug this exists for: a tree attention mask that ignores the window (mutation
`tree-mask-no-window`: 9 of these tests fail) lets sliding-window layers see old tokens the target would not.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from conftest import train_positional
from scylla import DraftModel, PromptLookup, SpeculativeDecoder, truncated_draft
from scylla.drafters.eagle import EagleConfig, EagleDrafter, EagleHead
from scylla.drafters.tree import TreeShape
from scylla.kv import sliding_window
from test_greedy_identity import make_batch

WINDOW = 8
COMMON = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, bos_token_id=None, eos_token_id=None,
              pad_token_id=None, tie_word_embeddings=False)
CONFIGS = {
    "qwen2": lambda: transformers.Qwen2Config(**COMMON),
    "qwen3": lambda: transformers.Qwen3Config(**COMMON, head_dim=8),
    "mistral": lambda: transformers.MistralConfig(**COMMON, sliding_window=WINDOW),
    "gemma3": lambda: transformers.Gemma3TextConfig(**COMMON, head_dim=8, sliding_window=WINDOW,
                                                    layer_types=["sliding_attention", "full_attention"]),
}
def eagle(target, tree: TreeShape | None = None) -> EagleDrafter:
    """An (untrained) EAGLE-style head over the target's layers 1 and -1: identity holds for any weights."""
    torch.manual_seed(0)
    config = EagleConfig.for_target(target, num_layers=1, feature_layers=[1, -1], draft_vocab_size=64)
    return EagleDrafter(EagleHead(config, target.get_input_embeddings()).eval(), num_draft_tokens=3, tree=tree)


DRAFTERS = {
    "plain": lambda t: None,
    "prompt_lookup": lambda t: PromptLookup(max_ngram=3, num_draft_tokens=5),
    "truncated": lambda t: DraftModel(truncated_draft(t, 1), num_draft_tokens=3),
    "truncated_tree": lambda t: DraftModel(truncated_draft(t, 1), tree=TreeShape(top_k=3, depth=3, total_tokens=8)),
    "prompt_lookup_tree": lambda t: PromptLookup(max_ngram=2, num_draft_tokens=4, branches=3),
    "eagle": eagle,
    "eagle_tree": lambda t: eagle(t, TreeShape(top_k=3, depth=3, total_tokens=8)),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def family(request):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(CONFIGS[request.param]())
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = None
    return request.param, train_positional(model, steps=60)


def test_window_is_read_from_each_architecture(family):
    name, model = family
    expected = {"mistral": (WINDOW, False), "gemma3": (WINDOW, True)}.get(name, (None, False))
    assert sliding_window(model.config) == expected


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("drafter", list(DRAFTERS))
def test_greedy_equals_target_generate(family, drafter, batch):
    _, model = family
    ids, mask = make_batch(batch, seed=batch)
    ref = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=16, pad_token_id=0)
    out = SpeculativeDecoder(model, DRAFTERS[drafter](model)).generate(ids, mask, max_new_tokens=16, pad_token_id=0)
    assert torch.equal(out.sequences, ref)


def test_one_head_training_step(family, tmp_path):
    """The training objective (train.pretrain_draft.Objective, what DeepSpeed steps) runs on each family: one
    optimizer step on the target's features gives a finite loss and changes the head."""
    from train.config import TrainConfig
    from train.pretrain_draft import Data, Objective

    from conftest import lag_sequences

    _, model = family
    tokens = lag_sequences(16, 24, torch.Generator().manual_seed(3))
    cfg = TrainConfig.from_dict(dict(run_dir=str(tmp_path), target="tiny", feature_layers=[1, -1], draft_vocab=64,
                                     unroll=2), "test")
    objective = Objective(cfg, model, Data(tokens, tokens[:4], [], torch.arange(64)))
    head = eagle(model).head.train()
    head.draft_to_target.copy_(torch.arange(64))
    with torch.no_grad():
        hs = model(tokens, output_hidden_states=True).hidden_states
    feats = torch.cat([hs[1], hs[-1]], dim=-1)
    before = [p.detach().clone() for p in head.parameters() if p.requires_grad]
    loss, _ = objective(head, tokens, feats)
    loss.backward()
    torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=1e-2).step()
    after = [p for p in head.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and any(not torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("name", ["truncated_tree", "eagle"])
def test_sampling_follows_a_sliding_window_target_exactly(name):
    """Sampled decoding on a Gemma 3 target with a 4-token window (the 8-token prompt is past it) follows the
    target's distribution: chi-square against the exact joint of the next 4 tokens (as tests/test_sampling_lossless)."""
    from test_sampling_lossless import SAMPLES, TREE, V, chi_square_pvalue, exact_joint, random_head, sample

    torch.manual_seed(11)
    config = transformers.Gemma3TextConfig(**{**COMMON, "vocab_size": V}, head_dim=8, sliding_window=4,
                                           layer_types=["sliding_attention", "full_attention"])
    target = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        target.lm_head.weight.mul_(40.0)  # peaked enough that drafts are accepted and rejected
    drafter = (DraftModel(truncated_draft(target, 1), tree=TREE) if name == "truncated_tree"
               else EagleDrafter(random_head(target), num_draft_tokens=2))
    samples, stats = sample(target, drafter, 1.0, 0, 1.0)
    assert len(samples) == SAMPLES and stats.drafted > 0 and 0 < stats.accepted < stats.drafted
    assert chi_square_pvalue(samples, exact_joint(target, 1.0, 0, 1.0)) > 1e-3
