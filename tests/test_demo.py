"""`make demo` end to end on the tiny target (the smoke grid): every stage runs (the training stage on a copy of the
session's smoke sweep, tests/conftest.py, whose jobs it finds finished), the report's numbers are those of the records
(laws refitted from the eval records, measured MAT and speed-up from the check's records), and a re-run reuses all
finished work."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from fit.loglinear import group_label
from fit.prompt_unit import fit_laws
from paper_figs.laws import REPLAY_WHERE
from pipeline.demo import run_demo
from scylla.records import read_records
from scylla.selection import read_scylla_config
from scylla.timing import Speedup, rounds_for


def check_report_against_records(run_dir, text: str) -> None:
    fits = json.loads((run_dir / "fits.json").read_text())["fits"]
    replayed = read_records(run_dir, where=REPLAY_WHERE)
    refit = [law for _, law, _ in fit_laws(replayed, by=("draft_layers", "draft_shape"))]
    assert [f["group"] for f in fits] == [g.group for g in refit] and fits
    for f, g in zip(fits, refit):
        assert f["slope"] == pytest.approx(g.slope, abs=1e-9) and f["n"] == g.n
        row = next(line for line in text.splitlines() if line.startswith(group_label(g.group) + " "))
        assert row.split()[1] == str(g.n) and f" {g.slope:.4g} [" in row
    selection = read_scylla_config(run_dir / "scylla.yaml")["selection"]  # its paths as the working dir sees them
    rows = [line for line in text.splitlines() if re.match(r"\| \d+ \| \d+ \|", line)]
    assert len(rows) == len(selection)
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        chosen = selection[cells[0]]
        (record,) = read_records(run_dir / "check", kind="eval", where=dict(
            method=chosen["best_draft"], batch_size=int(cells[0]), draft_shape=chosen["draft_shape"], mode="online",
            prompt_set="confirm"))
        assert cells[2] == chosen["draft_shape"] and cells[7] == f"{record['mean_accepted_length']:.2f}"
        assert cells[3] == chosen["dtype"] == record["dtype"] and cells[4] == f"plain {record['baseline_dtype']}"
        assert cells[10] == Speedup(record["speedup"], tuple(record["speedup_ci95"]), 0, 0).describe()
        assert cells[9].startswith(f"{record['decode_speedup']:.2f}x (")
        chunks = -(-record["n_prompts"] // int(cells[0]))  # one paired ratio per batch of prompts and round
        rounds = rounds_for(3, chunks)  # 3 rounds, more where the prompts make one batch
        assert record["timing_rounds"] == rounds and len(record["speedup_ratios"]) == rounds * chunks
        assert cells[12] == (f"the draft in {chosen['dtype']}" if chosen["draft"] != "none"
                             else f"plain decoding in {chosen['plain_dtype']}")
        lower = chosen["predicted_speedup_ci95"][0]
        assert (chosen["draft"] != "none") == (lower > 1)  # never a draft whose lower bound is below plain


def test_demo_runs_every_stage_and_resumes(smoke_sweep, tmp_path):
    run_dir = tmp_path / "demo"
    shutil.copytree(smoke_sweep, run_dir)  # the training stage's jobs, finished (conftest.smoke_sweep)
    report = run_demo(run_dir, "experiments/smoke.yaml")
    text = report.read_text()
    assert "## Law 1" in text and "R^2" in text and "95% CI" in text and "## Prompt sets" in text
    assert "| select set | confirm set | fit set | inside |" in text and "## In plain words" in text
    assert "error on fresh templates (law / measured - 1) over every row and both sets: mean" in text
    assert "| batch | Scylla's choice | its speed-up | best measured | its speed-up | regret [95% CI] |" in text
    assert "## The Scylla configuration" in text and "| 16 |" in text
    assert (run_dir / "scylla.yaml").exists() and (run_dir / "fits.json").exists()
    assert list((run_dir / "figs").glob("law1_*.png")) and list((run_dir / "figs").glob("*.pdf"))
    check_report_against_records(run_dir, text)
    counts = len(read_records(run_dir)), len(read_records(run_dir / "check"))
    mtime = (run_dir / "costs.float32.json").stat().st_mtime  # one table per dtype: float32 alone in the suite
    first = json.loads((run_dir / "stage_minutes.json").read_text())
    assert first["invocations"] == 1 and first["minutes"]["replay"] > 0
    again = run_demo(run_dir, "experiments/smoke.yaml").read_text()  # everything is reused: no new records, no new
    assert (len(read_records(run_dir)), len(read_records(run_dir / "check"))) == counts  # cost table
    assert (run_dir / "costs.float32.json").stat().st_mtime == mtime
    summed = json.loads((run_dir / "stage_minutes.json").read_text())  # the report keeps what the first run spent
    assert summed["invocations"] == 2 and summed["minutes"]["replay"] >= first["minutes"]["replay"]
    assert "summed over the 2 invocations on this run folder" in again and "this invocation" in again
