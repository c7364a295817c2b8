"""Statistics add up, with the definitions of scylla.metrics; counts derived by hand on the positional target."""

from __future__ import annotations

import torch

from conftest import LAG, PERMUTATION
from scylla import DraftModel, PromptLookup, SpeculativeDecoder, truncated_draft
from scylla.metrics import DecodeStats, RowStats
from scylla.verify import verify_greedy


def prompts():
    return torch.randint(1, 64, (4, 6), generator=torch.Generator().manual_seed(5))


def test_plain_decoding_has_mat_exactly_one(target):
    out = SpeculativeDecoder(target).generate(prompts(), max_new_tokens=10)
    s = out.stats
    assert s.mean_accepted_length == 1.0
    assert s.new_tokens == s.target_calls == 40
    assert s.drafted == 0 and s.accepted_at == []
    assert s.forward_passes == 10


def test_counts_add_up_with_a_drafter(target):
    out = SpeculativeDecoder(target, DraftModel(truncated_draft(target, 2), num_draft_tokens=3)).generate(
        prompts(), max_new_tokens=17
    )
    s = out.stats
    assert s.new_tokens == 4 * 17 == sum(len(g) for g in out.generated)
    assert s.new_tokens == s.accepted + s.target_calls  # no EOS: each call adds its accepted drafts plus one token
    assert sum(s.accepted_at) == s.accepted and len(s.accepted_at) == 3
    assert s.per_position_acceptance == sorted(s.per_position_acceptance, reverse=True)
    assert s.mean_accepted_length == s.new_tokens / s.target_calls
    assert s.acceptance_rate == s.accepted / s.drafted
    for field in ("new_tokens", "target_calls", "drafted", "accepted", "drafting_steps"):
        assert getattr(s, field) == sum(getattr(r, field) for r in s.rows)
    assert s.wall_seconds >= max(r.wall_seconds for r in s.rows) > 0
    assert s.draft_seconds > 0 and s.verify_seconds > 0


def test_prompt_lookup_counts_derived_by_hand(target):
    """Counts derived by hand, not by the code under test. The prompt follows the target's task with three seed
    tokens from different 2-cycles of the permutation, so the text repeats with period 6 and every bigram occurs
    at one phase only: each step prompt lookup (bigram match, 4 tokens) finds a full continuation that is right.
    16 new tokens = 1 (prefill) + 3 steps x (4 accepted + 1): 4 target calls, 12 drafted, 12 accepted."""
    two_cycles = [t for t in range(1, 64) if PERMUTATION[PERMUTATION[t]] == t != PERMUTATION[t]]
    seeds = []
    for t in two_cycles:
        if int(PERMUTATION[t]) not in seeds:
            seeds.append(t)
    text = seeds[:3]
    while len(text) < 14 + 16:
        text.append(int(PERMUTATION[text[-LAG]]))
    out = SpeculativeDecoder(target, PromptLookup(max_ngram=2, num_draft_tokens=4)).generate(
        torch.tensor([text[:14]]), max_new_tokens=16)
    assert out.generated[0] == text[14:]  # the target solves its task: the continuation is known without it
    s = out.stats
    assert (s.new_tokens, s.target_calls, s.drafted, s.accepted) == (16, 4, 12, 12)
    assert s.per_position_acceptance == [1.0] * 4


def test_merge_sums_parts():
    a = DecodeStats(new_tokens=10, target_calls=5, drafted=8, accepted=5, drafting_steps=4, accepted_at=[3, 2],
                    wall_seconds=1.0, rows=[RowStats()])
    b = DecodeStats(new_tokens=6, target_calls=2, drafted=6, accepted=4, drafting_steps=2, accepted_at=[2, 1, 1],
                    wall_seconds=0.5, rows=[RowStats()])
    m = DecodeStats.merge([a, b])
    assert (m.new_tokens, m.target_calls, m.accepted_at, len(m.rows)) == (16, 7, [5, 3, 1], 2)
    assert m.per_position_acceptance == [5 / 6, 3 / 6, 1 / 6]
    assert m.tokens_per_second == 16 / 1.5


def test_verify_greedy_pure():
    V = 5
    logits = torch.full((2, 4, V), -10.0)
    choice = torch.tensor([[1, 2, 3, 4], [0, 0, 0, 0]])
    logits.scatter_(2, choice[..., None], 10.0)
    draft = torch.tensor([[1, 2, 0], [0, 1, 0]])
    accepted, nxt = verify_greedy(logits, draft, torch.tensor([3, 1]))
    assert accepted.tolist() == [2, 1]  # row 0: 1, 2 accepted, 0 != 3; row 1: only one slot used
    assert nxt.tolist() == [3, 0]
