"""Exact replay: at T=0 it gives the same counts as online decoding, for every kind of drafter."""

from __future__ import annotations

import pytest

from conftest import tiny_llama
from scylla import DraftModel, PromptLookup, ScyllaError, SpeculativeDecoder, truncated_draft
from scylla.drafters.hybrid import HybridDrafter
from scylla.drafters.suffix import SuffixDrafter
from scylla.drafters.tree import TreeShape
from scylla.replay import replay
from test_eagle import make_head
from test_greedy_identity import make_batch, pick_eos

TREE = TreeShape(top_k=3, depth=3, total_tokens=8)
FIELDS = ("new_tokens", "target_calls", "drafted", "accepted", "drafting_steps", "accepted_at")


@pytest.mark.parametrize("name", ["copy", "truncated", "unrelated", "prompt_lookup", "eagle", "unrelated_tree",
                                  "eagle_tree", "prompt_lookup_tree"])
def test_replay_equals_online_counts(target, name):
    from scylla.drafters.eagle import EagleDrafter

    make = {
        "copy": lambda: DraftModel(target, num_draft_tokens=4),  # all accepted: bonus tokens, EOS among drafts
        "truncated": lambda: DraftModel(truncated_draft(target, 1), num_draft_tokens=3),
        "unrelated": lambda: DraftModel(tiny_llama(layers=1, seed=7, peak=30.0), num_draft_tokens=4),
        "prompt_lookup": lambda: PromptLookup(max_ngram=3, num_draft_tokens=5),
        "eagle": lambda: EagleDrafter(make_head(target, feature_layers=(1, -1)), num_draft_tokens=3),
        "unrelated_tree": lambda: DraftModel(tiny_llama(layers=1, seed=7, peak=30.0), tree=TREE),
        "eagle_tree": lambda: EagleDrafter(make_head(target, feature_layers=(1, -1)), tree=TREE),
        "prompt_lookup_tree": lambda: PromptLookup(max_ngram=2, num_draft_tokens=4, branches=3),
    }[name]
    ids, mask = make_batch(5, seed=31)
    eos = pick_eos(target, ids, mask)
    online = SpeculativeDecoder(target, make()).generate(ids, mask, max_new_tokens=20, eos_token_id=eos,
                                                         pad_token_id=0).stats
    replayed = replay(target, make(), ids, mask, max_new_tokens=20, eos_token_id=eos, pad_token_id=0)
    for field in FIELDS:
        assert getattr(replayed, field) == getattr(online, field), field
    for a, b in zip(replayed.rows, online.rows):
        assert (a.new_tokens, a.target_calls, a.accepted) == (b.new_tokens, b.target_calls, b.accepted)
    assert replayed.mean_accepted_length == online.mean_accepted_length
    if name in ("copy", "prompt_lookup", "truncated", "unrelated_tree", "prompt_lookup_tree"):
        assert online.accepted > 0


def test_a_shared_feature_cache_changes_no_count(target):
    """Heads replayed on the same prompts share the target's hidden states: the counts stay those of online
    decoding for each head, and the cache holds one entry per prompt."""
    from scylla.drafters.eagle import EagleDrafter

    ids, mask = make_batch(3, seed=31)
    cache = {}
    for seed, feature_layers in ((1, (1, -1)), (2, (-1,))):
        make = lambda: EagleDrafter(make_head(target, feature_layers=feature_layers, seed=seed), tree=TREE)  # noqa: E731
        online = SpeculativeDecoder(target, make()).generate(ids, mask, max_new_tokens=12, pad_token_id=0).stats
        replayed = replay(target, make(), ids, mask, max_new_tokens=12, pad_token_id=0,
                          references=SpeculativeDecoder(target).generate(ids, mask, max_new_tokens=12,
                                                                         pad_token_id=0).generated,
                          feature_cache=cache)
        assert [(r.new_tokens, r.target_calls, r.accepted) for r in replayed.rows] == \
               [(r.new_tokens, r.target_calls, r.accepted) for r in online.rows]
    assert len(cache) == 3


def test_replay_refuses_drafters_that_share_rows(target):
    """Replay's rows are prefixes of one reference: a drafter reading sibling rows would read its own future
    (online MAT 1.49, replayed 1.83 before this check). tests/mutations.md: replay-sibling-rows."""
    ids, mask = make_batch(2, seed=31)
    with pytest.raises(ScyllaError, match="share_rows"):
        replay(target, SuffixDrafter(share_rows=True), ids, mask, max_new_tokens=8)
    hybrid = HybridDrafter(SuffixDrafter(), PromptLookup(), min_match=2)
    hybrid.share_rows = True
    with pytest.raises(ScyllaError, match="share_rows"):
        replay(target, hybrid, ids, mask, max_new_tokens=8)
