"""The head ablation table (docs/training.md) from a run directory's train and replay eval records.

    python -m paper_figs.ablation RUN_DIR [--reference eagle-ref] [--shape chain:5] [--out TABLE.md]

One row per trained draft (its settings from the train record) and task: mean accepted length with a 95% interval
over prompts (the prompt is the unit: prompts are drawn with replacement, MAT = sum of new tokens / sum of target
calls), its difference from the reference draft on the same prompts (a paired bootstrap), and the acceptance at
each draft position (vLLM's convention: steps whose i-th draft token was accepted / drafting steps).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from scylla.atomic import atomic_path
from scylla.errors import ScyllaError
from scylla.records import read_records

RESAMPLES = 2000


def _mat(new: np.ndarray, calls: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """MAT of each resample: idx (R, P) prompt indices -> (R,)."""
    return new[idx].sum(1) / calls[idx].sum(1)


def _per_prompt(record: dict) -> tuple[list[str], np.ndarray, np.ndarray]:
    return (record["prompt_ids"], np.asarray(record["prompt_new_tokens"], float),
            np.asarray(record["prompt_target_calls"], float))


def ablation_rows(records: list[dict], reference: str, shape: str, seed: int = 0) -> list[dict]:
    """One dict per (draft, task) of the replay records at ``shape``: settings, MAT, its interval, the paired
    difference from ``reference`` (a run_id) and per-position acceptance."""
    train = {r["run_id"]: r for r in records if r["kind"] == "train"}
    evals = [r for r in records if r["kind"] == "eval" and r.get("run_id") in train and r.get("draft_shape") == shape
             and r.get("prompt_ids")]
    by_task = {(r["run_id"], r["task"]): r for r in evals}
    rng = np.random.default_rng(seed)
    rows = []
    for (run_id, task), record in sorted(by_task.items(), key=lambda item: (item[0][1], item[0][0])):
        ids, new, calls = _per_prompt(record)
        idx = rng.integers(len(ids), size=(RESAMPLES, len(ids)))
        mats = _mat(new, calls, idx)
        row = dict(run_id=run_id, task=task, mat=float(new.sum() / calls.sum()),
                   mat_ci95=tuple(np.percentile(mats, [2.5, 97.5])), prompts=len(ids),
                   per_position=record["per_position_acceptance"], train=train[run_id], delta=None, delta_ci95=None)
        base = by_task.get((reference, task))
        if base is not None and run_id != reference:
            base_ids, base_new, base_calls = _per_prompt(base)
            if base_ids == ids:  # the same prompts: paired
                diffs = mats - _mat(base_new, base_calls, idx)
                row.update(delta=row["mat"] - float(base_new.sum() / base_calls.sum()),
                           delta_ci95=tuple(np.percentile(diffs, [2.5, 97.5])))
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    positions = max((len(r["per_position"]) for r in rows), default=0)
    head = ["draft", "layout", "features", "unroll K", "loss", "feature reg.", "held-out acc.", "task", "MAT [95% CI]",
            "MAT - reference [95% CI]"] + [f"pos {i + 1}" for i in range(positions)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        t = r["train"]
        delta = "reference" if r["delta"] is None else f"{r['delta']:+.3f} [{r['delta_ci95'][0]:+.3f}, " \
                                                       f"{r['delta_ci95'][1]:+.3f}]"
        cells = [r["run_id"], t.get("layout", "eagle"), str(t.get("feature_layers")), str(t.get("unroll", 1)),
                 t.get("loss_type", "ce"), str(t.get("feature_weight", "")), f"{t.get('heldout_accuracy', 0):.3f}",
                 r["task"], f"{r['mat']:.3f} [{r['mat_ci95'][0]:.3f}, {r['mat_ci95'][1]:.3f}]", delta]
        cells += [f"{a:.3f}" for a in r["per_position"]] + [""] * (positions - len(r["per_position"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paper_figs.ablation", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--reference", default="eagle-ref", help="run_id the differences are taken from")
    parser.add_argument("--shape", default="chain:5", help="draft shape of the eval records (scylla eval --shapes)")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    try:
        rows = ablation_rows(read_records(args.run_dir), args.reference, args.shape)
    except ScyllaError as err:
        print(f"scylla: error: {err}", file=sys.stderr)
        return 2
    if not rows:
        print(f"scylla: error: {args.run_dir} has no replay eval records at {args.shape} with per-prompt counts: run "
              f"scylla eval {args.run_dir} --replay --temperatures 0 --shapes {args.shape}", file=sys.stderr)
        return 2
    table = markdown(rows)
    print(table)
    if args.out:
        with atomic_path(args.out) as tmp:
            Path(tmp).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
