"""A HuggingFace KV cache for a batch whose rows hold different numbers of tokens.

Layout invariant (left padding, as HF generate uses): the cache has C columns and row b's valid tokens are its
last ``lengths[b]`` columns, contiguous. Each forward appends the same number of columns to every row; ``trim``
then keeps a per-row prefix of the valid tokens and shifts rows right so the invariant holds again. Attention
masks and position ids are derived from ``lengths``, so a row's result is what decoding it alone gives.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache


def realign_index(columns: int, lengths: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Gather index (B, max(keep)) that keeps the first keep[b] of row b's right-aligned valid entries.

    The kept entries land right-aligned in the new layout; the padding columns on the left point at column 0
    (any value: they are masked).
    """
    width = int(keep.max()) if keep.numel() else 0
    start = columns - lengths - width + keep  # old column of new column 0, per row
    return (start[:, None] + torch.arange(width, device=lengths.device)[None, :]).clamp(min=0)


def realign(x: torch.Tensor, dim: int, lengths: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Apply ``realign_index`` to tensor x (batch on dim 0, sequence on ``dim``)."""
    columns = x.shape[dim]
    drop = lengths - keep
    if drop.numel() and bool((drop == drop[0]).all()):  # same cut for every row: a slice, no copy
        end = columns - int(drop[0])
        return x.narrow(dim, end - int(keep.max()), int(keep.max()))
    index = realign_index(columns, lengths, keep)
    shape = [1] * x.dim()
    shape[0], shape[dim] = index.shape
    return x.gather(dim, index.view(shape).expand(*[s if i != dim else index.shape[1] for i, s in enumerate(x.shape)]))


def sliding_window(config) -> tuple[int | None, bool]:
    """(window, mixed): the sliding window of a model's sliding-window attention layers (None: it has none) and
    whether it also has full-attention layers. The one place that knows how architectures declare it: a list of
    ``layer_types`` (Gemma 3, Qwen2/3 with use_sliding_window), else ``sliding_window`` on every layer (Mistral).
    Tree masks of window-limited layers only cut old columns, so tree depth must stay below the window."""
    window = getattr(config, "sliding_window", None)
    kinds = set(getattr(config, "layer_types", None) or [])
    if kinds:
        sliding = "sliding_attention" in kinds
        return (window if sliding else None), sliding and "full_attention" in kinds
    if getattr(config, "use_sliding_window", True) is False:
        return None, False
    return window, False


class RaggedKV:
    """Cache plus per-row valid lengths for one model; ``forward`` runs the model on new tokens of every row."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        # Every layer keeps its whole history, sliding-window layers included: the model masks them to their window
        # (from the 2-D mask, or from ``_tree_mask`` for trees), and a per-row rollback of a full cache is exact.
        self.cache = DynamicCache()
        self.window, self.mixed = sliding_window(model.config)
        self.lengths: torch.Tensor | None = None  # (B,) valid tokens per row

    @property
    def columns(self) -> int:
        return self.cache.get_seq_length()

    def forward(self, input_ids: torch.Tensor, input_mask: torch.Tensor | None = None,
                tree: torch.Tensor | None = None, depth: torch.Tensor | None = None, **kwargs):
        """Run the model on input_ids (B, n) appended to every row; returns the model output.

        input_mask (B, n) left-pads the new tokens of rows whose cache is empty (a prompt prefill), which keeps
        every row's valid tokens contiguous. tree (B, n, m) bool, m >= n: tree attention over the last m columns
        (the m - n newest cached ones and the n new ones): new token i sees column j iff tree[b, i, j]; everything
        older is seen as usual. depth (B, n): then the new tokens' positions are (row length before those m
        columns) + depth.
        """
        B, n = input_ids.shape
        device = input_ids.device
        if self.lengths is None:
            self.lengths = torch.zeros(B, dtype=torch.long, device=device)
        if input_mask is None:
            input_mask = torch.ones(B, n, dtype=torch.long, device=device)
        elif bool(((input_mask == 0).any(1) & (self.lengths > 0)).any()):
            raise ValueError("input_mask may only pad rows whose cache is empty")
        C = self.columns
        if tree is not None:
            m = tree.shape[2]
            base = self.lengths - (m - n)
            old = torch.arange(C - (m - n), device=device)[None, :] >= (C - self.lengths)[:, None]
            position_ids = base[:, None] + depth
            seen = torch.cat([old[:, None, :].expand(B, n, -1), tree.to(device)], dim=2)  # (B, n, C + n)
            attention_mask = self._additive(seen)
            if self.window is not None:  # sliding-window layers: old columns more than window - 1 positions back
                old_pos = torch.arange(C - (m - n), device=device)[None, :] - (C - self.lengths)[:, None]
                near = position_ids[:, :, None] - old_pos[:, None, :] < self.window
                near = torch.cat([near, torch.ones_like(tree, dtype=torch.bool, device=device)], dim=2)
                windowed = self._additive(seen & near)
                attention_mask = ({"full_attention": attention_mask, "sliding_attention": windowed} if self.mixed
                                  else windowed)
        else:
            past = torch.arange(C, device=device)[None, :] >= (C - self.lengths)[:, None]
            attention_mask = torch.cat([past.long(), input_mask.long()], dim=1)
            position_ids = (self.lengths[:, None] + input_mask.long().cumsum(1) - 1).clamp(min=0)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=self.cache,
            use_cache=True,
            **kwargs,
        )
        self.lengths = self.lengths + input_mask.long().sum(1)
        return out

    def _additive(self, seen: torch.Tensor) -> torch.Tensor:
        """(B, n, k) bool -> the additive (B, 1, n, k) mask HF attention takes."""
        dtype = next(self.model.parameters()).dtype
        mask = torch.zeros(seen.shape, dtype=dtype, device=seen.device)
        return mask.masked_fill(~seen, torch.finfo(dtype).min)[:, None]

    def trim(self, keep: torch.Tensor) -> None:
        """Keep the first keep[b] (<= lengths[b]) valid tokens of each row: a rollback after verification."""
        for layer in self.cache.layers:
            if getattr(layer, "keys", None) is None:  # nothing cached yet
                continue
            layer.keys = realign(layer.keys, 2, self.lengths, keep)
            layer.values = realign(layer.values, 2, self.lengths, keep)
        self.lengths = keep.clone()

    def reorder_new(self, order: torch.Tensor) -> None:
        """Permute the newest n columns of every row by order (B, n): a verified tree's accepted path to the front."""
        n = order.shape[1]
        for layer in self.cache.layers:
            for name in ("keys", "values"):
                x = getattr(layer, name)
                index = order[:, None, :, None].expand(x.shape[0], x.shape[1], n, x.shape[3])
                x[:, :, -n:] = x[:, :, -n:].gather(2, index)

    def select(self, rows: torch.Tensor) -> None:
        """Keep only these rows (finished rows stop costing work), then drop all-padding columns."""
        self.lengths = self.lengths[rows]
        if self.columns:
            self.cache.batch_select_indices(rows)
            self.trim(self.lengths)
