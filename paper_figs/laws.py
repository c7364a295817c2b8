"""Figures of the first two laws, from run records alone (fits by fit/, drawing here; nothing is refitted by hand).

- law 1: MAT against training tokens (log x), one colour per draft depth, the law (fit.fit_laws: the prompt as the
  unit where records carry per-prompt counts) and its 95% confidence band; from the replay eval records, one figure
  per task and draft shape, the same records and groups as ``scylla fit --kind eval --where REPLAY_WHERE --by
  draft_layers,draft_shape`` (the demo report's law 1); and from the train records' quick check at each checkpoint;
- law 2: y against draft parameters (log x), one line per token budget.
Every figure's caption says which records it plots. Each is written as PNG and PDF.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fit.loglinear import group_label  # noqa: E402
from fit.prompt_unit import METHOD as PROMPT_UNIT  # noqa: E402
from fit.prompt_unit import fit_laws  # noqa: E402
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


REPLAY_WHERE = {"kind": "eval", "drafter_type": "eagle", "mode": "replay", "prompt_set": "fit"}  # law 1's records


def targets_of(records: list[dict]) -> list[str]:
    """The targets the records are of (train, eval and tts records name theirs), sorted."""
    return sorted({r["target"] for r in records if r.get("target")})


def draw_law(records: list[dict], x: str, y: str, by: str, caption: str = "") -> plt.Figure:
    """y against x (log axis) per group of ``by`` (and of target, when the records are of several: never one law
    across targets; a line style per target): the points, each group's law (a line; fit.fit_laws, drawn, not
    refitted) and its 95% confidence band; ``caption`` under the axes, with each line's estimator."""
    targets = targets_of(records)
    several = len(targets) > 1
    laws = [law for _, law, _ in fit_laws(records, x=x, y=y, by=("target", by) if several else (by,))]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, f in enumerate(laws):
        colour = plt.cm.viridis(i / max(1, len(laws) - 1))
        style = dict(linestyle="-", marker="o")
        if several:
            style = [dict(linestyle="-", marker="o"), dict(linestyle="--", marker="^"),
                     dict(linestyle=":", marker="s")][targets.index(f.group["target"]) % 3]
        ax.scatter(f.x_values, f.y_values, color=colour, s=22, zorder=3, marker=style["marker"])
        grid = np.geomspace(min(f.x_values), max(f.x_values), 60)
        bands = np.array([f.predict(v) for v in grid])
        name = f"{f.group['target']}, " if several else ""
        ax.plot(grid, bands[:, 0], color=colour, linestyle=style["linestyle"],
                label=f"{name}{by.replace('_', ' ')} {f.group[by]}: {f.slope:+.3f} ln x (R$^2$ {f.r2:.2f})")
        ax.fill_between(grid, bands[:, 1], bands[:, 2], color=colour, alpha=0.15, linewidth=0)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(LABELS.get(x, x))
    ax.set_ylabel(LABELS.get(y, y))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(f"{LABELS.get(y, y)} vs {LABELS.get(x, x)}" + (f" ({' vs '.join(targets)})" if several else ""),
                 fontsize=10)
    estimators = sorted({"prompt as unit" if f.method == PROMPT_UNIT else f.method for f in laws})
    fig.text(0.01, -0.02, f"{caption}\nLines: y = a + b ln x per {by.replace('_', ' ')}, {', '.join(estimators)}; "
             "bands: 95% confidence.".strip(), fontsize=7, va="top", wrap=True)
    return fig


def plot_law(records: list[dict], x: str, y: str, by: str, out_dir: Path, name: str, caption: str = "") -> list[Path]:
    """``draw_law``, written to out_dir/name.png and .pdf."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return _save(draw_law(records, x, y, by, caption), out_dir, name)


def train_caption(records: list[dict], y: str) -> str:
    """Which train records a figure plots: the quick check at each checkpoint, not the replay."""
    if y != "mean_accepted_length":
        return f"Train records: {LABELS.get(y, y)} on the job's held-out split at each checkpoint."
    prompts = sorted({r.get("eval_prompts") for r in records} - {None})
    return (f"Train records: the job's quick greedy check at each checkpoint ({', '.join(map(str, prompts)) or '?'} "
            "prompts, online, the job's chain length); the report's law 1 is the replay figure.")


def law_figures(records: list[dict], out_dir: Path, y: str = "mean_accepted_length") -> list[Path]:
    """Law 1 (tokens, per depth) and, when there are 3+ depths, law 2 (parameters, per token budget), of train
    records."""
    train = [r for r in records if r["kind"] == "train" and r.get(y) is not None]
    caption = train_caption(train, y)
    paths = plot_law(train, "train_tokens", y, "draft_layers", out_dir, f"law1_tokens_{y}", caption)
    if len({r["draft_layers"] for r in train}) >= 3:
        paths += plot_law(train, "draft_params", y, "train_tokens", out_dir, f"law2_capacity_{y}", caption)
    return paths


def replay_law_figures(records: list[dict], out_dir: Path) -> list[Path]:
    """Law 1 from the replay eval records (REPLAY_WHERE), one figure per task and draft shape, of the depths with
    3+ distinct token counts (per target: records of several targets share the figure, one law per target)."""
    replayed = [r for r in records if all(r.get(k) == v for k, v in REPLAY_WHERE.items()) and r["train_tokens"] > 0]
    groups: dict[tuple, list[dict]] = {}
    for r in replayed:
        groups.setdefault((r["task"], r["draft_shape"]), []).append(r)
    paths = []
    for (task, shape), members in sorted(groups.items()):
        counts: dict[tuple, set] = {}
        for r in members:
            counts.setdefault((r["target"], r["draft_layers"]), set()).add(r["train_tokens"])
        members = [r for r in members if len(counts[r["target"], r["draft_layers"]]) >= 3]
        if not members:
            continue
        sizes = sorted({(r["n_prompts"], r["max_new_tokens"]) for r in members})
        where = group_label({k: v for k, v in REPLAY_WHERE.items() if k != "kind"})
        caption = (f"Eval records ({where}): MAT by exact replay at T = 0, task {task}, draft shape {shape}, "
                   f"prompt set fit ({', '.join(f'{n} prompts x {t} new tokens' for n, t in sizes)}), "
                   f"{len({(r['target'], r['run_id']) for r in members})} runs of {', '.join(targets_of(members))}; the "
                   "report's law 1 (scylla fit --kind eval "
                   f"--where {where} --by draft_layers,draft_shape).")
        slug = "".join(c if c.isalnum() else "-" for c in f"{task}_{shape}").strip("-")
        paths += plot_law(members, "train_tokens", "mean_accepted_length", "draft_layers", out_dir,
                          f"law1_replay_{slug}", caption)
    return paths
