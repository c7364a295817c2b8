"""Scaling-law fits of run records: log-linear laws with honest intervals, and a saturating alternative
(docs/fitting.md). Fitting, bootstrap and (elsewhere) plotting are kept apart."""

from fit.bootstrap import bootstrap_slope
from fit.capacity import fit_joint_law
from fit.loglinear import fit_log_linear
from fit.results import ExtrapolationCheck, JointLaw, LogLinearFit, SaturatingFit
from fit.saturating import extrapolation_check, fit_saturating

__all__ = [
    "ExtrapolationCheck",
    "JointLaw",
    "LogLinearFit",
    "SaturatingFit",
    "bootstrap_slope",
    "extrapolation_check",
    "fit_joint_law",
    "fit_log_linear",
    "fit_saturating",
]
