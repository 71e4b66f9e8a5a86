"""autoenc: autoencoders and variational autoencoders in plain PyTorch.

The package is in layers whose imports point one way: maths (:mod:`autoenc.functional`,
:mod:`autoenc.likelihoods`) -> :mod:`autoenc.networks` -> :mod:`autoenc.models` ->
:mod:`autoenc.evaluation` and :mod:`autoenc.files` -> :mod:`autoenc.training` ->
:mod:`autoenc.pictures`, with :mod:`autoenc.data` and :mod:`autoenc.recipes` beside them.
"""

from __future__ import annotations

from autoenc._utils import __version__, native_bf16
from autoenc.evaluation import (
    LatentDiagnostics,
    LogLikelihood,
    PosteriorCollapseWarning,
    evaluate,
    latent_diagnostics,
    log_likelihood,
)
from autoenc.files import load, save
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
    VQVAE,
    AEOutput,
    Autoencoder,
    ConditionalVAE,
    GaussianVAE,
    IWAETerms,
    LossOutput,
    Posterior,
    VAEOutput,
    VQVAEOutput,
    iwae_bound,
    iwae_terms,
)
from autoenc.networks import (
    ConvDecoder,
    ConvEncoder,
    Decoder,
    Encoder,
    Quantized,
    VectorQuantizer,
    mlp,
)
from autoenc.pictures import ImageSnapshots, TensorBoardDashboard, VisdomDashboard
from autoenc.training import (
    Callback,
    CSVLogger,
    DistributedError,
    EarlyStopping,
    FitResult,
    FreeBits,
    KLCyclical,
    KLWarmup,
    ModelCheckpoint,
    NonFiniteLossError,
    ProgressBar,
    State,
    fit,
    load_checkpoint,
)

__all__ = [
    "__version__",
    "native_bf16",
    # networks
    "Encoder",
    "Decoder",
    "mlp",
    "ConvEncoder",
    "ConvDecoder",
    "VectorQuantizer",
    "Quantized",
    # models and their outputs
    "Autoencoder",
    "GaussianVAE",
    "VQVAE",
    "ConditionalVAE",
    "LossOutput",
    "AEOutput",
    "VAEOutput",
    "VQVAEOutput",
    "Posterior",
    "IWAETerms",
    "iwae_terms",
    "iwae_bound",
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
    "latent_diagnostics",
    "LatentDiagnostics",
    "PosteriorCollapseWarning",
    # model files
    "save",
    "load",
]
