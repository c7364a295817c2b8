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
