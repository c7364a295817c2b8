"""Targets beyond Llama (issue 17, first part): Qwen2, Qwen3, Mistral and Gemma 3 decode losslessly with every
kind of drafter, chains and trees, at batch 1 and 3.

Each tiny model is trained on the positional task of conftest (so it notices positions and cache order), and the
Mistral and Gemma 3 ones have a sliding window of 8 tokens that the decoding runs far past (prompts of up to 9
tokens, 16 new ones). Bug this exists for: a tree attention mask that ignores the window (mutation
`tree-mask-no-window`) lets sliding-window layers see old tokens the target itself would not.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from conftest import train_positional
from scylla import DraftModel, PromptLookup, SpeculativeDecoder, truncated_draft
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
DRAFTERS = {
    "plain": lambda t: None,
    "prompt_lookup": lambda t: PromptLookup(max_ngram=3, num_draft_tokens=5),
    "truncated": lambda t: DraftModel(truncated_draft(t, 1), num_draft_tokens=3),
    "truncated_tree": lambda t: DraftModel(truncated_draft(t, 1), tree=TreeShape(top_k=3, depth=3, total_tokens=8)),
    "prompt_lookup_tree": lambda t: PromptLookup(max_ngram=2, num_draft_tokens=4, branches=3),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def family(request):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(CONFIGS[request.param]())
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = None
    return request.param, train_positional(model, steps=60)


def test_window_is_read_from_each_architecture(family):
    name, model = family
    assert sliding_window(model.config) == {"mistral": (WINDOW, False), "gemma3": (WINDOW, True)}.get(name, (None, False))


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("drafter", list(DRAFTERS))
def test_greedy_equals_target_generate(family, drafter, batch):
    _, model = family
    ids, mask = make_batch(batch, seed=batch)
    ref = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=16, pad_token_id=0)
    out = SpeculativeDecoder(model, DRAFTERS[drafter](model)).generate(ids, mask, max_new_tokens=16, pad_token_id=0)
    assert torch.equal(out.sequences, ref)
