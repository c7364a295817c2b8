"""Hybrid drafting (SAM[EAGLE] in SAM-Decoding and SpecTTS-Bench): per row and step, the suffix drafter's draft
where its match is long enough, else a fallback drafter's (a trained head, a draft LM, ...)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scylla.drafters.base import Draft, DraftContext, Drafter
from scylla.drafters.suffix import SuffixDrafter, SuffixPool
from scylla.errors import ConfigError


def _pad(x: torch.Tensor, width: int, value: float = 0) -> torch.Tensor:
    """Pad dim 1 of x (B, g, ...) to width."""
    if x.shape[1] == width:
        return x
    shape = (x.shape[0], width - x.shape[1], *x.shape[2:])
    return torch.cat([x, x.new_full(shape, value)], dim=1)


def _parents(draft: Draft) -> torch.Tensor:
    """A draft's parents (B, g); a chain's are those of a one-branch tree."""
    if draft.parents is not None:
        return draft.parents
    g = draft.tokens.shape[1]
    return (torch.arange(g, device=draft.tokens.device) - 1).expand(draft.tokens.shape[0], g)


class HybridDrafter(Drafter):
    """Rows whose suffix match (``first.last_match_length``) is >= min_match and whose suffix draft is not empty
    take ``first``'s draft, the others ``fallback``'s. Both drafters get every start/update/select/finish call.

    Cost: the fallback proposes, for the whole batch, in every step where some row needs it (its drafts for the
    suffix rows are dropped), and not at all in steps where every row takes the suffix draft (at batch 1, each
    step with a long match skips the fallback). So the fallback must accept verified drafts other than its own and
    skipped proposes: EagleDrafter and DraftModel re-feed whatever was committed since their last cached token.

    Merging: rows are padded to the wider draft. If one side drafts a tree, chains become one-branch trees; a tree
    with sampled drafts (probs, T > 0) cannot be verified and raises ConfigError. If the fallback samples (probs),
    the suffix rows get one-hot probs (they are deterministic), which keeps verification lossless.

    ``share``: row-steps drafted by each side, {"suffix": n, "fallback": n}; ``side_counts()``: draft tokens per
    side; ``reset_share()`` zeroes both. ``last_suffix_rows`` (B,) bool: the rows that took the suffix draft in the
    last ``propose``. ``pool`` and ``share_rows`` are the suffix drafter's.
    """

    name = "hybrid"

    def __init__(self, first: SuffixDrafter, fallback: Drafter, min_match: int = 4):
        if not isinstance(first, SuffixDrafter):
            raise ConfigError(f"the first drafter of a hybrid must be a SuffixDrafter, got {type(first).__name__}")
        if not isinstance(fallback, Drafter):
            raise ConfigError(f"the fallback of a hybrid must be a Drafter, got {type(fallback).__name__}")
        if min_match < 1:
            raise ConfigError(f"min_match must be >= 1, got {min_match}")
        self.first, self.fallback, self.min_match = first, fallback, min_match
        self.feature_layers = fallback.feature_layers
        self.last_suffix_rows: torch.Tensor | None = None
        self.reset_share()

    @property
    def pool(self) -> SuffixPool | None:
        return self.first.pool

    @property
    def share_rows(self) -> bool:
        return self.first.share_rows

    @share_rows.setter
    def share_rows(self, value: bool) -> None:
        self.first.share_rows = value

    def reset_share(self) -> None:
        self.share = {"suffix": 0, "fallback": 0}
        self._tokens = {"suffix": 0, "fallback": 0}

    def side_counts(self) -> dict[str, int]:
        return dict(self._tokens)

    def bind(self, target: torch.nn.Module) -> None:
        self.first.bind(target)
        self.fallback.bind(target)

    def start(self, ctx: DraftContext) -> None:
        self.first.start(ctx)
        self.fallback.start(ctx)

    def _count(self, side: str, lengths: torch.Tensor) -> None:
        self.share[side] += int((lengths > 0).sum())
        self._tokens[side] += int(lengths.sum())

    def propose(self, ctx: DraftContext) -> Draft:
        """The merged Draft: tokens (B, g), lengths (B,), probs (B, g, V) or None, parents (B, g) or None."""
        s = self.first.propose(ctx)
        use = (self.first.last_match_length >= self.min_match) & (s.lengths > 0)
        self.last_suffix_rows = use
        self._count("suffix", s.lengths[use])
        if bool(use.all()):
            return s
        f = self.fallback.propose(ctx)
        self._count("fallback", f.lengths[~use])
        if not bool(use.any()):
            return f
        tree = s.parents is not None or f.parents is not None
        if tree and f.probs is not None:
            raise ConfigError("a hybrid of a suffix tree and a sampling fallback (T > 0) cannot be verified: tree "
                              "drafts must be deterministic; use suffix branches=1 or T = 0")
        g = max(s.tokens.shape[1], f.tokens.shape[1])
        rows = use[:, None]
        tokens = torch.where(rows, _pad(s.tokens, g), _pad(f.tokens, g))
        lengths = torch.where(use, s.lengths, f.lengths)
        parents = torch.where(rows, _pad(_parents(s), g, -1), _pad(_parents(f), g, -1)) if tree else None
        probs = None
        if f.probs is not None:
            one_hot = F.one_hot(_pad(s.tokens, g), f.probs.shape[-1]).to(f.probs.dtype)
            probs = torch.where(rows[:, :, None], one_hot, _pad(f.probs, g))
        return Draft(tokens, lengths, probs, parents)

    def update(self, accepted: torch.Tensor, ctx: DraftContext) -> None:
        self.first.update(accepted, ctx)
        self.fallback.update(accepted, ctx)

    def select(self, rows: torch.Tensor) -> None:
        self.first.select(rows)
        self.fallback.select(rows)
        if self.last_suffix_rows is not None:
            self.last_suffix_rows = self.last_suffix_rows[rows.to(self.last_suffix_rows.device)]

    def finish(self) -> None:
        self.first.finish()
        self.fallback.finish()
