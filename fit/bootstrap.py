"""Bootstrap interval for the slope of y on ln x, resampling whole runs (or points)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scylla.errors import InputError


def _slope(log_x: np.ndarray, y: np.ndarray) -> float:
    centred = log_x - log_x.mean()
    return float(centred @ y / (centred @ centred))


def bootstrap_slope(
    x: Sequence[float],
    y: Sequence[float],
    n_resamples: int,
    seed: int,
    runs: Sequence | None = None,
) -> tuple[float, float]:
    """Percentile 95% interval of the OLS slope of ``y`` on ln(``x``) over ``n_resamples`` resamples.

    With ``runs`` (one label per point, e.g. the record's run_id) run labels are drawn with replacement and each
    drawn run brings all its points, so points of one run (correlated checkpoints of one training) stay together;
    without, points are drawn. Resamples with fewer than 2 distinct x are skipped.
    """
    log_x, y = np.log(np.asarray(x, dtype=float)), np.asarray(y, dtype=float)
    if n_resamples < 1:
        raise InputError(f"bootstrap needs at least 1 resample, got {n_resamples}")
    if len(log_x) != len(y):
        raise InputError(f"bootstrap: {len(log_x)} x values but {len(y)} y values")
    if not np.all(np.isfinite(log_x)) or not np.all(np.isfinite(y)):
        raise InputError("bootstrap: x must be finite and > 0, y finite")
    rng = np.random.default_rng(seed)
    units = None
    if runs is not None:
        if len(runs) != len(y):
            raise InputError(f"bootstrap: {len(runs)} run labels for {len(y)} points")
        members: dict = {}
        for i, run in enumerate(runs):
            members.setdefault(run, []).append(i)
        if len(members) < 2:
            raise InputError("bootstrap: resampling runs needs at least 2 runs, got 1; resample points instead")
        units = [np.array(idx) for idx in members.values()]
    slopes = []
    for _ in range(n_resamples):
        if units is None:
            idx = rng.integers(len(y), size=len(y))
        else:
            idx = np.concatenate([units[j] for j in rng.integers(len(units), size=len(units))])
        if np.ptp(log_x[idx]) == 0:
            continue
        slopes.append(_slope(log_x[idx], y[idx]))
    if not slopes:
        raise InputError(f"bootstrap: none of {n_resamples} resamples had 2 distinct x values; add points or runs")
    lo, hi = np.percentile(slopes, [2.5, 97.5])
    return float(lo), float(hi)
