"""Ready-made MNIST models: the article's AE and VAE, and the library's recommended VAE.

The article (an MLP autoencoder tutorial on MNIST) builds its networks by hand; these builders
give the same layers and parameter counts from :class:`~autoenc.Encoder` and
:class:`~autoenc.Decoder`, with the article's loss expressed as options rather than code.
"""

from __future__ import annotations

from collections.abc import Sequence

from autoenc.models import Autoencoder, GaussianVAE
from autoenc.modules import Decoder, Encoder

__all__ = ["article_autoencoder", "article_vae", "recommended_vae"]

MNIST_SHAPE = (1, 28, 28)


def article_autoencoder() -> Autoencoder:
    """The article's autoencoder: 784→256→64→20 (ReLU after every layer), 20→64→256→784 (Sigmoid).

    The loss is the article's ``nn.MSELoss()``: squared error averaged over pixels and batch.

    Example:
        >>> ae = article_autoencoder()
        >>> sum(p.numel() for p in ae.parameters())
        438180
    """
    encoder = Encoder(MNIST_SHAPE, [256, 64], 20, final_activation="relu")
    decoder = Decoder(20, [64, 256], MNIST_SHAPE, final_activation="sigmoid")
    return Autoencoder(encoder, decoder, likelihood="mse", reduction="mean")


def article_vae() -> GaussianVAE:
    """The article's VAE: the same encoder (its 20 outputs split into μ and σ) and a 10→784 decoder.

    σ is taken straight from the encoder's final ReLU (``posterior="sigma"``), and the loss is
    ``nn.MSELoss()`` plus the article's KL divided by ``b * 784`` (``reduction="mean"``).

    Example:
        >>> vae = article_vae()
        >>> vae.latent_dim, vae.posterior, vae.reduction
        (10, 'sigma', 'mean')
    """
    encoder = Encoder(MNIST_SHAPE, [256, 64], 20, final_activation="relu")
    decoder = Decoder(10, [64, 256], MNIST_SHAPE, final_activation="sigmoid")
    return GaussianVAE(encoder, decoder, 10, likelihood="mse", posterior="sigma", reduction="mean")


def recommended_vae(latent_dim: int = 32, hidden: Sequence[int] = (512, 512)) -> GaussianVAE:
    """The library's recommended MNIST VAE.

    A log-variance posterior, a Bernoulli likelihood on (dynamically) binarized pixels, losses in
    nats per image summed over pixels, and a wider MLP than the article's. Train it on
    binarized data: pass ``transform=autoenc.data.dynamic_binarize`` to :func:`autoenc.fit`.

    Args:
        latent_dim: Size of ``z``.
        hidden: Hidden widths of the encoder; the decoder mirrors them.

    Example:
        >>> vae = recommended_vae()
        >>> vae.likelihood.name, vae.posterior, vae.reduction
        ('bernoulli', 'logvar', 'sum')
    """
    encoder = Encoder(MNIST_SHAPE, list(hidden), 2 * latent_dim)
    decoder = Decoder(latent_dim, list(reversed(hidden)), MNIST_SHAPE)
    return GaussianVAE(encoder, decoder, latent_dim, likelihood="bernoulli")
