"""With the prompt as the unit, the interval of a law's slope covers the population's slope (issue 14's first test).

Synthetic per-prompt records: 16 prompts, each with its own slope drawn around a known population slope, measured at
4 checkpoints with noise. The mean of per-prompt slopes with a t interval over prompts covers the population slope
in >= 90% of 200 seeded repeats; a classical OLS fit to the pooled means (the prompts averaged first) covers it far
less, because its interval never sees the prompts' spread of slopes.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fit.prompt_unit import mean_slope, unit_points
from scylla.errors import InputError

TRUE_SLOPE, SLOPE_SD, NOISE_SD, PROMPTS = 0.10, 0.06, 0.02, 16
TOKENS = [4096, 8192, 16384, 32768]


def synthetic_records(rng: np.random.Generator) -> list[dict]:
    """One eval record per checkpoint with per-prompt counts (200 target calls per prompt, new tokens = MAT x 200)."""
    slopes = rng.normal(TRUE_SLOPE, SLOPE_SD, PROMPTS)
    intercepts = rng.normal(1.0, 0.1, PROMPTS)
    records = []
    for x in TOKENS:
        mat = intercepts + slopes * np.log(x / TOKENS[0]) + rng.normal(0, NOISE_SD, PROMPTS)
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


def test_prompt_unit_interval_covers_the_population_slope():
    rng = np.random.default_rng(0)
    unit_hits = pooled_hits = 0
    for _ in range(200):
        records = synthetic_records(rng)
        lo, hi = mean_slope(unit_points(records)).slope_ci95
        unit_hits += lo <= TRUE_SLOPE <= hi
        lo, hi = pooled_ci(records)
        pooled_hits += lo <= TRUE_SLOPE <= hi
    print(f"coverage of the population slope over 200 repeats: prompt as unit {unit_hits / 200:.2f}, "
          f"pooled means {pooled_hits / 200:.2f}")
    assert unit_hits >= 180
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
    assert "(32 units)" in "\n".join(lines)  # 16 prompts x 2 seeds
    unit = json.loads((tmp_path / "fits.json").read_text())["fits"][0]["prompt_unit"]
    assert unit["units"] == 32 and unit["slope_ci95"][0] < unit["slope"] < unit["slope_ci95"][1]
