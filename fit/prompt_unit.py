"""The slope of a law with the prompt (and training seed) as the unit of sampling.

A law's points are MATs over the same prompts at every checkpoint. Pooling the prompts first and fitting the pooled
MAT against ln x leaves the prompt-to-prompt variation of the slope out of the interval: the fit then estimates the
mean slope of these prompts, not of the population they were drawn from. Here each unit (a prompt under one
training run, i.e. one seed) gets its own OLS slope over the checkpoints, and the population's mean slope is their mean
(the two-stage, summary-statistics form of a random-slope model; exact for balanced designs, where every unit is
measured at every x). Its interval adds to the spread of the units' slopes the checkpoint shocks that all prompts of
a run share (``mean_slope``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

from fit.loglinear import fit_log_linear
from fit.results import LogLinearFit
from scylla.errors import InputError

METHOD = "prompt as unit: mean of per-prompt OLS slopes, t interval over prompts plus the runs' checkpoint shocks"


@dataclass(frozen=True)
class MeanSlope:
    """The mean over units of the per-unit OLS slope of y on ln x, its t interval, how many units, prompts and runs;
    ``cov`` is the covariance of (mean unit centroid y, mean slope) over units / units (for ``prompt_unit_law``)."""

    slope: float
    slope_ci95: tuple[float, float]
    units: int
    cov: tuple[tuple[float, float], tuple[float, float]] = ((float("nan"),) * 2,) * 2
    df: float = float("nan")  # degrees of freedom of the t interval (Welch-Satterthwaite)
    prompts: int = 0
    runs: int = 0
    method: str = METHOD


def unit_points(records: Sequence[dict], x: str = "train_tokens") -> dict[tuple, list]:
    """Eval records with per-prompt counts -> {(prompt id, line): [(x, MAT of that prompt), ...]}. A prompt's MAT is
    its new tokens / its target calls (docs/records.md). Where x changes within a training run (its checkpoints:
    train_tokens) a line is one run, so a unit is a prompt under one training run (one seed of a draft
    configuration). Where x is fixed within each run (draft_params, draft_layers: law 2) a line is a training seed,
    joining the runs of every size trained with it, so that one line spans every size (the records' ``train_seed``).
    Where every record says which template each prompt came from (``prompt_templates``), the keys are (template,
    line, prompt id): ``mean_slope`` takes key[0] as the independent unit, so the prompts of one template, which
    share its difficulty and slope, count as one."""
    per_run: dict = {}
    for r in records:
        per_run.setdefault(r.get("run_id"), set()).add(r[x])
    across_runs = all(len(xs) == 1 for xs in per_run.values()) and len(per_run) > 1
    units: dict[tuple, list] = {}
    by_template = bool(records) and all(r.get("prompt_templates") for r in records)
    for r in records:
        if not r.get("prompt_ids"):
            raise InputError(f"record {r.get('run_id', '?')} has no per-prompt counts (prompt_ids): re-run its eval")
        if across_runs and r.get("train_seed") is None:
            raise InputError(f"{x} is fixed within each run, so a line joins the runs of one training seed, but record "
                             f"{r.get('run_id', '?')} has no train_seed: re-run its eval")
        line = ("seed", r["train_seed"]) if across_runs else r.get("run_id")
        for template, pid, mat in prompt_mats(r, by_template):
            key = (template, line, pid) if by_template else (pid, line)
            units.setdefault(key, []).append((float(r[x]), mat))
    return units


def prompt_mats(record: dict, by_template: bool) -> Iterator[tuple[str | None, str, float]]:
    """(template, prompt id, MAT of that prompt: its new tokens / its target calls) of an eval record with per-prompt
    counts; the template is None unless ``by_template`` (every record names its prompts' templates)."""
    templates = record["prompt_templates"] if by_template else [None] * len(record["prompt_ids"])
    for pid, template, new, calls in zip(record["prompt_ids"], templates, record["prompt_new_tokens"],
                                         record["prompt_target_calls"]):
        yield template, pid, new / calls


def _line(points: list) -> tuple[float, float, float, float, int]:
    """OLS of y on ln x: (mean y, slope, residual variance (0 without residual df), Sxx, residual df)."""
    xs, ys = np.log([p[0] for p in points]), np.array([p[1] for p in points])
    centred = xs - xs.mean()
    sxx = float(centred @ centred)
    slope = float(centred @ ys / sxx)
    resid = ys - ys.mean() - slope * centred
    df = len(ys) - 2
    return float(ys.mean()), slope, float(resid @ resid) / df if df > 0 else 0.0, sxx, max(df, 0)


def mean_slope(units: dict[tuple, list], level: float = 0.95) -> MeanSlope:
    """The mean per-unit slope of y on ln x with a t interval (needs 2+ prompts, each unit at 2+ distinct x).

    Units are keyed (prompt, run). The slope's variance has two parts. Prompts: each prompt's slope averaged over
    the runs that measured it (the same prompts under every seed share their difficulty, so a prompt, not a
    prompt-run pair, is the independent unit), their spread / prompts, prompts - 1 degrees of freedom.
    Checkpoints: a training run's checkpoint is better or worse at every prompt at once (its data order, its
    schedule), a shock that all prompts of the run share, so their spread never sees it; it is estimated from the
    residual variance of each run's prompt-averaged points around its line, less what per-unit noise explains
    (the units' own residual variance / prompts in the run), and enters as that / (Sxx x runs). Degrees of freedom
    by Welch-Satterthwaite.
    """
    lines, runs, prompts = {}, {}, {}
    for key, points in units.items():
        if np.ptp(np.log([p[0] for p in points])) == 0:
            raise InputError(f"unit {key} is measured at one x only: a slope needs 2 or more")
        lines[key] = _line(points)
        runs.setdefault(key[1] if len(key) > 1 else None, []).append(key)
        prompts.setdefault(key[0], []).append(key)
    if len(prompts) < 2:
        raise InputError(f"a mean slope over prompts needs 2 or more prompts, got {len(prompts)}")
    values = np.array([np.mean([lines[k][:2] for k in keys], axis=0) for keys in prompts.values()])
    slope = float(values[:, 1].mean())  # (prompts, 2): the prompt's mean y and slope, averaged over runs
    cov = np.cov(values, rowvar=False) / len(values)
    v_prompt, df_prompt, shock, df_shock = cov[1, 1], len(values) - 1, [], 0
    for keys in runs.values():
        xs = sorted({p[0] for k in keys for p in units[k]})
        averaged = [(x, np.mean([y for k in keys for xv, y in units[k] if xv == x])) for x in xs]
        if len(averaged) >= 3:
            _, _, resid_var, sxx, df = _line(averaged)
            noise = np.mean([lines[k][2] for k in keys]) / len(keys)
            shock.append(max(0.0, resid_var - noise) / sxx)
            df_shock += df
    v_shock = float(np.mean(shock)) / len(runs) if shock else 0.0
    cov[1, 1] = v_prompt + v_shock
    df = (v_prompt + v_shock) ** 2 / (v_prompt**2 / df_prompt + (v_shock**2 / df_shock if v_shock else 0.0))
    half = stats.t.ppf(0.5 + level / 2, df) * np.sqrt(cov[1, 1])
    return MeanSlope(slope, (slope - half, slope + half), len(lines), tuple(tuple(map(float, r)) for r in cov),
                     df=float(df), prompts=len(values), runs=len(runs))


def prompt_unit_law(fit: LogLinearFit, unit: MeanSlope) -> LogLinearFit:
    """``fit`` (OLS on the pooled points) with the prompt as the unit: the slope and its interval are the mean
    per-unit slope's; the line passes through the pooled points' centroid (so it predicts pooled MAT, the tokens
    per target call of a workload of such prompts); intercept errors and ``cov`` come from the spread over units
    of (unit centroid, slope); t intervals take units - 1 degrees of freedom."""
    log_x, y = np.log(fit.x_values), np.asarray(fit.y_values)
    centre = float(log_x.mean())
    intercept = float(y.mean()) - unit.slope * centre
    (var_c, cov_cb), (_, var_b) = unit.cov
    var_a = var_c + centre**2 * var_b - 2 * centre * cov_cb
    cov = [[var_a, cov_cb - centre * var_b], [cov_cb - centre * var_b, var_b]]
    half_a = stats.t.ppf(0.975, unit.df) * np.sqrt(var_a)
    residuals = y - intercept - unit.slope * log_x
    total = float(((y - y.mean()) ** 2).sum())
    return replace(fit, intercept=intercept, slope=unit.slope, intercept_se=float(np.sqrt(var_a)),
                   slope_se=float(np.sqrt(var_b)), intercept_ci95=(intercept - half_a, intercept + half_a),
                   slope_ci95=unit.slope_ci95, residuals=residuals.tolist(), cov=cov, method=unit.method,
                   r2=1 - float(residuals @ residuals) / total if np.ptp(y) > 0 else float("nan"), df=unit.df,
                   resid_var=float(residuals @ residuals) / max(len(y) - 2, 1))


def group_mean_slope(records: Sequence[dict], group: dict, x: str) -> MeanSlope | str:
    """The group's mean slope with the prompt as the unit (unit_points), when every record of the group carries
    per-prompt counts and every unit has 2+ distinct x; else why not, in words."""
    members = [r for r in records if all(r.get(k) == v for k, v in group.items())]
    if not members or not all(r.get("prompt_ids") for r in members):
        return "the records carry no per-prompt counts (prompt_ids)"
    try:
        return mean_slope(unit_points(members, x))
    except InputError as err:
        return str(err)


def fit_laws(records: Sequence[dict], x: str = "train_tokens", y: str = "mean_accepted_length",
             by: Sequence[str] = ("draft_layers",), robust: bool = False, bootstrap: int = 0,
             seed: int = 0) -> list[tuple[LogLinearFit, LogLinearFit, MeanSlope | None]]:
    """Per group: (the fit to the points, the law, its mean slope over units). The law is the prompt-unit law where
    the group's records carry per-prompt counts (and y is MAT, their ratio; not with ``robust``), else the points'
    fit itself; where the prompt-unit law was wanted but could not be formed, its ``fallback`` says why."""
    out = []
    for fit in fit_log_linear(records, x=x, y=y, by=by, robust=robust, bootstrap=bootstrap, seed=seed):
        unit = group_mean_slope(records, fit.group, x) if y == "mean_accepted_length" and not robust else None
        if isinstance(unit, str):
            fit, unit = replace(fit, fallback=f"prompt as unit not possible: {unit}"), None
        out.append((fit, prompt_unit_law(fit, unit) if unit else fit, unit))
    return out
