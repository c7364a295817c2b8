"""Law 3 figure: the best draft width and the throughput against the decoding batch size, from timed eval records
(the batch-size study, experiments/batch.yaml); one figure per task and temperature with 2+ batch sizes and 2+ draft
shapes. Per method (plain decoding aside) and batch size the fastest shape is kept, as pipeline.evaluate.best_settings
does:

(a) its tokens verified per step (a chain's length, a tree's total_tokens), each point labelled with the shape;
(b) its tokens/s, plain decoding dashed, each point annotated with its speed-up over plain decoding.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from statistics import mean

import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter, ScalarFormatter

from paper_figs.laws import _save
from paper_figs.table import draft_label, speedup, timed_evals, width

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
