"""autoenc: autoencoders and variational autoencoders in plain PyTorch."""

from __future__ import annotations

__version__ = "0.1.0"

from autoenc.callbacks import Callback, CSVLogger, EarlyStopping, ProgressBar, State
from autoenc.checkpoint import ModelCheckpoint, load_checkpoint
from autoenc.dashboards import ImageSnapshots, TensorBoardDashboard, VisdomDashboard
from autoenc.distributed import DistributedError
from autoenc.evaluation import (
    IWAETerms,
    LatentDiagnostics,
    LogLikelihood,
    PosteriorCollapseWarning,
    iwae_bound,
    iwae_terms,
    latent_diagnostics,
    log_likelihood,
)
from autoenc.functional import gaussian_kl, reparameterize, sum_except_batch
from autoenc.likelihoods import (
    Bernoulli,
    ContinuousBernoulli,
    Gaussian,
    Likelihood,
    SquaredError,
    get_likelihood,
)
from autoenc.models import (
    AEOutput,
    Autoencoder,
    GaussianVAE,
    LossOutput,
    Posterior,
    VAEOutput,
)
from autoenc.modules import Decoder, Encoder, mlp
from autoenc.schedules import FreeBits, KLCyclical, KLWarmup
from autoenc.serialization import load, save
from autoenc.training import FitResult, NonFiniteLossError, evaluate, fit

__all__ = [
    "__version__",
    # building blocks
    "Encoder",
    "Decoder",
    "mlp",
    # models and their outputs
    "Autoencoder",
    "GaussianVAE",
    "LossOutput",
    "AEOutput",
    "VAEOutput",
    "Posterior",
    # maths
    "reparameterize",
    "gaussian_kl",
    "sum_except_batch",
    # likelihoods
    "Likelihood",
    "SquaredError",
    "Gaussian",
    "Bernoulli",
    "ContinuousBernoulli",
    "get_likelihood",
    # training
    "fit",
    "evaluate",
    "FitResult",
    "NonFiniteLossError",
    "DistributedError",
    "Callback",
    "State",
    "ProgressBar",
    "CSVLogger",
    "EarlyStopping",
    "ModelCheckpoint",
    "load_checkpoint",
    "KLWarmup",
    "KLCyclical",
    "FreeBits",
    # pictures and dashboards
    "ImageSnapshots",
    "VisdomDashboard",
    "TensorBoardDashboard",
    # evaluation
    "log_likelihood",
    "LogLikelihood",
    "iwae_bound",
    "iwae_terms",
    "IWAETerms",
    "latent_diagnostics",
    "LatentDiagnostics",
    "PosteriorCollapseWarning",
    # persistence
    "save",
    "load",
]
