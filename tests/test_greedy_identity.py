"""Greedy speculative output equals the target's own greedy output, token for token (sequences layout included)."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_llama
from scylla import DraftModel, PromptLookup, SpeculativeDecoder, truncated_draft
from scylla.drafters.tree import TreeShape

MAX_NEW = 24


def make_batch(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded random prompts of different lengths (2..9 tokens), with some repeats for prompt lookup."""
    g = torch.Generator().manual_seed(seed)
    width = 9
    ids = torch.zeros(batch, width, dtype=torch.long)
    mask = torch.zeros(batch, width, dtype=torch.long)
    for b in range(batch):
        n = int(torch.randint(2, width + 1, (1,), generator=g))
        ids[b, width - n :] = torch.randint(1, 64, (n,), generator=g)
        mask[b, width - n :] = 1
    return ids, mask


def pick_eos(target, ids, mask) -> int:
    """A token the target emits mid-way in some rows but not in every row (so some rows stop early)."""
    ref = target.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=MAX_NEW, pad_token_id=0)
    new = ref[:, ids.shape[1] :]
    best, best_score = None, None
    for tok in new[:, 2:-2].unique().tolist():
        rows_with = sum(int((row[2:-2] == tok).any()) for row in new)
        score = abs(rows_with - max(1, new.shape[0] // 2))
        if best_score is None or score < best_score:
            best, best_score = tok, score
    return int(best)


DRAFTERS = {
    "copy": lambda t: DraftModel(t, num_draft_tokens=4),
    "truncated": lambda t: DraftModel(truncated_draft(t, 1), num_draft_tokens=3),
    "unrelated": lambda t: DraftModel(tiny_llama(layers=1, seed=7, peak=30.0), num_draft_tokens=5),
    "prompt_lookup": lambda t: PromptLookup(max_ngram=3, num_draft_tokens=6),
    "plain": lambda t: None,
    "copy_tree": lambda t: DraftModel(t, tree=TreeShape(top_k=3, depth=4, total_tokens=10)),
    "unrelated_tree": lambda t: DraftModel(tiny_llama(layers=1, seed=7, peak=30.0),
                                           tree=TreeShape(top_k=4, depth=3, total_tokens=12)),
    "prompt_lookup_tree": lambda t: PromptLookup(max_ngram=2, num_draft_tokens=5, branches=3),
}


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("name", list(DRAFTERS))
def test_greedy_equals_target_generate(target, name, batch):
    ids, mask = make_batch(batch, seed=batch)
    eos = pick_eos(target, ids, mask)
    pad = 0
    ref = target.generate(
        input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=MAX_NEW, eos_token_id=eos, pad_token_id=pad
    )
    out = SpeculativeDecoder(target, DRAFTERS[name](target)).generate(
        ids, mask, max_new_tokens=MAX_NEW, eos_token_id=eos, pad_token_id=pad
    )
    assert out.sequences.shape == ref.shape
    assert torch.equal(out.sequences, ref)
    if batch == 8:
        assert any(len(g) < MAX_NEW for g in out.generated), "the test should stop some rows at EOS"
    if name == "copy":  # a copy of the target is always right: every step but the first drafts and accepts
        assert out.stats.acceptance_rate == 1.0
    if name == "copy_tree":  # ... and its tree's best branch is the target's path
        assert out.stats.accepted_at[0] == out.stats.drafting_steps


def test_greedy_without_attention_mask(target):
    ids = torch.randint(1, 64, (2, 5), generator=torch.Generator().manual_seed(3))
    ref = target.generate(input_ids=ids, do_sample=False, max_new_tokens=12, pad_token_id=0)
    out = SpeculativeDecoder(target, PromptLookup()).generate(ids, max_new_tokens=12)
    assert torch.equal(out.sequences, ref)
