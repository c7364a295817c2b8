"""How often each slope interval covers the population slope of synthetic per-prompt laws (docs/fitting.md).

Each prompt has its own line (intercept and slope drawn around known population values) measured at every
checkpoint of every run (seed) with noise, and optionally a shock per checkpoint that all prompts of a run share:
the design of the demo's replay records. Estimators: the prompt as unit (mean of per-prompt
OLS slopes, with the shared checkpoint shocks; fit/prompt_unit.py), a cluster bootstrap over prompts (percentile), a mixed
model with random intercept and slope per prompt (statsmodels MixedLM, Wald interval), and OLS on the pooled MAT
per checkpoint with classical and HC3 errors. Run: python docs/examples/prompt_unit_coverage.py [REPEATS]
"""

import sys
import time
import warnings

import numpy as np
import pandas as pd
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy import stats

from fit.prompt_unit import mean_slope

TRUE_SLOPE, SLOPE_SD, INTERCEPT_SD, NOISE_SD = 0.10, 0.06, 0.1, 0.02
# name: (prompts, runs (seeds), checkpoints, sd of the checkpoint shock all prompts of a run share)
DESIGNS = {"16 prompts x 5 checkpoints": (16, 1, 5, 0.0), "16 prompts x 2 seeds x 5": (16, 2, 5, 0.0),
           "6 prompts x 4 checkpoints": (6, 1, 4, 0.0), "16 prompts x 2 seeds x 5, shocks sd 0.03": (16, 2, 5, 0.03)}


def draw(rng, prompts, runs, checkpoints, shock):
    """(prompts x runs, checkpoints) MATs at x = 4096 * 2^j, run-major."""
    log_x = np.log(4096 * 2.0 ** np.arange(checkpoints))
    slopes = rng.normal(TRUE_SLOPE, SLOPE_SD, (prompts, 1))
    lines = rng.normal(1.0, INTERCEPT_SD, (prompts, 1)) + slopes * (log_x - log_x[0])
    mat = np.concatenate([lines + rng.normal(0, shock, checkpoints) for _ in range(runs)])
    return log_x, mat + rng.normal(0, NOISE_SD, mat.shape)


def intervals(log_x, mat, runs, rng, resamples=400):
    units, k = mat.shape
    per_run = units // runs
    keyed = {(u % per_run, u // per_run): list(zip(np.exp(log_x), mat[u])) for u in range(units)}
    out = {"prompt as unit (t)": mean_slope(keyed).slope_ci95}
    centred = log_x - log_x.mean()
    per_unit = mat @ centred / (centred @ centred)
    boot = per_unit[rng.integers(units, size=(resamples, units))].mean(axis=1)
    out["cluster bootstrap"] = tuple(np.percentile(boot, [2.5, 97.5]))
    frame = pd.DataFrame({"y": mat.ravel(), "lx": np.tile(log_x, units), "unit": np.repeat(np.arange(units), k)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mixed = smf.mixedlm("y ~ lx", frame, groups=frame["unit"], re_formula="~lx").fit()
    out["MixedLM (random slope)"] = tuple(mixed.conf_int().loc["lx"])
    design = sm.add_constant(np.tile(log_x, runs))  # one pooled point per run and checkpoint
    pooled = mat.reshape(runs, per_run, k).mean(axis=1).ravel()
    for name, cov in (("pooled OLS, classical", "nonrobust"), ("pooled OLS, HC3", "HC3")):
        fit = sm.OLS(pooled, design).fit(cov_type=cov)
        half = stats.t.ppf(0.975, len(pooled) - 2) * fit.bse[1]
        out[name] = (fit.params[1] - half, fit.params[1] + half)
    return out


def main(repeats: int = 200) -> None:
    for label, (prompts, runs, k, shock) in DESIGNS.items():
        rng, hits, widths, start = np.random.default_rng(0), {}, {}, time.perf_counter()
        for _ in range(repeats):
            for name, (lo, hi) in intervals(*draw(rng, prompts, runs, k, shock), runs, rng).items():
                hits[name] = hits.get(name, 0) + (lo <= TRUE_SLOPE <= hi)
                widths.setdefault(name, []).append(hi - lo)
        print(f"\n{label}, {repeats} repeats ({time.perf_counter() - start:.0f} s): coverage of the population "
              f"slope {TRUE_SLOPE} by 95% intervals, median width")
        for name in hits:
            print(f"  {name:<24} {hits[name] / repeats:5.1%}   {np.median(widths[name]):.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
