"""Prompt lookup decoding (n-gram matching, PLD): copy what followed an earlier occurrence of the last n tokens."""

from __future__ import annotations

import numpy as np
import torch

from scylla.drafters.base import Draft, DraftContext, Drafter
from scylla.drafters.tree import trie_draft
from scylla.errors import ConfigError


def lookup(seq: np.ndarray, max_ngram: int, min_ngram: int, num_tokens: int) -> np.ndarray:
    """Draft for one row's tokens seq (L,): the longest suffix n-gram (max_ngram down to min_ngram) that occurred
    earlier; of its earlier occurrences, the most recent one followed by num_tokens tokens, else the one followed by
    the most. Returns up to num_tokens tokens (possibly none)."""
    L = len(seq)
    for n in range(min(max_ngram, L - 1), min_ngram - 1, -1):
        windows = np.lib.stride_tricks.sliding_window_view(seq[: L - 1], n)  # starts 0..L-1-n: all have a follower
        starts = np.flatnonzero((windows == seq[L - n :]).all(axis=1))
        if starts.size:
            full = starts[starts + n + num_tokens <= L]
            s = int(full[-1]) if full.size else int(starts[0])
            return seq[s + n : s + n + num_tokens]
    return seq[:0]


def lookup_branches(seq: np.ndarray, max_ngram: int, min_ngram: int, num_tokens: int, branches: int) -> list[list[int]]:
    """Up to ``branches`` distinct continuations of the longest matching suffix n-gram: ``lookup``'s first, then
    those of the other occurrences, most recent first (the branches of a tree draft)."""
    first = lookup(seq, max_ngram, min_ngram, num_tokens).tolist()
    if not first:
        return []
    out = [first]
    L = len(seq)
    for n in range(min(max_ngram, L - 1), min_ngram - 1, -1):
        windows = np.lib.stride_tricks.sliding_window_view(seq[: L - 1], n)
        starts = np.flatnonzero((windows == seq[L - n :]).all(axis=1))
        if starts.size:
            for s in starts[::-1].tolist():
                cont = seq[s + n : s + n + num_tokens].tolist()
                if len(out) < branches and cont not in out:
                    out.append(cont)
            return out
    return out


class PromptLookup(Drafter):
    """Per row, match the last max_ngram..min_ngram tokens against the prompt and the text generated so far.

    A deterministic drafter: the verifier treats its q as one-hot, which keeps sampling lossless.
    """

    name = "prompt-lookup"

    def __init__(self, max_ngram: int = 3, num_draft_tokens: int = 10, min_ngram: int = 1, branches: int = 1):
        if not 1 <= min_ngram <= max_ngram:
            raise ConfigError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram} and {max_ngram}")
        if num_draft_tokens < 1 or branches < 1:
            raise ConfigError(f"num_draft_tokens and branches must be >= 1, got {num_draft_tokens} and {branches}")
        self.max_ngram, self.min_ngram, self.num_draft_tokens = max_ngram, min_ngram, num_draft_tokens
        self.branches = branches

    def _lookup(self, seq: np.ndarray, limit: int) -> np.ndarray | list[list[int]]:
        """One row's draft: up to ``limit`` tokens, or with several branches, a tree's continuations."""
        if self.branches > 1:  # several matches: a tree draft, one branch per distinct continuation
            return lookup_branches(seq, self.max_ngram, self.min_ngram, limit, self.branches) if limit > 0 else []
        return lookup(seq, self.max_ngram, self.min_ngram, limit) if limit > 0 else seq[:0]

    def propose(self, ctx: DraftContext) -> Draft:
        tokens = ctx.tokens.cpu().numpy()
        T = tokens.shape[1]
        found: dict[tuple[bytes, int], np.ndarray | list[list[int]]] = {}  # rows alike (Best-of-N) are looked up once
        drafts = []
        for row, length, budget in zip(tokens, ctx.lengths.tolist(), ctx.budget.tolist()):
            seq, limit = row[T - length :], min(self.num_draft_tokens, budget)
            key = (seq.tobytes(), limit)
            if key not in found:
                found[key] = self._lookup(seq, limit)
            drafts.append(found[key])
        if self.branches > 1:
            return trie_draft(drafts, ctx.tokens.device)
        g = max(len(d) for d in drafts)
        out = np.zeros((len(drafts), g), dtype=np.int64)
        for i, d in enumerate(drafts):
            out[i, : len(d)] = d
        device = ctx.tokens.device
        return Draft(torch.from_numpy(out).to(device), torch.tensor([len(d) for d in drafts], device=device))
