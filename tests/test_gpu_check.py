"""benchmarks/gpu_check.sh, the one-call GPU check of issue 26, runs its whole path on the CPU with --cpu: the
accelerator tests (tests/test_cuda.py) on the CPU, then the law-3 cost surface of both packaged architectures, tiny.
Its numbers are never asserted (benchmarks report, they do not pass or fail)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from scylla.costs import CostTable
from scylla.models import PACKAGED, cache_dir

ROOT = Path(__file__).resolve().parent.parent


def _gpu_check():
    spec = importlib.util.spec_from_file_location("bench_gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_runs_its_path_on_the_cpu(tmp_path):
    check = _gpu_check()
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--cpu", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHON": sys.executable}, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (tmp_path / "tests.log").read_text()
    assert " passed" in log and "skipped" not in log and "failed" not in log
    surface = (tmp_path / "surface.md").read_text()
    for alias in check.TARGETS:
        table = CostTable.load(tmp_path / f"costs-{alias}.bfloat16.json")
        assert table.dtype == "bfloat16" and table.device == "cpu" and alias in surface
        assert {(e["model"], e["batch"], e["tokens"]) for e in table.entries} == {
            (m, b, t) for m in ("target", "head:1@256") for b in check.CPU["batches"] for t in check.CPU["tokens"]}
        assert all(len(e["repeats"]) == check.CPU["reps"] for e in table.entries)


def test_the_kept_configs_are_the_packaged_models():
    """benchmarks/gpu_configs/ holds what --write-configs reads from the installed packages (checked where this
    machine has converted them: the packaged targets' folders in the cache)."""
    check = _gpu_check()
    for alias in check.TARGETS:
        kept = json.loads((check.CONFIGS / f"{alias}.json").read_text())
        converted = cache_dir() / PACKAGED[alias].folder / "config.json"
        if converted.exists():
            assert kept == {k: v for k, v in json.loads(converted.read_text()).items() if k not in check.LOCAL}
        assert kept["model_type"] in ("llama", "gemma3_text") and kept["num_hidden_layers"] > 2
