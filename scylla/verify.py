"""Verification of a chain draft against the target: pure functions on tensors.

Shapes: B rows, g draft slots (row b uses the first num_draft[b] of them), V vocabulary.
The target scores the verify input [x, d_1, ..., d_g], so its outputs have g + 1 positions: position j predicts
the token after d_j (position 0 predicts d_1).
"""

from __future__ import annotations

import torch


def _leading_true(mask: torch.Tensor) -> torch.Tensor:
    """(B, g) bool -> (B,) number of leading True values per row."""
    return mask.long().cumprod(dim=1).sum(dim=1)


def verify_greedy(
    logits: torch.Tensor, draft: torch.Tensor, num_draft: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Temperature 0: accept while d_j equals the target's argmax.

    logits (B, g+1, V), draft (B, g), num_draft (B,) -> accepted (B,), next_token (B,): the target's argmax after the
    last accepted draft token (a correction on a rejection, a bonus token when all were accepted).
    """
    g = draft.shape[1]
    choice = logits.argmax(dim=-1)  # (B, g+1)
    in_draft = torch.arange(g, device=draft.device)[None, :] < num_draft[:, None]
    accepted = _leading_true((draft == choice[:, :g]) & in_draft)
    return accepted, choice.gather(1, accepted[:, None]).squeeze(1)


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)) over the last axis; where p <= q everywhere (a rejection of probability 0) it returns p."""
    residual = (p - q).clamp(min=0)
    mass = residual.sum(dim=-1, keepdim=True)
    return torch.where(mass > 0, residual / mass.clamp(min=torch.finfo(p.dtype).tiny), p)


def verify_sampled(
    p: torch.Tensor,
    q: torch.Tensor | None,
    draft: torch.Tensor,
    num_draft: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lossless speculative sampling (Leviathan et al. 2023; Chen et al. 2023).

    p (B, g+1, V): processed target distributions; q (B, g, V): the processed draft distributions each d_j was
    sampled from, or None for a deterministic drafter (q is then one-hot on d_j). Accept d_j with probability
    min(1, p(d_j) / q(d_j)); at the first rejection sample from norm(max(0, p - q)); if every drafted token is
    accepted, sample a bonus token from p at the next position. Returns accepted (B,), next_token (B,).
    """
    B, g = draft.shape
    V = p.shape[-1]
    rows = torch.arange(B, device=p.device)
    if g == 0:
        return torch.zeros(B, dtype=torch.long, device=p.device), torch.multinomial(p[:, 0], 1, generator=generator)[:, 0]
    p_draft = p[:, :g].gather(-1, draft[..., None]).squeeze(-1)  # (B, g)
    q_draft = torch.ones_like(p_draft) if q is None else q.gather(-1, draft[..., None]).squeeze(-1)
    u = torch.rand(B, g, generator=generator, device=p.device)
    in_draft = torch.arange(g, device=p.device)[None, :] < num_draft[:, None]
    accepted = _leading_true((u * q_draft < p_draft) & in_draft)

    p_next = p[rows, accepted]  # (B, V): target distribution after the last accepted token
    rejected = accepted < num_draft
    slot = accepted.clamp(max=g - 1)
    if q is None:
        q_next = torch.nn.functional.one_hot(draft[rows, slot], V).to(p.dtype)
    else:
        q_next = q[rows, slot]
    dist = torch.where(rejected[:, None], residual_distribution(p_next, q_next), p_next)
    return accepted, torch.multinomial(dist, 1, generator=generator).squeeze(1)


def tree_ancestors(parents: torch.Tensor) -> torch.Tensor:
    """parents (B, g) (slot of each node's parent, -1 = the root) -> (B, g+1, g+1) bool over the verify input
    [x, n_1..n_g]: entry [i, j] says input j is input i or one of its ancestors (x, at 0, is everyone's)."""
    B, g = parents.shape
    anc = torch.zeros(B, g + 1, g + 1, dtype=torch.bool, device=parents.device)
    anc[:, 0, 0] = True
    rows = torch.arange(B, device=parents.device)
    for j in range(g):
        anc[:, j + 1] = anc[rows, parents[:, j].clamp(min=-1) + 1]
        anc[:, j + 1, j + 1] = True
    return anc


def _path_order(path: list[int], g: int) -> list[int]:
    """Verify-input order that puts x and the accepted path's inputs (slots + 1) first, the rest after."""
    head = [0] + [s + 1 for s in path]
    on = set(head)
    return head + [i for i in range(g + 1) if i not in on]


def verify_tree_greedy(logits: torch.Tensor, tokens: torch.Tensor, parents: torch.Tensor, num_draft: torch.Tensor,
                       ancestors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Temperature 0 on a tree: the deepest node whose every ancestor is the target's argmax after its parent.

    logits (B, g+1, V) over [x, n_1..n_g]; tokens, parents (B, g); num_draft (B,); ancestors from tree_ancestors.
    Returns accepted (B,) (the path's length), next_token (B,), order (B, g+1): the verify input reordered with
    x and the accepted path first (apply it to the cache and features, then the tree is a verified chain).
    """
    B, g = tokens.shape
    choice = logits.argmax(dim=-1)  # (B, g+1)
    valid = torch.arange(g, device=tokens.device)[None, :] < num_draft[:, None]
    match = (tokens == choice.gather(1, parents + 1)) & valid  # (B, g)
    anc = ancestors[:, 1:, 1:]
    ok = ~(anc & ~match[:, None, :]).any(-1) & valid  # every ancestor (and itself) matched
    depth = anc.sum(-1)  # (B, g): 1 for children of x
    best = torch.where(ok, depth, 0).max(dim=1)
    accepted = best.values
    last = torch.where(accepted > 0, best.indices + 1, 0)  # input index of the deepest accepted node
    next_token = choice.gather(1, last[:, None]).squeeze(1)
    order = []
    for b in range(B):
        on_path = ancestors[b, last[b], 1:].nonzero().squeeze(1).tolist() if accepted[b] else []
        order.append(_path_order(on_path, g))  # slots in increasing order are root-to-leaf (parents come first)
    return accepted, next_token, torch.tensor(order, device=tokens.device)


def verify_tree_sampled(p: torch.Tensor, tokens: torch.Tensor, parents: torch.Tensor, num_draft: torch.Tensor,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lossless sampling on a tree of deterministic drafts: recursive rejection over siblings (SpecInfer).

    From the node reached (x first), try its children in slot order: child c is accepted with probability r(c),
    where r starts as the target's p there; each rejection sets r = norm(r without c), the residual of a one-hot
    draft. If no child is accepted, the next token is drawn from r: the output token is distributed exactly as p
    (a child that is tried last-resort or never is covered by the residual). Shapes as verify_tree_greedy, with
    p (B, g+1, V) the processed target distributions.
    """
    B, g = tokens.shape
    toks, pars, counts = tokens.tolist(), parents.tolist(), num_draft.tolist()
    accepted, next_tokens, order = [], [], []
    for b in range(B):
        children: dict[int, list[int]] = {}
        for s in range(counts[b]):
            children.setdefault(pars[b][s], []).append(s)
        node, path = -1, []
        while True:
            r = p[b, node + 1].clone()
            for child in children.get(node, []):
                u = float(torch.rand(1, generator=generator, device=p.device))
                if u < float(r[toks[b][child]]):
                    path.append(child)
                    node = child
                    break
                r[toks[b][child]] = 0
                r = r / r.sum()
            else:
                next_tokens.append(int(torch.multinomial(r, 1, generator=generator)))
                break
        accepted.append(len(path))
        order.append(_path_order(path, g))
    device = tokens.device
    return (torch.tensor(accepted, device=device), torch.tensor(next_tokens, device=device),
            torch.tensor(order, device=device))
