"""Fig. 2 of the paper: mean accepted length per task of the Scylla draft against the baselines (prompt lookup,
truncated target layers, the EAGLE-2-style 1-layer head), grouped bars, one figure per temperature.

Drafts are named as in table.py. Each is shown at its own best shape over all tasks (table.own_best: the highest mean
MAT on the select prompt set; the bars are its MAT on the confirm set). MAT is taken from replayed and online eval
records alike and averaged over batch sizes (it does not depend on them).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from statistics import mean

import matplotlib.pyplot as plt
import numpy as np

from paper_figs.laws import LABELS, _save
from paper_figs.table import (CHOSEN_ON, IN_SAMPLE_MARK, REPORTED_ON, compared, default_baseline,
                              default_scylla_methods, draft_label, own_best)


def _series(records: list[dict]) -> tuple[dict[str, float], dict, bool] | None:
    """MAT per task of the method's own best (method, shape) among ``records``, one of its records, and whether
    the shape was chosen on other prompts than those measured (table.own_best)."""
    found, out_of_sample = own_best(records, lambda r: r["mean_accepted_length"])
    if not found:
        return None
    mats = defaultdict(list)
    for r in found:
        mats[r["task"]].append(r["mean_accepted_length"])
    return {t: mean(v) for t, v in mats.items()}, found[0], out_of_sample


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
    ax.set_title(f"MAT per task, T={temperature:g}: each method at its best shape on the {CHOSEN_ON} prompts, "
                 f"measured on the {REPORTED_ON} prompts\n(dashed: plain decoding; {IN_SAMPLE_MARK}: chosen and "
                 "measured on the same prompts)", fontsize=9)
    return _save(fig, out_dir, f"fig2_mat_by_task_T{temperature:g}")


def task_figures(records: list[dict], out_dir: Path, scylla_methods: set[str] | None = None,
                 scylla_config: str | Path | None = None, baseline: str | None = None,
                 baseline_shape: str | None = None) -> list[Path]:
    """Fig. 2 (PNG and PDF) per temperature. Scylla's methods: ``scylla_methods``, else the drafts selected in
    ``scylla_config``, else the trained draft with the highest mean MAT; the baseline: ``baseline`` (default
    table.default_baseline), at ``baseline_shape`` only when given; and every untrained drafter; each at its own best
    shape (table.own_best). A temperature is skipped when Scylla or every other method is missing there; [] when
    nothing is left."""
    evals = [r for r in records
             if r["kind"] == "eval" and r["method"] != "none" and r.get("mean_accepted_length") is not None]
    methods = scylla_methods or default_scylla_methods(evals, scylla_config)
    baseline = baseline or default_baseline(evals)
    paths = []
    for temperature in sorted({r["temperature"] for r in evals}):
        at = [r for r in evals if r["temperature"] == temperature]
        found = [(name, _series(group)) for name, group in compared(at, methods, baseline, baseline_shape)]
        series = []
        for name, picked in found:
            if picked:
                mats, r, out_of_sample = picked
                draft = name if name == draft_label(r) else f"{name}: {draft_label(r)}"
                mark = "" if out_of_sample else IN_SAMPLE_MARK
                series.append((f"{draft} [{r.get('draft_shape')}]{mark}" if r.get("draft_shape") else draft, mats))
        if found[0][1] and len(series) >= 2:
            out_dir.mkdir(parents=True, exist_ok=True)
            paths += _plot(series, out_dir, temperature)
    return paths
