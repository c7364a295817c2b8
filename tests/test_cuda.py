"""The engine and the cost model on an accelerator: benchmarks/gpu_check.sh runs these on a GPU (without one they are
skipped), and its --cpu flag runs them on the CPU (SCYLLA_TEST_DEVICE=cpu), so that the check's path is tested here.

What a device can break that the CPU suite cannot see: tensors left on the CPU (prompts, masks, tree masks, draft
indices, the sampling generator), CUDA-synchronised timing, and kernels whose rounding differs between a 1-token
step and a verify of several. The targets are random tiny Llamas whose LM head is scaled up, so their argmax margins
are whole logits wide and greedy identity stays exact in float32 whatever the kernels.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from conftest import tiny_llama
from scylla import DraftModel, PromptLookup, SpeculativeDecoder, truncated_draft
from scylla.drafters.eagle import EagleDrafter
from scylla.drafters.tree import TreeShape
from scylla.lossless import greedy_violations
from test_eagle import make_head
from test_greedy_identity import MAX_NEW, make_batch, pick_eos
from test_sampling_lossless import PROMPT, SAMPLES, SETTINGS, V, chi_square_pvalue, exact_joint

DEVICE = os.environ.get("SCYLLA_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(torch.device(DEVICE).type == "cuda" and not torch.cuda.is_available(),
                                reason="no CUDA device: benchmarks/gpu_check.sh runs these on a GPU (--cpu: here)")

DRAFTERS = {
    "truncated": lambda t: DraftModel(truncated_draft(t, 1), num_draft_tokens=3),
    "prompt_lookup": lambda t: PromptLookup(max_ngram=3, num_draft_tokens=6),
    "unrelated_tree": lambda t: DraftModel(tiny_llama(layers=1, seed=7, peak=30.0).to(DEVICE, t.dtype),
                                           tree=TreeShape(top_k=4, depth=3, total_tokens=12)),
    "eagle": lambda t: EagleDrafter(make_head(t).to(DEVICE, t.dtype), num_draft_tokens=3),
    "eagle_tree": lambda t: EagleDrafter(make_head(t).to(DEVICE, t.dtype),
                                         tree=TreeShape(top_k=3, depth=3, total_tokens=8)),
}


@pytest.fixture(scope="module")
def peaked():
    return tiny_llama(layers=2, seed=0, peak=30.0).to(DEVICE)


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("name", list(DRAFTERS))
def test_greedy_equals_target_generate_on_the_device(peaked, name, batch):
    ids, mask = (x.to(DEVICE) for x in make_batch(batch, seed=batch))
    eos = pick_eos(peaked, ids, mask)
    ref = peaked.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=MAX_NEW,
                          eos_token_id=eos, pad_token_id=0)
    out = SpeculativeDecoder(peaked, DRAFTERS[name](peaked)).generate(ids, mask, max_new_tokens=MAX_NEW,
                                                                      eos_token_id=eos, pad_token_id=0)
    assert out.sequences.device.type == torch.device(DEVICE).type
    assert torch.equal(out.sequences, ref)


@pytest.mark.parametrize("name", ["truncated", "eagle_tree"])
def test_bf16_greedy_emits_the_targets_argmax_on_the_device(peaked, name):
    target = copy.deepcopy(peaked).to(torch.bfloat16)
    ids, mask = (x.to(DEVICE) for x in make_batch(3, seed=3))
    out = SpeculativeDecoder(target, DRAFTERS[name](target)).generate(ids, mask, max_new_tokens=MAX_NEW,
                                                                      pad_token_id=0)
    prompts = [row[m.bool()].tolist() for row, m in zip(ids, mask)]
    assert sum(map(len, out.generated)) == 3 * MAX_NEW
    assert greedy_violations(target, prompts, out.generated) == []


def test_sampling_on_the_device_follows_the_target_exactly():
    """Sampling with the device's generator passes the chi-square test against the target's exact joint
    distribution (computed on the CPU); a quarter of the samples on the CPU (the --cpu run: the CPU suite tests
    sampling in full)."""
    target = tiny_llama(vocab_size=V, layers=2, seed=11, peak=4.0)
    draft = tiny_llama(vocab_size=V, layers=1, seed=12, peak=4.0).to(DEVICE)
    temperature, top_k, top_p = SETTINGS[0]
    prompts = PROMPT.expand(SAMPLES if DEVICE != "cpu" else SAMPLES // 4, -1).to(DEVICE)
    out = SpeculativeDecoder(copy.deepcopy(target).to(DEVICE), DraftModel(draft, num_draft_tokens=2)).generate(
        prompts, max_new_tokens=4, temperature=temperature, top_k=top_k, top_p=top_p, seed=0)
    assert 0 < out.stats.accepted < out.stats.drafted, "the test needs both accepts and rejects"
    samples = out.sequences[:, PROMPT.shape[1]:].cpu()
    assert chi_square_pvalue(samples, exact_joint(target, temperature, top_k, top_p)) > 1e-3


def test_scylla_costs_on_the_device(tmp_path):
    """The cost verb in bf16 on the device, a head included: every entry timed, its repeats kept."""
    from pipeline.cli import main
    from scylla.costs import CostTable

    out = tmp_path / "costs.json"
    assert main(["costs", "--target", "tiny-random-llama", "--device", DEVICE, "--dtype", "bfloat16",
                 "--head-layers", "1", "--batch-sizes", "1,4", "--tokens", "1,3", "--contexts", "8", "--reps", "2",
                 "--threads", "1", "--out", str(out)]) == 0
    table = CostTable.load(out)
    assert table.device.startswith(DEVICE) and table.dtype == "bfloat16" and len(table.entries) == 8
    assert all(e["seconds"] > 0 and len(e["repeats"]) == 2 for e in table.entries)
