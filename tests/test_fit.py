"""The fitting stage: interval coverage on a known law, pinned values, grouping, errors, the saturating law, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fit import bootstrap_slope, extrapolation_check, fit_log_linear, fit_saturating
from fit.cli import parse_where
from pipeline.cli import main
from scylla.errors import ScyllaError
from scylla.records import append_record, new_record

X = 2.0 ** np.arange(10, 18)  # 8 points, 2^10 .. 2^17


def points(x, y, **fields) -> list[dict]:
    return [{"train_tokens": float(a), "mean_accepted_length": float(b), **fields} for a, b in zip(x, y)]


def test_slope_interval_covers_the_true_slope():
    rng = np.random.default_rng(0)
    repeats, covered, slopes = 200, 0, []
    for _ in range(repeats):
        y = 1.2 + 0.35 * np.log(X) + rng.normal(0.0, 0.05, len(X))
        (fit,) = fit_log_linear(points(X, y), by=())
        lo, hi = fit.slope_ci95
        covered += lo <= 0.35 <= hi
        slopes.append(fit.slope)
    coverage = covered / repeats
    print(f"95% slope interval coverage: {coverage:.1%} of {repeats}")
    assert coverage >= 0.90, coverage
    assert abs(np.mean(slopes) - 0.35) < 2 * np.std(slopes, ddof=1) / math.sqrt(repeats)


def test_pinned_values():
    # y on k ln 2 (k = 0..4): slope 0.28 per doubling, intercept 1, R^2 = 0.784 / 0.792 = 98/99.
    (fit,) = fit_log_linear(points([1, 2, 4, 8, 16], [1.0, 1.3, 1.5, 1.9, 2.1]), by=())
    assert fit.slope == pytest.approx(0.28 / math.log(2), abs=1e-9)
    assert fit.intercept == pytest.approx(1.0, abs=1e-9)
    assert fit.r2 == pytest.approx(98 / 99, abs=1e-9)
    # 5 points: classical errors, by hand: residuals 0, .02, -.06, .06, -.02; sqrt(SSR / 3 / (10 ln^2 2))
    assert fit.slope_se == pytest.approx(math.sqrt(0.008 / 3 / 10) / math.log(2), abs=1e-12)
    assert fit.n == 5 and fit.method == "ols-classical" and len(fit.residuals) == 5
    t = 3.182446305284263  # t_0.975 with 3 df
    assert fit.slope_ci95 == pytest.approx((fit.slope - t * fit.slope_se, fit.slope + t * fit.slope_se), abs=1e-9)
    mean, lo, hi = fit.predict(16)
    assert mean == pytest.approx(2.12, abs=1e-9) and lo < mean < hi
    _, plo, phi = fit.predict(16, interval="prediction")
    assert plo < lo and phi > hi
    assert json.loads(json.dumps(fit.to_dict()))["slope_ci95"] == list(fit.slope_ci95)


def test_hc3_errors_from_25_points_or_when_the_variance_changes():
    # The same 5 points 5 times (25 points): HC3, by hand (X'X)^-1 X' diag(e^2 / (1 - h)^2) X (X'X)^-1.
    (fit,) = fit_log_linear(points([1, 2, 4, 8, 16] * 5, [1.0, 1.3, 1.5, 1.9, 2.1] * 5), by=())
    x, e = np.log([1, 2, 4, 8, 16] * 5), np.array([0, 0.02, -0.06, 0.06, -0.02] * 5)
    design = np.column_stack([np.ones(25), x])
    bread = np.linalg.inv(design.T @ design)
    h = np.einsum("ij,jk,ik->i", design, bread, design)
    sandwich = bread @ design.T @ np.diag(e**2 / (1 - h) ** 2) @ design @ bread
    assert fit.method == "ols-hc3" and fit.slope_se == pytest.approx(math.sqrt(sandwich[1, 1]), rel=1e-9)
    # 12 points whose spread grows with x: Breusch-Pagan rejects, so HC3 below 25 points too.
    grow = np.random.default_rng(0).normal(0, 1, 12) * np.repeat([0.001, 0.01, 0.1, 1.0], 3)
    (fit,) = fit_log_linear(points(np.repeat([1, 2, 4, 8], 3), 1 + np.repeat(np.arange(4), 3) + grow), by=())
    assert fit.method == "ols-hc3"


def test_robust_fit_resists_an_outlier():
    y = 1.2 + 0.35 * np.log(X) + np.random.default_rng(1).normal(0.0, 0.02, len(X))
    y[3] += 1.0
    (ols,) = fit_log_linear(points(X, y), by=())
    (huber,) = fit_log_linear(points(X, y), by=(), robust=True)
    assert huber.method == "huber"
    assert abs(huber.slope - 0.35) < abs(ols.slope - 0.35) and abs(huber.slope - 0.35) < 0.02


def test_one_fit_per_group():
    records = []
    for layers, slope in [(1, 0.2), (2, 0.3), (4, 0.4)]:
        records += points(X, 1.0 + slope * np.log(X), draft_layers=layers)
    fits = fit_log_linear(records[::-1], by=("draft_layers",))
    assert [f.group for f in fits] == [{"draft_layers": 1}, {"draft_layers": 2}, {"draft_layers": 4}]
    assert [f.slope for f in fits] == pytest.approx([0.2, 0.3, 0.4])
    assert all(f.n == len(X) for f in fits)


def test_bootstrap_resamples_runs():
    rng = np.random.default_rng(2)
    x = np.tile(X, 4)
    runs = np.repeat(["a", "b", "c", "d"], len(X))
    y = 1.2 + 0.35 * np.log(x) + np.repeat(rng.normal(0, 0.1, 4), len(X)) + rng.normal(0, 0.02, len(x))
    lo, hi = bootstrap_slope(x, y, 500, seed=0, runs=runs)
    assert lo < hi and lo < 0.36 and hi > 0.34
    assert bootstrap_slope(x, y, 500, seed=0, runs=runs) == (lo, hi)  # seeded
    records = [dict(r, run_id=run) for r, run in zip(points(x, y), runs)]
    (fit,) = fit_log_linear(records, by=(), bootstrap=200)
    assert fit.bootstrap_unit == "run" and fit.bootstrap_units == 4 and fit.slope_ci95_bootstrap is not None
    (fit,) = fit_log_linear(points(X, 1 + 0.3 * np.log(X)), by=(), bootstrap=200)
    assert fit.bootstrap_unit == "point" and fit.slope_ci95_bootstrap == pytest.approx((0.3, 0.3))


@pytest.mark.parametrize(
    "records, message",
    [
        (points([1, 2, 2, 1], [1, 2, 2, 1], draft_layers=3), "group draft_layers=3: needs at least 3 distinct"),
        (points([0, 2, 4, 8], [1, 2, 3, 4], draft_layers=3), "group draft_layers=3: x 'train_tokens' must be > 0"),
        (points([-1, 2, 4, 8], [1, 2, 3, 4], draft_layers=3), "must be > 0"),
        (points([1, 2, 4, 8], [1, 2, math.nan, 4], draft_layers=3), "draft_layers=3: y 'mean_accepted_length' is"),
        (points([1, 2, 4, 8], [1, 2, 3, 4], draft_layers=3)[:3] + [{"train_tokens": 16, "draft_layers": 3}],
         "field 'mean_accepted_length' is missing from 1 of 4 records \\(#3\\)"),
        (points([1, 2, 4, 8], [1, 2, 3, 4]), "field 'draft_layers' is missing"),
        ([], "no records"),
    ],
)
def test_bad_input_is_one_line_error(records, message):
    with pytest.raises(ScyllaError, match=message) as err:
        fit_log_linear(records)
    assert "\n" not in str(err.value)


def test_none_y_is_an_error():
    records = points([1, 2, 4, 8], [1, 2, 3, 4])
    records[1]["mean_accepted_length"] = None
    with pytest.raises(ScyllaError, match="null, NaN"):
        fit_log_linear(records, by=())


def test_saturating_law_and_extrapolation_check():
    y = 3.0 - 40.0 * X**-0.45
    sat = fit_saturating(X, y)
    assert sat.success and sat.n_starts == 8
    assert sat.params["y_max"] == pytest.approx(3.0, abs=1e-3)
    assert sat.params["k"] == pytest.approx(40.0, abs=1e-3)
    assert sat.params["beta"] == pytest.approx(0.45, abs=1e-3)
    check = extrapolation_check(X, y)
    assert check.preferred == "saturating" and check.held_out_x == X.max() and check.n_fit == 7
    assert check.errors["saturating"] < 1e-3 < check.errors["log_linear"]
    check = extrapolation_check(X, 1.2 + 0.35 * np.log(X))
    assert check.preferred == "log_linear" and check.errors["log_linear"] < 1e-9
    check = extrapolation_check(X[:4], y[:4])  # 3 x left would fit the 3-parameter law exactly: refused
    assert check.preferred is None and "at least 5 distinct" in check.reason
    assert extrapolation_check(X[:5], y[:5]).n_fit == 4


def _write_runs(run_dir, seeds, rng):
    for seed in seeds:
        for layers, slope in [(1, 0.25), (2, 0.35)]:
            for task, offset in [("gsm", 0.0), ("code", 5.0)]:
                for tokens in 2 ** np.arange(10, 16):
                    record = new_record(
                        "train", run_id=f"eagle-l{layers}-s{seed}-{task}", sweep="test", target="tiny",
                        drafter_type="eagle", draft_layers=layers, draft_width=32, draft_params=1000 * layers,
                        draft_params_with_embeddings=3000 * layers, train_tokens=int(tokens), data="gsm", seed=seed,
                        task=task, mean_accepted_length=offset + 1.0 + slope * math.log(tokens) + rng.normal(0, 0.02),
                    )
                    assert append_record(run_dir, record)


def test_cli_end_to_end(tmp_path, capsys):
    rng = np.random.default_rng(4)
    run_a, run_b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out" / "fits.json"
    _write_runs(run_a, [0], rng)
    _write_runs(run_b, [1], rng)
    argv = ["fit", str(run_a), str(run_b), "--by", "draft_layers", "--where", "task=gsm", "--kind", "train",
            "--bootstrap", "100", "--json", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "draft_layers=1" in printed and "draft_layers=2" in printed and "slope b [95% CI]" in printed
    payload = json.loads(out.read_text())
    fits = payload["fits"]
    assert [f["group"] for f in fits] == [{"draft_layers": 1}, {"draft_layers": 2}]
    for f, slope in zip(fits, [0.25, 0.35]):
        assert f["n"] == 12 and abs(f["slope"] - slope) < 0.02
        assert len(f["slope_ci95"]) == 2 and f["slope_ci95"][0] < f["slope"] < f["slope_ci95"][1]
        assert isinstance(f["intercept"], float) and 0.9 < f["r2"] <= 1
        assert f["bootstrap_unit"] == "run" and f["bootstrap_units"] == 2 and len(f["slope_ci95_bootstrap"]) == 2
        assert f["extrapolation"]["preferred"] in ("log_linear", "saturating") and f["saturating"]["n"] == 12
    assert main(["fit", str(run_a), "--where", "task=gsm"]) == 0  # no --by: one group
    assert "all" in capsys.readouterr().out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("fit-run")
    _write_runs(path, [0], np.random.default_rng(5))
    return path


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--where", "task"], "--where takes comma-separated field=value pairs"),
        (["--where", "task=gsm", "--by", "width"], "field 'width' is missing"),
        (["--where", "task=none"], "no records"),
        (["--where", "task=gsm", "--x", "draft_layers"], "needs at least 3 distinct"),
        (["--where", "task=gsm", "--bootstrap", "-1"], "bootstrap"),
    ],
)
def test_cli_misuse_exits_2_with_one_line(run_dir, capsys, extra, message):
    assert main(["fit", str(run_dir), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("scylla: error:") and message in err and "\n" not in err


def test_cli_missing_run_dir_and_usage(tmp_path, capsys):
    assert main(["fit", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["fit", str(tmp_path), "--bootstrap", "many"])
    assert exit_.value.code == 2


def test_parse_where():
    assert parse_where("task=gsm, temperature=0") == {"task": "gsm", "temperature": "0"}
    assert parse_where(["task=gsm", "batch_size=8"]) == {"task": "gsm", "batch_size": "8"}
    with pytest.raises(ScyllaError, match="twice"):
        parse_where("task=gsm,task=code")
