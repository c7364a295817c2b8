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
