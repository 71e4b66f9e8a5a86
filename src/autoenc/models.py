r"""The models: :class:`Autoencoder` and :class:`GaussianVAE`.

Both take any encoder and decoder modules and a likelihood, and expose ``encode``, ``decode``,
``forward``, ``loss`` and ``reconstruct``; the VAE adds ``sample``. ``loss(x)`` is all that
:func:`autoenc.fit` needs.

Loss convention: every term is summed over the non-batch dimensions and averaged over the
batch, so a VAE's ``loss`` with ``beta=1`` is the negative ELBO in nats per example.
``reduction="mean"`` divides every term by the number of elements of one datum instead, which
is what ``nn.MSELoss()`` plus ``KL / (b * 784)`` computes in the article. An empty batch gives a
NaN loss, the mean of nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from autoenc._validation import check_choice, check_int
from autoenc.functional import gaussian_kl, gaussian_kl_from_std, reparameterize
from autoenc.likelihoods import Likelihood, get_likelihood

__all__ = ["LossOutput", "AEOutput", "VAEOutput", "Posterior", "Autoencoder", "GaussianVAE"]

_REDUCTIONS = ("sum", "mean")
_POSTERIORS = ("logvar", "sigma")
_OBJECTIVES = ("elbo", "iwae")


@dataclass
class LossOutput:
    """What ``loss(x)`` returns.

    Attributes:
        loss: Scalar to backpropagate (``recon + beta * kl`` for a VAE).
        recon: Reconstruction term, detached, for logging.
        kl: KL term, detached, for logging; ``None`` for a plain autoencoder.
    """

    loss: Tensor
    recon: Tensor
    kl: Tensor | None = None

    def terms(self) -> dict[str, Tensor]:
        """The detached scalars to log, keyed ``loss``, ``recon`` and (when present) ``kl``."""
        out = {"loss": self.loss.detach(), "recon": self.recon}
        if self.kl is not None:
            out["kl"] = self.kl
        return out


@dataclass
class AEOutput:
    """What :meth:`Autoencoder.forward` returns: ``x_hat`` (the likelihood's mean, shaped like
    the input), ``z`` (the code) and ``params`` (the decoder's raw output)."""

    x_hat: Tensor
    z: Tensor
    params: Tensor


class Posterior(NamedTuple):
    """The diagonal Gaussian :math:`q(z \\mid x)`: mean, log-variance and standard deviation."""

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


def _check_modules(encoder: Any, decoder: Any) -> None:
    for arg, module in (("encoder", encoder), ("decoder", decoder)):
        if not isinstance(module, nn.Module):
            raise TypeError(f"{arg} must be a torch.nn.Module, got {type(module).__name__}")


_RESHAPES = (nn.Flatten, nn.Unflatten, nn.Identity)


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


def _is_reshape(module: nn.Module) -> bool:
    return isinstance(module, _RESHAPES) or type(module).__name__ in ("Rearrange", "Reshape")


def _check_decoder_output(decoder: nn.Module, likelihood: Likelihood) -> None:
    if likelihood.output == "logits" and _ends_in_sigmoid(decoder):
        raise ValueError(
            f"the {likelihood.name!r} likelihood expects the decoder to emit logits, but the "
            "decoder ends in a sigmoid; build it with final_activation=None"
        )


def _module_config(module: nn.Module, arg: str) -> dict[str, Any]:
    config = getattr(module, "config", None)
    if not isinstance(config, dict):
        raise TypeError(
            f"cannot describe the {arg} ({type(module).__name__}) as a config: only "
            "autoenc.Encoder/Decoder carry one. Save the weights with autoenc.save(model, path) "
            "and load them with autoenc.load(path, model=your_model)"
        )
    return {"type": type(module).__name__, **config}


class _ReconMixin:
    """What the two models share: input checks, the reduction, and saving/loading."""

    likelihood: Likelihood
    reduction: str
    validate: bool

    def _check_input(self, x: Any) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(
                f"x must be a floating-point tensor, got dtype {x.dtype}; convert images with "
                "x.float() / 255"
            )
        if x.dim() < 2:
            raise ValueError(f"x must have a batch dimension, got shape {tuple(x.shape)}")
        if self.validate and x.numel():
            # One fused pass and one host sync per batch: NaN spreads to both extremes, Inf
            # shows in one, and the extremes are all a range check needs.
            low, high = torch.stack(torch.aminmax(x.detach())).tolist()
            if not (math.isfinite(low) and math.isfinite(high)):
                raise ValueError("x contains NaN or Inf values")
            if type(self.likelihood).check_target is Likelihood.check_target:
                self.likelihood._check_range(low, high)
            else:  # a user likelihood with its own support
                self.likelihood.check_target(x)

    def _check_params(self, params: Tensor, x: Tensor) -> None:
        if params.shape[:1] != x.shape[:1] or params.numel() != x.numel():
            raise ValueError(
                f"the decoder output has shape {tuple(params.shape)}, which does not match the "
                f"input x of shape {tuple(x.shape)} (same batch size and elements per datum "
                "expected)"
            )

    def _scale(self, x: Tensor) -> float:
        """What turns a sum over the whole batch into the per-example (or per-element) mean."""
        n = x.numel() if self.reduction == "mean" else x.shape[0]
        return 1.0 / n if n else math.nan  # an empty batch: NaN, as the mean of nothing

    def _reduce(self, elementwise: Tensor, x: Tensor) -> Tensor:
        # sum then one scale: the same number as sum_except_batch(...).mean(), in two ops
        return elementwise.sum() * self._scale(x)

    def _recon(self, params: Tensor, x: Tensor) -> Tensor:
        return self.likelihood.nll_sum(params.reshape(x.shape), x) * self._scale(x)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Any:
        """Build an untrained model from :attr:`config`."""
        from autoenc.serialization import build_module

        kwargs = dict(config)
        encoder = build_module(kwargs.pop("encoder"))
        decoder = build_module(kwargs.pop("decoder"))
        return cls(encoder, decoder, **kwargs)

    def save(self, path: str | Any) -> None:
        """Save config and weights to one file; see :func:`autoenc.save`."""
        from autoenc.serialization import save

        save(self, path)

    @classmethod
    def load(cls, path: str | Any, *, map_location: Any = "cpu") -> Any:
        """Load a model of this class saved with :meth:`save`; see :func:`autoenc.load`."""
        from autoenc.serialization import load

        return load(path, kind=cls, map_location=map_location)


class Autoencoder(_ReconMixin, nn.Module):
    """A deterministic autoencoder: ``x -> encoder -> z -> decoder -> x_hat``.

    Args:
        encoder: Any module mapping ``(b, *shape)`` or ``(b, d)`` to ``(b, latent)``.
        decoder: Any module mapping ``(b, latent)`` to the likelihood's parameters for ``x``.
        likelihood: Reconstruction term: a name (``"mse"``, ``"gaussian"``, ``"bernoulli"``,
            ``"continuous_bernoulli"``) or a :class:`~autoenc.likelihoods.Likelihood`.
        reduction: ``"sum"`` (sum over data dims, mean over batch) or ``"mean"`` (mean over all
            elements, as ``nn.MSELoss()``).
        validate: Check inputs for finiteness and range on every ``loss`` call.

    Example:
        >>> from autoenc import Encoder, Decoder
        >>> dec = Decoder(8, [64], 784, final_activation="sigmoid")
        >>> ae = Autoencoder(Encoder(784, [64], 8), dec)
        >>> ae.loss(torch.rand(4, 784)).loss.shape
        torch.Size([])
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        *,
        likelihood: str | dict[str, Any] | Likelihood = "mse",
        reduction: str = "sum",
        validate: bool = True,
    ) -> None:
        super().__init__()
        _check_modules(encoder, decoder)
        check_choice(reduction, _REDUCTIONS, "reduction")
        self.encoder, self.decoder = encoder, decoder
        self.likelihood = get_likelihood(likelihood)
        _check_decoder_output(decoder, self.likelihood)
        self.reduction, self.validate = reduction, validate

    def encode(self, x: Tensor) -> Tensor:
        """Map ``x`` to its code ``z``."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """Map codes to reconstructions (the likelihood's mean)."""
        return self.likelihood.mean(self.decoder(z))

    def forward(self, x: Tensor) -> AEOutput:
        """Encode a batch and decode its codes.

        ``x`` is not validated here (:meth:`loss` checks its dtype, values and range).

        Args:
            x: A batch ``(b, ...)`` in a shape the encoder takes.

        Returns:
            An :class:`AEOutput`: ``x_hat`` (the likelihood's mean, shaped like ``x``), the code
            ``z`` and the decoder's raw output ``params``.

        Raises:
            ValueError: If the decoder's output does not fit ``x`` (batch size and elements per
                datum).

        Example:
            >>> from autoenc import Decoder, Encoder
            >>> ae = Autoencoder(Encoder(784, [32], 4), Decoder(4, [32], 784))
            >>> out = ae(torch.rand(2, 784))
            >>> out.x_hat.shape, out.z.shape
            (torch.Size([2, 784]), torch.Size([2, 4]))
        """
        z = self.encoder(x)
        params = self.decoder(z)
        self._check_params(params, x)
        return AEOutput(x_hat=self.likelihood.mean(params).reshape(x.shape), z=z, params=params)

    def loss(self, x: Tensor) -> LossOutput:
        """Reconstruction loss of a batch, reduced by ``reduction``."""
        self._check_input(x)
        params = self.decoder(self.encoder(x))
        self._check_params(params, x)
        recon = self._recon(params, x)
        return LossOutput(loss=recon, recon=recon.detach())

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Reconstruct ``x`` in eval mode without gradients; the training mode is restored."""
        with _eval_mode(self):
            return self.forward(x).x_hat

    @property
    def config(self) -> dict[str, Any]:
        """A JSON-able description of the model (everything but the weights)."""
        return {
            "encoder": _module_config(self.encoder, "encoder"),
            "decoder": _module_config(self.decoder, "decoder"),
            "likelihood": self.likelihood.config,
            "reduction": self.reduction,
            "validate": self.validate,
        }


class GaussianVAE(_ReconMixin, nn.Module):
    r"""A VAE with a diagonal Gaussian posterior and a standard-normal prior.

    The encoder emits ``2 * latent_dim`` features, split in half into the posterior's
    parameters. The loss is

    .. math::
        \mathcal L(x) = \mathbb E_{q(z|x)}[-\log p(x|z)] + \beta\,\mathrm{KL}(q(z|x)\,\|\,p(z))

    estimated with one reparameterized draw; with ``beta=1`` it is the negative ELBO.

    Args:
        encoder: Any module mapping ``x`` to ``(b, 2 * latent_dim)``.
        decoder: Any module mapping ``(b, latent_dim)`` to the likelihood's parameters.
        latent_dim: Size of ``z``.
        beta: Weight of the KL term (a plain attribute, so schedules can change it).
        likelihood: A name or :class:`~autoenc.likelihoods.Likelihood`; see
            :mod:`autoenc.likelihoods`.
        posterior: ``"logvar"``: the second half is :math:`\log\sigma^2`, clamped to
            ``logvar_clamp`` for numerical safety. ``"sigma"``: the second half is :math:`\sigma`
            itself, as in the article (whose encoder ends in a ReLU), with KL
            :math:`\tfrac12(\mu^2 + \sigma^2 - \log(10^{-8} + \sigma^2) - 1)`.
        reduction: ``"sum"`` or ``"mean"``; see the module docstring.
        free_bits: Minimum KL per latent dimension (batch-averaged) in the training loss, in nats
            (Kingma et al., 2016). The logged ``kl`` is always the true KL.
        logvar_clamp: ``(low, high)`` bounds for the log-variance.
        objective: ``"elbo"`` (one draw, the default) or ``"iwae"``: the importance-weighted
            bound of Burda et al. (2015) with ``iwae_k`` draws per example, tighter than the
            ELBO; ``beta`` must be 1 and ``free_bits`` 0 with it. The logged ``recon`` and ``kl``
            keep their ELBO meaning (``recon`` averaged over the draws).
        iwae_k: Number of importance samples for ``objective="iwae"``.
        validate: Check inputs for finiteness and range on every ``loss`` call.

    Example:
        >>> from autoenc import Encoder, Decoder
        >>> vae = GaussianVAE(Encoder(784, [64], 2 * 8), Decoder(8, [64], 784), latent_dim=8)
        >>> out = vae.loss(torch.rand(4, 784))
        >>> sorted(out.terms())
        ['kl', 'loss', 'recon']
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        latent_dim: int,
        *,
        beta: float = 1.0,
        likelihood: str | dict[str, Any] | Likelihood = "bernoulli",
        posterior: str = "logvar",
        reduction: str = "sum",
        free_bits: float = 0.0,
        logvar_clamp: tuple[float, float] = (-30.0, 20.0),
        objective: str = "elbo",
        iwae_k: int = 5,
        validate: bool = True,
    ) -> None:
        super().__init__()
        _check_modules(encoder, decoder)
        check_choice(objective, _OBJECTIVES, "objective")
        check_int(iwae_k, "iwae_k")
        if objective == "iwae" and (beta != 1 or free_bits != 0):
            raise ValueError(
                "objective='iwae' is a bound on log p(x) and has no KL weight: it needs beta=1 "
                f"and free_bits=0, got beta={beta!r}, free_bits={free_bits!r}"
            )
        check_int(latent_dim, "latent_dim")
        check_choice(posterior, _POSTERIORS, "posterior")
        check_choice(reduction, _REDUCTIONS, "reduction")
        if not (isinstance(beta, (int, float)) and beta >= 0 and math.isfinite(beta)):
            raise ValueError(f"beta must be a non-negative finite number, got {beta!r}")
        if not (isinstance(free_bits, (int, float)) and 0 <= free_bits < math.inf):
            raise ValueError(f"free_bits must be a non-negative finite number, got {free_bits!r}")
        try:
            low, high = (float(v) for v in logvar_clamp)
        except (TypeError, ValueError):
            low = high = math.nan
        if not low < high:
            raise ValueError(
                f"logvar_clamp must be (low, high) with low < high, got {logvar_clamp!r}"
            )
        enc_out = getattr(encoder, "out_features", None)
        if enc_out is not None and enc_out != 2 * latent_dim:
            raise ValueError(
                f"the encoder must emit 2 * latent_dim = {2 * latent_dim} features (mean and "
                f"{posterior}), but its out_features is {enc_out}"
            )
        dec_in = getattr(decoder, "in_features", None)
        if dec_in is not None and dec_in != latent_dim:
            raise ValueError(
                f"the decoder must take latent_dim = {latent_dim} features, but its in_features "
                f"is {dec_in}"
            )
        self.encoder, self.decoder = encoder, decoder
        self.likelihood = get_likelihood(likelihood)
        _check_decoder_output(decoder, self.likelihood)
        self.latent_dim, self.beta = latent_dim, float(beta)
        self.posterior, self.reduction = posterior, reduction
        self.free_bits, self.logvar_clamp = float(free_bits), (float(low), float(high))
        self.objective, self.iwae_k = objective, iwae_k
        self.validate = validate

    def encode(self, x: Tensor) -> Posterior:
        """The posterior :math:`q(z|x)` of a batch, as a :class:`Posterior`."""
        h = self.encoder(x)  # (b, 2 * latent_dim)
        if h.dim() != 2 or h.shape[1] != 2 * self.latent_dim:
            raise ValueError(
                f"the encoder must emit (b, 2 * latent_dim) = (b, {2 * self.latent_dim}) features, "
                f"got {tuple(h.shape)}"
            )
        mu, second = h.chunk(2, dim=1)  # (b, latent_dim) each
        if self.posterior == "sigma":
            return Posterior(mu, torch.log(1e-8 + second.pow(2)), second)
        logvar = second.clamp(*self.logvar_clamp)
        return Posterior(mu, logvar, torch.exp(0.5 * logvar))

    def decode(self, z: Tensor) -> Tensor:
        """Map latents to images: the likelihood's mean of the decoder's output."""
        return self.likelihood.mean(self.decoder(z))

    def forward(self, x: Tensor, *, eps: Tensor | None = None) -> VAEOutput:
        """Encode, draw ``z`` by the reparameterization trick and decode.

        ``z = mu + std * eps`` with fresh standard-normal ``eps``, or the ``eps`` given. The draw
        is random in eval mode too; :meth:`reconstruct` decodes the posterior mean instead. ``x``
        is not validated here (:meth:`loss` checks its dtype, values and range).

        Args:
            x: A batch ``(b, ...)`` in a shape the encoder takes.
            eps: Standard-normal noise ``(b, latent_dim)`` to use instead of a fresh draw.

        Returns:
            A :class:`VAEOutput`: ``x_hat`` (the likelihood's mean at ``z``, shaped like ``x``),
            the decoder's raw ``params``, ``z``, and the posterior's ``mu``, ``logvar`` and
            ``std``.

        Raises:
            ValueError: If ``eps``, the encoder's output or the decoder's output has the wrong
                shape.

        Example:
            >>> from autoenc import Decoder, Encoder
            >>> vae = GaussianVAE(Encoder(784, [32], 2 * 4), Decoder(4, [32], 784), latent_dim=4)
            >>> out = vae(torch.rand(2, 784), eps=torch.zeros(2, 4))
            >>> out.z.shape, torch.equal(out.z, out.mu)
            (torch.Size([2, 4]), True)
        """
        q = self.encode(x)
        if eps is None:
            eps = torch.randn_like(q.mu)
        elif eps.shape != q.mu.shape:
            raise ValueError(
                f"eps must have the posterior's shape (b, latent_dim) = {tuple(q.mu.shape)}, "
                f"got {tuple(eps.shape)}"
            )
        # "sigma" is the article's draw: std is the encoder's raw output (0 or even negative).
        z = q.mu + q.std * eps if self.posterior == "sigma" else reparameterize(q.mu, q.logvar, eps)
        params = self.decoder(z)
        self._check_params(params, x)
        x_hat = self.likelihood.mean(params).reshape(x.shape)
        return VAEOutput(x_hat=x_hat, params=params, z=z, mu=q.mu, logvar=q.logvar, std=q.std)

    def kl_elementwise(self, out: VAEOutput) -> Tensor:
        """Per-example, per-dimension KL to the prior, ``(b, latent_dim)``, in nats."""
        if self.posterior == "sigma":
            return gaussian_kl_from_std(out.mu, out.std)
        return gaussian_kl(out.mu, out.logvar)

    def loss(self, x: Tensor, *, eps: Tensor | None = None) -> LossOutput:
        """``recon + beta * kl`` for a batch (one draw of ``z``; fixed when ``eps`` is given).

        With ``objective="iwae"`` the loss is the negative IWAE bound instead, and ``eps``, when
        given, has shape ``(iwae_k, b, latent_dim)``.
        """
        self._check_input(x)
        if self.objective == "iwae":
            return self._iwae_loss(x, eps)
        out = self.forward(x, eps=eps)
        recon = self._recon(out.params, x)
        kl_elem = self.kl_elementwise(out)  # (b, latent_dim)
        kl = self._reduce(kl_elem, x)
        kl_train = kl
        if self.free_bits > 0:
            kl_train = kl_elem.mean(dim=0).clamp(min=self.free_bits).sum()
            if self.reduction == "mean":
                kl_train = kl_train / math.prod(x.shape[1:])
        loss = torch.add(recon, kl_train, alpha=self.beta)  # recon + beta * kl, one op
        return LossOutput(loss=loss, recon=recon.detach(), kl=kl.detach())

    def _iwae_loss(self, x: Tensor, eps: Tensor | None) -> LossOutput:
        from autoenc.evaluation import iwae_terms  # evaluation imports this module

        t = iwae_terms(self, x, self.iwae_k, eps=eps)  # (b,) each
        scale = math.prod(x.shape[1:]) if self.reduction == "mean" else 1  # x[0] fails at b=0
        return LossOutput(
            loss=-t.bound.mean() / scale,
            recon=t.recon.mean().detach() / scale,
            kl=t.kl.mean().detach() / scale,
        )

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Decode the posterior mean of ``x`` in eval mode, without gradients."""
        with _eval_mode(self):
            params = self.decoder(self.encode(x).mu)
            self._check_params(params, x)
            return self.likelihood.mean(params).reshape(x.shape)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Decode ``n`` draws from the prior :math:`\\mathcal N(0, I)` (the likelihood's means).

        Args:
            n: Number of samples.
            generator: Optional generator for reproducible draws.
            device: Where to draw; defaults to the model's device.
        """
        check_int(n, "n")
        if device is None:
            device = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, generator=generator, device=device)
        with _eval_mode(self):
            return self.decode(z)

    @property
    def config(self) -> dict[str, Any]:
        """A JSON-able description of the model (everything but the weights)."""
        return {
            "encoder": _module_config(self.encoder, "encoder"),
            "decoder": _module_config(self.decoder, "decoder"),
            "latent_dim": self.latent_dim,
            "beta": self.beta,
            "likelihood": self.likelihood.config,
            "posterior": self.posterior,
            "reduction": self.reduction,
            "free_bits": self.free_bits,
            "logvar_clamp": list(self.logvar_clamp),
            "objective": self.objective,
            "iwae_k": self.iwae_k,
            "validate": self.validate,
        }


class _eval_mode:
    """Context manager: put a module in eval mode and restore every submodule's mode on exit."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.modes = [(m, m.training) for m in module.modules()]

    def __enter__(self) -> nn.Module:
        self.module.eval()
        return self.module

    def __exit__(self, *exc: object) -> None:
        self.module.train(self.modes[0][1])  # runs any train() override of the user's modules
        for m, training in self.modes:  # then a submodule kept in eval (frozen BN) stays so
            m.training = training
