"""Evaluation: mean loss terms, the marginal log-likelihood, and latent diagnostics."""

from __future__ import annotations

from autoenc.evaluation.likelihood import (
    LatentDiagnostics,
    LogLikelihood,
    PosteriorCollapseWarning,
    latent_diagnostics,
    log_likelihood,
)
from autoenc.evaluation.loss import RunningMean, evaluate

__all__ = [
    "evaluate",
    "RunningMean",
    "log_likelihood",
    "LogLikelihood",
    "latent_diagnostics",
    "LatentDiagnostics",
    "PosteriorCollapseWarning",
]
