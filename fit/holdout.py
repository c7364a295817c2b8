"""Validation by prediction: fit the log-linear law without each group's N largest x, then ask whether every held-out
point falls inside its 95% prediction interval (`scylla fit --holdout-top N`, docs/fitting.md)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fit.loglinear import group_label
from fit.prompt_unit import fit_laws
from scylla.errors import InputError


@dataclass(frozen=True)
class HeldOutPoint:
    group: dict
    x: float
    y: float
    predicted: float
    interval: tuple[float, float]  # 95% prediction interval of one new observation at x

    @property
    def inside(self) -> bool:
        return self.interval[0] <= self.y <= self.interval[1]


def holdout_check(records: Sequence[dict], top: int, x: str = "train_tokens", y: str = "mean_accepted_length",
                  by: Sequence[str] = ("draft_layers",), robust: bool = False) -> list[HeldOutPoint]:
    """Every record whose x is among its group's ``top`` largest distinct x, against the law fitted to the rest of
    its group (which needs 3+ distinct x left; the prompt-unit law where records carry per-prompt counts)."""
    if top < 1:
        raise InputError(f"--holdout-top must be >= 1, got {top}")
    by = tuple(by)
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(tuple(r.get(name) for name in by), []).append(r)
    kept, held = [], []
    for key, members in groups.items():
        distinct = sorted({r[x] for r in members})
        cut = distinct[-top:]
        if len(distinct) - top < 3:
            raise InputError(f"group {group_label(dict(zip(by, key)))}: holding out {top} x value(s) leaves fewer "
                             f"than 3 to fit; lower --holdout-top or add checkpoints")
        kept += [r for r in members if r[x] not in cut]
        held += [r for r in members if r[x] in cut]
    fits = {tuple(law.group[name] for name in by): law for _, law, _ in fit_laws(kept, x=x, y=y, by=by, robust=robust)}
    points = []
    for r in held:
        fit = fits[tuple(r.get(name) for name in by)]
        mean, lo, hi = fit.predict(float(r[x]), interval="prediction")
        points.append(HeldOutPoint(fit.group, float(r[x]), float(r[y]), mean, (lo, hi)))
    return points
