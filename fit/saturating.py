"""The saturating alternative y = y_max - k * x^(-beta), and a leave-the-largest-x-out check of both laws."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import least_squares

from fit.results import ExtrapolationCheck, SaturatingFit
from scylla.errors import InputError

BETA_BOUNDS = (1e-6, 10.0)  # beta -> 0 is the log-linear limit; the bound keeps k finite there
BETA_STARTS = (0.05, 2.0)  # starting betas are drawn log-uniformly from this range


def _xy(x: Sequence[float], y: Sequence[float], min_distinct: int) -> tuple[np.ndarray, np.ndarray]:
    xv, yv = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xv.shape != yv.shape or xv.ndim != 1:
        raise InputError(f"x and y must be two lists of equal length, got {xv.shape} and {yv.shape}")
    if not (np.all(np.isfinite(xv)) and np.all(xv > 0) and np.all(np.isfinite(yv))):
        raise InputError("x must be finite and > 0, and y finite")
    distinct = len(np.unique(xv))
    if distinct < min_distinct:
        raise InputError(f"needs at least {min_distinct} distinct x values, got {distinct}")
    return xv, yv


def _robust_scale(xv: np.ndarray, yv: np.ndarray) -> float:
    """Huber's 1.345 sigma, sigma from the MAD of the residuals of a log-linear fit; floored for noiseless data."""
    residuals = yv - np.polyval(np.polyfit(np.log(xv), yv, 1), np.log(xv))
    sigma = 1.4826 * np.median(np.abs(residuals - np.median(residuals)))
    return float(max(1.345 * sigma, 1e-9 * max(1.0, float(np.max(np.abs(yv))))))


def fit_saturating(
    x: Sequence[float], y: Sequence[float], starts: int = 8, seed: int = 0, f_scale: float | None = None
) -> SaturatingFit:
    """Fit y = y_max - k * x^(-beta) with scipy's least_squares (Huber loss), keeping the best of ``starts`` starts.

    Each start draws beta (seeded) and solves for y_max and k by linear least squares at that beta. The fit runs on
    x / min(x) for conditioning; ``k`` is reported for x itself. ``f_scale`` (default: 1.345 x a robust residual
    scale) sets where the Huber loss turns linear.
    """
    if starts < 1:
        raise InputError(f"starts must be >= 1, got {starts}")
    xv, yv = _xy(x, y, min_distinct=3)
    x0 = float(xv.min())
    u = xv / x0
    scale = _robust_scale(xv, yv) if f_scale is None else float(f_scale)
    if not scale > 0:
        raise InputError(f"f_scale must be > 0, got {f_scale}")

    def residuals(p: np.ndarray) -> np.ndarray:
        return p[0] - p[1] * u ** (-p[2]) - yv

    rng = np.random.default_rng(seed)
    best = None
    for beta in np.exp(rng.uniform(*np.log(BETA_STARTS), size=starts)):
        design = np.column_stack([np.ones_like(u), -(u ** (-beta))])
        (y_max, k), *_ = np.linalg.lstsq(design, yv, rcond=None)
        result = least_squares(
            residuals,
            [y_max, k, beta],
            bounds=([-np.inf, -np.inf, BETA_BOUNDS[0]], [np.inf, np.inf, BETA_BOUNDS[1]]),
            loss="huber",
            f_scale=scale,
            x_scale="jac",
        )
        if best is None or result.cost < best.cost:
            best = result
    y_max, k_scaled, beta = (float(v) for v in best.x)
    return SaturatingFit(
        params={"y_max": y_max, "k": k_scaled * x0**beta, "beta": beta},
        loss=float(best.cost),
        success=bool(best.success),
        n_starts=starts,
        n=len(yv),
        f_scale=scale,
    )


def extrapolation_check(x: Sequence[float], y: Sequence[float], starts: int = 8, seed: int = 0) -> ExtrapolationCheck:
    """Fit the log-linear law (OLS) and the saturating law on all points but those at the largest x, and report
    each law's absolute error in predicting the mean y there. Needs at least 5 distinct x: 4 left to fit, so the
    3-parameter saturating law is never fitted through 3 x values (which it would match exactly)."""
    xv, yv = _xy(x, y, min_distinct=1)
    distinct = len(np.unique(xv))
    if distinct < 5:
        none = {"log_linear": None, "saturating": None}
        return ExtrapolationCheck(
            predictions=dict(none), errors=dict(none), reason=f"needs at least 5 distinct x values, got {distinct}"
        )
    held = xv == xv.max()
    x_fit, y_fit = xv[~held], yv[~held]
    x_out, observed = float(xv.max()), float(yv[held].mean())
    slope, intercept = np.polyfit(np.log(x_fit), y_fit, 1)
    predictions = {
        "log_linear": float(intercept + slope * np.log(x_out)),
        "saturating": fit_saturating(x_fit, y_fit, starts=starts, seed=seed).predict(x_out),
    }
    errors = {law: abs(p - observed) for law, p in predictions.items()}
    return ExtrapolationCheck(
        held_out_x=x_out,
        n_held_out=int(held.sum()),
        n_fit=int((~held).sum()),
        observed=observed,
        predictions=predictions,
        errors=errors,
        preferred=min(errors, key=errors.get),
    )
