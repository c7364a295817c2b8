"""Figures of the first two laws, from run records alone (fits by fit/, drawing here; nothing is refitted by hand).

- law 1: y against training tokens (log x), one colour per draft depth, fitted line and 95% confidence band;
- law 2: y against draft parameters (log x), one line per token budget.
Each figure is written as PNG and PDF.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fit import fit_log_linear  # noqa: E402
from scylla.atomic import atomic_path  # noqa: E402

LABELS = {
    "mean_accepted_length": "mean accepted length (MAT)",
    "heldout_accuracy": "held-out next-token accuracy",
    "acceptance_rate": "acceptance rate (accepted / drafted)",
    "train_tokens": "draft training tokens",
    "draft_params": "draft parameters (without embeddings)",
}


def _save(fig, out_dir: Path, name: str) -> list[Path]:
    paths = []
    for suffix in ("png", "pdf"):
        path = out_dir / f"{name}.{suffix}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=suffix, dpi=150, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def draw_law(records: list[dict], x: str, y: str, by: str) -> plt.Figure:
    """y against x (log axis) per group of ``by``: the points, each group's log-linear fit (a line) and its 95%
    confidence band. The lines are the fits of fit.fit_log_linear, drawn, not refitted."""
    fits = fit_log_linear(records, x=x, y=y, by=(by,))
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, f in enumerate(fits):
        colour = plt.cm.viridis(i / max(1, len(fits) - 1))
        ax.scatter(f.x_values, f.y_values, color=colour, s=22, zorder=3)
        grid = np.geomspace(min(f.x_values), max(f.x_values), 60)
        bands = np.array([f.predict(v) for v in grid])
        ax.plot(grid, bands[:, 0], color=colour,
                label=f"{by.replace('_', ' ')} {f.group[by]}: {f.slope:+.3f} ln x (R$^2$ {f.r2:.2f})")
        ax.fill_between(grid, bands[:, 1], bands[:, 2], color=colour, alpha=0.15, linewidth=0)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(LABELS.get(x, x))
    ax.set_ylabel(LABELS.get(y, y))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(f"{LABELS.get(y, y)} vs {LABELS.get(x, x)}", fontsize=10)
    return fig


def plot_law(records: list[dict], x: str, y: str, by: str, out_dir: Path, name: str) -> list[Path]:
    """``draw_law``, written to out_dir/name.png and .pdf."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return _save(draw_law(records, x, y, by), out_dir, name)


def law_figures(records: list[dict], out_dir: Path, y: str = "mean_accepted_length") -> list[Path]:
    """Law 1 (tokens, per depth) and, when there are 3+ depths, law 2 (parameters, per token budget)."""
    train = [r for r in records if r["kind"] == "train" and r.get(y) is not None]
    paths = plot_law(train, "train_tokens", y, "draft_layers", out_dir, f"law1_tokens_{y}")
    if len({r["draft_layers"] for r in train}) >= 3:
        paths += plot_law(train, "draft_params", y, "train_tokens", out_dir, f"law2_capacity_{y}")
    return paths
