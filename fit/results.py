"""Typed results of the fitting stage (docs/fitting.md). Each has ``to_dict()`` for JSON (NaN becomes null)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats

from scylla.errors import InputError

INTERVALS = ("confidence", "prediction")


def _jsonable(value):
    """Tuples to lists, numpy scalars to floats, non-finite floats to None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


@dataclass
class LogLinearFit:
    """y = intercept + slope * ln(x), fitted to one group of records.

    ``cov`` is the 2x2 covariance of (intercept, slope) behind the standard errors (HC3 for OLS, the M-estimator's
    for Huber) and ``resid_var`` the residual variance (OLS: SSR / (n - 2); Huber: the robust scale squared), so
    ``predict`` gives confidence and prediction intervals without refitting.
    """

    group: dict
    x: str
    y: str
    n: int
    intercept: float
    slope: float
    intercept_se: float
    slope_se: float
    intercept_ci95: tuple[float, float]
    slope_ci95: tuple[float, float]
    slope_ci95_bootstrap: tuple[float, float] | None
    r2: float
    residuals: list[float]
    x_values: list[float]
    y_values: list[float]
    method: str  # the estimator: "ols-classical", "ols-hc3", "huber" (fit_log_linear) or prompt_unit.METHOD
    cov: list[list[float]]
    resid_var: float
    bootstrap_unit: str | None = None  # "run" or "point": what the bootstrap resampled; None without bootstrap
    bootstrap_units: int = 0  # how many runs (or points) there were to resample
    n_bootstrap: int = 0  # resamples drawn
    df: float | None = None  # degrees of freedom of the t intervals; None: n - 2 (prompt as unit: see prompt_unit)
    fallback: str | None = None  # why the prompt-unit law could not be formed, where it was wanted (fit_laws)

    def predict(self, x: float, interval: str = "confidence", level: float = 0.95) -> tuple[float, float, float]:
        """(mean, lo, hi) at ``x``: an interval for the mean of y ("confidence") or for one new observation
        ("prediction": adds the residual variance), from the t distribution with ``df`` degrees of freedom."""
        if interval not in INTERVALS:
            raise InputError(f"interval must be one of {', '.join(INTERVALS)}, got {interval!r}")
        if not 0 < level < 1:
            raise InputError(f"level must be between 0 and 1, got {level}")
        if not x > 0:
            raise InputError(f"x must be > 0 to take its log, got {x}")
        g = np.array([1.0, math.log(x)])
        mean = self.intercept + self.slope * float(g[1])
        var = float(g @ np.asarray(self.cov) @ g) + (self.resid_var if interval == "prediction" else 0.0)
        half = float(stats.t.ppf(0.5 + level / 2, self.df or self.n - 2)) * math.sqrt(max(var, 0.0))
        return mean, mean - half, mean + half

    def to_dict(self) -> dict:
        return _jsonable(asdict(self))


JOINT_TERMS = ("intercept", "draft_params", "train_tokens", "draft_params:train_tokens")
JOINT_METHOD = ("prompt as unit: each (prompt, seed) line's OLS over sizes x milestones, averaged over seeds then "
                "prompts; t intervals from their spread over prompts plus the runs' checkpoint shocks")


@dataclass
class JointLaw:
    """MAT = b0 + bN (ln N - cN) + bD (ln D - cD) + bND (ln N - cN)(ln D - cD): ``coefficients`` and ``ci95`` are keyed
    by JOINT_TERMS, ``cov`` is their 4 x 4 covariance in that order, ``centre`` = (cN, cD), ``shock_var`` the variance of
    one training run's checkpoint shock on the prompt-pooled MAT, ``sizes`` and ``tokens`` the fitted ranges."""

    coefficients: dict[str, float]
    ci95: dict[str, tuple[float, float]]
    cov: list[list[float]]
    centre: tuple[float, float]
    df: float
    shock_var: float
    prompts: int
    seeds: int
    points: int
    sizes: tuple[float, float]
    tokens: tuple[float, float]
    method: str = JOINT_METHOD

    def row(self, params: float, tokens: float) -> np.ndarray:
        ln_n, ln_d = math.log(params) - self.centre[0], math.log(tokens) - self.centre[1]
        return np.array([1.0, ln_n, ln_d, ln_n * ln_d])

    def predict(self, params: float, tokens: float, interval: str = "confidence", runs: int = 1,
                level: float = 0.95) -> tuple[float, float, float]:
        """(mean, lo, hi) of the prompt-pooled MAT of a head of ``params`` parameters trained on ``tokens``: an
        interval for the law's mean ("confidence"), or for what ``runs`` new training runs of that size measure on
        these prompts, averaged ("prediction": adds their checkpoint shocks)."""
        if interval not in INTERVALS:
            raise InputError(f"interval must be one of {', '.join(INTERVALS)}, got {interval!r}")
        if params <= 0 or tokens <= 0:
            raise InputError(f"parameters and tokens must be > 0, got {params} and {tokens}")
        g = self.row(params, tokens)
        mean = float(g @ np.array([self.coefficients[t] for t in JOINT_TERMS]))
        var = float(g @ np.asarray(self.cov) @ g) + (self.shock_var / runs if interval == "prediction" else 0.0)
        half = float(stats.t.ppf(0.5 + level / 2, self.df)) * math.sqrt(max(var, 0.0))
        return mean, mean - half, mean + half

    def extrapolation(self, params: float, tokens: float) -> str | None:
        """None inside the fitted ranges, else how far outside, in decades."""
        out = []
        for name, value, (lo, hi) in (("parameters", params, self.sizes), ("tokens", tokens, self.tokens)):
            if value < lo or value > hi:
                beyond = math.log10(lo / value) if value < lo else math.log10(value / hi)
                out.append(f"{name} {value:.3g} is {beyond:.2f} decades {'below' if value < lo else 'above'} the "
                           f"fitted {lo:.3g}-{hi:.3g}")
        return "; ".join(out) or None

    def to_dict(self) -> dict:
        return _jsonable(asdict(self))


@dataclass
class SaturatingFit:
    """y = y_max - k * x^(-beta), the best of ``n_starts`` Huber-loss least-squares fits.

    ``params`` holds y_max, k and beta; ``loss`` is the Huber cost of the best start (scipy's ``cost``) and
    ``f_scale`` the residual size beyond which the loss grows linearly.
    """

    params: dict[str, float]
    loss: float
    success: bool
    n_starts: int
    n: int
    f_scale: float

    def predict(self, x: float) -> float:
        """The fitted law at ``x`` (> 0)."""
        if not x > 0:
            raise InputError(f"x must be > 0, got {x}")
        p = self.params
        return p["y_max"] - p["k"] * x ** (-p["beta"])

    def to_dict(self) -> dict:
        return _jsonable(asdict(self))


@dataclass
class ExtrapolationCheck:
    """Each law ("log_linear", "saturating") fitted on all points but those at the largest x, then asked for the
    mean y there: ``errors`` are |prediction - observed mean|, ``preferred`` the law with the smaller error.

    When the check cannot be made (fewer than 4 distinct x) every value is None and ``reason`` says why.
    """

    held_out_x: float | None = None
    n_held_out: int = 0
    n_fit: int = 0
    observed: float | None = None
    predictions: dict[str, float | None] = field(default_factory=dict)
    errors: dict[str, float | None] = field(default_factory=dict)
    preferred: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict:
        return _jsonable(asdict(self))
