"""With the prompt as the unit, the interval of a law's slope covers the population's slope (issue 14's first test).

Synthetic per-prompt records: 16 prompts, each with its own slope drawn around a known population slope, measured at
5 checkpoints with a shock per checkpoint that all prompts share and noise. The prompt-unit interval (the spread of
per-prompt slopes plus the checkpoint shocks) covers the population slope in >= 90% of 200 seeded repeats; a
classical OLS fit to the pooled means (the prompts averaged first) covers it far less, because its interval never
sees the prompts' spread of slopes; and the spread of per-prompt slopes alone misses the shared shocks (the
mutation prompt-unit-no-shock).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fit.prompt_unit import METHOD, mean_slope, unit_points
from scylla.errors import InputError

TRUE_SLOPE, SLOPE_SD, NOISE_SD, SHOCK_SD, PROMPTS = 0.10, 0.06, 0.02, 0.03, 16
TOKENS = [4096, 8192, 16384, 32768, 65536]


def synthetic_records(rng: np.random.Generator, shock_sd: float = SHOCK_SD) -> list[dict]:
    """One eval record per checkpoint with per-prompt counts (200 target calls per prompt, new tokens = MAT x 200):
    each prompt's own line, plus a checkpoint shock that every prompt shares (a run's checkpoint is better or worse
    at everything), plus noise."""
    slopes = rng.normal(TRUE_SLOPE, SLOPE_SD, PROMPTS)
    intercepts = rng.normal(1.0, 0.1, PROMPTS)
    records = []
    for x in TOKENS:
        mat = intercepts + slopes * np.log(x / TOKENS[0]) + rng.normal(0, shock_sd) + rng.normal(0, NOISE_SD, PROMPTS)
        records.append(dict(run_id="r", seed=0, train_tokens=x, prompt_ids=[f"p{i}" for i in range(PROMPTS)],
                            prompt_new_tokens=list(mat * 200), prompt_target_calls=[200] * PROMPTS))
    return records


def pooled_ci(records: list[dict]) -> tuple[float, float]:
    """Classical OLS of the pooled MAT on ln x (4 points, t with 2 degrees of freedom)."""
    x = np.log([r["train_tokens"] for r in records])
    y = np.array([sum(r["prompt_new_tokens"]) / sum(r["prompt_target_calls"]) for r in records])
    fit = stats.linregress(x, y)
    half = stats.t.ppf(0.975, len(x) - 2) * fit.stderr
    return fit.slope - half, fit.slope + half


@pytest.mark.parametrize("shock_sd", [0.0, SHOCK_SD])
def test_prompt_unit_interval_covers_the_population_slope(shock_sd):
    rng = np.random.default_rng(0)
    unit_hits = pooled_hits = 0
    for _ in range(200):
        records = synthetic_records(rng, shock_sd)
        lo, hi = mean_slope(unit_points(records)).slope_ci95
        unit_hits += lo <= TRUE_SLOPE <= hi
        lo, hi = pooled_ci(records)
        pooled_hits += lo <= TRUE_SLOPE <= hi
    print(f"checkpoint shocks sd {shock_sd}: coverage of the population slope over 200 repeats: prompt as unit "
          f"{unit_hits / 200:.2f}, pooled means {pooled_hits / 200:.2f}")
    assert unit_hits >= 180
    if not shock_sd:  # with shocks the pooled residuals grow and its interval with them
        assert pooled_hits < unit_hits - 40


def test_units_need_per_prompt_counts_and_two_checkpoints():
    with pytest.raises(InputError, match="per-prompt counts"):
        unit_points([dict(run_id="old", train_tokens=8, mean_accepted_length=1.5)])
    records = synthetic_records(np.random.default_rng(1))[:1]
    with pytest.raises(InputError, match="one x only"):
        mean_slope(unit_points(records))


def test_scylla_fit_reports_the_prompt_unit_slope(tmp_path):
    import json

    from fit.cli import run_fit
    from scylla.records import append_record, new_record

    identity = dict(sweep="s", target="tiny", drafter_type="eagle", draft_layers=1, draft_width=8, draft_params=1,
                    draft_params_with_embeddings=2, data="gsm")
    for seed in (0, 1):
        for r in synthetic_records(np.random.default_rng(seed)):
            r.update(run_id=f"run-s{seed}", seed=seed)
            mat = sum(r["prompt_new_tokens"]) / sum(r["prompt_target_calls"])
            append_record(tmp_path, new_record("eval", **identity, **r, task="gsm", mode="replay",
                                               draft_shape="chain:3", mean_accepted_length=mat))
    lines = run_fit([str(tmp_path)], kind="eval", by="draft_layers", json_path=str(tmp_path / "fits.json"))
    assert "prompt as unit (16 prompts x 2 runs" in "\n".join(lines)
    (fit,) = json.loads((tmp_path / "fits.json").read_text())["fits"]
    unit = fit["prompt_unit"]
    assert unit["units"] == 32 and unit["slope_ci95"][0] < unit["slope"] < unit["slope_ci95"][1]
    # The law's slope and interval are the prompt unit's; the points' OLS stays under "pooled", narrower.
    assert fit["method"] == unit["method"] and fit["slope_ci95"] == unit["slope_ci95"] and fit["df"] == unit["df"]
    assert np.ptp(fit["pooled"]["slope_ci95"]) < np.ptp(fit["slope_ci95"])
    # The line passes through the pooled points' centroid.
    centre = np.mean(np.log(fit["x_values"]))
    assert fit["intercept"] + fit["slope"] * centre == pytest.approx(np.mean(fit["y_values"]), abs=1e-12)


def test_the_replay_figure_draws_the_reports_laws(tmp_path):
    """Law 1's replay figure plots the records ``scylla fit --where REPLAY_WHERE`` fits, and its lines are those
    fits (the prompt-unit laws), not a refit of the pooled points."""
    import json

    import matplotlib.pyplot as plt

    from fit.cli import run_fit
    from paper_figs.laws import REPLAY_WHERE, draw_law, replay_law_figures
    from fit.loglinear import group_label
    from scylla.records import append_record, new_record, read_records

    identity = dict(sweep="s", target="tiny", drafter_type="eagle", draft_width=8, draft_params=1,
                    draft_params_with_embeddings=2, data="gsm")
    for layers in (1, 2):
        for seed, prompt_set in ((0, "fit"), (1, "fit"), (2, "select")):  # select-set records must stay out
            for r in synthetic_records(np.random.default_rng(10 * layers + seed)):
                r.update(run_id=f"l{layers}-s{seed}", seed=seed)
                mat = sum(r["prompt_new_tokens"]) / sum(r["prompt_target_calls"])
                append_record(tmp_path, new_record(
                    "eval", **identity, **r, draft_layers=layers, task="gsm", mode="replay", prompt_set=prompt_set,
                    draft_shape="chain:3", mean_accepted_length=mat, n_prompts=PROMPTS, max_new_tokens=48))
    where = group_label({k: v for k, v in REPLAY_WHERE.items() if k != "kind"})
    run_fit([str(tmp_path)], kind="eval", where=where, by="draft_layers,draft_shape",
            json_path=str(tmp_path / "fits.json"))
    fits = json.loads((tmp_path / "fits.json").read_text())["fits"]
    records = read_records(tmp_path)
    paths = replay_law_figures(records, tmp_path / "figs")
    assert [p.name for p in paths] == ["law1_replay_gsm-chain-3.png", "law1_replay_gsm-chain-3.pdf"]
    fig = draw_law([r for r in records if r["prompt_set"] == "fit"], "train_tokens", "mean_accepted_length",
                   "draft_layers")
    for line, fit in zip(fig.axes[0].lines, fits):
        x, y = line.get_data()
        assert np.polyfit(np.log(x), y, 1)[0] == pytest.approx(fit["slope"], rel=1e-6)
        assert fit["method"] == METHOD and fit["prompt_unit"]["units"] == 2 * PROMPTS
        assert len(fit["x_values"]) == 2 * len(TOKENS)  # every checkpoint of the 2 fit-set seeds
    plt.close(fig)
