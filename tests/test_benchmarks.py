"""The benchmark scripts run end to end on the tiny target (their numbers are never asserted: benchmarks report
ratios, they do not pass or fail)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_decode_benchmark_interleaves_its_modes_and_pairs_the_ratios(tmp_path, capsys, monkeypatch):
    """A warm-up of every mode, then rounds timing every mode once, in reverse order every other round; speed-ups
    are paired medians with an interval; every mode's output equals plain decoding's."""
    out = tmp_path / "decode.json"
    decode = _script("decode")
    calls, one_pass = [], decode.one_pass
    monkeypatch.setattr(decode, "one_pass", lambda mode, *a: calls.append(mode.name) or one_pass(mode, *a))
    argv = ["--target", "tiny-random-llama", "--sets", "copy", "--prompts-per-set", "2", "--max-new-tokens", "8",
            "--repeats", "3", "--batch-sizes", "1", "--draft-layers", "1", "--no-hf", "--json", str(out)]
    assert decode.main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    modes = ["plain", "truncated-k1", "prompt-lookup"]
    assert [r["mode"] for r in rows] == modes and calls == modes + modes + modes[::-1] + modes
    assert all(r["same_as_plain"] and len(r["tokens_per_second_runs"]) == r["rounds"] == 3 for r in rows)
    lo, hi = rows[1]["speed_up_ci95"]
    assert lo <= rows[1]["speed_up"] <= hi and rows[0]["speed_up"] == 1.0
    assert "| copy | 1 | scylla | prompt-lookup |" in capsys.readouterr().out


def test_crowded_benchmark_interleaves_its_runs_and_kills_its_busy_processes(tmp_path, monkeypatch, capsys):
    """benchmarks/crowded.py: every policy quiet and crowded in each round, the policies in reverse order and crowded
    first every other round; its busy processes run during the crowded runs only and are gone at the end. With
    injected runs (10 s quiet, 60 s crowded with 5 runnable on 2 cores) the fair share is 10 x 5 / 2 = 25 s and
    the run took 2.4x its fair share; a quiet machine (1 runnable) owes no slowdown: fair share = quiet."""
    crowded = _script("crowded")
    spinners, runs = [], []
    start = crowded.start_spinners
    monkeypatch.setattr(crowded, "start_spinners", lambda n: spinners.extend(start(n)) or spinners[-n:])

    def injected(grid, prompts, policy):
        busy = sum(p.poll() is None for p in spinners)
        runs.append((policy, busy))
        return {"seconds": 60.0 if busy else 10.0, "threads": 1 if busy else 2, "runnable": [5, 6, 5] if busy else [1],
                "prompts": prompts, "policy": policy}

    monkeypatch.setattr(crowded, "run_child", injected)
    monkeypatch.setattr(crowded.os, "cpu_count", lambda: 2)
    out = tmp_path / "crowded.json"
    argv = ["--prompts", "2", "--busy", "1", "--repeats", "2", "--policies", "PASSIVE,ACTIVE", "--json", str(out)]
    assert crowded.main(argv) == 0
    assert runs == [("PASSIVE", 0), ("PASSIVE", 1), ("ACTIVE", 0), ("ACTIVE", 1),
                    ("ACTIVE", 1), ("ACTIVE", 0), ("PASSIVE", 1), ("PASSIVE", 0)]
    assert len(spinners) == 4 and all(p.poll() is not None for p in spinners)
    summary = json.loads(out.read_text())["summary"]["PASSIVE"]
    assert (summary["fair_share_s"], summary["crowded_over_fair_share"]) == (25.0, 2.4)
    assert "| PASSIVE | 2/1 | 10.0 | 60.0 | 1.0/5.0 | 25.0 | 2.40 |" in capsys.readouterr().out
    pair = {run: {"seconds": seconds, "runnable": [1], "threads": 2} for run, seconds in (("quiet", 10.0),
                                                                                          ("crowded", 12.0))}
    assert crowded.summarise([pair], cores=2)["fair_share_s"] == 10.0
