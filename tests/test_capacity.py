"""Law 2 and the joint law MAT(N, D) with (prompt, seed) lines across sizes (fit/capacity.py), the LR check, the
fallback that says why, width-keyed head costs and `scylla recipe`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fit.capacity import TERMS, fit_joint_law, holdout_largest, law2, lr_check, with_train_seeds
from fit.prompt_unit import fit_laws, unit_points
from pipeline.cli import main
from scylla.costs import CostTable, head_name, step_cost
from scylla.errors import InputError

SIZES = [(w, n, int(0.5e6 + 3.2 * w * w * n + 640 * w)) for w in (128, 256, 512) for n in (1, 2, 4)]  # (width, layers, N)
TOKENS = [4096, 8192, 16384, 32768, 65536]
TRUE = dict(b0=2.0, bN=0.10, bD=0.15, bND=0.03)


def simulate(rng: np.random.Generator, prompts: int = 16, seeds: int = 2, prompt_sd: float = 0.08,
             shock_sd: float = 0.03, noise_sd: float = 0.05) -> tuple[list[dict], tuple[float, float]]:
    """Replay-like eval records of a capacity study: each prompt has its own coefficients (shared by every seed: the
    prompt is the unit), each (size, seed) run a shock per checkpoint shared by all prompts, plus per-point noise.
    Returns the records and the design's centre (mean ln N, mean ln D)."""
    ln_n = np.log([s[2] for s in SIZES])
    ln_d = np.log(TOKENS)
    centre = (float(ln_n.mean()), float(ln_d.mean()))
    coef = np.array([TRUE[k] for k in ("b0", "bN", "bD", "bND")]) + rng.normal(0, prompt_sd, (prompts, 4)) * [
        1, 0.5, 0.5, 0.2]
    records = []
    for seed in range(seeds):
        for (w, n, params), a in zip(SIZES, ln_n - centre[0]):
            for tokens, d in zip(TOKENS, ln_d - centre[1]):
                mat = coef @ [1, a, d, a * d] + rng.normal(0, shock_sd) + rng.normal(0, noise_sd, prompts)
                calls = np.full(prompts, 100)
                records.append(dict(kind="eval", run_id=f"w{w}-l{n}-s{seed}", draft_width=w, draft_layers=n,
                                    draft_params=params, train_tokens=tokens, train_seed=seed,
                                    prompt_ids=[f"p{i}" for i in range(prompts)],
                                    prompt_new_tokens=(mat * calls).tolist(), prompt_target_calls=calls.tolist(),
                                    new_tokens=float((mat * calls).sum()), target_calls=int(calls.sum()),
                                    mean_accepted_length=float(mat.mean())))
    return records, centre


def test_joint_law_recovers_the_surface_and_its_interval_covers_two_sided():
    """Over 100 simulated studies (16 prompts x 2 seeds x 9 sizes x 5 milestones): the 95% intervals of the size
    slope and the interaction cover the truth 87-99.5% of the time, and are not needlessly wide (their mean half-width
    within 0.7-1.6x of 1.96 x the estimates' actual spread). Fails with prompt-seed pairs as the units (too narrow:
    the seeds share a prompt's coefficients) and with the seeds' shocks left undivided (too wide)."""
    rng = np.random.default_rng(0)
    hits = {t: 0 for t in TERMS[1:]}
    estimates = {t: [] for t in TERMS[1:]}
    halves = {t: [] for t in TERMS[1:]}
    runs = 100
    for _ in range(runs):
        records, _ = simulate(rng)
        law = fit_joint_law(records)
        for t, true in zip(TERMS[1:], (TRUE["bN"], TRUE["bD"], TRUE["bND"])):
            lo, hi = law.ci95[t]
            hits[t] += lo <= true <= hi
            estimates[t].append(law.coefficients[t])
            halves[t].append((hi - lo) / 2)
    for t in TERMS[1:]:
        coverage, ratio = hits[t] / runs, np.mean(halves[t]) / (1.96 * np.std(estimates[t]))
        print(f"{t}: coverage {coverage:.3f}, mean half-width / 1.96 sd {ratio:.2f}")
        assert 0.87 <= coverage <= 0.995, (t, coverage)
        assert 0.7 <= ratio <= 1.6, (t, ratio)


def test_the_held_out_largest_size_is_predicted_inside_its_interval_at_the_right_rate():
    rng = np.random.default_rng(1)
    inside = total = 0
    for _ in range(20):
        records, _ = simulate(rng)
        law, held = holdout_largest(records)
        assert law.sizes[1] < max(s[2] for s in SIZES)  # fitted without it
        inside += sum(h.inside for h in held)
        total += len(held)
        assert all(h.runs == 2 for h in held)
    assert 0.8 <= inside / total <= 1.0, inside / total


def test_law2_lines_join_the_runs_of_one_seed_across_sizes():
    rng = np.random.default_rng(2)
    records, _ = simulate(rng)
    units = unit_points([r for r in records if r["train_tokens"] == 65536], "draft_params")
    assert len(units) == 16 * 2 and all(len(points) == 9 for points in units.values())  # one line spans every size
    law, unit = law2(records, 65536)
    assert unit.prompts == 16 and unit.runs == 2
    d = math.log(65536) - np.mean(np.log(TOKENS))
    true_slope = TRUE["bN"] + TRUE["bND"] * d
    assert law.slope_ci95[0] < true_slope < law.slope_ci95[1]
    # scylla fit --x draft_params forms the same lines (not the pooled-points fallback)
    (_, fitted, mean), = fit_laws([r for r in records if r["train_tokens"] == 65536], x="draft_params", by=())
    assert mean is not None and fitted.slope == pytest.approx(law.slope) and fitted.fallback is None


def test_a_fallback_says_why_in_the_fit_and_on_the_console(tmp_path, capsys):
    rng = np.random.default_rng(3)
    records, _ = simulate(rng, prompts=4, seeds=1)
    at = [{k: v for k, v in r.items() if k != "train_seed"} for r in records if r["train_tokens"] == 65536]
    (_, fitted, mean), = fit_laws(at, x="draft_params", by=())
    assert mean is None and "train_seed" in fitted.fallback
    path = tmp_path / "records.jsonl"
    extra = dict(schema_version=1, sweep="s", target="t", drafter_type="eagle", draft_params_with_embeddings=1, data="d",
                 seed=0, git_commit="x", time="2026-12-06T00:00:00Z")
    path.write_text("".join(json.dumps({**r, **extra}) + "\n" for r in at))
    assert main(["fit", str(tmp_path), "--x", "draft_params", "--kind", "eval"]) == 0
    out = capsys.readouterr().out
    assert "fell back to ols-" in out and "train_seed" in out
    assert with_train_seeds(at, [dict(run_id=r["run_id"], seed=7) for r in at])[0]["train_seed"] == 7


def test_lr_check_follows_its_rule():
    trains = [dict(run_id="a", train_tokens=65536, seed=0, draft_width=128, draft_layers=1, lr_peak=lr,
                   heldout_accuracy=acc) for lr, acc in ((0.001, 0.70), (0.003, 0.72), (0.01, 0.71))]
    trains += [dict(run_id="b", train_tokens=65536, seed=0, draft_width=512, draft_layers=4, lr_peak=lr,
                    heldout_accuracy=acc) for lr, acc in ((0.001, 0.80), (0.003, 0.75), (0.01, 0.60))]
    trains += [dict(run_id="c", train_tokens=4096, seed=0, draft_width=512, draft_layers=4, lr_peak=0.01,
                    heldout_accuracy=0.99)]  # not the top milestone: ignored
    small, large = lr_check(trains, 0.003)
    assert (small.best_lr, small.agrees) == (0.003, True)
    assert (large.best_lr, large.agrees) == (0.001, False)


def cost_table() -> CostTable:
    rows = [("target", 1, 0.10), ("target", 4, 0.12)]
    rows += [(head_name(n, w), 1, 0.002 * n * w / 128) for w in (128, 256, 512) for n in (1, 2, 4)]
    return CostTable("cpu", "float32", [dict(model=m, batch=1, tokens=t, context=128, seconds=s, seconds_min=s * 0.98,
                                             seconds_max=s * 1.02) for m, t, s in rows])


def test_head_costs_are_keyed_by_width_and_depth():
    table = cost_table()
    assert table.head(2, 256) == "head:2@256"
    assert step_cost(table, table.head(4, 512), 1, 4, 3) > step_cost(table, table.head(4, 128), 1, 4, 3)
    with pytest.raises(InputError, match="widths measured: 128, 256, 512"):
        table.head(2, 64)
    with pytest.raises(InputError, match="no 3-layer head"):
        table.head(3, 128)
    legacy = CostTable("cpu", "float32", [dict(model="head:1", batch=1, tokens=1, context=128, seconds=0.01)])
    assert legacy.head(1, 256) == "head:1"  # tables before widths: one width a table


def capacity_file(tmp_path, records) -> str:
    law = fit_joint_law(records)
    path = tmp_path / "capacity.json"
    sizes = [dict(draft_params=p, draft_width=w, draft_layers=n) for w, n, p in SIZES]
    path.write_text(json.dumps(dict(shape="chain:3", layout="eagle", target_hidden_size=576, sizes=sizes,
                                    joint=law.to_dict())))
    return str(path)


def test_recipe_recommends_the_size_with_the_best_lower_bound_and_says_when_it_extrapolates(tmp_path, capsys):
    records, _ = simulate(np.random.default_rng(4))
    capacity = capacity_file(tmp_path, records)
    table = tmp_path / "costs.json"
    cost_table().save(table)
    assert main(["recipe", "--capacity", capacity, "--cost", str(table), "--tokens", "65536", "--batch-size", "1"]) == 0
    out = capsys.readouterr().out
    assert "Recommended: width" in out and "Inside the fitted ranges" in out and "Scylla only" in out
    assert "uncalibrated" in out  # forwards only: the speed-ups are optimistic, and the recipe says so
    calibrated = cost_table()
    calibrated.overhead = {"1": {"plain": 0.001, "chain": 0.002, "tree": 0.003}}
    calibrated.save(table)
    assert main(["recipe", "--capacity", capacity, "--cost", str(table), "--tokens", "65536", "--batch-size", "1"]) == 0
    assert "uncalibrated" not in capsys.readouterr().out
    # the same MAT surface, but every head costs 50x: drafting cannot pay, plain decoding is recommended
    expensive = cost_table()
    expensive.entries = [{**e, **{k: e[k] * 50 for k in ("seconds", "seconds_min", "seconds_max")}}
                         if e["model"].startswith("head") else e for e in expensive.entries]
    expensive.save(table)
    assert main(["recipe", "--capacity", capacity, "--cost", str(table), "--tokens", "1000000",
                 "--batch-size", "1"]) == 0
    out = capsys.readouterr().out
    assert "Recommended: plain decoding" in out and "1.18 decades above" in out


def test_recipe_prefers_the_cheaper_head_when_the_law_gives_sizes_the_same_mat(tmp_path, capsys):
    """A size slope of 0: every size predicts the same MAT, so the cheapest head (128 x 1) must win."""
    TRUE_FLAT = dict(TRUE, bN=0.0, bND=0.0)
    rng = np.random.default_rng(5)
    saved = dict(TRUE)
    TRUE.update(TRUE_FLAT)
    try:
        records, _ = simulate(rng, prompt_sd=0.0, shock_sd=0.0, noise_sd=0.001)
    finally:
        TRUE.update(saved)
    table = tmp_path / "costs.json"
    cost_table().save(table)
    main(["recipe", "--capacity", capacity_file(tmp_path, records), "--cost", str(table), "--tokens", "65536",
          "--batch-size", "1"])
    assert "Recommended: width 128 x 1 layer(s)" in capsys.readouterr().out


def test_recipe_takes_law3s_shape_measured_or_from_its_law(tmp_path):
    from pipeline.recipe import law3_shape

    path = tmp_path / "law3.json"
    path.write_text(json.dumps(dict(draft="head:1@256", prompt_set="select", choices=[
        dict(batch=1, best="chain:4", tied=["chain:2"])], laws=[dict(
            family="chain", lengths=[1, 2, 4, 8, 16], batches=[1, 2, 4], intercept=4.0, slope=-1.0)])))
    assert law3_shape(path, 1).startswith("chain:4 at batch 1")
    assert law3_shape(path, 32).startswith("chain:1 at batch 32")  # k* = 4 - ln 32 = 0.53: the shortest chain
    assert law3_shape(path, 5).startswith("chain:2 at batch 5")  # k* = 2.39: nearest in ln length is 2
    with pytest.raises(InputError, match="not a law-3 file"):
        law3_shape(tmp_path / "missing.json", 1)


def test_scylla_capacity_reads_a_run_folder_and_writes_what_recipe_reads(tmp_path, capsys):
    """The verb end to end on a study's records (the LR check's extra runs left out of the laws)."""
    records, _ = simulate(np.random.default_rng(6), prompts=8)
    extra = dict(schema_version=1, sweep="s", target="t", drafter_type="eagle", draft_params_with_embeddings=1, data="d",
                 git_commit="x", time="2026-12-06T00:00:00Z")
    evals = [{**r, **extra, "seed": 0, "mode": "replay", "prompt_set": "fit", "draft_shape": "chain:3",
              "temperature": 0.0} for r in records]
    trains = [{**extra, "kind": "train", "run_id": r["run_id"], "seed": r["train_seed"], "lr_peak": 0.003,
               "train_tokens": r["train_tokens"], "draft_params": r["draft_params"], "draft_width": r["draft_width"],
               "draft_layers": r["draft_layers"], "heldout_accuracy": 0.5} for r in records]
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in trains + evals))
    out = tmp_path / "capacity.json"
    assert main(["capacity", str(tmp_path), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Law 2" in text and "Joint law" in text and "left out of the joint law" in text
    payload = json.loads(out.read_text())
    assert len(payload["sizes"]) == 9 and payload["joint"]["prompts"] == 8 and payload["lr_check"] == []
    assert main(["capacity", str(tmp_path / "none")]) == 2  # no records: one line, exit 2
