"""Law 2 (draft capacity) and the joint law MAT(N, D) of draft parameters N and training tokens D, with the prompt as
the unit of sampling (``scylla capacity``, docs/fitting.md).

The capacity study (experiments/smollm2_capacity.yaml) trains heads of several widths x depths, each to every
milestone, under 2+ seeds, and replays every checkpoint on the same prompts. A unit is a prompt under one training
seed: its line joins the runs of every size trained with that seed (fit.prompt_unit.unit_points), so its own slope
over sizes exists; where prompts share templates (eval records' ``prompt_templates``) the template is the independent
unit, as in law 1. The joint law is fitted the same two-stage way as law 1 (fit/prompt_unit.py): each unit's OLS
coefficients of

    MAT = b0 + bN (ln N - cN) + bD (ln D - cD) + bND (ln N - cN)(ln D - cD)

(cN, cD: the design's mean logs, so b0 is the MAT at the design's centre and bN, bD the slopes there), averaged over
seeds within a prompt, then over prompts; their spread over prompts / prompts is the covariance, plus the checkpoint
shocks that every prompt of a training run shares (estimated from each seed's prompt-averaged points around its own
surface, less what the units' own noise explains), t intervals with Welch-Satterthwaite degrees of freedom.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats

from fit.loglinear import fit_log_linear
from fit.prompt_unit import MeanSlope, mean_slope, prompt_mats, prompt_unit_law, unit_points
from fit.results import JOINT_TERMS as TERMS
from fit.results import JointLaw, LogLinearFit
from scylla.errors import InputError
from scylla.metrics import pooled_mat

N, D, Y = "draft_params", "train_tokens", "mean_accepted_length"


def with_train_seeds(evals: Sequence[dict], trains: Sequence[dict]) -> list[dict]:
    """Eval records with ``train_seed`` from the train record of their run where they lack it (records written
    before evaluations kept it)."""
    seeds = {r["run_id"]: r.get("seed") for r in trains}
    return [r if r.get("train_seed") is not None else {**r, "train_seed": seeds.get(r.get("run_id"))} for r in evals]


def _units(records: Sequence[dict]) -> dict[tuple, dict[tuple[float, float], float]]:
    """{(prompt, seed): {(N, D): MAT of that prompt}}, or {(template, seed, prompt): ...} where every record says
    which template each prompt came from (``prompt_templates``): key[0] is the independent unit, key[1] the seed."""
    units: dict[tuple, dict] = {}
    by_template = bool(records) and all(r.get("prompt_templates") for r in records)
    for r in records:
        if not r.get("prompt_ids") or r.get("train_seed") is None:
            raise InputError(f"record {r.get('run_id', '?')} has no per-prompt counts or train_seed: re-run its eval")
        for template, pid, mat in prompt_mats(r, by_template):
            key = (template, r["train_seed"], pid) if by_template else (pid, r["train_seed"])
            units.setdefault(key, {})[(float(r[N]), float(r[D]))] = mat
    return units


def fit_joint_law(records: Sequence[dict]) -> JointLaw:
    """The joint law of eval records (with per-prompt counts, ``draft_params``, ``train_tokens``, ``train_seed``) of
    one draft shape and task; needs 2+ prompts and, per unit, 2+ sizes x 2+ milestones (5+ points)."""
    units = _units(records)
    points = sorted({xy for pts in units.values() for xy in pts})
    ln = np.log(np.array(points))
    centre = (float(ln[:, 0].mean()), float(ln[:, 1].mean()))
    if len(set(ln[:, 0])) < 2 or len(set(ln[:, 1])) < 2 or len(points) < 5:
        raise InputError(f"a joint law needs 2+ sizes and 2+ milestones (5+ points), got {len(set(ln[:, 0]))} "
                         f"size(s), {len(set(ln[:, 1]))} milestone(s)")

    def design(xy: list[tuple[float, float]]) -> np.ndarray:
        a = np.log(np.array(xy)) - centre
        return np.column_stack([np.ones(len(a)), a[:, 0], a[:, 1], a[:, 0] * a[:, 1]])

    coef, noise, seeds, prompts = {}, {}, {}, {}
    for key, pts in units.items():
        xy = sorted(pts)
        x, y = design(xy), np.array([pts[p] for p in xy])
        if np.linalg.matrix_rank(x) < 4:
            raise InputError(f"unit {key} is measured at too few sizes x milestones for the joint law")
        beta, *_ = np.linalg.lstsq(x, y, rcond=None)
        resid = y - x @ beta
        coef[key] = beta
        noise[key] = float(resid @ resid) / (len(y) - 4) if len(y) > 4 else 0.0
        seeds.setdefault(key[1], []).append(key)
        prompts.setdefault(key[0], []).append(key)
    if len(prompts) < 2:
        raise InputError(f"the joint law needs 2+ prompts, got {len(prompts)}")
    per_prompt = np.array([np.mean([coef[k] for k in keys], axis=0) for keys in prompts.values()])  # (P, 4)
    mean = per_prompt.mean(axis=0)
    cov_prompt = np.cov(per_prompt, rowvar=False) / len(per_prompt)
    shocks, df_shock, cov_shock = [], 0, np.zeros((4, 4))
    for keys in seeds.values():
        xy = sorted({p for k in keys for p in units[k]})
        y = np.array([np.mean([units[k][p] for k in keys if p in units[k]]) for p in xy])  # prompt-averaged
        x = design(xy)
        beta, *_ = np.linalg.lstsq(x, y, rcond=None)
        resid, df = y - x @ beta, len(y) - 4
        if df > 0:
            shocks.append(max(0.0, float(resid @ resid) / df - np.mean([noise[k] for k in keys]) / len(keys)))
            df_shock += df
            cov_shock += np.linalg.inv(x.T @ x)
    shock = float(np.mean(shocks)) if shocks else 0.0
    if shocks:  # the seeds' shocks are independent: the mean over seeds divides by their number
        cov_shock = shock * cov_shock / len(shocks) / len(seeds)
    cov = cov_prompt + cov_shock
    v_p, v_s = cov_prompt[1, 1], cov_shock[1, 1]  # the size slope's degrees of freedom serve every term
    df = (v_p + v_s) ** 2 / (v_p**2 / (len(per_prompt) - 1) + (v_s**2 / df_shock if v_s and df_shock else 0.0))
    t = stats.t.ppf(0.975, df)
    se = np.sqrt(np.diag(cov))
    sizes, tokens = [p[0] for p in points], [p[1] for p in points]
    return JointLaw({k: float(v) for k, v in zip(TERMS, mean)},
                    {k: (float(v - t * s), float(v + t * s)) for k, v, s in zip(TERMS, mean, se)},
                    cov.tolist(), centre, float(df), shock, len(prompts), len(seeds), len(points),
                    (min(sizes), max(sizes)), (min(tokens), max(tokens)))


def law2(records: Sequence[dict], tokens: float) -> tuple[LogLinearFit, MeanSlope]:
    """Law 2 at one token count: MAT = a + b ln(draft_params), with (prompt, seed) lines across sizes as the units
    (fit.prompt_unit), the line through the pooled points."""
    at = [r for r in records if r[D] == tokens]
    if len({r[N] for r in at}) < 3:
        raise InputError(f"law 2 at {tokens:g} tokens needs 3+ sizes, got {len({r[N] for r in at})}")
    pooled = fit_log_linear(at, x=N, y=Y, by=())[0]
    unit = mean_slope(unit_points(at, N))
    return prompt_unit_law(pooled, unit), unit


@dataclass
class HeldOutSize:
    """The largest size, left out of the joint law and predicted at each milestone (95% prediction interval for the
    mean of its ``runs`` seeds on these prompts) against its measured prompt-pooled MAT."""

    params: float
    tokens: float
    runs: int
    measured: float
    predicted: float
    interval: tuple[float, float]

    @property
    def inside(self) -> bool:
        return self.interval[0] <= self.measured <= self.interval[1]


def holdout_largest(records: Sequence[dict]) -> tuple[JointLaw, list[HeldOutSize]]:
    """The joint law fitted without the largest size, and its prediction of that size at every milestone."""
    largest = max(r[N] for r in records)
    law = fit_joint_law([r for r in records if r[N] != largest])
    out = []
    for tokens in sorted({r[D] for r in records if r[N] == largest}):
        held = [r for r in records if r[N] == largest and r[D] == tokens]
        runs = len({r["train_seed"] for r in held})
        mean, lo, hi = law.predict(largest, tokens, interval="prediction", runs=runs)
        out.append(HeldOutSize(float(largest), float(tokens), runs, pooled_mat(held), mean, (lo, hi)))
    return law, out


@dataclass
class LRCheck:
    """Per size (width x depth), the held-out next-token accuracy at the top milestone at each learning rate (seed
    0), the best LR, and whether it is the grid's (the rule of experiments/smollm2_capacity_lr.yaml)."""

    width: int
    layers: int
    accuracy: dict[float, float]
    grid_lr: float
    best_lr: float = field(init=False)

    def __post_init__(self):
        self.best_lr = max(self.accuracy, key=self.accuracy.get)

    @property
    def agrees(self) -> bool:
        return self.best_lr == self.grid_lr


def lr_check(trains: Sequence[dict], grid_lr: float, seed: int = 0) -> list[LRCheck]:
    """The LR check of every size trained at 2+ learning rates under ``seed``, from train records (``lr_peak``,
    ``heldout_accuracy`` at the top milestone)."""
    top = max(r[D] for r in trains)
    sizes: dict[tuple[int, int], dict[float, float]] = {}
    for r in trains:
        if r[D] == top and r.get("seed") == seed and r.get("heldout_accuracy") is not None:
            sizes.setdefault((r["draft_width"], r["draft_layers"]), {})[float(r["lr_peak"])] = r["heldout_accuracy"]
    return [LRCheck(w, n, acc, grid_lr) for (w, n), acc in sorted(sizes.items()) if len(acc) >= 2]


def study_records(run_dir: str, shape: str) -> tuple[list[dict], list[dict]]:
    """(eval records, train records) of a capacity study's run folder: exact replay at T=0 on the fit prompt set in
    ``shape``, every run (the LR check's too), with their ``train_seed``."""
    from scylla.records import read_records  # records are read here; the fits above are pure

    trains = read_records(run_dir, kind="train")
    evals = read_records(run_dir, kind="eval", where=dict(mode="replay", prompt_set="fit", drafter_type="eagle",
                                                          draft_shape=shape, temperature=0.0))
    if not evals:
        raise InputError(f"{run_dir} has no replay records in {shape} on the fit prompt set: run scylla eval {run_dir} "
                         f"--replay --prompt-set fit --shapes {shape} first (docs/fitting.md)")
    return with_train_seeds(evals, trains), trains


def _target_width(run_dir: str) -> int | None:
    """The target's hidden size, from a trained head's config.json (None if none can be read)."""
    import json
    from pathlib import Path

    from scylla.records import find_checkpoints

    for r in find_checkpoints(run_dir):
        try:
            return int(json.loads((Path(r["checkpoint"]) / "config.json").read_text())["target_hidden_size"])
        except (KeyError, OSError, ValueError, TypeError):
            continue
    return None


def run_capacity(run_dir: str, shape: str = "chain:3", grid_lr: float = 0.003,
                 json_path: str | None = None) -> list[str]:
    """``scylla capacity``: law 2 at every milestone, the joint law, the largest size held out and predicted, and the
    LR check with its rule; returns the lines to print, and writes JSON to ``json_path``."""
    from fit.cli import _g, _interval, _table
    from scylla.atomic import write_json_atomic

    evals, trains = study_records(run_dir, shape)
    lr_of = {r["run_id"]: float(r.get("lr_peak", grid_lr)) for r in trains}
    records = [r for r in evals if lr_of.get(r["run_id"]) == grid_lr]  # the LR check's other runs left out
    sizes = sorted({(r[N], r["draft_width"], r["draft_layers"]) for r in records})
    unit_name = "templates" if all(r.get("prompt_templates") for r in records) else "prompts"  # the independent unit
    milestones = sorted({r[D] for r in records})
    lines = [f"Capacity study {run_dir}: {len(sizes)} sizes ({sizes[0][0]:.3g}-{sizes[-1][0]:.3g} parameters, "
             f"{math.log10(sizes[-1][0] / sizes[0][0]):.2f} decades) x {len(milestones)} milestones, {shape}, "
             f"{len(records)} records", "", "Law 2: MAT = a + b ln(draft_params) at each milestone, (prompt, seed) "
             "lines across sizes, the template as the unit where prompts share one:"]
    rows = [["tokens", "b [95% CI]", "MAT at smallest / largest", f"{unit_name} x seeds", "df"]]
    laws = {}
    for tokens in milestones:
        law, unit = law2(records, tokens)
        laws[tokens] = (law, unit)
        rows.append([f"{tokens:g}", f"{_g(law.slope)} {_interval(law.slope_ci95)}",
                     f"{law.predict(sizes[0][0])[0]:.3f} / {law.predict(sizes[-1][0])[0]:.3f}",
                     f"{unit.prompts} x {unit.runs}", f"{unit.df:.0f}"])
    lines += _table(rows)
    joint = fit_joint_law(records)
    lines += ["", f"Joint law: MAT = b0 + bN (ln N - {joint.centre[0]:.2f}) + bD (ln D - {joint.centre[1]:.2f}) + bND "
              f"(ln N - cN)(ln D - cD); {joint.prompts} {unit_name} x {joint.seeds} seeds, {joint.points} sizes x "
              f"milestones, {joint.df:.0f} df"]
    lines += _table([["term", "coefficient [95% CI]"]] + [[t, f"{_g(joint.coefficients[t])} {_interval(joint.ci95[t])}"]
                                                          for t in TERMS])
    without, held = holdout_largest(records)
    inside = sum(h.inside for h in held)
    lines += ["", f"The largest size ({sizes[-1][0]:.3g} parameters: width {sizes[-1][1]} x {sizes[-1][2]} layers) "
              f"left out of the joint law and predicted (95% prediction interval): {inside} of {len(held)} milestones "
              "inside"]
    lines += _table([["tokens", "measured", "predicted [95% PI]", "inside"]] + [
        [f"{h.tokens:g}", f"{h.measured:.3f}", f"{h.predicted:.3f} {_interval(h.interval)}", "yes" if h.inside else "NO"]
        for h in held])
    checks = lr_check(trains, grid_lr)
    both_ways = {}
    if checks:
        lines += ["", f"LR check (seed 0, held-out accuracy at the top milestone; rule: where a size's best LR is not "
                      f"the grid's {grid_lr:g}, law 2 is reported both ways):"]
        lines += _table([["width x layers", *(f"lr {lr:g}" for lr in sorted(checks[0].accuracy)), "best", "rule"]] + [
            [f"{c.width} x {c.layers}", *(f"{c.accuracy[lr]:.4f}" for lr in sorted(c.accuracy)), f"{c.best_lr:g}",
             "grid LR kept" if c.agrees else "reported both ways"] for c in checks])
        moved = [c for c in checks if not c.agrees]
        if moved:  # each such size's seed-0 run replaced by its best-LR run
            best_runs = {r["run_id"] for r in trains for c in moved if r["draft_width"] == c.width
                         and r["draft_layers"] == c.layers and r.get("seed") == 0
                         and float(r["lr_peak"]) == c.best_lr}
            swapped = [r for r in records if not any(r["draft_width"] == c.width and r["draft_layers"] == c.layers
                                                     and r["train_seed"] == 0 for c in moved)]
            swapped += [r for r in evals if r["run_id"] in best_runs]
            top = milestones[-1]
            law, unit = law2(swapped, top)
            both_ways = {"tokens": top, "slope": law.slope, "slope_ci95": law.slope_ci95, "runs": sorted(best_runs)}
            lines.append(f"Law 2 at {top:g} tokens with the best-LR runs in place: b = {_g(law.slope)} "
                         f"{_interval(law.slope_ci95)} (grid LR: {_g(laws[top][0].slope)} "
                         f"{_interval(laws[top][0].slope_ci95)})")
    if json_path:
        write_json_atomic(json_path, {
            "run_dir": str(run_dir), "shape": shape, "grid_lr": grid_lr,
            "sizes": [dict(draft_params=n, draft_width=w, draft_layers=layers) for n, w, layers in sizes],
            "layout": trains[0].get("layout", "eagle"), "target": trains[0].get("target"),
            "target_hidden_size": _target_width(run_dir),
            "law2": [{"train_tokens": t, **law.to_dict(), "prompt_unit": asdict(unit)} for t, (law, unit) in
                     laws.items()],
            "joint": joint.to_dict(),
            "holdout": {"law": without.to_dict(), "points": [{**asdict(h), "inside": h.inside} for h in held]},
            "lr_check": [{**asdict(c), "agrees": c.agrees} for c in checks],
            "law2_best_lr": both_ways or None,
        })
        lines.append(f"wrote {json_path}")
    return lines
