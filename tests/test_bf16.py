"""bfloat16: the dtype choice (scylla.dtypes), the greedy rule of scylla.lossless, sampling in bf16, and the dtype
in cache keys. The rest of the suite runs in float32 (conftest pins SCYLLA_DTYPE), where greedy identity is exact."""

from __future__ import annotations

import copy

import pytest
import torch

import scylla.dtypes
from conftest import tiny_llama
from scylla import DraftModel, PromptLookup, SpeculativeDecoder, truncated_draft
from scylla.drafters.tree import TreeShape
from scylla.dtypes import DTYPE_ENV, cpu_capability, default_dtype, plain_dtypes, resolve_dtype
from scylla.errors import InputError
from scylla.lossless import bf16_unit, greedy_violations, tolerance
from scylla.models import load_model
from test_greedy_identity import MAX_NEW, make_batch
from test_sampling_lossless import SETTINGS, V, chi_square_pvalue, exact_joint, sample

AMX = frozenset({"avx512f", "amx_tile", "amx_bf16", "avx512_bf16"})
ZEN4 = frozenset({"avx512f", "avx512_bf16"})
NO_BF16 = frozenset({"avx2", "fma"})


def test_the_dtype_follows_the_cpu_both_ways(monkeypatch):
    monkeypatch.delenv(DTYPE_ENV, raising=False)
    assert cpu_capability(AMX) == "AMX-BF16" and cpu_capability(ZEN4) == "AVX512-BF16"
    assert not cpu_capability(NO_BF16).endswith("-BF16")
    assert default_dtype("cpu", "AMX-BF16") == default_dtype("cpu", "AVX512-BF16") == "bfloat16"
    assert default_dtype("cpu", cpu_capability(NO_BF16)) == "float32"
    assert plain_dtypes("cpu", "AMX-BF16") == ["float32", "bfloat16"]  # the faster one is the baseline
    assert plain_dtypes("cpu", cpu_capability(NO_BF16)) == ["float32"]
    # end to end: a model loaded with no dtype follows the CPU it runs on
    for flags, expected in ((ZEN4, torch.bfloat16), (NO_BF16, torch.float32)):
        monkeypatch.setattr(scylla.dtypes, "_cpu_flags", lambda flags=flags: flags)
        model, _ = load_model("tiny-random-llama")
        assert next(model.parameters()).dtype == expected
        assert resolve_dtype("float32") == torch.float32  # --dtype overrides
    monkeypatch.setenv(DTYPE_ENV, "float32")  # so does $SCYLLA_DTYPE, for every stage
    monkeypatch.setattr(scylla.dtypes, "_cpu_flags", lambda: AMX)
    assert default_dtype("cpu") == "float32" and plain_dtypes("cpu") == ["float32"]
    with pytest.raises(InputError, match="unknown dtype"):
        resolve_dtype("bf16")


def test_the_dtype_is_part_of_the_cache_keys():
    from train.config import TrainConfig
    from train.data import onpolicy_cache
    from train.pretrain_draft import data_key

    assert onpolicy_cache("t", 96, True) == onpolicy_cache("t", 96, True, "float32")  # older caches still found
    assert onpolicy_cache("t", 96, True, "bfloat16") != onpolicy_cache("t", 96, True, "float32")
    cfg = TrainConfig(run_dir="unused", target="tiny-random-llama")
    keys = []
    for dtype in ("float32", "bfloat16"):
        cfg.dtype = dtype
        keys.append(data_key(cfg))  # the on-policy responses and the features a job shares
    assert keys[0] != keys[1]


def test_tolerance_is_zero_in_float32_and_a_few_bf16_units_in_bfloat16():
    assert tolerance(20.0, torch.float32) == 0.0
    assert bf16_unit(20.0) == 0.125 and bf16_unit(1.5) == 2**-7
    assert 0 < tolerance(20.0, torch.bfloat16) <= 0.5


DRAFTERS = {
    "truncated": lambda t: DraftModel(truncated_draft(t, 1), num_draft_tokens=3),
    "copy_tree": lambda t: DraftModel(t, tree=TreeShape(top_k=3, depth=4, total_tokens=10)),
    "unrelated_tree": lambda t: DraftModel(tiny_llama(layers=1, seed=7, peak=30.0).to(torch.bfloat16),
                                           tree=TreeShape(top_k=4, depth=3, total_tokens=12)),
    "prompt_lookup_tree": lambda t: PromptLookup(max_ngram=2, num_draft_tokens=5, branches=3),
}


@pytest.fixture(scope="module")
def bf16_target(target):
    return copy.deepcopy(target).to(torch.bfloat16)


@pytest.mark.parametrize("name", list(DRAFTERS))
def test_bf16_greedy_emits_the_targets_argmax_up_to_near_ties(bf16_target, name):
    """Every emitted token of bf16 speculative decoding is the argmax of the bf16 target's logits at its position
    (one forward over the emitted sequence), or within the near-tie tolerance: every position checked. The shared
    target is position-aware (conftest), so wrong tree positions or cache order move tokens by whole logits."""
    ids, mask = make_batch(3, seed=3)
    out = SpeculativeDecoder(bf16_target, DRAFTERS[name](bf16_target)).generate(ids, mask, max_new_tokens=MAX_NEW,
                                                                                pad_token_id=0)
    prompts = [row[m.bool()].tolist() for row, m in zip(ids, mask)]
    assert sum(map(len, out.generated)) == 3 * MAX_NEW
    assert greedy_violations(bf16_target, prompts, out.generated) == []
    # the check is not vacuous: a token the target would not emit is found wherever it stands
    wrong = [list(g) for g in out.generated]
    wrong[1][MAX_NEW // 2] = (wrong[1][MAX_NEW // 2] + 1) % 64
    assert [(r, p) for r, p, *_ in greedy_violations(bf16_target, prompts, wrong)][:1] == [(1, MAX_NEW // 2)]


@pytest.mark.parametrize("name", ["chain", "tree"])
def test_bf16_sampling_matches_the_bf16_targets_distribution(name):
    """Sampling in bf16 passes the same chi-square test against the bf16 target's exact joint distribution."""
    target = tiny_llama(vocab_size=V, layers=2, seed=11, peak=4.0).to(torch.bfloat16)
    draft = tiny_llama(vocab_size=V, layers=1, seed=12, peak=4.0).to(torch.bfloat16)
    drafter = (DraftModel(draft, num_draft_tokens=2) if name == "chain" else
               DraftModel(draft, tree=TreeShape(top_k=2, depth=2, total_tokens=4)))
    joint = exact_joint(target, *SETTINGS[0])
    samples, stats = sample(target, drafter, *SETTINGS[0])
    assert stats.drafted > 0 and 0 < stats.accepted < stats.drafted, "the test needs both accepts and rejects"
    assert chi_square_pvalue(samples, joint) > 1e-3
