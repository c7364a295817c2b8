"""Every figure and table of the paper that the records support, from records alone: law 1 of the replay records
and laws 1 and 2 of the train records for MAT and held-out accuracy (laws.py), law 3 (batch.py), Fig. 2 (tasks.py),
Table 5 (table.py) and the test-time-scaling figures (tts.py). Records of several targets (``scylla figs RUN_DIR
RUN_DIR2``) share the law figures, one law per target; every other figure and table is drawn per target, in a folder
named after it."""

from __future__ import annotations

from pathlib import Path

from paper_figs.batch import batch_figures
from paper_figs.laws import law_figures, plot_law, replay_law_figures, targets_of, train_caption
from paper_figs.table import TABLE_NAME, throughput_table
from paper_figs.tasks import task_figures
from paper_figs.tts import tts_figures
from scylla.config import read_yaml

LAW_YS = ("mean_accepted_length", "heldout_accuracy")
# Each figure family (its files' name prefix) and what the records need for it: `scylla figs` names the ones it
# could not draw.
FAMILIES = {
    "law1_replay": "replay eval records on the fit prompt set, 3+ token counts per depth (scylla eval --replay)",
    "law1_tokens": "train records at 3+ token counts per depth",
    "law2_capacity": "train records of 3+ depths at 3+ token counts",
    "law3_batch": "online eval records at 2+ batch sizes and 2+ draft shapes",
    "fig2": "eval records of a trained draft and of another drafter",
    "table5": "online (timed) eval records",
    "tts": "tts records (scylla tts-bench)",
}


def missing_families(paths: list[Path]) -> dict[str, str]:
    """The figure families none of ``paths`` belongs to, with what each needs."""
    names = [p.name for p in paths]
    return {f: need for f, need in FAMILIES.items() if not any(n.startswith(f) for n in names)}


def _fittable(records: list[dict], x: str, by: str) -> list[dict]:
    """The records of the groups (equal target and ``by``) that a log-linear fit in ``x`` takes: 3+ distinct x > 0."""
    def usable(r: dict) -> bool:
        return isinstance(r.get(x), (int, float)) and r[x] > 0

    xs: dict = {}
    for r in filter(usable, records):
        xs.setdefault((r.get("target"), r[by]), set()).add(r[x])
    return [r for r in records if usable(r) and len(xs[r.get("target"), r[by]]) >= 3]


def _laws(records: list[dict], out_dir: Path, y: str) -> list[Path]:
    """Law 1 of the depths with 3+ checkpoints and law 2 of the token counts reached by 3+ draft sizes (when 3+
    depths are left); law_figures itself when it can take all of them."""
    train = [r for r in records if r["kind"] == "train" and isinstance(r.get(y), (int, float))]
    law1 = _fittable(train, "train_tokens", "draft_layers")
    if not law1:
        return []
    law2 = _fittable(law1, "draft_params", "train_tokens")
    depths = {r["draft_layers"] for r in law1}
    if len(depths) < 3 or law2 == law1:
        return law_figures(law1, out_dir, y)
    caption = train_caption(law1, y)
    paths = plot_law(law1, "train_tokens", y, "draft_layers", out_dir, f"law1_tokens_{y}", caption)
    if law2 and len({r["draft_layers"] for r in law2}) >= 3:
        paths += plot_law(law2, "draft_params", y, "train_tokens", out_dir, f"law2_capacity_{y}", caption)
    return paths


def all_figures(records: list[dict], out_dir: Path, scylla_config: str | None = None) -> list[Path]:
    """Draw and write everything the records support into ``out_dir``; returns the written paths (figures as PNG
    and PDF, Table 5 as .md and .tex). ``scylla_config``: a Scylla configuration (scylla select) naming Scylla's
    drafts, else the trained draft with the highest mean MAT stands for Scylla."""
    out_dir = Path(out_dir)
    paths = replay_law_figures(records, out_dir)
    paths += [p for y in LAW_YS for p in _laws(records, out_dir, y)]
    targets = targets_of(records)
    if len(targets) > 1:
        config_target = read_yaml(scylla_config).get("target") if scylla_config else None
        for target in targets:
            mine = [r for r in records if r.get("target") == target]
            slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in target)
            paths += _comparisons(mine, out_dir / slug, scylla_config if config_target == target else None)
        return paths
    return paths + _comparisons(records, out_dir, scylla_config)


def _comparisons(records: list[dict], out_dir: Path, scylla_config: str | None) -> list[Path]:
    """The figures and tables of one target: law 3, Fig. 2, the tts figures, Table 5."""
    paths = batch_figures(records, out_dir)
    paths += task_figures(records, out_dir, scylla_config=scylla_config)
    paths += tts_figures(records, out_dir)
    if throughput_table(records, out_dir, scylla_config=scylla_config):
        paths += [out_dir / f"{TABLE_NAME}.{suffix}" for suffix in ("md", "tex")]
    return paths
