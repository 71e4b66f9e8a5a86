"""What the models share: their output types, input checks, the loss reduction and configs.

Loss convention: every term is summed over the non-batch dimensions and averaged over the
batch, so a VAE's ``loss`` with ``beta=1`` is the negative ELBO in nats per example.
``reduction="mean"`` divides every term by the number of elements of one datum instead, which
is what ``nn.MSELoss()`` plus ``KL / (b * 784)`` computes in the article. An empty batch gives a
NaN loss, the mean of nothing.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from autoenc._utils import eval_mode
from autoenc.likelihoods import Likelihood
from autoenc.networks import build_network

__all__ = [
    "LossOutput",
    "AEOutput",
    "VAEOutput",
    "Posterior",
    "ReconstructionModel",
    "check_modules",
    "check_decoder_output",
    "module_config",
    "check_clamp",
    "check_encoder_width",
    "split_posterior",
    "elbo_loss",
]

REDUCTIONS = ("sum", "mean")


@dataclass
class LossOutput:
    """What ``loss(x)`` returns.

    Attributes:
        loss: Scalar to backpropagate (``recon + beta * kl`` for a VAE).
        recon: Reconstruction term, detached, for logging.
        kl: KL term, detached, for logging; ``None`` for a plain autoencoder.
        extra: Further detached scalars to log (e.g. a quantizer's perplexity).
    """

    loss: Tensor
    recon: Tensor
    kl: Tensor | None = None
    extra: dict[str, Tensor] | None = None

    def terms(self) -> dict[str, Tensor]:
        """The detached scalars to log, keyed ``loss``, ``recon``, ``kl`` and ``extra``'s keys."""
        out = {"loss": self.loss.detach(), "recon": self.recon}
        if self.kl is not None:
            out["kl"] = self.kl
        out.update(self.extra or {})
        return out


@dataclass
class AEOutput:
    """What :meth:`Autoencoder.forward` returns.

    Attributes:
        x_hat: The likelihood's mean, shaped like the input.
        z: The code, ``(b, latent)``.
        params: The decoder's raw output.
    """

    x_hat: Tensor
    z: Tensor
    params: Tensor


class Posterior(NamedTuple):
    r"""The diagonal Gaussian :math:`q(z \mid x)`, each field ``(b, latent_dim)``.

    Attributes:
        mu: The mean.
        logvar: The log-variance.
        std: The standard deviation.
    """

    mu: Tensor
    logvar: Tensor
    std: Tensor


@dataclass
class VAEOutput:
    """What :meth:`GaussianVAE.forward` returns.

    Attributes:
        x_hat: The likelihood's mean at ``z``, shaped like the input.
        params: The decoder's raw output (logits for the Bernoulli likelihoods).
        z: The reparameterized draw, ``(b, latent_dim)``.
        mu: Posterior mean, ``(b, latent_dim)``.
        logvar: Posterior log-variance, ``(b, latent_dim)``.
        std: Posterior standard deviation, ``(b, latent_dim)``.
    """

    x_hat: Tensor
    params: Tensor
    z: Tensor
    mu: Tensor
    logvar: Tensor
    std: Tensor


def check_modules(encoder: Any, decoder: Any) -> None:
    """Raise unless both are modules."""
    for arg, module in (("encoder", encoder), ("decoder", decoder)):
        if not isinstance(module, nn.Module):
            raise TypeError(f"{arg} must be a torch.nn.Module, got {type(module).__name__}")


_RESHAPES = (nn.Flatten, nn.Unflatten, nn.Identity)


def _is_reshape(module: nn.Module) -> bool:
    return isinstance(module, _RESHAPES) or type(module).__name__ in ("Rearrange", "Reshape")


def _ends_in_sigmoid(module: nn.Module) -> bool:
    if getattr(module, "final_activation", None) == "sigmoid":
        return True
    # A user nn.Sequential: look through trailing reshapes (nn.Unflatten, einops Rearrange, ...).
    while isinstance(module, nn.Sequential):
        layers = [m for m in module if not _is_reshape(m)]
        if not layers:
            return False
        module = layers[-1]
    return isinstance(module, nn.Sigmoid)


def check_decoder_output(decoder: nn.Module, likelihood: Likelihood) -> None:
    """Refuse a decoder that ends in a sigmoid under a likelihood that wants logits."""
    if likelihood.output == "logits" and _ends_in_sigmoid(decoder):
        raise ValueError(
            f"the {likelihood.name!r} likelihood expects the decoder to emit logits, but the "
            "decoder ends in a sigmoid; build it with final_activation=None"
        )


def module_config(module: nn.Module, arg: str) -> dict[str, Any]:
    """The ``config`` of an autoenc network with its type, or a ``TypeError`` that says why."""
    config = getattr(module, "config", None)
    if not isinstance(config, dict):
        raise TypeError(
            f"cannot describe the {arg} ({type(module).__name__}) as a config: only autoenc's "
            "networks carry one. Save the weights with autoenc.save(model, path) and load them "
            "with autoenc.load(path, model=your_model)"
        )
    return {"type": type(module).__name__, **config}


class ReconstructionModel(nn.Module):
    """The base of autoenc's models: input checks, the reduction and the config round trip."""

    likelihood: Likelihood
    reduction: str
    validate: bool

    def check_input(self, x: Any, *, values: bool | None = None) -> None:
        """Check that ``x`` is a floating-point batch; with ``values``, finite and in range.

        ``values`` defaults to the model's ``validate``; checking values costs one host sync.
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(
                f"x must be a floating-point tensor, got dtype {x.dtype}; convert images with "
                "x.float() / 255"
            )
        if x.dim() < 2:
            raise ValueError(f"x must have a batch dimension, got shape {tuple(x.shape)}")
        if (self.validate if values is None else values) and x.numel():
            # One fused pass and one host sync: NaN spreads to both extremes, Inf shows in one,
            # and the extremes are all a range check needs.
            low, high = torch.stack(torch.aminmax(x.detach())).tolist()
            if not (math.isfinite(low) and math.isfinite(high)):
                raise ValueError("x contains NaN or Inf values")
            if type(self.likelihood).check_target is Likelihood.check_target:
                self.likelihood.check_range(low, high)
            else:  # a user likelihood with its own support
                self.likelihood.check_target(x)

    def check_params(self, params: Tensor, x: Tensor) -> None:
        """Raise unless the decoder's output fits ``x`` (batch size and elements per datum)."""
        if params.shape[:1] != x.shape[:1] or params.numel() != x.numel():
            raise ValueError(
                f"the decoder output has shape {tuple(params.shape)}, which does not match the "
                f"input x of shape {tuple(x.shape)} (same batch size and elements per datum "
                "expected)"
            )

    def warn_if_probabilities(self, params: Tensor, decoder_input: Tensor) -> None:
        """Warn when a logits likelihood gets a decoder whose outputs stay in ``[0, 1]``.

        ``params`` are the decoder's outputs for ``decoder_input``. Outputs in ``[0, 1]`` alone
        can happen at initialization; a decoder that also keeps ``decoder(1000 * input)`` there
        ends in a squashing function (a sigmoid in its ``forward``), and its probabilities would
        be read as logits.
        """
        if self.likelihood.output != "logits" or params.numel() < 2:
            return

        def bounded(t: Tensor) -> bool:
            low, high = torch.stack(torch.aminmax(t.detach().float())).tolist()
            return low >= 0.0 and high <= 1.0

        if not bounded(params):
            return
        with torch.no_grad(), eval_mode(self.decoder):
            if not bounded(self.decoder(decoder_input.detach() * 1000.0)):
                return
        warnings.warn(
            f"the decoder's outputs stay in [0, 1], but the {self.likelihood.name!r} likelihood "
            "reads them as logits: does the decoder apply a sigmoid in its forward? Return raw "
            "logits (the likelihood applies the sigmoid)",
            UserWarning,
            stacklevel=3,
        )

    def scale(self, x: Tensor) -> float:
        """What turns a sum over the whole batch into the per-example (or per-element) mean."""
        n = x.numel() if self.reduction == "mean" else x.shape[0]
        return 1.0 / n if n else math.nan  # an empty batch: NaN, as the mean of nothing

    def reduce(self, elementwise: Tensor, x: Tensor) -> Tensor:
        """Sum then one scale: the same number as ``sum_except_batch(...).mean()``, in two ops."""
        return elementwise.sum() * self.scale(x)

    def recon(self, params: Tensor, x: Tensor) -> Tensor:
        """The reduced reconstruction term of decoder output ``params`` for the batch ``x``."""
        return self.likelihood.nll_sum(params.reshape(x.shape), x) * self.scale(x)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Any:
        """Build an untrained model from its ``config``."""
        kwargs = dict(config)
        encoder = build_network(kwargs.pop("encoder"))
        decoder = build_network(kwargs.pop("decoder"))
        return cls(encoder, decoder, **kwargs)


# -- the parts of models with a diagonal Gaussian latent ------------------------------------


def check_clamp(logvar_clamp: Any) -> tuple[float, float]:
    """``(low, high)`` log-variance bounds as floats, or a ``ValueError``."""
    try:
        low, high = (float(v) for v in logvar_clamp)
    except (TypeError, ValueError):
        low = high = math.nan
    if not low < high:
        raise ValueError(f"logvar_clamp must be (low, high) with low < high, got {logvar_clamp!r}")
    return low, high


def check_encoder_width(encoder: nn.Module, latent_dim: int, second: str = "logvar") -> None:
    """Raise when an encoder that records its ``out_features`` does not emit the posterior's
    ``2 * latent_dim`` parameters (the mean and ``second``)."""
    enc_out = getattr(encoder, "out_features", None)
    if enc_out is not None and enc_out != 2 * latent_dim:
        raise ValueError(
            f"the encoder must emit 2 * latent_dim = {2 * latent_dim} features (mean and "
            f"{second}), but its out_features is {enc_out}"
        )


def split_posterior(
    h: Tensor, latent_dim: int, clamp: tuple[float, float], posterior: str = "logvar"
) -> Posterior:
    """The diagonal Gaussian of an encoder output ``h`` ``(b, 2 * latent_dim)``: its first half
    is the mean, its second the clamped log-variance (or, with ``"sigma"``, sigma itself)."""
    if h.dim() != 2 or h.shape[1] != 2 * latent_dim:
        raise ValueError(
            f"the encoder must emit (b, 2 * latent_dim) = (b, {2 * latent_dim}) features, "
            f"got {tuple(h.shape)}"
        )
    mu, second = h.chunk(2, dim=1)  # (b, latent_dim) each
    if posterior == "sigma":
        return Posterior(mu, torch.log(1e-8 + second.pow(2)), second)
    logvar = second.clamp(*clamp)
    return Posterior(mu, logvar, torch.exp(0.5 * logvar))


def elbo_loss(model: Any, recon: Tensor, kl_elem: Tensor, x: Tensor) -> LossOutput:
    """``recon + beta * kl`` of a Gaussian-latent model with its ``beta``, ``free_bits`` and
    ``reduction``; ``kl_elem`` is the KL per example and latent dimension ``(b, latent_dim)``.
    Free bits lift the training KL only; the logged ``kl`` is the true one."""
    kl = kl_train = model.reduce(kl_elem, x)
    if model.free_bits > 0:
        kl_train = kl_elem.mean(dim=0).clamp(min=model.free_bits).sum()
        if model.reduction == "mean":
            kl_train = kl_train / math.prod(x.shape[1:])
    loss = torch.add(recon, kl_train, alpha=model.beta)  # recon + beta * kl, one op
    return LossOutput(loss=loss, recon=recon.detach(), kl=kl.detach())
