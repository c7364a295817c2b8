"""Draft trees: shape checks, the trie layout, tree verification on hand-made logits and on exact distributions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from scylla import ScyllaError
from scylla.drafters.tree import TreeShape, parse_tree, trie_draft
from scylla.verify import tree_ancestors, verify_tree_greedy, verify_tree_sampled


def test_parse_tree_and_errors():
    assert parse_tree("top_k=4,depth=3,total_tokens=12") == TreeShape(4, 3, 12)
    assert parse_tree("depth=2") == TreeShape(10, 2, 60)
    with pytest.raises(ScyllaError, match="total_tokens=2 < depth=3"):
        parse_tree("top_k=2,depth=3,total_tokens=2")
    with pytest.raises(ScyllaError, match="bad tree"):
        parse_tree("width=3")
    with pytest.raises(ScyllaError, match="exceeds"):
        TreeShape(top_k=1, depth=2, total_tokens=5)


def test_trie_merges_shared_prefixes():
    draft = trie_draft([[[5, 6, 7], [5, 6, 9], [8]], []])
    assert draft.tokens[0].tolist() == [5, 6, 7, 9, 8]
    assert draft.parents[0].tolist() == [-1, 0, 1, 1, -1]
    assert draft.lengths.tolist() == [5, 0]


def test_tree_ancestors():
    anc = tree_ancestors(torch.tensor([[-1, 0, 0, -1]]))
    assert anc[0, 3].nonzero().squeeze(1).tolist() == [0, 1, 3]  # input 3 = slot 2: x, slot 0, itself
    assert anc[0, 4].nonzero().squeeze(1).tolist() == [0, 4]


def one_hot_logits(choices: list[int], V: int = 10) -> torch.Tensor:
    logits = torch.zeros(1, len(choices), V)
    logits[0, torch.arange(len(choices)), torch.tensor(choices)] = 5.0
    return logits


def test_verify_tree_greedy_takes_the_matching_branch():
    # tree: x -> 3 (slot 0) -> 4 (slot 2); x -> 7 (slot 1) -> 8 (slot 3) -> 9 (slot 4)
    tokens = torch.tensor([[3, 7, 4, 8, 9]])
    parents = torch.tensor([[-1, -1, 0, 1, 3]])
    anc = tree_ancestors(parents)
    # target argmax after: x -> 7, slot0 -> 1, slot1 (7) -> 8, slot2 -> 1, slot3 (8) -> 2, slot4 -> 0
    logits = one_hot_logits([7, 1, 8, 1, 2, 0])
    accepted, next_token, order = verify_tree_greedy(logits, tokens, parents, torch.tensor([5]), anc)
    assert accepted.tolist() == [2] and next_token.tolist() == [2]
    assert order[0, :3].tolist() == [0, 2, 4]  # x, then slots 1 and 3
    # the invalid slot 4 (beyond num_draft) is never taken
    accepted, _, _ = verify_tree_greedy(one_hot_logits([7, 1, 8, 1, 9, 0]), tokens, parents, torch.tensor([4]), anc)
    assert accepted.tolist() == [2]


def test_verify_tree_sampled_certain_child_and_residual():
    tokens, parents = torch.tensor([[3, 7]]), torch.tensor([[-1, -1]])
    p = torch.zeros(1, 3, 10)
    p[0, 0, 7] = 1.0  # the target surely picks 7: the first sibling (3) is rejected, the second accepted
    p[0, 2, 5] = 1.0
    generator = torch.Generator().manual_seed(0)
    accepted, next_token, order = verify_tree_sampled(p, tokens, parents, torch.tensor([2]), generator)
    assert (accepted.tolist(), next_token.tolist(), order[0, :2].tolist()) == ([1], [5], [0, 2])


def test_verify_tree_sampled_follows_the_target_exactly():
    """The first two tokens a tree verification emits are distributed as p1(t1) p2(t2 | t1), exactly.

    Tree (V=5): x -> a, b (siblings); a -> c, e; b -> c. p1(a) = 0.5 makes the second sibling's test sensitive to
    the residual: against an un-renormalised one, b is accepted with p1(b) instead of p1(b) / (1 - p1(a)), halving
    its mass (tests/mutations.md: tree-residual-unnormalised, caught at p < 1e-100). A row that emits one token gets
    its second from p2 here, as the next engine step would."""
    V, N = 5, 20_000
    a, b, c, e = 0, 1, 2, 3
    rng = np.random.default_rng(0)
    p1 = np.array([0.5, 0.2, 0.15, 0.1, 0.05])
    p2 = rng.dirichlet(np.ones(V), size=V)  # p2[t]: the target's distribution after t
    tokens = torch.tensor([[a, b, c, e, c]])
    parents = torch.tensor([[-1, -1, 0, 0, 1]])
    p = torch.tensor(np.stack([p1, p2[a], p2[b], p2[c], p2[e], p2[c]]), dtype=torch.float64)  # over [x, slots]
    generator = torch.Generator().manual_seed(0)
    accepted, next_token, order = verify_tree_sampled(p[None].expand(N, -1, -1), tokens.expand(N, -1),
                                                      parents.expand(N, -1), torch.full((N,), 5), generator)
    path = tokens[0][(order[:, 1:3] - 1).clamp(min=0)]  # the accepted path's first two tokens
    first = torch.where(accepted >= 1, path[:, 0], next_token).numpy()
    second = torch.where(accepted >= 2, path[:, 1], torch.where(accepted == 1, next_token, -1)).numpy()
    alone = second < 0
    second[alone] = [rng.choice(V, p=p2[t]) for t in first[alone]]
    observed = np.bincount(first * V + second, minlength=V * V)
    expected = (p1[:, None] * p2).reshape(-1) * N
    assert chisquare(observed, expected).pvalue > 1e-3
    assert 0 < int(alone.sum()) < N and int((accepted == 2).sum()) > 0  # every kind of outcome occurs
