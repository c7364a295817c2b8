"""Law 3 figures.

Measured (``batch_figures``): the best draft width and the throughput against the decoding batch size, from timed
eval records (the batch-size study, experiments/batch.yaml); one figure per task and temperature with 2+ batch sizes
and 2+ draft shapes. Per method (plain decoding aside) and batch size the fastest shape is kept, as
pipeline.evaluate.best_settings does:

(a) its tokens verified per step (a chain's length, a tree's total_tokens), each point labelled with the shape;
(b) its tokens/s, plain decoding dashed, each point annotated with its speed-up over plain decoding.

Fitted (``law3_fit_figure``, from fit.batch_law, ``scylla law3``): (a) the best draft length k*(b) at each batch size
with its 95% interval, the law k*(b) = a + c ln b with its band, and a left-out batch size's prediction; (b) each
shape's predicted speed-up against the batch size with its 95% interval.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from statistics import mean
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter, ScalarFormatter

from paper_figs.laws import _save
from paper_figs.table import draft_label, speedup, timed_evals, width

if TYPE_CHECKING:
    from fit.batch_law import BatchLaw

MARKERS = "o^Dvph"  # lines of equal values stay distinguishable


def _shape_note(record: dict) -> str:
    return f"tree k={record['tree_top_k']} d={record['tree_depth']}" if record.get("tree_top_k") else "chain"


def _log2_axis(ax, ticks: list[int], axis: str = "x") -> None:
    """Log base 2 with the given values as plain-number ticks."""
    getattr(ax, f"set_{axis}scale")("log", base=2)
    getattr(ax, f"set_{axis}ticks")(ticks)
    scale = getattr(ax, f"{axis}axis")
    scale.set_major_formatter(ScalarFormatter())
    scale.set_minor_formatter(NullFormatter())


def _plot(records: list[dict], out_dir: Path, task: str, temperature: float) -> list[Path]:
    best: dict[tuple[str, int], dict] = {}
    plain = defaultdict(list)
    for r in records:
        if r["method"] == "none":
            plain[r["batch_size"]].append(r["tokens_per_second"])
            continue
        key = (r["method"], r["batch_size"])
        if key not in best or r["tokens_per_second"] > best[key]["tokens_per_second"]:
            best[key] = r
    plain_tps = {b: mean(v) for b, v in sorted(plain.items())}
    batches = sorted({b for _, b in best} | set(plain_tps))
    fig, (ax_w, ax_t) = plt.subplots(1, 2, figsize=(11, 4.4))
    for i, method in enumerate(sorted({m for m, _ in best})):
        points = [best[m, b] for m, b in sorted(best) if m == method]
        xs, colour, marker = [r["batch_size"] for r in points], plt.cm.tab10(i % 10), MARKERS[i % len(MARKERS)]
        style = dict(marker=marker, color=colour, label=draft_label(points[0]))
        ax_w.plot(xs, [width(r) for r in points], **style)
        ax_t.plot(xs, [r["tokens_per_second"] for r in points], **style)
        for r in points:
            ax_w.annotate(_shape_note(r), (r["batch_size"], width(r)), textcoords="offset points", xytext=(4, 4),
                          fontsize=7, color=colour)
            up = speedup(r, plain_tps.get(r["batch_size"]))
            if up is not None:
                ax_t.annotate(f"{up:.2f}×", (r["batch_size"], r["tokens_per_second"]), textcoords="offset points",
                              xytext=(4, 4), fontsize=7, color=colour)
    if plain_tps:
        ax_t.plot(list(plain_tps), list(plain_tps.values()), "k--", marker="s", markersize=4, label="plain decoding")
    widths = sorted({width(r) for r in best.values()})
    _log2_axis(ax_w, widths, "y")
    for ax in (ax_w, ax_t):
        _log2_axis(ax, batches)
        ax.set_xlabel("decoding batch size")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
    ax_w.set_ylabel("tokens verified per step of the fastest shape")
    ax_w.set_title("(a) best draft width", fontsize=10)
    ax_t.set_yscale("log")
    ax_t.set_ylabel("throughput (new tokens / s)")
    ax_t.set_title("(b) throughput of the fastest shape (speed-up over plain)", fontsize=10)
    fig.suptitle(f"draft width vs batch size: {task}, T={temperature:g}", fontsize=11)
    return _save(fig, out_dir, f"law3_batch_{task}_T{temperature:g}")


def batch_figures(records: list[dict], out_dir: Path) -> list[Path]:
    """The law 3 figure (PNG and PDF) of each task and temperature that has 2+ batch sizes and 2+ draft shapes among
    its drafted, timed records; [] when none has."""
    timed = [r for r in timed_evals(records) if width(r) is not None]
    paths = []
    for task, temperature in sorted({(r["task"], r["temperature"]) for r in timed}):
        group = [r for r in timed if (r["task"], r["temperature"]) == (task, temperature)]
        drafted = [r for r in group if r["method"] != "none"]
        if len({r["batch_size"] for r in drafted}) >= 2 and len({r["draft_shape"] for r in drafted}) >= 2:
            out_dir.mkdir(parents=True, exist_ok=True)
            paths += _plot(group, out_dir, task, temperature)
    return paths


def law3_fit_figure(law: "BatchLaw", out_dir: Path) -> list[Path]:
    """The fitted law 3 (PNG and PDF, ``law3_fit``): (a) the best draft length against the batch size, with its
    interval, each family's law and band, and the left-out batch size's prediction; (b) every shape's predicted
    speed-up over plain decoding against the batch size, with its interval."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    batches = sorted({s.batch for s in law.speedups})
    fig, (ax_k, ax_s) = plt.subplots(1, 2, figsize=(11, 4.4))
    for i, f in enumerate(law.laws):
        colour = plt.cm.tab10(i % 10)
        grid, line, lo, hi = zip(*f.curve)
        ax_k.fill_between(grid, lo, hi, color=colour, alpha=0.2, linewidth=0)
        ax_k.plot(grid, line, color=colour, label=f"{f.family}s: k* = {f.intercept:.2f} {f.slope:+.2f} ln b "
                  f"[slope {f.slope_ci95[0]:+.2f}, {f.slope_ci95[1]:+.2f}]")
        low, high = zip(*f.best_lengths_ci95)
        ax_k.errorbar(f.batches, f.best_lengths, yerr=[[k - a for k, a in zip(f.best_lengths, low)],
                                                       [b - k for k, b in zip(f.best_lengths, high)]],
                      fmt=MARKERS[i % len(MARKERS)], color=colour, capsize=3, label=f"best {f.family} length k*(b)")
        for n in f.lengths:
            ax_k.axhline(n, color="grey", linewidth=0.5, linestyle=":")
    if law.leave_out:
        o = law.leave_out
        ax_k.errorbar([o.batch], [o.law_length], yerr=[[o.law_length - o.law_length_ci95[0]],
                                                       [o.law_length_ci95[1] - o.law_length]],
                      fmt="s", mfc="none", color="k", capsize=4,
                      label=f"batch {o.batch} left out: the law without it -> {o.predicted_shape}")
        ax_k.plot([o.batch], [o.direct_length], "x", color="grey", label=f"batch {o.batch}'s own costs: k* "
                  f"{o.direct_length:.2f} -> {o.direct_best}")
    for i, shape in enumerate(law.shapes):
        points = sorted((s for s in law.speedups if s.shape == shape.shape), key=lambda s: s.batch)
        xs, colour = [s.batch for s in points], plt.cm.tab10(i % 10)
        ax_s.fill_between(xs, [s.speedup_ci95[0] for s in points], [s.speedup_ci95[1] for s in points],
                          color=colour, alpha=0.15, linewidth=0)
        ax_s.plot(xs, [s.speedup for s in points], marker=MARKERS[i % len(MARKERS)], color=colour,
                  label=f"{shape.shape} (MAT {shape.mat:.2f})")
    ax_s.axhline(1.0, color="k", linestyle="--", linewidth=1, label="plain decoding")
    for ax in (ax_k, ax_s):
        _log2_axis(ax, batches)
        ax.set_xlabel("decoding batch size")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, frameon=False)
    if not law.laws:
        ax_k.text(0.5, 0.5, "no family of 3+ draft lengths:\nno law of the best length", ha="center", va="center",
                  transform=ax_k.transAxes, fontsize=9)
    if law.laws:
        _log2_axis(ax_k, sorted({n for f in law.laws for n in f.lengths}), "y")
    ax_k.set_ylabel("best draft length k* (draft tokens per step)")
    ax_k.set_title("(a) best draft length, law and 95% band", fontsize=10)
    ax_s.set_ylabel("predicted speed-up over plain decoding")
    ax_s.set_title("(b) each shape's predicted speed-up (95% interval)", fontsize=10)
    fig.suptitle(f"law 3: {law.draft or 'prompt lookup'}, {law.prompts} prompts ({law.task}/{law.prompt_set}), "
                 f"costs in {law.cost_dtype} on {law.cpu_capability or law.device}; {law.resamples} resamples of "
                 "prompts and timing rounds", fontsize=10)
    return _save(fig, out_dir, "law3_fit")
