"""The base of drafters that run a model with a KV cache of their own (DraftModel, EagleDrafter)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from scylla.drafters.base import Draft, DraftContext, Drafter
from scylla.drafters.tree import TreeShape, expand_tree
from scylla.errors import ConfigError
from scylla.kv import RaggedKV


class CachedDrafter(Drafter):
    """What a model drafter with its own RaggedKV does the same way: the draft length per step, the left-padding
    mask of the tokens each row still has to feed its cache, a dynamic tree whose cache columns are dropped after
    drafting, and select/finish of the cache. Subclasses build ``self.kv`` in ``start``."""

    def __init__(self, num_draft_tokens: int = 4, tree: TreeShape | None = None):
        if num_draft_tokens < 1:
            raise ConfigError(f"num_draft_tokens must be >= 1, got {num_draft_tokens}")
        self.num_draft_tokens = num_draft_tokens
        self.tree = tree
        self.kv: RaggedKV | None = None

    def draft_lengths(self, ctx: DraftContext) -> tuple[torch.Tensor, int]:
        """(chain tokens each row drafts (B,), forwards this step: the longest chain, or for a tree its budget)."""
        lengths = ctx.budget.clamp(min=0, max=self.num_draft_tokens)
        return lengths, int(lengths.max()) if self.tree is None else int(ctx.budget.max())

    @staticmethod
    def pending(todo: torch.Tensor) -> tuple[int, torch.Tensor]:
        """todo (B,): tokens each row has to feed its cache -> (n = the most, a left-padding mask (B, n))."""
        n = int(todo.max())
        return n, (torch.arange(n, device=todo.device)[None, :] >= (n - todo)[:, None]).long()

    def tree_draft(self, root: torch.Tensor, step: Callable, ctx: DraftContext,
                   to_target: torch.Tensor | None = None) -> Draft:
        """An EAGLE-2 dynamic tree (scylla.drafters.tree.expand_tree) from root log-probabilities (B, V), expanded
        by ``step``; its cache columns are dropped afterwards (accepted nodes are fed again by the next propose)."""
        base = self.kv.lengths.clone()
        draft = expand_tree(self.tree, root, step, ctx.budget, to_target)
        self.kv.trim(base)
        return draft

    def select(self, rows: torch.Tensor) -> None:
        self.kv.select(rows)

    def finish(self) -> None:
        self.kv = None
