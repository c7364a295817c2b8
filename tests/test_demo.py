"""`make demo` end to end on the tiny target (the smoke grid): every stage runs, the report has the laws with R^2 and
intervals and the chosen configuration, and a re-run reuses all finished work."""

from __future__ import annotations

from scylla.demo import run_demo
from scylla.records import read_records


def test_demo_runs_every_stage_and_resumes(tmp_path):
    run_dir = tmp_path / "demo"
    report = run_demo(run_dir, "experiments/smoke.yaml")
    text = report.read_text()
    assert "## Law 1" in text and "R^2" in text and "95% CI" in text
    assert "## The Scylla configuration" in text and "| 16 |" in text
    assert (run_dir / "scylla.yaml").exists() and (run_dir / "fits.json").exists()
    assert list((run_dir / "figs").glob("law1_*.png")) and list((run_dir / "figs").glob("*.pdf"))
    counts = len(read_records(run_dir)), len(read_records(run_dir / "check"))
    mtime = (run_dir / "costs.json").stat().st_mtime
    run_demo(run_dir, "experiments/smoke.yaml")  # everything is reused: no new records, no new cost table
    assert (len(read_records(run_dir)), len(read_records(run_dir / "check"))) == counts
    assert (run_dir / "costs.json").stat().st_mtime == mtime
