"""The cost model: measured forward costs saved per device, and the speed-up they predict."""

from __future__ import annotations

import pytest

from scylla import ScyllaError, truncated_draft
from scylla.costs import CostTable, measure_costs, predicted_speedup, step_cost


def test_measure_save_load(target, tmp_path):
    table = measure_costs({"target": target, "draft": truncated_draft(target, 1)}, batch_sizes=[1, 2],
                          tokens=[1, 3], contexts=[16], reps=3)
    assert table.device == "cpu" and table.dtype == "float32" and len(table.entries) == 8
    assert all(e["seconds"] > 0 for e in table.entries)
    # every repeat is kept, in round order, beside its median and extremes (law 3 resamples the rounds)
    assert all(len(e["repeats"]) == 3 and e["seconds"] == sorted(e["repeats"])[1] and e["seconds_min"] ==
               min(e["repeats"]) and e["seconds_max"] == max(e["repeats"]) for e in table.entries)
    table.save(tmp_path / "costs.json")
    loaded = CostTable.load(tmp_path / "costs.json")
    assert loaded == table
    assert loaded.nearest("draft", 2, 3, 16) == table.entries[-1]["seconds"]
    with pytest.raises(ScyllaError, match="no measured cost"):
        loaded.nearest("target", 4, 1, 16)
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ScyllaError, match="not a cost table"):
        CostTable.load(tmp_path / "bad.json")


def test_the_cost_table_interleaves_its_models(target, monkeypatch):
    """Each repetition times every model and token count once, per batch size (warm-up 2, reps 3: 5 cycles), so a
    slow stretch of the machine hits the target and the draft alike; run model by model it would not."""
    import scylla.costs as costs

    calls, timed = [], costs._Forwards.seconds
    monkeypatch.setattr(costs._Forwards, "seconds", lambda self, n: calls.append((self.kv.model, n)) or timed(self, n))
    draft = truncated_draft(target, 1)
    measure_costs({"target": target, "draft": draft}, batch_sizes=[1], tokens=[1, 3], contexts=[16], reps=3)
    assert calls == [(target, 1), (target, 3), (draft, 1), (draft, 3)] * 5


def test_predicted_speedup_formula():
    # MAT 2 with 3 drafts at 0.1 of a step each and a verify of 4 tokens costing 1.5 steps: 2 / 1.8
    assert predicted_speedup(2.0, 3, 0.1, 1.5) == pytest.approx(2.0 / 1.8)
    assert predicted_speedup(1.0, 0, 0.0, 1.0) == 1.0  # plain decoding


def test_costs_cli(tmp_path, capsys):
    from pipeline.cli import main

    out = tmp_path / "costs.json"
    argv = ["costs", "--target", "tiny-random-llama", "--draft", "truncated:1", "--batch-sizes", "1,2", "--tokens",
            "1,3", "--contexts", "8", "--reps", "2", "--out", str(out)]
    assert main(argv) == 0
    assert len(CostTable.load(out).entries) == 8
    assert main(["costs", "--draft", "prompt-lookup", "--out", str(out)]) == 2
    assert "truncated:K or draft:PATH" in capsys.readouterr().err
    # --calibrate: plain decoding's online records' seconds per step, against the table's forward
    from scylla.records import append_record, new_record

    table, steps = CostTable.load(out), {}
    run = tmp_path / "online"
    for b in (1, 2):
        steps[b] = step = table.nearest("target", b, 1) + 0.003
        append_record(run, new_record("eval", run_id="baseline", sweep="", target="tiny-random-llama",
                                      drafter_type="none", draft_layers=0, draft_width=0, draft_params=0,
                                      draft_params_with_embeddings=0, train_tokens=0, data="", seed=0, method="none",
                                      mode="online", batch_size=b, task="copy", temperature=0.0,
                                      draft_shape="chain:0", step_seconds=step))
    assert main(argv + ["--calibrate", str(run)]) == 0  # measures the table again, then calibrates it
    calibrated = CostTable.load(out)
    assert set(calibrated.overhead) == {"1", "2"}
    for b in (1, 2):
        assert calibrated.overhead[str(b)]["plain"] == pytest.approx(steps[b] - calibrated.nearest("target", b, 1))
    capsys.readouterr()
    assert main(argv + ["--calibrate", str(tmp_path)]) == 2  # no records there: refused before measuring
    assert "records.jsonl does not exist" in capsys.readouterr().err


def test_step_cost_chain_tree_and_lookup():
    """One formula for every caller: (draft forwards x their cost + one verify) / one target step."""
    table = CostTable("cpu", "float32", [
        {"model": m, "batch": 1, "tokens": t, "context": 128, "seconds": s}
        for m, t, s in [("target", 1, 0.10), ("target", 4, 0.15), ("target", 9, 0.2), ("head:1", 1, 0.01),
                        ("head:1", 3, 0.02)]])
    assert step_cost(table, "head:1", 1, 4, 3) == pytest.approx((3 * 0.01 + 0.15) / 0.10)  # chain of 3
    assert step_cost(table, "head:1", 1, 9, 3, 3) == pytest.approx((3 * 0.02 + 0.2) / 0.10)  # tree: depth 3, top_k 3
    assert step_cost(table, None, 1, 9, 8) == pytest.approx(0.2 / 0.10)  # prompt lookup: no model forward
    with pytest.raises(ScyllaError, match="no measured cost"):
        step_cost(table, "head:2", 1, 4, 3)


def test_calibrate_fits_the_per_step_overhead_and_step_cost_adds_it():
    """Online records whose decoding steps take the table's forwards plus 5 ms (plain) or 11-13 ms (a head's chain of
    3): the calibrated table recovers both overheads (medians), and the predicted speed-up uses them."""
    from scylla.costs import calibrate

    table = CostTable("cpu", "float32", [
        {"model": m, "batch": 2, "tokens": t, "context": 128, "seconds": s}
        for m, t, s in [("target", 1, 0.10), ("target", 4, 0.15), ("head:1", 1, 0.01)]])

    def online(method, drafter, forwards, extra, calls):
        return dict(mode="online", method=method, drafter_type=drafter, draft_layers=1, batch_size=2,
                    num_draft_tokens=3 if drafter == "eagle" else 0, step_seconds=forwards + extra,
                    prompt_target_calls=calls)

    # per-prompt steps: plain decoding's rows all take 8; a head's rows 4 and 6 in one batch of 2 (it steps 6 times,
    # its average row needs 5: lag 1.2), 4 and 4 in the other (lag 1)
    records = [online("none", "none", 0.10, 0.005, [8, 8, 8, 8]),
               online("draft:h", "eagle", 3 * 0.01 + 0.15, 0.011, [4, 6, 4, 4]),
               online("draft:h", "eagle", 3 * 0.01 + 0.15, 0.012, [4, 6, 4, 4]),
               online("draft:h", "eagle", 3 * 0.01 + 0.15, 0.013, [4, 6, 4, 4]),
               dict(mode="replay", method="draft:h")]  # not timed: ignored
    calibrated = calibrate(table, records)
    assert calibrated.overhead["2"]["plain"] == pytest.approx(0.005)
    assert calibrated.overhead["2"]["chain"] == pytest.approx(0.012)
    assert calibrated.lag["2"] == {"plain": 1.0, "chain": pytest.approx((6 + 4) / (5 + 4))}
    assert step_cost(calibrated, "head:1", 2, 4, 3) == pytest.approx((3 * 0.01 + 0.15 + 0.012) * 10 / 9 / 0.105)
    assert step_cost(table, "head:1", 2, 4, 3) == pytest.approx((3 * 0.01 + 0.15) / 0.10)  # uncalibrated
