"""Log-linear scaling laws fitted to run records: y = a + b ln x per group (the joint law of size and tokens:
fit/capacity.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import statsmodels.api as sm
from scipy import stats

from statsmodels.stats.diagnostic import het_breuschpagan

from fit.bootstrap import bootstrap_slope
from fit.results import LogLinearFit
from scylla.errors import InputError


# HC errors need many points: at a handful they are far more variable than classical ones (Long & Ervin 2000, "Using
# heteroscedasticity consistent standard errors in the linear regression model", The American Statistician 54(3),
# test HC0-HC3 from n = 25 up). Below HC_MIN_POINTS a law's points get classical errors unless a Breusch-Pagan
# test, meaningful from BP_MIN_POINTS points, finds the variance changes with x.
HC_MIN_POINTS = 25
BP_MIN_POINTS = 10
FEW_POINTS = 5  # scylla fit warns when a group has fewer points than this


def _which(records: Sequence[dict], indices: list[int]) -> str:
    """A short list of records by position (and run_id when they have one)."""
    shown = [f"#{i} ({records[i]['run_id']})" if "run_id" in records[i] else f"#{i}" for i in indices[:3]]
    more = f" and {len(indices) - 3} more" if len(indices) > 3 else ""
    return ", ".join(shown) + more


def _require_fields(records: Sequence[dict], fields: Sequence[str]) -> None:
    if not records:
        raise InputError("no records to fit; check the run directories, --kind and --where")
    for name in fields:
        missing = [i for i, r in enumerate(records) if name not in r]
        if missing:
            raise InputError(
                f"field '{name}' is missing from {len(missing)} of {len(records)} records "
                f"({_which(records, missing)}); select records that have it (--kind, --where) or fit another field"
            )


def _number(value) -> float | None:
    """A finite float, or None for null, NaN, infinity and anything that is not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _values(records: Sequence[dict], index: list[int], name: str, role: str, where: str, positive: bool) -> np.ndarray:
    """Field ``name`` of the records at ``index`` as floats; one-line errors for null/NaN and (x) values <= 0."""
    values = [_number(records[i][name]) for i in index]
    bad = [i for i, v in zip(index, values) if v is None]
    if bad:
        raise InputError(
            f"{where}: {role} '{name}' is null, NaN or not a number in {len(bad)} record(s) "
            f"({_which(records, bad)}); filter them out with --where or fix the records"
        )
    if positive:
        bad = [i for i, v in zip(index, values) if v <= 0]
        if bad:
            raise InputError(
                f"{where}: {role} '{name}' must be > 0 to take its log, but is <= 0 in {len(bad)} record(s) "
                f"({_which(records, bad)}); filter them out with --where (untrained drafters have train_tokens 0)"
            )
    return np.array(values)


def _refuse_mixed_settings(records: Sequence[dict], index: list[int], where: str) -> None:
    """A job re-run with changed settings becomes run RUN_ID~HASH (pipeline/sweep.py); its records and the old
    run's must not meet in one fit."""
    runs: dict[str, set[str]] = {}
    for i in index:
        run_id = records[i].get("run_id")
        if isinstance(run_id, str):
            runs.setdefault(run_id.split("~")[0], set()).add(run_id)
    mixed = next((sorted(ids) for ids in runs.values() if len(ids) > 1), None)
    if mixed:
        raise InputError(f"{where} mixes runs of one job trained with different settings ({', '.join(mixed)}); "
                         "fit them apart (--where run_id=..., or --by run_id)")


def _sort_key(key: tuple) -> tuple:
    """Numbers first in numeric order, then text, then anything else."""
    return tuple(
        (0, float(v), "") if _number(v) is not None else (1, 0.0, v) if isinstance(v, str) else (2, 0.0, repr(v))
        for v in key
    )


def group_label(group: dict) -> str:
    """``draft_layers=2,draft_width=576``, or ``all`` for the one group of an empty ``by``."""
    return ",".join(f"{k}={v}" for k, v in group.items()) or "all"


def fit_log_linear(
    records: Sequence[dict],
    x: str = "train_tokens",
    y: str = "mean_accepted_length",
    by: Sequence[str] = ("draft_layers",),
    robust: bool = False,
    bootstrap: int = 0,
    seed: int = 0,
) -> list[LogLinearFit]:
    """Regress ``y`` on ln(``x``) within each group of records with equal ``by`` fields (groups in sorted order).

    OLS, or with ``robust`` a Huber M-estimate (statsmodels RLM); 95% intervals are t with n - 2 df. OLS errors are
    classical below HC_MIN_POINTS points unless a Breusch-Pagan test rejects constant variance (p < 0.05, from
    BP_MIN_POINTS points), else HC3; ``method`` says which ("ols-classical", "ols-hc3", "huber"). ``bootstrap`` > 0 adds
    a percentile interval for the slope from that many resamples, of whole runs (``run_id``) when the group holds
    several runs, else of points.
    """
    if bootstrap < 0:
        raise InputError(f"bootstrap must be >= 0 resamples, got {bootstrap}")
    by = (by,) if isinstance(by, str) else tuple(by)
    _require_fields(records, (x, y, *by))
    groups: dict[tuple, list[int]] = {}
    for i, record in enumerate(records):
        key = tuple(record[name] for name in by)
        for name, value in zip(by, key):
            if isinstance(value, (list, dict)):
                raise InputError(
                    f"grouping field '{name}' holds a {type(value).__name__} in record {_which(records, [i])}; "
                    "group by fields that hold numbers, strings, bools or null"
                )
        groups.setdefault(key, []).append(i)
    fits = []
    for key in sorted(groups, key=_sort_key):
        index = groups[key]
        group = dict(zip(by, key))
        where = f"group {group_label(group)}"
        _refuse_mixed_settings(records, index, where)
        xv = _values(records, index, x, "x", where, positive=True)
        yv = _values(records, index, y, "y", where, positive=False)
        distinct = len(np.unique(xv))
        if distinct < 3:
            raise InputError(
                f"{where}: needs at least 3 distinct values of x '{x}' to fit a line with an error, got {distinct}; "
                "add checkpoints or group more coarsely (--by)"
            )
        fit = _fit_one(xv, yv, robust)
        unit, units, interval = None, 0, None
        if bootstrap:
            runs = [records[i].get("run_id") for i in index]
            unit = "run" if None not in runs and len(set(runs)) > 1 else "point"
            units = len(set(runs)) if unit == "run" else len(index)
            interval = bootstrap_slope(xv, yv, bootstrap, seed, runs=runs if unit == "run" else None)
        fits.append(
            LogLinearFit(
                group=group,
                x=x,
                y=y,
                n=len(xv),
                slope_ci95_bootstrap=interval,
                x_values=xv.tolist(),
                y_values=yv.tolist(),
                bootstrap_unit=unit,
                bootstrap_units=units,
                n_bootstrap=bootstrap,
                **fit,
            )
        )
    return fits


def _fit_one(xv: np.ndarray, yv: np.ndarray, robust: bool) -> dict:
    """Intercept, slope, their errors, t intervals, R^2, residuals, covariance and residual variance."""
    design = sm.add_constant(np.log(xv), has_constant="add")
    n = len(yv)
    if robust:
        result, method = sm.RLM(yv, design, M=sm.robust.norms.HuberT()).fit(), "huber"
        resid_var = float(result.scale) ** 2
    else:
        result, method = sm.OLS(yv, design).fit(), "ols-classical"
        if n >= HC_MIN_POINTS or (n >= BP_MIN_POINTS and het_breuschpagan(result.resid, design)[1] < 0.05):
            result, method = sm.OLS(yv, design).fit(cov_type="HC3"), "ols-hc3"
        resid_var = float(result.mse_resid)
    params, se = np.asarray(result.params), np.asarray(result.bse)
    residuals = yv - design @ params
    total = float(np.sum((yv - yv.mean()) ** 2))
    r2 = 1 - float(residuals @ residuals) / total if np.ptp(yv) > 0 else math.nan  # y constant: no R^2
    t = stats.t.ppf(0.975, n - 2)
    ci = [(float(p - t * s), float(p + t * s)) for p, s in zip(params, se)]
    return {
        "intercept": float(params[0]),
        "slope": float(params[1]),
        "intercept_se": float(se[0]),
        "slope_se": float(se[1]),
        "intercept_ci95": ci[0],
        "slope_ci95": ci[1],
        "r2": r2,
        "residuals": residuals.tolist(),
        "cov": np.asarray(result.cov_params()).tolist(),
        "resid_var": resid_var,
        "method": method,
    }
