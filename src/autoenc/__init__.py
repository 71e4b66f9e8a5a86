"""autoenc: autoencoders and variational autoencoders in plain PyTorch."""

from __future__ import annotations

__version__ = "0.1.0"

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
from autoenc.serialization import load, save

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
    # persistence
    "save",
    "load",
]
