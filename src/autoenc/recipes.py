"""Ready-made MNIST models: the article's AE and VAE, and the library's recommended VAE recipe.

The article (an MLP autoencoder tutorial on MNIST) builds its networks by hand; these builders
give the same layers and parameter counts from :class:`~autoenc.Encoder` and
:class:`~autoenc.Decoder`, with the article's loss expressed as options rather than code.
:func:`recommended_vae_recipe` returns a :class:`Recipe`: the recommended VAE together with every
setting it is trained with, so that one place defines the whole recipe.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from autoenc._utils import PRECISIONS, check_choice, check_int, check_number
from autoenc.data import dynamic_binarize
from autoenc.models import Autoencoder, GaussianVAE
from autoenc.networks import ConvDecoder, ConvEncoder, Decoder, Encoder
from autoenc.training import Callback, KLWarmup

__all__ = [
    "Recipe",
    "article_autoencoder",
    "article_vae",
    "conv_autoencoder",
    "conv_vae",
    "conv_vae_recipe",
    "fast_vae_recipe",
    "recommended_vae",
    "recommended_vae_recipe",
]

MNIST_SHAPE = (1, 28, 28)
_LR_SCHEDULES = ("cosine", "constant")
_HIDDEN = ("model", "transform")  # not in the repr: the model prints itself, a function's address

# What the MNIST VAE recipes share besides their model, epochs and precision.
_SETTINGS = {
    "batch_size": 128,
    "lr": 1e-3,
    "lr_schedule": "cosine",
    "scheduler_interval": "step",
    "warmup": 0.1,
    "transform": dynamic_binarize,
}
Scheduler = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


@dataclass(frozen=True)
class Recipe:
    """A freshly built model and the settings it is trained with.

    :meth:`fit_kwargs` gives them as :func:`autoenc.fit`'s keyword arguments; :meth:`scheduler`
    and :meth:`callbacks` build the parts that depend on the length of the run, so that the same
    recipe scales to any number of epochs (warm-up and decay included). Vary a recipe with
    :func:`dataclasses.replace`.

    Attributes:
        model: The network to train, freshly initialized.
        epochs: Epochs the recipe is measured with.
        batch_size: Examples per optimizer step.
        lr: Adam's (initial) learning rate.
        lr_schedule: ``"cosine"``: the learning rate decays to 0 by a cosine over all steps;
            ``"constant"``: it stays at ``lr``.
        scheduler_interval: How often the scheduler steps (``fit``'s ``scheduler_interval``).
        warmup: Part of the steps, from 0 to 1, over which the KL weight rises linearly from 0
            to 1 (:class:`~autoenc.KLWarmup`); 0 for none.
        transform: Applied to every training batch (``fit``'s ``transform``), or ``None``.
        precision: ``fit``'s ``precision``: ``"fp32"``, ``"bf16"``, or ``"auto"`` (bf16 where
            the CPU runs it natively).

    Example:
        >>> recipe = recommended_vae_recipe()
        >>> recipe.batch_size, recipe.likelihood, len(recipe.callbacks(total_steps=100))
        (128, 'bernoulli', 1)
    """

    model: nn.Module
    epochs: int
    batch_size: int
    lr: float
    lr_schedule: str = "constant"
    scheduler_interval: str = "step"
    warmup: float = 0.0
    transform: Callable[[Tensor], Tensor] | None = None
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(self.model).__name__}")
        check_int(self.epochs, "epochs")
        check_int(self.batch_size, "batch_size")
        check_number(self.lr, "lr", positive=True)
        check_choice(self.lr_schedule, _LR_SCHEDULES, "lr_schedule")
        check_choice(self.scheduler_interval, ("step", "epoch"), "scheduler_interval")
        check_choice(self.precision, PRECISIONS, "precision")
        if check_number(self.warmup, "warmup", low=0) > 1:
            raise ValueError(f"warmup must be a number in [0, 1], got {self.warmup!r}")

    def __repr__(self) -> str:  # the settings; the model prints itself
        shown = [
            f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.name not in _HIDDEN
        ]
        transform = getattr(self.transform, "__name__", None) or repr(self.transform)
        return f"Recipe({', '.join(shown)}, transform={transform})"

    @property
    def likelihood(self) -> str | None:
        """The name of the model's likelihood (``"bernoulli"``, ...), ``None`` if it has none."""
        return getattr(getattr(self.model, "likelihood", None), "name", None)

    def total_steps(self, num_examples: int, *, epochs: int | None = None) -> int:
        """Optimizer steps of a run over ``num_examples`` for ``epochs`` (default: the recipe's).

        Example:
            >>> recommended_vae_recipe().total_steps(60_000)
            28140
        """
        epochs = self.epochs if epochs is None else check_int(epochs, "epochs")
        return epochs * math.ceil(check_int(num_examples, "num_examples") / self.batch_size)

    def scheduler(self, total_steps: int) -> Scheduler | None:
        """``fit``'s ``scheduler`` for a run of ``total_steps`` steps, ``None`` for a constant rate.

        Example:
            >>> recipe = recommended_vae_recipe()
            >>> opt = torch.optim.Adam(recipe.model.parameters(), lr=recipe.lr)
            >>> type(recipe.scheduler(100)(opt)).__name__
            'CosineAnnealingLR'
        """
        total_steps = check_int(total_steps, "total_steps")
        if self.lr_schedule == "constant":
            return None

        def cosine(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)

        return cosine

    def callbacks(self, total_steps: int) -> list[Callback]:
        """The callbacks the recipe trains with, for a run of ``total_steps`` steps: the KL
        warm-up over ``round(warmup * total_steps)`` steps when that is at least one step.

        Example:
            >>> recommended_vae_recipe().callbacks(1000)[0].length
            100
        """
        warmup_steps = round(self.warmup * check_int(total_steps, "total_steps"))
        return [KLWarmup(steps=warmup_steps)] if warmup_steps > 0 else []

    def fit_kwargs(
        self, num_examples: int, *, epochs: int | None = None, callbacks: Sequence[Callback] = ()
    ) -> dict[str, Any]:
        """:func:`autoenc.fit`'s keyword arguments for a run over ``num_examples`` training
        examples for ``epochs`` (default: the recipe's), its callbacks followed by ``callbacks``.

        Example:
            >>> recipe = recommended_vae_recipe()
            >>> kwargs = recipe.fit_kwargs(60_000, epochs=2)
            >>> kwargs["epochs"], kwargs["batch_size"], kwargs["callbacks"][0].length
            (2, 128, 94)
        """
        epochs = self.epochs if epochs is None else check_int(epochs, "epochs")
        steps = self.total_steps(num_examples, epochs=epochs)
        return {
            "epochs": epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "scheduler": self.scheduler(steps),
            "scheduler_interval": self.scheduler_interval,
            "transform": self.transform,
            "callbacks": [*self.callbacks(steps), *callbacks],
            "precision": self.precision,
        }


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


def recommended_vae(
    latent_dim: int = 32, hidden: Sequence[int] = (512, 512), activation: str = "relu"
) -> GaussianVAE:
    """The library's recommended MNIST VAE: a Bernoulli VAE for (dynamically) binarized digits.

    A 784-512-512 encoder giving the mean and log-variance of 32 latents, a mirrored
    32-512-512-784 decoder giving Bernoulli logits, and the plain ELBO in nats per image (the
    reconstruction summed over pixels, averaged over the batch). Train it on binarized data:
    pass ``transform=autoenc.data.dynamic_binarize`` to :func:`autoenc.fit`.
    :func:`recommended_vae_recipe` returns it with the settings it is measured with
    (the docs' *Measured results* page has what it reaches).

    Args:
        latent_dim: Size of ``z``.
        hidden: Hidden widths of the encoder; the decoder mirrors them.
        activation: After every hidden layer: a name in ``autoenc.networks.ACTIVATIONS``.

    Example:
        >>> vae = recommended_vae()
        >>> vae.likelihood.name, vae.posterior, vae.reduction, vae.objective
        ('bernoulli', 'logvar', 'sum', 'elbo')
        >>> sum(p.numel() for p in vae.parameters())
        1379152
    """
    encoder = Encoder(MNIST_SHAPE, list(hidden), 2 * latent_dim, activation=activation)
    decoder = Decoder(latent_dim, list(reversed(hidden)), MNIST_SHAPE, activation=activation)
    return GaussianVAE(encoder, decoder, latent_dim, likelihood="bernoulli")


def recommended_vae_recipe(latent_dim: int = 32, hidden: Sequence[int] = (512, 512)) -> Recipe:
    """The recommended VAE (:func:`recommended_vae`) with the settings it is measured with.

    Batch 128; Adam with learning rate 1e-3 decayed to 0 by a per-step cosine; the KL weight
    rising linearly from 0 to 1 over the first 10% of the steps; 60 epochs; every training batch
    binarized afresh (:func:`~autoenc.data.dynamic_binarize`). Binarize the validation or
    test set once yourself, with a seeded generator, so that every evaluation sees the same
    digits. ``examples/mnist_vae_recipe.py`` runs it; the docs' *Measured results* page has
    what it reaches.

    Args:
        latent_dim: Size of ``z``.
        hidden: Hidden widths of the encoder; the decoder mirrors them.

    Example:
        >>> recipe = recommended_vae_recipe()
        >>> recipe.epochs, recipe.batch_size, recipe.lr, recipe.lr_schedule, recipe.warmup
        (60, 128, 0.001, 'cosine', 0.1)
        >>> recipe.transform is dynamic_binarize
        True
    """
    return Recipe(model=recommended_vae(latent_dim, hidden), epochs=60, **_SETTINGS)


def conv_autoencoder(latent_dim: int = 20, channels: Sequence[int] = (32, 64)) -> Autoencoder:
    """A convolutional counterpart of :func:`article_autoencoder`, with the same loss and code
    width: a :class:`~autoenc.ConvEncoder` to ``latent_dim`` numbers, a mirrored
    :class:`~autoenc.ConvDecoder` ending in a sigmoid, ``nn.MSELoss()``.

    Example:
        >>> ae = conv_autoencoder()
        >>> ae.encoder.out_features, ae.decoder.out_shape, ae.reduction
        (20, (1, 28, 28), 'mean')
    """
    encoder = ConvEncoder(MNIST_SHAPE, list(channels), latent_dim)
    decoder = ConvDecoder(
        latent_dim, list(reversed(channels)), MNIST_SHAPE, final_activation="sigmoid"
    )
    return Autoencoder(encoder, decoder, likelihood="mse", reduction="mean")


def fast_vae_recipe(latent_dim: int = 32, hidden: Sequence[int] = (512, 512)) -> Recipe:
    """The recommended VAE in a fraction of the CPU time: SiLU, a larger learning rate, 20
    epochs, in bf16 where the CPU runs it natively.

    :func:`recommended_vae` with SiLU activations instead of ReLU, trained with the settings of
    :func:`recommended_vae_recipe` but for learning rate 2.5e-3, ``epochs=20`` and
    ``precision="auto"``; :func:`autoenc.fit` flushes denormal floats by default, which long
    CPU runs need. On a CPU without native bf16 it trains in fp32. The docs' *Measured
    results* page has what it reaches against the 60-epoch recipe, and what each change buys.

    Example:
        >>> recipe = fast_vae_recipe()
        >>> recipe.epochs, recipe.batch_size, recipe.lr, recipe.lr_schedule, recipe.precision
        (20, 128, 0.0025, 'cosine', 'auto')
        >>> type(recipe.model.decoder.net[1]).__name__
        'SiLU'
    """
    model = recommended_vae(latent_dim, hidden, activation="silu")
    settings = {**_SETTINGS, "lr": 2.5e-3}
    return Recipe(model=model, epochs=20, precision="auto", **settings)


def conv_vae(
    latent_dim: int = 32,
    channels: Sequence[int] = (32, 64),
    decoder_channels: Sequence[int] = (64, 16),
    hidden: Sequence[int] = (512,),
) -> GaussianVAE:
    """A convolutional Bernoulli VAE for binarized MNIST.

    A :class:`~autoenc.ConvEncoder` with a stride-2 stage per entry of ``channels`` and an MLP
    head (``hidden``) to the mean and log-variance of ``latent_dim`` latents; a
    :class:`~autoenc.ConvDecoder` from ``latent_dim`` through the same ``hidden`` widths to the
    smallest grid, then up through ``decoder_channels`` to Bernoulli logits. The decoder's
    full-size stage is narrow (16 channels): it holds most of a conv decoder's cost, which
    importance-sampled evaluation pays once per sample. Same loss as :func:`recommended_vae`.

    Example:
        >>> vae = conv_vae()
        >>> vae.encoder.in_shape, vae.decoder.out_shape, vae.likelihood.name
        ((1, 28, 28), (1, 28, 28), 'bernoulli')
    """
    encoder = ConvEncoder(MNIST_SHAPE, list(channels), 2 * latent_dim, hidden=list(hidden))
    decoder = ConvDecoder(latent_dim, list(decoder_channels), MNIST_SHAPE, hidden=list(hidden))
    return GaussianVAE(encoder, decoder, latent_dim, likelihood="bernoulli")


def conv_vae_recipe(latent_dim: int = 32) -> Recipe:
    """The convolutional VAE (:func:`conv_vae`) with the settings it is measured with.

    The recommended recipe's settings (batch 128, Adam 1e-3 with a per-step cosine, KL warm-up
    over the first 10% of the steps, dynamic binarization) for 60 epochs, in bf16 where the CPU
    runs it natively (``precision="auto"``): a conv step costs several MLP steps on a CPU.
    the docs' *Measured results* page has what it reaches.

    Example:
        >>> recipe = conv_vae_recipe()
        >>> recipe.epochs, recipe.batch_size, recipe.precision
        (60, 128, 'auto')
    """
    return Recipe(model=conv_vae(latent_dim), epochs=60, precision="auto", **_SETTINGS)
