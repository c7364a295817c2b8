"""Speed-ups that survive a shared machine: interleaved repeats, paired ratios, a median with its interval.

A method and plain decoding are timed in rounds on the same chunks of prompts (one chunk = one batch), the order
within a round reversed every other round, so both see the same load drift. Each (chunk, round) gives a paired
ratio r = (method tokens / method seconds) / (plain tokens / plain seconds). The speed-up is the median of the
ratios; its 95% interval is a percentile bootstrap of that median over chunks (each chunk brings all its rounds:
prompts are the unit of sampling), or over the ratios themselves when there is a single chunk. Where the interval
holds 1, the honest statement is "no measurable difference", not a ratio.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scylla.errors import InputError

NO_DIFFERENCE = "no measurable difference"
MIN_RATIOS = 6  # a setting with few chunks (one batch of all prompts) gets more rounds: its interval is over rounds


def rounds_for(repeats: int, chunks: int) -> int:
    """Interleaved rounds to time: ``repeats``, raised so that at least MIN_RATIOS paired ratios carry the interval
    (a median of 3 ratios has no usable interval); ``repeats`` 1 stays one pass (no interval wanted)."""
    return repeats if repeats == 1 else max(repeats, -(-MIN_RATIOS // chunks))


@dataclass(frozen=True)
class Speedup:
    """Median paired ratio, its 95% interval, and how many ratios and chunks carry it."""

    median: float
    ci95: tuple[float, float]
    ratios: int
    chunks: int

    @property
    def verdict(self) -> str:
        """"faster", "slower", or NO_DIFFERENCE when the interval holds 1."""
        lo, hi = self.ci95
        return "faster" if lo > 1 else "slower" if hi < 1 else NO_DIFFERENCE

    def describe(self) -> str:
        """``1.23x [1.10, 1.31]``, or ``no measurable difference (0.98x [0.90, 1.07])``."""
        text = f"{self.median:.2f}x [{self.ci95[0]:.2f}, {self.ci95[1]:.2f}]"
        return f"{NO_DIFFERENCE} ({text})" if self.verdict == NO_DIFFERENCE else text


def paired_speedup(ratios: Sequence[Sequence[float]], resamples: int = 2000, seed: int = 0) -> Speedup:
    """``ratios[c][k]``: chunk c's paired ratio in round k -> their median and its bootstrap 95% interval."""
    chunks = [np.asarray(r, dtype=float) for r in ratios if len(r)]
    if not chunks:
        raise InputError("a speed-up needs at least one paired timing")
    flat = np.concatenate(chunks)
    if not np.all(np.isfinite(flat)) or np.any(flat <= 0):
        raise InputError("paired speed-up ratios must be finite and > 0")
    rng = np.random.default_rng(seed)
    if len(chunks) > 1:
        medians = [np.median(np.concatenate([chunks[i] for i in rng.integers(len(chunks), size=len(chunks))]))
                   for _ in range(resamples)]
    else:
        medians = np.median(flat[rng.integers(len(flat), size=(resamples, len(flat)))], axis=1)
    lo, hi = np.percentile(medians, [2.5, 97.5])
    return Speedup(float(np.median(flat)), (float(lo), float(hi)), len(flat), len(chunks))


def regret(chosen: Sequence[Sequence[float]], best: Sequence[Sequence[float]], resamples: int = 2000,
           seed: int = 0) -> tuple[float, tuple[float, float]]:
    """How much speed-up a choice leaves on the table: median(best's ratios) - median(chosen's ratios), both
    measured against the same plain runs (``[chunk][round]`` each), with a bootstrap 95% interval over chunks
    resampled jointly (over rounds with a single chunk)."""
    a, b = ([np.asarray(r, dtype=float) for r in x] for x in (chosen, best))
    if len(a) != len(b) or any(len(u) != len(v) for u, v in zip(a, b)) or not a:
        raise InputError("regret needs the chosen and the best configuration timed in the same chunks and rounds")
    rng = np.random.default_rng(seed)
    point = float(np.median(np.concatenate(b)) - np.median(np.concatenate(a)))
    if len(a) > 1:
        picks = [rng.integers(len(a), size=len(a)) for _ in range(resamples)]
        diffs = [np.median(np.concatenate([b[i] for i in p])) - np.median(np.concatenate([a[i] for i in p]))
                 for p in picks]
    else:
        picks = rng.integers(len(a[0]), size=(resamples, len(a[0])))
        diffs = np.median(b[0][picks], axis=1) - np.median(a[0][picks], axis=1)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return point, (float(lo), float(hi))


def chunked(flat: Sequence[float], rounds: int) -> list[list[float]]:
    """A record's ``speedup_ratios`` (chunk-major) back to ``[chunk][round]``."""
    return [list(flat[i : i + rounds]) for i in range(0, len(flat), rounds)]
