"""The slope of a law with the prompt (and training seed) as the unit of sampling.

A law's points are MATs over the same prompts at every checkpoint. Pooling the prompts first and fitting the pooled
MAT against ln x leaves the prompt-to-prompt variation of the slope out of the interval: the fit then estimates the
mean slope of these prompts, not of the population they were drawn from. Here each unit (a prompt under one
training run, i.e. one seed) gets its own OLS slope over the checkpoints, and the population's mean slope is their mean
with a t interval over units (the two-stage, summary-statistics form of a random-slope model; exact for balanced
designs, where every unit is measured at every x).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from scylla.errors import InputError


@dataclass(frozen=True)
class MeanSlope:
    """Mean over units of the per-unit slope of y on ln x, its interval, and how many units carry it."""

    slope: float
    slope_ci95: tuple[float, float]
    units: int
    method: str = "per-unit slopes, t interval over units"


def unit_points(records: Sequence[dict], x: str = "train_tokens", by_run: bool = True) -> dict[tuple, list]:
    """Eval records with per-prompt counts -> {(prompt id, run_id): [(x, MAT of that prompt), ...]}: a unit is a
    prompt under one training run (one seed of a draft configuration), or with ``by_run`` False a prompt over all
    runs. A prompt's MAT is its new tokens / its target calls (docs/records.md)."""
    units: dict[tuple, list] = {}
    for r in records:
        if not r.get("prompt_ids"):
            raise InputError(f"record {r.get('run_id', '?')} has no per-prompt counts (prompt_ids): re-run its eval")
        for pid, new, calls in zip(r["prompt_ids"], r["prompt_new_tokens"], r["prompt_target_calls"]):
            units.setdefault((pid, r.get("run_id") if by_run else None), []).append((float(r[x]), new / calls))
    return units


def mean_slope(units: dict[tuple, list], level: float = 0.95) -> MeanSlope:
    """The mean per-unit slope of y on ln x with a t interval over units (needs 2+ units, each at 2+ distinct x)."""
    slopes = []
    for key, points in units.items():
        xs, ys = np.log([p[0] for p in points]), np.array([p[1] for p in points])
        if np.ptp(xs) == 0:
            raise InputError(f"unit {key} is measured at one x only: a slope needs 2 or more")
        centred = xs - xs.mean()
        slopes.append(float(centred @ ys / (centred @ centred)))
    if len(slopes) < 2:
        raise InputError(f"a mean slope over units needs 2 or more units, got {len(slopes)}")
    values = np.array(slopes)
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return MeanSlope(float(values.mean()), (float(values.mean() - half), float(values.mean() + half)), len(values))
