r"""The :class:`ConditionalVAE`: a Gaussian VAE whose encoder, decoder and prior see a condition.

The model of Sohn et al. (2015): :math:`q(z \mid x, c)`, :math:`p(x \mid z, c)` and a prior
:math:`\mathcal N(0, I)` or a learned :math:`p(z \mid c)`. It is built from GaussianVAE's parts
(:func:`~autoenc.reparameterize`, :func:`~autoenc.gaussian_kl`, the loss reduction of
:class:`~autoenc.models.ReconstructionModel`) and :func:`~autoenc.log_likelihood` estimates
:math:`\log p(x \mid c)` with the same importance-sampling code as :math:`\log p(x)`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from einops import repeat
from torch import Tensor, nn
from torch.nn import functional as F

from autoenc._utils import (
    check_choice,
    check_int,
    check_number,
    eval_mode,
    model_device,
    model_dtype,
)
from autoenc.functional import gaussian_kl, reparameterize
from autoenc.likelihoods import Likelihood, get_likelihood
from autoenc.models.base import (
    REDUCTIONS,
    LossOutput,
    Posterior,
    ReconstructionModel,
    VAEOutput,
    check_clamp,
    check_decoder_output,
    check_encoder_width,
    check_modules,
    elbo_loss,
    module_config,
    split_posterior,
)

__all__ = ["ConditionalVAE"]

_PRIORS = ("standard", "learned")
_INPUTS = ("flat", "channels")


class ConditionalVAE(ReconstructionModel):
    r"""A VAE conditioned on a class or a vector: "draw me a 7".

    The condition ``c`` is a class index (``num_classes=K``: a one-hot vector of width ``K``, or
    with ``embedding_dim=E`` a learned ``nn.Embedding(K, E)`` of width ``E``) or a float vector
    (``condition_dim=D``, width ``D``). Call that width ``w``. It enters the networks by
    concatenation, so build them ``w`` wider:

    - the encoder takes ``x`` flattened and joined with the condition, ``(b, prod(x shape) + w)``
      (``Encoder(784 + 10, [512], 2 * d)`` for MNIST with ten one-hot classes) and emits
      ``(b, 2 * latent_dim)``; an encoder whose ``in_shape`` has three dims (a conv network)
      instead takes the condition as ``w`` constant channels, ``(b, C + w, H, W)``
      (``encoder_input="channels"``), since flattening would destroy its image layout;
    - the decoder takes ``z`` joined with the condition, ``(b, latent_dim + w)``
      (``Decoder(d + 10, [512], (1, 28, 28))``).

    The loss is GaussianVAE's, :math:`\mathbb E_q[-\log p(x \mid z, c)] + \beta\,
    \mathrm{KL}(q(z \mid x, c)\,\|\,p(z \mid c))`, in the same units and reduction.

    Args:
        encoder: Any module mapping the joined input to ``(b, 2 * latent_dim)``.
        decoder: Any module mapping ``(b, latent_dim + w)`` to the likelihood's parameters.
        latent_dim: Size of ``z``.
        num_classes: Conditions are class indices in ``[0, num_classes)``.
        embedding_dim: With ``num_classes``: embed the classes with a learned ``nn.Embedding``
            of this width instead of one-hot vectors.
        condition_dim: Conditions are float vectors of this width (instead of classes).
        prior: ``"standard"`` (:math:`\mathcal N(0, I)`) or ``"learned"``: a linear map from the
            condition vector to the mean and log-variance of :math:`p(z \mid c)`.
        encoder_input: ``"flat"`` or ``"channels"`` (see above); ``None`` picks ``"channels"``
            when ``encoder.in_shape`` has three dims, else ``"flat"``.
        beta: Weight of the KL term.
        likelihood: A name or a :class:`~autoenc.likelihoods.Likelihood`.
        reduction: ``"sum"`` or ``"mean"``, as for :class:`~autoenc.GaussianVAE`.
        free_bits: Minimum KL per latent dimension in the training loss, in nats.
        logvar_clamp: ``(low, high)`` bounds for the log-variances (posterior and prior).
        validate: Check inputs and conditions (finite, in range) on every call.

    Raises:
        ValueError: On a bad condition kind, or networks whose widths (``in_features``,
            ``out_features``, ``in_shape``, when they have them) do not fit the ones above.

    Example:
        >>> from autoenc import Decoder, Encoder
        >>> cvae = ConditionalVAE(Encoder(784 + 10, [64], 2 * 8), Decoder(8 + 10, [64], 784),
        ...                       latent_dim=8, num_classes=10)
        >>> cvae.loss(torch.rand(4, 784), torch.tensor([0, 7, 7, 9])).loss.shape
        torch.Size([])
        >>> cvae.sample(3, c=7).shape
        torch.Size([3, 784])
    """

    conditional = True  # fit, evaluate and log_likelihood give it (x, y) batches

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        latent_dim: int,
        *,
        num_classes: int | None = None,
        embedding_dim: int | None = None,
        condition_dim: int | None = None,
        prior: str = "standard",
        encoder_input: str | None = None,
        beta: float = 1.0,
        likelihood: str | dict[str, Any] | Likelihood = "bernoulli",
        reduction: str = "sum",
        free_bits: float = 0.0,
        logvar_clamp: Sequence[float] = (-30.0, 20.0),
        validate: bool = True,
    ) -> None:
        super().__init__()
        check_modules(encoder, decoder)
        latent_dim = check_int(latent_dim, "latent_dim")
        if (num_classes is None) == (condition_dim is None):
            raise ValueError(
                "pass num_classes= (class conditions) or condition_dim= (vector conditions), "
                f"exactly one; got num_classes={num_classes!r}, condition_dim={condition_dim!r}"
            )
        if embedding_dim is not None and num_classes is None:
            raise ValueError("embedding_dim= embeds class indices: it needs num_classes=")
        sizes = {"num_classes": num_classes, "embedding_dim": embedding_dim}
        for name, value in {**sizes, "condition_dim": condition_dim}.items():
            if value is not None:
                check_int(value, name)
        check_choice(prior, _PRIORS, "prior")
        check_choice(reduction, REDUCTIONS, "reduction")
        low, high = check_clamp(logvar_clamp)
        width = embedding_dim or num_classes or condition_dim
        in_shape = tuple(getattr(encoder, "in_shape", ()))
        if encoder_input is None:
            encoder_input = "channels" if len(in_shape) == 3 else "flat"
        check_choice(encoder_input, _INPUTS, "encoder_input")
        self.num_classes, self.embedding_dim, self.condition_dim = (
            num_classes,
            embedding_dim,
            condition_dim,
        )
        self.width, self.latent_dim, self.encoder_input = width, latent_dim, encoder_input
        _check_widths(encoder, decoder, latent_dim, width, encoder_input)
        self.encoder, self.decoder = encoder, decoder
        self.embedding = nn.Embedding(num_classes, embedding_dim) if embedding_dim else None
        self.prior = prior
        self.prior_net = nn.Linear(width, 2 * latent_dim) if prior == "learned" else None
        self.likelihood = get_likelihood(likelihood)
        check_decoder_output(decoder, self.likelihood)
        self.beta = check_number(beta, "beta", low=0)
        self.free_bits = check_number(free_bits, "free_bits", low=0)
        self.reduction, self.logvar_clamp, self.validate = reduction, (low, high), validate

    # -- the condition ------------------------------------------------------------------------

    def check_condition(self, c: Any, b: int, *, values: bool | None = None) -> None:
        """Raise unless ``c`` holds ``b`` conditions of this model's kind: ``(b,)`` class
        indices in ``[0, num_classes)`` or ``(b, condition_dim)`` floats. ``values`` (default:
        ``validate``) also checks the indices' range and the vectors' finiteness (a host sync)."""
        if not isinstance(c, Tensor):
            raise TypeError(f"c must be a torch.Tensor, got {type(c).__name__}")
        classes = self.num_classes is not None
        if classes and (c.is_floating_point() or c.is_complex() or c.dtype == torch.bool):
            raise TypeError(f"c must hold class indices (an integer tensor), got dtype {c.dtype}")
        if not classes and not c.is_floating_point():
            raise TypeError(f"c must hold float condition vectors, got dtype {c.dtype}")
        expected = (b,) if classes else (b, self.condition_dim)
        if tuple(c.shape) != expected:
            what = "class indices" if classes else "condition vectors of width condition_dim"
            raise ValueError(f"c must have shape {expected} ({what}), got {tuple(c.shape)}")
        if (self.validate if values is None else values) and c.numel():
            low, high = torch.stack(torch.aminmax(c.detach())).tolist()
            if classes and not (low >= 0 and high < self.num_classes):
                raise ValueError(
                    f"c holds class indices from {low} to {high}, outside [0, num_classes="
                    f"{self.num_classes})"
                )
            if not (math.isfinite(low) and math.isfinite(high)):
                raise ValueError("c contains NaN or Inf values")

    def condition_vector(self, c: Tensor, b: int) -> Tensor:
        """The checked condition as the ``(b, w)`` vectors the networks are joined with."""
        self.check_condition(c, b)
        if self.embedding is not None:
            return self.embedding(c)
        if self.num_classes is not None:
            return F.one_hot(c.long(), self.num_classes).to(model_dtype(self))
        return c.to(model_dtype(self))

    def _conditions(self, c: Any, n: int, device: torch.device) -> Tensor:
        """``sample``'s ``c`` (one class or vector for all, or one per sample) as ``n``."""
        c = torch.as_tensor(c, device=device)
        one = c.dim() == (0 if self.num_classes is not None else 1)
        return repeat(c, "... -> n ...", n=n) if one else c

    def _prior(self, h: Tensor) -> tuple[Tensor | None, Tensor | None]:
        if self.prior_net is None:
            return None, None  # N(0, I)
        mu_p, logvar_p = self.prior_net(h).chunk(2, dim=1)  # (b, latent_dim) each
        return mu_p, logvar_p.clamp(*self.logvar_clamp)

    def prior_params(self, c: Tensor) -> tuple[Tensor, Tensor]:
        r"""Mean and log-variance of :math:`p(z \mid c)`, each ``(b, latent_dim)``."""
        h = self.condition_vector(c, c.shape[0])
        mu_p, logvar_p = self._prior(h)
        if mu_p is None:
            mu_p = logvar_p = h.new_zeros(h.shape[0], self.latent_dim)
        return mu_p, logvar_p

    # -- encoding and decoding ----------------------------------------------------------------

    def _posterior(self, x: Tensor, h: Tensor) -> Posterior:
        if self.encoder_input == "channels":
            if x.dim() != 4:
                raise ValueError(
                    "encoder_input='channels' joins the condition to images (b, C, H, W) as "
                    f"channels, got x of shape {tuple(x.shape)}"
                )
            planes = repeat(h, "b w -> b w hh ww", hh=x.shape[2], ww=x.shape[3])
            joined = torch.cat([x, planes], dim=1)  # (b, C + w, H, W)
        else:
            joined = torch.cat([x.flatten(1), h], dim=1)  # (b, prod(x shape) + w)
            expected = getattr(self.encoder, "in_features", None)
            if expected is not None and joined.shape[1] != expected:
                raise ValueError(
                    f"the encoder takes in_features={expected} = prod(x shape) + {self.width} "
                    f"(the condition), but x has {x[0].numel()} features per example, so the "
                    f"joined input has {joined.shape[1]}"
                )
        return split_posterior(self.encoder(joined), self.latent_dim, self.logvar_clamp)

    def encode(self, x: Tensor, c: Tensor) -> Posterior:
        r"""The posterior :math:`q(z \mid x, c)` of a batch."""
        return self._posterior(x, self.condition_vector(c, x.shape[0]))

    def embed(self, x: Tensor, c: Tensor) -> Tensor:
        """The deterministic code of ``x``: the posterior mean, ``(b, latent_dim)``."""
        return self.encode(x, c).mu

    def decode_params(self, z: Tensor, c: Tensor) -> Tensor:
        """The decoder's raw output for latents ``z`` ``(b, latent_dim)`` under ``c``."""
        return self.decoder(torch.cat([z, self.condition_vector(c, z.shape[0])], dim=1))

    def decode(self, z: Tensor, c: Tensor) -> Tensor:
        """Map latents to images under ``c``: the likelihood's mean of the decoder's output."""
        return self.likelihood.mean(self.decode_params(z, c))

    def forward(self, x: Tensor, c: Tensor, *, eps: Tensor | None = None) -> VAEOutput:
        """Encode ``(x, c)``, draw ``z`` (from ``eps`` when given) and decode it under ``c``."""
        h = self.condition_vector(c, x.shape[0])
        q = self._posterior(x, h)
        z = reparameterize(q.mu, q.logvar, eps)
        params = self.decoder(torch.cat([z, h], dim=1))
        self.check_params(params, x)
        x_hat = self.likelihood.mean(params).reshape(x.shape)
        return VAEOutput(x_hat=x_hat, params=params, z=z, mu=q.mu, logvar=q.logvar, std=q.std)

    def kl_elementwise(self, q: VAEOutput | Posterior, c: Tensor) -> Tensor:
        r""":math:`\mathrm{KL}(q(z \mid x, c)\,\|\,p(z \mid c))` per example and dimension."""
        return gaussian_kl(q.mu, q.logvar, *self._prior(self.condition_vector(c, q.mu.shape[0])))

    def loss(self, x: Tensor, c: Tensor, *, eps: Tensor | None = None) -> LossOutput:
        """``recon + beta * kl`` for a batch and its conditions (one draw of ``z``)."""
        self.check_input(x)
        out = self.forward(x, c, eps=eps)
        if self.validate:
            cond = self.condition_vector(c, out.z.shape[0])
            self.warn_if_probabilities(out.params, torch.cat([out.z, cond], dim=1))
        return elbo_loss(self, self.recon(out.params, x), self.kl_elementwise(out, c), x)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, c: Tensor) -> Tensor:
        """Decode the posterior mean of ``(x, c)`` in eval mode, without gradients."""
        with eval_mode(self):
            h = self.condition_vector(c, x.shape[0])
            params = self.decoder(torch.cat([self._posterior(x, h).mu, h], dim=1))
            self.check_params(params, x)
            return self.likelihood.mean(params).reshape(x.shape)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        c: Any,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        r"""Decode ``n`` draws of :math:`p(z \mid c)` under ``c`` (the likelihood's means).

        Args:
            n: Number of samples.
            c: One class (an int) for all, ``n`` class indices (a list or tensor), one
                condition vector ``(condition_dim,)`` for all, or ``n`` of them.
            generator: Optional generator for reproducible draws.
            device: Where to draw; defaults to the model's device.
        """
        n = check_int(n, "n")
        device = model_device(self, device)
        c = self._conditions(c, n, device)
        self.check_condition(c, n, values=False)  # one per sample (prior_params checks values)
        with eval_mode(self):
            mu_p, logvar_p = self.prior_params(c)
            eps = torch.randn(mu_p.shape, generator=generator, device=device, dtype=mu_p.dtype)
            return self.decode(reparameterize(mu_p, logvar_p, eps), c)

    @property
    def config(self) -> dict[str, Any]:
        """A JSON-able description of the model (everything but the weights)."""
        return {
            "encoder": module_config(self.encoder, "encoder"),
            "decoder": module_config(self.decoder, "decoder"),
            "latent_dim": self.latent_dim,
            "num_classes": self.num_classes,
            "embedding_dim": self.embedding_dim,
            "condition_dim": self.condition_dim,
            "prior": self.prior,
            "encoder_input": self.encoder_input,
            "beta": self.beta,
            "likelihood": self.likelihood.config,
            "reduction": self.reduction,
            "free_bits": self.free_bits,
            "logvar_clamp": list(self.logvar_clamp),
            "validate": self.validate,
        }


def _check_widths(
    encoder: nn.Module, decoder: nn.Module, latent_dim: int, width: int, encoder_input: str
) -> None:
    """Raise unless the networks' recorded widths leave room for the condition."""
    check_encoder_width(encoder, latent_dim, "log-variance")
    dec_in = getattr(decoder, "in_features", None)
    if dec_in is not None and dec_in != latent_dim + width:
        raise ValueError(
            f"the decoder must take latent_dim + condition width = {latent_dim} + {width} = "
            f"{latent_dim + width} features (z joined with the condition), but its in_features "
            f"is {dec_in}"
        )
    in_shape = tuple(getattr(encoder, "in_shape", ()))
    out_shape = tuple(getattr(decoder, "out_shape", ()))
    if encoder_input == "channels" and len(in_shape) == 3 and len(out_shape) == 3:
        expected = (out_shape[0] + width, *out_shape[1:])
        if in_shape != expected:
            raise ValueError(
                f"the condition enters the encoder as {width} extra channels, so for images of "
                f"shape {out_shape} its in_shape must be {expected}, but it is {in_shape}; a "
                f"flat MLP encoder takes prod(x shape) + {width} features instead"
            )
    enc_in, dec_out = getattr(encoder, "in_features", None), getattr(decoder, "out_features", None)
    flat = encoder_input == "flat" and enc_in is not None and dec_out is not None
    if flat and enc_in != dec_out + width:
        raise ValueError(
            f"the encoder must take prod(x shape) + condition width = {dec_out} + {width} = "
            f"{dec_out + width} features (x flattened and joined with the condition), but its "
            f"in_features is {enc_in}"
        )
