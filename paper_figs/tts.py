"""Test-time-scaling figures from ``tts`` records alone (scylla tts-bench, docs/records.md):

- speed-up over plain decoding per method, grouped by task, one panel per protocol setting (paradigm, temperature,
  Best-of-N batched or not): the SpecTTS-Bench per-task comparison;
- MAT against the repetition share of the generated tokens, one marker per method and one colour per task, with a
  least-squares line and Pearson's r over all points;
- the markdown table of the records (``tts_table_rows``), which scylla tts-bench writes beside them.

Records repeating a (setting, task, method), e.g. from several run directories, are averaged. Plain decoding
(drafter_type ``none``) is the speed-up baseline and left out of both figures.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from statistics import mean

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from scipy.stats import pearsonr

from paper_figs.laws import LABELS, _save

MARKERS = "osD^vP*Xhp<>"
REPETITION_LABEL = "repetition (share of generated tokens continuing an earlier n-gram)"


def _drafted(records: list[dict], *fields: str) -> list[dict]:
    """The non-plain tts records with a number in each of ``fields``."""
    return [r for r in records if r["kind"] == "tts" and r["drafter_type"] != "none"
            and all(isinstance(r.get(f), (int, float)) and not isinstance(r.get(f), bool) for f in fields)]


def _setting_title(paradigm: str, temperature: float, batch_size: int) -> str:
    """``best-of-4``, 0.6, 4 -> ``Best-of-4, T=0.6, batched``; ``multi-round-2`` -> ``multi-round (2 rounds)``."""
    name, _, n = paradigm.rpartition("-")
    if name == "best-of":
        return f"Best-of-{n}, T={temperature:g}, {'batched' if batch_size > 1 else 'sequential'}"
    return f"{name} ({n} rounds), T={temperature:g}"


def _speedup_figure(records: list[dict], out_dir: Path, methods: list[str]) -> list[Path]:
    speedups = defaultdict(list)
    for r in records:
        speedups[(r["paradigm"], r["temperature"], r["batch_size"]), r["task"], r["method"]].append(r["speedup"])
    settings = sorted({s for s, _, _ in speedups}, key=lambda s: (not s[0].startswith("best-of"), s))
    tasks = sorted({t for _, t, _ in speedups})
    cols = min(3, len(settings))
    rows = -(-len(settings) // cols)
    width = max(4.2, 0.3 * len(tasks) * len(methods) + 1.2)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, 3.8 * rows), sharey=True, squeeze=False)
    bar = 0.8 / len(methods)
    x = np.arange(len(tasks))
    for ax, setting in zip(axes.flat, settings):
        for i, method in enumerate(methods):
            where = [j for j, t in enumerate(tasks) if (setting, t, method) in speedups]
            if not where:
                continue
            heights = [mean(speedups[setting, tasks[j], method]) for j in where]
            bars = ax.bar(x[where] + (i - (len(methods) - 1) / 2) * bar, heights, bar, label=method,
                          color=plt.cm.tab10(i % 10))
            ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_xticks(x, tasks)
        ax.set_xlabel("task")
        ax.grid(True, axis="y", alpha=0.3)
        ax.set_title(_setting_title(*setting), fontsize=10)
    for ax in axes.flat[len(settings):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("speed-up over plain decoding (×)")
    axes[0, 0].set_ylim(0, axes[0, 0].get_ylim()[1] * 1.08)
    handles = [plt.Rectangle((0, 0), 1, 1, color=plt.cm.tab10(i % 10)) for i in range(len(methods))]
    fig.legend(handles, methods, title="method", fontsize=8, frameon=False, loc="upper left",
               bbox_to_anchor=(1.0, 0.95))
    fig.suptitle("Test-time scaling: speed-up per task (dashed: plain decoding)", fontsize=11)
    fig.tight_layout()
    return _save(fig, out_dir, "tts_speedup_by_task")


def _repetition_figure(records: list[dict], out_dir: Path, methods: list[str]) -> list[Path]:
    tasks = sorted({r["task"] for r in records})
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for r in records:
        ax.scatter(r["repetition"], r["mean_accepted_length"], s=30, zorder=3, alpha=0.85,
                   marker=MARKERS[methods.index(r["method"]) % len(MARKERS)],
                   color=plt.cm.tab10(tasks.index(r["task"]) % 10))
    handles = [Line2D([], [], linestyle="", marker=MARKERS[i % len(MARKERS)], color="dimgray", label=m)
               for i, m in enumerate(methods)]
    handles += [Line2D([], [], linestyle="", marker="o", color=plt.cm.tab10(i % 10), label=f"task {t}")
                for i, t in enumerate(tasks)]
    xs = np.array([r["repetition"] for r in records], dtype=float)
    ys = np.array([r["mean_accepted_length"] for r in records], dtype=float)
    title = "MAT against repetition (one point per tts record)"
    if len(set(xs)) >= 3:
        slope, intercept = np.polyfit(xs, ys, 1)
        grid = np.linspace(xs.min(), xs.max(), 2)
        label = f"least squares: MAT = {intercept:.2f} {'-' if slope < 0 else '+'} {abs(slope):.2f} x"
        if len(set(ys)) > 1:
            r, p = pearsonr(xs, ys)
            label += f", Pearson r = {r:.2f} (p = {p:.2g}, n = {len(xs)})"
            title += f", r = {r:.2f}"
        handles += ax.plot(grid, intercept + slope * grid, color="black", linewidth=1, linestyle="--", label=label)
    ax.set_xlabel(REPETITION_LABEL)
    ax.set_ylabel(LABELS["mean_accepted_length"])
    ax.grid(True, alpha=0.3)
    ax.legend(handles=handles, fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title, fontsize=10)
    return _save(fig, out_dir, "tts_mat_vs_repetition")


def tts_figures(records: list[dict], out_dir: Path) -> list[Path]:
    """The speed-up and MAT-against-repetition figures (PNG and PDF) of the tts records in ``records``; each is
    skipped when no record has its fields, [] when both are."""
    out_dir = Path(out_dir)
    paths = []
    for fields, draw in ((("speedup",), _speedup_figure),
                         (("mean_accepted_length", "repetition"), _repetition_figure)):
        found = _drafted(records, *fields)
        if found:
            out_dir.mkdir(parents=True, exist_ok=True)
            paths += draw(found, out_dir, list(dict.fromkeys(r["method"] for r in found)))
    return paths


def _cell(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def tts_table_rows(records: list[dict]) -> list[str]:
    """The markdown table of tts records, one row per record in the given order (header lines included)."""
    lines = [
        "| task | paradigm | T | batch | method | MAT | speed-up | tokens/s | accuracy | repetition (self / +siblings) "
        "| drafted share | = plain |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if r["paradigm"].startswith("best-of"):
            keys = ["majority", "best_of", "mean"]
        else:
            keys = [f"round_{i}" for i in range(1, int(r["paradigm"].rsplit("-", 1)[1]) + 1)]
        acc = " / ".join(_cell(r.get(f"accuracy_{k}")) for k in keys)
        share = ", ".join(f"{k} {v:.0%}" for k, v in (r.get("drafted_share") or {}).items()) or "-"
        same = {True: "yes", False: "**NO**", None: "-"}[r.get("matches_plain")]
        lines.append(
            f"| {r['task']} | {r['paradigm']} | {r['temperature']:g} | {r['batch_size']} | {r['method']} | "
            f"{_cell(r['mean_accepted_length'])} | {_cell(r['speedup'])} | {_cell(r['problem_tokens_per_second'], 1)}"
            f" | {acc} | {_cell(r['repetition_self'])} / {_cell(r['repetition'])} | {share} | {same} |"
        )
    return lines
