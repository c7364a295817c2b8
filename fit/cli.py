"""The logic of ``scylla fit``: read records, fit the log-linear law per group, compare it with the saturating law
on the largest x, print a table and optionally write JSON (docs/fitting.md)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict

from fit.holdout import holdout_check
from fit.loglinear import FEW_POINTS, HC_MIN_POINTS, group_label
from fit.prompt_unit import METHOD as PROMPT_UNIT
from fit.prompt_unit import fit_laws
from fit.results import ExtrapolationCheck
from fit.saturating import extrapolation_check, fit_saturating
from scylla.atomic import write_json_atomic
from scylla.errors import InputError
from scylla.records import read_records


POOLED_KEYS = ("method", "intercept", "slope", "slope_ci95", "cov", "resid_var")  # the points' fit, kept for comparison


ESTIMATORS = {
    "prompt as unit": "prompt as unit = mean of per-prompt OLS slopes (averaged over runs), t interval from their "
                      "spread over prompts plus each run's checkpoint shocks, line through the pooled points",
    "ols-classical": f"ols-classical = OLS on the points, classical errors (below {HC_MIN_POINTS} points, "
                     "Breusch-Pagan not rejecting)",
    "ols-hc3": f"ols-hc3 = OLS on the points, HC3 errors ({HC_MIN_POINTS}+ points, or Breusch-Pagan rejects)",
    "huber": "huber = Huber M-estimate on the points (--robust)",
}


def parse_fields(text: str | None) -> tuple[str, ...]:
    """``"draft_layers,draft_width"`` -> ("draft_layers", "draft_width"); None or "" -> () (one group)."""
    if not text:
        return ()
    fields = tuple(name.strip() for name in text.split(","))
    if not all(fields):
        raise InputError(f"--by takes comma-separated field names such as draft_layers,draft_width, got {text!r}")
    return fields


def parse_where(texts: Sequence[str] | str | None) -> dict[str, str]:
    """``"task=gsm,temperature=0"`` (or several such strings) -> {"task": "gsm", "temperature": "0"}."""
    if isinstance(texts, str):
        texts = [texts]
    where: dict[str, str] = {}
    for text in texts or ():
        for pair in text.split(","):
            key, sep, value = (part.strip() for part in pair.partition("="))
            if not sep or not key:
                raise InputError(
                    f"--where takes comma-separated field=value pairs such as task=gsm,temperature=0, got {pair!r}"
                )
            if key in where and where[key] != value:
                raise InputError(f"--where gives field '{key}' twice ({where[key]!r} and {value!r}); give it once")
            where[key] = value
    return where


def _g(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.4g}"


def _interval(pair: Sequence[float] | None) -> str:
    return "-" if pair is None else f"[{pair[0]:.4g}, {pair[1]:.4g}]"


def _extrapolation(check: ExtrapolationCheck) -> str:
    if check.reason:
        return f"- ({check.reason})"
    err = check.errors
    return f"log-linear {_g(err['log_linear'])}, saturating {_g(err['saturating'])}: {check.preferred}"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def run_fit(
    run_dirs: Sequence[str],
    *,
    x: str = "train_tokens",
    y: str = "mean_accepted_length",
    by: str | None = None,
    where: Sequence[str] | str | None = None,
    kind: str | None = None,
    robust: bool = False,
    bootstrap: int = 0,
    seed: int = 0,
    json_path: str | None = None,
    holdout_top: int = 0,
) -> list[str]:
    """Fit the records of ``run_dirs`` (concatenated) and return the lines to print; write JSON to ``json_path``."""
    by_fields, conditions = parse_fields(by), parse_where(where)
    records = []
    for run_dir in run_dirs:
        records.extend(read_records(run_dir, kind=kind, where=conditions or None))
    if not records:
        selection = ", ".join([f"kind={kind}"] * (kind is not None) + [f"{k}={v}" for k, v in conditions.items()])
        raise InputError(
            f"no records in {', '.join(map(str, run_dirs))}"
            + (f" match {selection}; check --kind and --where" if selection else "")
        )
    pooled, fits, units = zip(*fit_laws(records, x=x, y=y, by=by_fields, robust=robust, bootstrap=bootstrap,
                                        seed=seed))
    checks = [extrapolation_check(f.x_values, f.y_values, seed=seed) for f in pooled]
    saturating = [None if c.reason else fit_saturating(f.x_values, f.y_values, seed=seed)
                  for f, c in zip(pooled, checks)]
    lines = [f"{y} = a + b ln({x}) | {len(records)} records, {len(fits)} group(s)"]
    kinds = sorted({r["kind"] for r in records})
    if len(kinds) > 1 and kind is None and "kind" not in by_fields:
        counts = ", ".join(f"{sum(r['kind'] == k for r in records)} {k}" for k in kinds)
        lines.append(f"warning: the fits pool records of {len(kinds)} kinds ({counts}): give --kind {kinds[0]} (or "
                     "--by kind) unless that is meant")
    unit_name = "templates" if all(r.get("prompt_templates") for r in records) else "prompts"  # the independent unit
    rows = [["group", "n", "estimator", "slope b [95% CI]", "pooled-points b [95% CI]", "b bootstrap 95% CI",
             "intercept a", "R^2", "|error| at largest x"]]
    for f, p, u, check in zip(fits, pooled, units, checks):
        boot = _interval(f.slope_ci95_bootstrap)
        if f.bootstrap_unit:
            boot += f" ({f.bootstrap_units} {f.bootstrap_unit}s)"
        estimator = f"prompt as unit ({u.prompts} {unit_name} x {u.runs} runs, {u.df:.0f} df)" if u else p.method
        rows.append([group_label(f.group), str(f.n), estimator, f"{_g(f.slope)} {_interval(f.slope_ci95)}",
                     f"{_g(p.slope)} {_interval(p.slope_ci95)} ({p.method})" if f is not p else "(same)", boot,
                     _g(f.intercept), _g(f.r2), _extrapolation(check)])
    lines += _table(rows)
    used = {"prompt as unit" if f.method == PROMPT_UNIT else f.method for f in (*fits, *pooled)}
    lines.append("estimators: " + "; ".join(text for name, text in ESTIMATORS.items() if name in used))
    lines += [f"warning: group {group_label(f.group)} fell back to {f.method}: {f.fallback}" for f in fits if f.fallback]
    few = [group_label(f.group) for f, u in zip(fits, units) if (u.prompts if u else f.n) < FEW_POINTS]
    if few:
        lines.append(f"warning: {len(few)} group(s) rest on fewer than {FEW_POINTS} points or prompts "
                     f"({', '.join(few[:3])}{' ...' if len(few) > 3 else ''}): their intervals have few degrees of "
                     "freedom; add checkpoints, seeds or prompts")
    flat = [group_label(f.group) for f in pooled if len(set(f.y_values)) == 1]
    if flat:
        lines.append(f"warning: {y} is the same in every record of {len(flat)} group(s) ({', '.join(flat[:3])}"
                     f"{' ...' if len(flat) > 3 else ''}): no law to fit there (R^2 undefined)")
    held = holdout_check(records, holdout_top, x=x, y=y, by=by_fields, robust=robust) if holdout_top else []
    if held:
        inside = sum(p.inside for p in held)
        lines += ["", f"Held out: each group's {holdout_top} largest x, predicted by the law fitted to the rest "
                      f"(95% prediction intervals): {inside} of {len(held)} inside ({inside / len(held):.0%})"]
        lines += _table([["group", x, y, "predicted [95% PI]", "inside"]] + [
            [group_label(p.group), _g(p.x), _g(p.y), f"{_g(p.predicted)} {_interval(p.interval)}",
             "yes" if p.inside else "NO"] for p in held])
    if json_path:
        payload = {
            "run_dirs": [str(d) for d in run_dirs],
            "x": x,
            "y": y,
            "by": list(by_fields),
            "where": conditions,
            "kind": kind,
            "method": "huber" if robust else "ols",  # the points' estimator; fits[].method: each group's
            "bootstrap": bootstrap,
            "seed": seed,
            "n_records": len(records),
            "holdout_top": holdout_top,
            "holdout": [{**asdict(p), "inside": p.inside} for p in held],
            "fits": [
                {**f.to_dict(), "saturating": s.to_dict() if s else None, "extrapolation": c.to_dict(),
                 "prompt_unit": asdict(u) if u else None,
                 "pooled": None if f is p else {k: p.to_dict()[k] for k in POOLED_KEYS}}
                for f, p, c, s, u in zip(fits, pooled, checks, saturating, units)
            ],
        }
        write_json_atomic(json_path, payload)
        lines.append(f"wrote {json_path}")
    return lines
