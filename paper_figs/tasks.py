"""Fig. 2 of the paper: mean accepted length per task of the Scylla draft against the baselines (prompt lookup,
truncated target layers, the EAGLE-2-style 1-layer head at its tree), grouped bars, one figure per temperature.

Drafts are named as in table.py. Each is shown at one shape over all tasks: the one with the highest mean MAT (the
baseline at its fixed shape, table.default_baseline_shape). MAT is taken from replayed and online eval records
alike and averaged over batch sizes (it does not depend on them).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from statistics import mean

import matplotlib.pyplot as plt
import numpy as np

from paper_figs.laws import LABELS, _save
from paper_figs.table import default_baseline, default_baseline_shape, default_scylla_methods, draft_label

BASELINE_KINDS = ("prompt-lookup", "truncated")


def _series(records: list[dict]) -> tuple[dict[str, float], dict] | None:
    """MAT per task of the (method, shape) among ``records`` with the highest mean MAT, and one of its records."""
    mats = defaultdict(lambda: defaultdict(list))
    for r in records:
        mats[r["method"], r.get("draft_shape")][r["task"]].append(r["mean_accepted_length"])
    if not mats:
        return None
    per_task = {k: {t: mean(v) for t, v in tasks.items()} for k, tasks in mats.items()}
    key = max(per_task, key=lambda k: (mean(per_task[k].values()), str(k)))
    return per_task[key], next(r for r in records if (r["method"], r.get("draft_shape")) == key)


def _plot(series: list[tuple[str, dict[str, float]]], out_dir: Path, temperature: float) -> list[Path]:
    tasks = sorted({t for _, mats in series for t in mats})
    fig, ax = plt.subplots(figsize=(max(6.4, 0.6 * len(tasks) * len(series)), 4.4))
    bar = 0.8 / len(series)
    x = np.arange(len(tasks))
    for i, (name, mats) in enumerate(series):
        where = [j for j, t in enumerate(tasks) if t in mats]
        heights = [mats[tasks[j]] for j in where]
        bars = ax.bar(x[where] + (i - (len(series) - 1) / 2) * bar, heights, bar, label=name,
                      color=plt.cm.tab10(i % 10))
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")  # plain decoding's MAT
    ax.set_xticks(x, tasks)
    ax.set_xlabel("task")
    ax.set_ylabel(LABELS["mean_accepted_length"])
    ax.set_ylim(0, ax.get_ylim()[1] * 1.08)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"MAT per task, T={temperature:g} (dashed: plain decoding)", fontsize=10)
    return _save(fig, out_dir, f"fig2_mat_by_task_T{temperature:g}")


def task_figures(records: list[dict], out_dir: Path, scylla_methods: set[str] | None = None,
                 scylla_config: str | Path | None = None, baseline: str | None = None,
                 baseline_shape: str | None = None) -> list[Path]:
    """Fig. 2 (PNG and PDF) per temperature. Scylla's methods: ``scylla_methods``, else the drafts selected in
    ``scylla_config``, else the trained draft with the highest mean MAT; the baseline: ``baseline`` at
    ``baseline_shape`` (defaults: table.default_baseline, table.default_baseline_shape). A temperature is skipped
    when Scylla or every baseline is missing there; [] when nothing is left."""
    evals = [r for r in records
             if r["kind"] == "eval" and r["method"] != "none" and r.get("mean_accepted_length") is not None]
    methods = scylla_methods or default_scylla_methods(evals, scylla_config)
    baseline = baseline or default_baseline(evals)
    baseline_shape = baseline_shape or (baseline and default_baseline_shape(evals, baseline))
    paths = []
    for temperature in sorted({r["temperature"] for r in evals}):
        at = [r for r in evals if r["temperature"] == temperature]
        base = [r for r in at if (r["method"], r.get("draft_shape")) == (baseline, baseline_shape)]
        found = [("Scylla", _series([r for r in at if r["method"] in methods])), ("EAGLE-2-style", _series(base))]
        others = sorted({r["method"] for r in at if r["method"].split(":")[0] in BASELINE_KINDS})
        found += [(method, _series([r for r in at if r["method"] == method])) for method in others]
        series = []
        for name, picked in found:
            if picked:
                mats, r = picked
                draft = name if name == draft_label(r) else f"{name}: {draft_label(r)}"
                series.append((f"{draft} [{r.get('draft_shape')}]" if r.get("draft_shape") else draft, mats))
        if found[0][1] and len(series) >= 2:
            out_dir.mkdir(parents=True, exist_ok=True)
            paths += _plot(series, out_dir, temperature)
    return paths
