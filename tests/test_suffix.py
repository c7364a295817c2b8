"""Suffix-automaton drafting: matches against brute force, tree drafts, the pool, the hybrid, greedy identity."""

from __future__ import annotations

import random

import pytest
import torch

from scylla import DraftModel, ScyllaError, SpeculativeDecoder, truncated_draft
from scylla.drafters import suffix as suffix_module
from scylla.drafters.base import Draft, DraftContext, Drafter
from scylla.drafters.eagle import EagleDrafter
from scylla.drafters.hybrid import HybridDrafter
from scylla.drafters.prompt_lookup import PromptLookup
from scylla.drafters.spec import drafter_from_spec, parse_spec
from scylla.drafters.suffix import SuffixAutomaton, SuffixDrafter, SuffixPool, _Row, read
from scylla.kv import RaggedKV
from scylla.sampling import SamplingConfig
from test_eagle import make_head


def cyclic(text: list[int], start: int, k: int) -> list[int]:
    out: list[int] = []
    for i in range(start, start + k):
        out.append(text[i] if i < len(text) else out[i - len(text)])
    return out


def earlier_ends(text: list[int], length: int) -> list[int]:
    """End indices e <= len - 2 of the earlier occurrences of the text's suffix of this length."""
    n = len(text)
    return [e for e in range(length - 1, n - 1) if text[e - length + 1 : e + 1] == text[n - length :]]


def brute_own(text: list[int], k: int) -> tuple[int, list[int], list[list[int]]]:
    """Longest suffix occurring earlier; the cyclic continuation of its most recent occurrence; and those of all."""
    for length in range(len(text) - 1, 0, -1):
        ends = earlier_ends(text, length)
        if ends:
            return length, cyclic(text, max(ends) + 1, k), [cyclic(text, e + 1, k) for e in ends]
    return 0, [], []


def brute_pool(text: list[int], pool: list[list[int]], k: int) -> tuple[int, list[int]]:
    """Longest suffix of text inside one pool text; the continuation (within that text) of the latest occurrence."""
    for length in range(len(text), 0, -1):
        suffix = text[len(text) - length :]
        hits = [(i, e) for i, p in enumerate(pool) for e in range(length - 1, len(p))
                if p[e - length + 1 : e + 1] == suffix]
        if hits:
            i, e = max(hits)
            return length, pool[i][e + 1 : e + 1 + k]
    return 0, []


@pytest.fixture
def exact(monkeypatch):
    """Refresh end positions up the whole suffix-link chain: pos is then always the most recent end."""
    monkeypatch.setattr(suffix_module, "RECENT_LINKS", 10**9)


@pytest.mark.parametrize("alphabet", [2, 3, 5])
def test_row_match_equals_brute_force(exact, alphabet):
    rng = random.Random(alphabet)
    for _ in range(20):
        text = [rng.randrange(alphabet) for _ in range(rng.randrange(1, 4))]
        row = _Row(list(text), max_tokens=1 << 16)
        for _ in range(40):
            token = rng.randrange(alphabet)
            text.append(token)
            row.push(token)
            state, length = row.own
            want_length, want, _ = brute_own(text, 6)
            assert length == want_length
            got = read(row.sam.tokens, row.newest, row.sam.pos[state] + 1, 6, True) if length else []
            assert got == want
            assert row.text() == text


def test_stale_positions_still_give_an_occurrence(monkeypatch):
    """With a shallow refresh, on repetitive text: still the longest match, and a real earlier occurrence."""
    monkeypatch.setattr(suffix_module, "RECENT_LINKS", 2)
    rng = random.Random(0)
    text = [0]
    row = _Row(list(text), max_tokens=1 << 16)
    stale = 0
    for _ in range(150):
        token = 0 if rng.random() < 0.8 else rng.randrange(1, 3)
        text.append(token)
        row.push(token)
        state, length = row.own
        want_length, want, candidates = brute_own(text, 5)
        assert length == want_length
        if length:
            got = read(row.sam.tokens, row.newest, row.sam.pos[state] + 1, 5, True)
            assert got in candidates
            stale += got != want
    assert stale > 0  # the test does reach states whose position is not the most recent


def test_automaton_match_and_substrings():
    rng = random.Random(1)
    for _ in range(30):
        text = [rng.randrange(3) for _ in range(rng.randrange(0, 30))]
        sam = SuffixAutomaton(text)
        assert len(sam.length) <= max(2 * len(text), 2)
        query = [rng.randrange(3) for _ in range(12)]
        _, length = sam.match(query)
        occurs = [n for n in range(len(query) + 1)
                  if any(text[i : i + n] == query[len(query) - n :] for i in range(len(text) - n + 1))]
        assert length == max(occurs)


def context(rows: list[list[int]], budget: int = 100) -> DraftContext:
    """Right-aligned rows (left-padded with 0) as the engine shows them."""
    width = max(len(r) for r in rows)
    tokens = torch.zeros(len(rows), width, dtype=torch.long)
    for b, r in enumerate(rows):
        tokens[b, width - len(r) :] = torch.tensor(r)
    lengths = torch.tensor([len(r) for r in rows])
    return DraftContext(tokens, lengths, torch.full_like(lengths, budget), SamplingConfig())


def grow(texts: list[list[int]], rng: random.Random, alphabet: int) -> torch.Tensor:
    """Append 1..4 random tokens to each row (a step that accepted that many minus one); returns accepted."""
    accepted = []
    for text in texts:
        n = rng.randrange(1, 5)
        text.extend(rng.randrange(alphabet) for _ in range(n))
        accepted.append(n - 1)
    return torch.tensor(accepted)


@pytest.mark.parametrize("alphabet", [2, 4])
def test_drafter_proposals_equal_brute_force(exact, alphabet):
    rng = random.Random(10 + alphabet)
    texts = [[rng.randrange(alphabet) for _ in range(rng.randrange(2, 9))] for _ in range(3)]
    drafter = SuffixDrafter(num_draft_tokens=5)
    drafter.start(context(texts, budget=0))
    for step in range(25):
        accepted = grow(texts, rng, alphabet)
        drafter.update(accepted, context(texts))
        budget = step % 7  # budgets 0..6 cap the drafts
        draft = drafter.propose(context(texts, budget))
        assert draft.parents is None and draft.probs is None
        for b, text in enumerate(texts):
            length, want, _ = brute_own(text, min(5, budget))
            assert int(drafter.last_match_length[b]) == length
            assert draft.tokens[b, : draft.lengths[b]].tolist() == want
    drafter.select(torch.tensor([2, 0]))
    texts = [texts[2], texts[0]]
    drafter.update(grow(texts, rng, alphabet), context(texts))
    draft = drafter.propose(context(texts, 5))
    for b, text in enumerate(texts):
        assert draft.tokens[b, : draft.lengths[b]].tolist() == brute_own(text, 5)[1]


def test_min_match_and_window(exact):
    rng = random.Random(3)
    texts = [[rng.randrange(3) for _ in range(5)]]
    drafter = SuffixDrafter(num_draft_tokens=4, min_match=3, max_tokens=64)
    drafter.start(context(texts, 0))
    for _ in range(100):
        drafter.update(grow(texts, rng, 3), context(texts))
        draft = drafter.propose(context(texts, 4))
        row = drafter.rows[0]
        assert len(row.text()) <= 64 and row.total == len(texts[0])
        kept = row.text()  # past max_tokens, matching runs on the newest tokens only
        assert kept == texts[0][-len(kept):]
        length, want, _ = brute_own(kept, 4)
        assert int(drafter.last_match_length[0]) == length
        assert draft.tokens[0, : draft.lengths[0]].tolist() == (want if length >= 3 else [])


def test_pool_matches_equal_brute_force(exact):
    rng = random.Random(5)
    pool = SuffixPool()
    texts_in_pool = [[rng.randrange(4) for _ in range(rng.randrange(5, 30))] for _ in range(3)]
    for text in texts_in_pool[:2]:
        pool.add(text)
    texts = [[rng.randrange(4) for _ in range(3)] for _ in range(2)]
    drafter = SuffixDrafter(num_draft_tokens=6, pool=pool)
    drafter.start(context(texts, 0))
    for step in range(20):
        if step == 10:  # a text added mid-call: matches into the pool are walked afresh
            pool.add(torch.tensor(texts_in_pool[2]))
        drafter.update(grow(texts, rng, 4), context(texts))
        draft = drafter.propose(context(texts, 6))
        known = texts_in_pool[: 2 + (step >= 10)]
        for b, text in enumerate(texts):
            own_length, own, _ = brute_own(text, 6)
            pool_length, from_pool = brute_pool(text, known, 6)
            assert int(drafter.last_match_length[b]) == max(own_length, pool_length)
            assert draft.tokens[b, : draft.lengths[b]].tolist() == (own if own_length >= pool_length else from_pool)


def test_pool_window_and_clear():
    pool = SuffixPool(max_tokens=64)
    for i in range(10):
        pool.add(list(range(i, i + 20)))
    assert 32 <= len(pool) <= 64
    pool.clear()
    assert len(pool) == 0


def test_share_rows_matches_siblings():
    texts = [[1, 2, 3, 4, 5, 6, 7], [9, 8, 1, 2, 3]]
    alone = SuffixDrafter(num_draft_tokens=3)
    alone.start(context(texts, 0))
    assert alone.propose(context(texts, 3)).lengths.tolist() == [0, 0]
    shared = SuffixDrafter(num_draft_tokens=3, share_rows=True)
    shared.start(context(texts, 0))
    draft = shared.propose(context(texts, 3))
    assert draft.tokens[1].tolist() == [4, 5, 6] and shared.last_match_length.tolist() == [0, 3]
    shared.select(torch.tensor([1]))  # row 0 finished: its text stays matchable
    texts = [texts[1] + [4, 5, 6, 7, 9, 8]]
    shared.update(torch.tensor([5]), context(texts))
    assert shared.propose(context(texts, 3)).tokens[0].tolist() == [1, 2, 3]  # its own earlier "9 8" wins ties


def test_tree_draft_is_valid():
    rng = random.Random(7)
    for trial in range(30):
        texts = [[rng.randrange(3) for _ in range(rng.randrange(4, 40))] for _ in range(2)]
        drafter = SuffixDrafter(num_draft_tokens=4, branches=3, min_match=1)
        drafter.start(context(texts, 0))
        draft = drafter.propose(context(texts, 4))
        assert draft.probs is None and draft.parents is not None
        chain = SuffixDrafter(num_draft_tokens=4)
        chain.start(context(texts, 0))
        first = chain.propose(context(texts, 4))
        for b, text in enumerate(texts):
            n = int(draft.lengths[b])
            parents, tokens = draft.parents[b, :n].tolist(), draft.tokens[b, :n].tolist()
            assert all(-1 <= p < j for j, p in enumerate(parents))
            roots = [j for j, p in enumerate(parents) if p == -1]
            assert len({tokens[j] for j in roots}) == len(roots) <= 3
            branches = []  # siblings have distinct first tokens, so every root starts one chain
            for r in roots:
                branch, j = [tokens[r]], r
                while j + 1 < n and parents[j + 1] == j:
                    j += 1
                    branch.append(tokens[j])
                branches.append(branch)
            assert sum(map(len, branches)) == n and all(len(br) <= 4 for br in branches)
            if n:
                assert branches[0] == first.tokens[b, : first.lengths[b]].tolist()
            for branch in branches:  # each continues an earlier occurrence of some suffix
                ok = any(cyclic(text, e + 1, len(branch)) == branch
                         for length in range(1, len(text)) for e in earlier_ends(text, length))
                assert ok


def repetitive_batch(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts that repeat a short random phrase (different lengths per row)."""
    g = torch.Generator().manual_seed(seed)
    width = 16
    ids = torch.zeros(batch, width, dtype=torch.long)
    mask = torch.zeros(batch, width, dtype=torch.long)
    for b in range(batch):
        phrase = torch.randint(1, 64, (int(torch.randint(2, 5, (1,), generator=g)),), generator=g)
        prompt = phrase.repeat(4)[: width - b]
        ids[b, width - len(prompt) :] = prompt
        mask[b, width - len(prompt) :] = 1
    return ids, mask


class CacheChecked(Drafter):
    """Wraps a DraftModel; after each update checks that its cache holds the committed tokens only (each row's keys
    equal those of a fresh prefill of its committed prefix)."""

    def __init__(self, inner: DraftModel):
        self.inner, self.checked = inner, 0

    def start(self, ctx):
        self.inner.start(ctx)

    def propose(self, ctx):
        return self.inner.propose(ctx)

    def update(self, accepted, ctx):
        self.inner.update(accepted, ctx)
        kv, T = self.inner.kv, ctx.tokens.shape[1]
        for b, (n, cached) in enumerate(zip(ctx.lengths.tolist(), kv.lengths.tolist())):
            if cached == 0:
                continue
            fresh = RaggedKV(self.inner.model)
            fresh.forward(ctx.tokens[b : b + 1, T - n : T - n + cached])
            for mine, theirs in zip(kv.cache.layers, fresh.cache.layers):
                assert torch.allclose(mine.keys[b, :, kv.columns - cached :], theirs.keys[0], atol=1e-5)
            self.checked += 1

    def select(self, rows):
        self.inner.select(rows)

    def finish(self):
        self.inner.finish()


MAX_NEW = 30


@pytest.mark.parametrize("batch", [1, 3])
def test_greedy_identity(target, batch):
    ids, mask = repetitive_batch(batch, seed=batch)
    ref = SpeculativeDecoder(target).generate(ids, mask, max_new_tokens=MAX_NEW)
    suffix = SuffixDrafter(num_draft_tokens=5)
    out = SpeculativeDecoder(target, suffix).generate(ids, mask, max_new_tokens=MAX_NEW)
    assert torch.equal(out.sequences, ref.sequences)
    assert out.stats.accepted > 0

    fallback = CacheChecked(DraftModel(truncated_draft(target, 1), num_draft_tokens=3))
    hybrid = HybridDrafter(SuffixDrafter(num_draft_tokens=5), fallback, min_match=2)
    out = SpeculativeDecoder(target, hybrid).generate(ids, mask, max_new_tokens=MAX_NEW)
    assert torch.equal(out.sequences, ref.sequences)
    assert hybrid.share["suffix"] > 0 and hybrid.share["fallback"] > 0 and fallback.checked > 0
    assert sum(hybrid.side_counts().values()) == out.stats.drafted
    alone = CacheChecked(DraftModel(truncated_draft(target, 1), num_draft_tokens=3))  # and on its own
    assert torch.equal(SpeculativeDecoder(target, alone).generate(ids, mask, max_new_tokens=MAX_NEW).sequences,
                       ref.sequences)
    hybrid.reset_share()
    assert hybrid.share == {"suffix": 0, "fallback": 0} and hybrid.side_counts() == {"suffix": 0, "fallback": 0}


def test_hybrid_with_eagle_head(target):
    """An EAGLE fallback (hidden states, its own cache) stays in step: greedy identity; sampling runs."""
    ids, mask = repetitive_batch(3, seed=4)
    ref = SpeculativeDecoder(target).generate(ids, mask, max_new_tokens=MAX_NEW)
    hybrid = HybridDrafter(SuffixDrafter(num_draft_tokens=4), EagleDrafter(make_head(target)), min_match=2)
    assert hybrid.feature_layers == (-1,)
    out = SpeculativeDecoder(target, hybrid).generate(ids, mask, max_new_tokens=MAX_NEW)
    assert torch.equal(out.sequences, ref.sequences)
    assert hybrid.share["suffix"] > 0 and hybrid.share["fallback"] > 0
    out = SpeculativeDecoder(target, hybrid).generate(ids, mask, max_new_tokens=20, temperature=0.8, seed=0)
    assert all(len(g) == 20 for g in out.generated)


class Fixed(Drafter):
    """Proposes the same chain for every row, with made-up probs (a sampling drafter)."""

    def __init__(self, tokens: list[int], vocab: int):
        self.tokens, self.vocab = tokens, vocab

    def propose(self, ctx):
        B = ctx.tokens.shape[0]
        tokens = torch.tensor(self.tokens).expand(B, -1)
        probs = torch.full((B, len(self.tokens), self.vocab), 1.0 / self.vocab)
        return Draft(tokens, torch.full((B,), len(self.tokens)), probs)


def test_hybrid_merge_one_hot_probs():
    texts = [[5, 6, 7, 8, 9, 5, 6, 7], [1, 2, 3, 4]]
    hybrid = HybridDrafter(SuffixDrafter(num_draft_tokens=5), Fixed([11, 12], vocab=16), min_match=2)
    hybrid.start(context(texts, 0))
    draft = hybrid.propose(context(texts, 5))
    assert hybrid.last_suffix_rows.tolist() == [True, False]
    assert draft.tokens.tolist() == [[8, 9, 5, 6, 7], [11, 12, 0, 0, 0]]
    assert draft.lengths.tolist() == [5, 2] and draft.parents is None
    assert torch.equal(draft.probs[0], torch.nn.functional.one_hot(torch.tensor([8, 9, 5, 6, 7]), 16).float())
    assert torch.allclose(draft.probs[1, :2], torch.full((2, 16), 1 / 16))
    assert hybrid.share == {"suffix": 1, "fallback": 1} and hybrid.side_counts() == {"suffix": 5, "fallback": 2}
    tree = HybridDrafter(SuffixDrafter(num_draft_tokens=5, branches=2), Fixed([11, 12], vocab=16), min_match=2)
    tree.start(context(texts, 0))
    with pytest.raises(ScyllaError, match="tree drafts must be deterministic"):
        tree.propose(context(texts, 5))


def test_pool_raises_mean_accepted_length(target):
    ids = torch.randint(1, 64, (1, 6), generator=torch.Generator().manual_seed(11))
    first = SpeculativeDecoder(target).generate(ids, max_new_tokens=40)
    without = SpeculativeDecoder(target, SuffixDrafter()).generate(ids, max_new_tokens=40)
    drafter = SuffixDrafter(pool=SuffixPool())
    drafter.pool.add(first.generated[0])
    with_pool = SpeculativeDecoder(target, drafter).generate(ids, max_new_tokens=40)
    assert with_pool.generated == without.generated == first.generated
    assert with_pool.stats.mean_accepted_length > without.stats.mean_accepted_length + 1


def test_specs(target):
    assert parse_spec("suffix") == ("suffix", "")
    assert parse_spec("hybrid:truncated:1") == ("hybrid", "truncated:1")
    drafter = drafter_from_spec("suffix", target)
    assert isinstance(drafter, SuffixDrafter) and isinstance(drafter.pool, SuffixPool)
    hybrid = drafter_from_spec("hybrid:truncated:1", target, num_draft_tokens=3)
    assert isinstance(hybrid, HybridDrafter) and isinstance(hybrid.fallback, DraftModel)
    assert hybrid.first.num_draft_tokens == hybrid.fallback.num_draft_tokens == 3
    hybrid.share_rows = True
    assert hybrid.first.share_rows and hybrid.pool is hybrid.first.pool
    for spec, message in [("hybrid:", "needs a fallback drafter"), ("hybrid:none", "cannot be none"),
                          ("hybrid:suffix", "cannot be suffix"), ("hybrid:hybrid:truncated:1", "cannot be hybrid"),
                          ("hybrid:bogus", "unknown drafter 'bogus'"), ("suffix:3", "unknown drafter 'suffix:3'")]:
        with pytest.raises(ScyllaError, match=message):
            parse_spec(spec)


@pytest.mark.parametrize("make, message", [
    (lambda: SuffixDrafter(num_draft_tokens=0), "num_draft_tokens, min_match and branches must be >= 1"),
    (lambda: SuffixDrafter(min_match=0), "num_draft_tokens, min_match and branches must be >= 1"),
    (lambda: SuffixDrafter(branches=0), "num_draft_tokens, min_match and branches must be >= 1"),
    (lambda: SuffixDrafter(max_tokens=63), "max_tokens must be >= 64"),
    (lambda: SuffixDrafter(num_draft_tokens=40, min_match=10, max_tokens=64), "max_tokens must be >= 100"),
    (lambda: SuffixPool(max_tokens=10), "pool max_tokens must be >= 64"),
    (lambda: SuffixPool().add([3, -1]), "token ids"),
    (lambda: HybridDrafter(SuffixDrafter(), PromptLookup(), min_match=0), "min_match must be >= 1"),
    (lambda: HybridDrafter(PromptLookup(), SuffixDrafter()), "must be a SuffixDrafter"),
    (lambda: HybridDrafter(SuffixDrafter(), None), "must be a Drafter"),
])
def test_bad_configurations(make, message):
    with pytest.raises(ScyllaError, match=message):
        make()
