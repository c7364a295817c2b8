"""Dynamic draft trees (EAGLE-2): expand the top-k children of the k best nodes per depth, keep the best
total_tokens nodes by cumulative draft log-probability, and hand them to the engine as one tree Draft.

The drafter supplies a ``step`` that runs its model on one depth's frontier with tree attention; everything else
(candidate bookkeeping, reranking, the Draft layout) is here, shared by EAGLE heads and draft LMs. Children are
the deterministic top-k of the draft distribution, so trees are verified as deterministic drafts (lossless at
T > 0 by recursive rejection over siblings, scylla.verify.verify_tree_sampled).
"""

from __future__ import annotations

from typing import Callable

import torch

from scylla.drafters.base import Draft
from scylla.specs import TREE_FORM, TreeShape, parse_tree  # noqa: F401 (TREE_FORM, parse_tree: imported from here)

Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def expand_tree(shape: TreeShape, root_logprobs: torch.Tensor, step: Step, budget: torch.Tensor,
                to_target: torch.Tensor | None = None) -> Draft:
    """Build one tree per row.

    root_logprobs (B, V_d): the draft's log-probabilities for the first draft token. step(tokens (B, k), parent
    (B, k) index into the previous frontier, tree (B, k, m) bool over the frontier columns appended so far plus
    these k, depth d >= 1 of these tokens) runs the draft on a frontier and returns log-probabilities (B, k, V_d).
    budget (B,): nodes deeper than budget[b] are dropped. to_target (V_d,): draft ids -> target ids, if they differ.
    Returns a tree Draft: nodes sorted by depth, parents before children, siblings distinct.
    """
    B = root_logprobs.shape[0]
    device = root_logprobs.device
    k = min(shape.top_k, root_logprobs.shape[-1])
    scores, tokens = root_logprobs.topk(k, dim=-1)  # (B, k)
    cand_tokens, cand_scores = [tokens], [scores]
    cand_parent = [torch.full((B, k), -1, dtype=torch.long, device=device)]
    cand_depth = [torch.ones(B, k, dtype=torch.long, device=device)]
    frontier = torch.arange(k, device=device).expand(B, k)  # candidate index of each frontier node
    front_tokens, front_scores = tokens, scores
    parent = torch.zeros(B, k, dtype=torch.long, device=device)
    tree = torch.eye(k, dtype=torch.bool, device=device).expand(B, k, k)
    offset = k
    for d in range(2, shape.depth + 1):
        logprobs = step(front_tokens, parent, tree, d - 1)  # (B, k, V_d)
        child_scores, child_tokens = logprobs.topk(k, dim=-1)  # (B, k, k)
        total = (front_scores[:, :, None] + child_scores).reshape(B, k * k)
        cand_tokens.append(child_tokens.reshape(B, k * k))
        cand_scores.append(total)
        cand_parent.append(frontier[:, :, None].expand(B, k, k).reshape(B, k * k))
        cand_depth.append(torch.full((B, k * k), d, dtype=torch.long, device=device))
        if d < shape.depth:
            front_scores, pick = total.topk(k, dim=-1)  # the next frontier: the k best of the k*k children
            parent = pick // k
            front_tokens = cand_tokens[-1].gather(1, pick)
            frontier = offset + pick
            # each new node sees what its parent saw, and itself
            seen = tree.gather(1, parent[:, :, None].expand(B, k, tree.shape[2]))
            tree = torch.cat([seen, torch.eye(k, dtype=torch.bool, device=device).expand(B, k, k)], dim=2)
        offset += k * k
    tokens, scores = torch.cat(cand_tokens, 1), torch.cat(cand_scores, 1)
    parents, depth = torch.cat(cand_parent, 1), torch.cat(cand_depth, 1)
    # Best total_tokens by score; candidates are in depth order and the sort is stable, so a parent (score >= its
    # child's) always ranks before its child and the kept set is a tree.
    n = min(shape.total_tokens, tokens.shape[1])
    keep = torch.sort(-scores, dim=1, stable=True).indices[:, :n].sort(dim=1).values  # (B, n), in depth order
    slot_of = torch.full_like(parents, -1)
    slot_of.scatter_(1, keep, torch.arange(n, device=device).expand(B, n))
    kept_parent = parents.gather(1, keep)
    new_parents = torch.where(kept_parent >= 0, slot_of.gather(1, kept_parent.clamp(min=0)), -1)
    kept_tokens = tokens.gather(1, keep)
    if to_target is not None:
        kept_tokens = to_target[kept_tokens]
    lengths = (depth.gather(1, keep) <= budget[:, None]).sum(1)
    return Draft(kept_tokens, lengths, None, new_parents)


def trie_draft(branches: list[list[list[int]]], device: torch.device | str = "cpu") -> Draft:
    """A tree Draft from several candidate continuations per row, merged into a trie (shared prefixes once).

    branches[b]: row b's continuations, best first; slots follow insertion order, so parents come first.
    """
    rows = []
    for row in branches:
        nodes: dict[tuple[int, ...], int] = {}
        tokens, parents = [], []
        for branch in row:
            for i in range(len(branch)):
                key = tuple(branch[: i + 1])
                if key not in nodes:
                    nodes[key] = len(tokens)
                    tokens.append(branch[i])
                    parents.append(nodes[key[:-1]] if i else -1)
        rows.append((tokens, parents))
    g = max(len(t) for t, _ in rows)
    tok = torch.zeros(len(rows), g, dtype=torch.long)
    par = torch.full((len(rows), g), -1, dtype=torch.long)
    for b, (t, p) in enumerate(rows):
        tok[b, : len(t)] = torch.tensor(t, dtype=torch.long)
        par[b, : len(p)] = torch.tensor(p, dtype=torch.long)
    lengths = torch.tensor([len(t) for t, _ in rows])
    return Draft(tok.to(device), lengths.to(device), None, par.to(device))
