"""The models: one file per family, each built from any encoder and decoder and a likelihood.

Every model has ``loss(x)`` (a conditional one ``loss(x, c)``), which is all :func:`autoenc.fit`
needs; :data:`MODELS` maps the names that model files record to the classes that rebuild them.
"""

from __future__ import annotations

from autoenc.models.autoencoder import Autoencoder
from autoenc.models.base import AEOutput, LossOutput, Posterior, ReconstructionModel, VAEOutput
from autoenc.models.conditional import ConditionalVAE
from autoenc.models.vae import GaussianVAE, IWAETerms, iwae_bound, iwae_terms
from autoenc.models.vqvae import VQVAE, VQVAEOutput

__all__ = [
    "MODELS",
    "ReconstructionModel",
    "LossOutput",
    "AEOutput",
    "VAEOutput",
    "Posterior",
    "IWAETerms",
    "Autoencoder",
    "GaussianVAE",
    "VQVAE",
    "VQVAEOutput",
    "ConditionalVAE",
    "iwae_terms",
    "iwae_bound",
]

#: The model classes that :func:`autoenc.load` rebuilds from a file's config, by name.
MODELS: dict[str, type[ReconstructionModel]] = {
    "Autoencoder": Autoencoder,
    "GaussianVAE": GaussianVAE,
    "VQVAE": VQVAE,
    "ConditionalVAE": ConditionalVAE,
}
