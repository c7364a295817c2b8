"""Scaling-law fits of run records: log-linear laws with honest intervals, and a saturating alternative
(docs/fitting.md). Fitting, bootstrap and (elsewhere) plotting are kept apart."""

from fit.bootstrap import bootstrap_slope
from fit.loglinear import fit_joint, fit_log_linear
from fit.results import ExtrapolationCheck, JointFit, LogLinearFit, SaturatingFit
from fit.saturating import extrapolation_check, fit_saturating

__all__ = [
    "ExtrapolationCheck",
    "JointFit",
    "LogLinearFit",
    "SaturatingFit",
    "bootstrap_slope",
    "extrapolation_check",
    "fit_joint",
    "fit_log_linear",
    "fit_saturating",
]
