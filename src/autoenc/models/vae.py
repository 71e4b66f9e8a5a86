r"""The :class:`GaussianVAE` and its IWAE objective.

A VAE with a diagonal Gaussian posterior and a standard-normal prior; ``objective="iwae"``
trains on the importance-weighted bound of Burda et al. (2015), computed by :func:`iwae_terms`,
which :mod:`autoenc.evaluation` also uses for the marginal likelihood.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from autoenc._utils import (
    autocast,
    check_choice,
    check_int,
    check_number,
    eval_mode,
    model_device,
)
from autoenc.functional import (
    gaussian_kl,
    gaussian_kl_from_std,
    gaussian_log_prob,
    reparameterize,
)
from autoenc.likelihoods import Likelihood, SquaredError, get_likelihood
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

__all__ = [
    "GaussianVAE",
    "IWAETerms",
    "iwae_terms",
    "iwae_bound",
    "log_weights",
    "check_vae",
]

_POSTERIORS = ("logvar", "sigma")
_OBJECTIVES = ("elbo", "iwae")


@dataclass
class IWAETerms:
    r"""What :func:`iwae_terms` returns: per-example losses in nats, each ``(b,)``.

    All three are losses (lower is better), as in :class:`~autoenc.LossOutput`.

    Attributes:
        loss: The negative IWAE bound :math:`-\log\frac1K\sum_k w_k`, differentiable.
        recon: :math:`-\log p(x \mid z_k)` averaged over the ``K`` samples, detached.
        kl: :math:`\mathrm{KL}(q(z \mid x)\,\|\,p(z))` in closed form, as the model's ``loss``
            logs it, detached. ``recon + kl`` is the negative ELBO; ``loss`` is below it in
            expectation by what the IWAE objective gains, and equal to it at ``K = 1``.
    """

    loss: Tensor
    recon: Tensor
    kl: Tensor


class GaussianVAE(ReconstructionModel):
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
            bound of Burda et al. (2015) with ``k`` draws per example, tighter than the
            ELBO; ``beta`` must be 1 and ``free_bits`` 0 with it. The logged ``recon`` and ``kl``
            keep their ELBO meaning (``recon`` averaged over the draws).
        k: Importance samples per example for ``objective="iwae"`` (the ``k`` of
            :func:`~autoenc.log_likelihood`). ``iwae_k=`` is a deprecated alias.
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
        k: int = 5,
        validate: bool = True,
        iwae_k: int | None = None,
    ) -> None:
        super().__init__()
        if iwae_k is not None:
            warnings.warn(
                "GaussianVAE(iwae_k=...) is deprecated: the importance-sample count is k= "
                "everywhere (as in log_likelihood); use GaussianVAE(..., k=...)",
                FutureWarning,
                stacklevel=2,
            )
            k = iwae_k
        check_modules(encoder, decoder)
        check_choice(objective, _OBJECTIVES, "objective")
        k = check_int(k, "k")
        if objective == "iwae" and (beta != 1 or free_bits != 0):
            raise ValueError(
                "objective='iwae' is a bound on log p(x) and has no KL weight: it needs beta=1 "
                f"and free_bits=0, got beta={beta!r}, free_bits={free_bits!r}"
            )
        check_int(latent_dim, "latent_dim")
        check_choice(posterior, _POSTERIORS, "posterior")
        check_choice(reduction, REDUCTIONS, "reduction")
        beta = check_number(beta, "beta", low=0)
        free_bits = check_number(free_bits, "free_bits", low=0)
        low, high = check_clamp(logvar_clamp)
        check_encoder_width(encoder, latent_dim, posterior)
        dec_in = getattr(decoder, "in_features", None)
        if dec_in is not None and dec_in != latent_dim:
            raise ValueError(
                f"the decoder must take latent_dim = {latent_dim} features, but its in_features "
                f"is {dec_in}"
            )
        self.encoder, self.decoder = encoder, decoder
        self.likelihood = get_likelihood(likelihood)
        check_decoder_output(decoder, self.likelihood)
        self.latent_dim, self.beta = latent_dim, beta
        self.posterior, self.reduction = posterior, reduction
        self.free_bits, self.logvar_clamp = free_bits, (low, high)
        self.objective, self.k = objective, k
        self.validate = validate

    def encode(self, x: Tensor) -> Posterior:
        """The posterior :math:`q(z|x)` of a batch, as a :class:`Posterior`."""
        return split_posterior(self.encoder(x), self.latent_dim, self.logvar_clamp, self.posterior)

    def embed(self, x: Tensor) -> Tensor:
        """The deterministic code of ``x``: the posterior mean, ``(b, latent_dim)``."""
        return self.encode(x).mu

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
        self.check_params(params, x)
        x_hat = self.likelihood.mean(params).reshape(x.shape)
        return VAEOutput(x_hat=x_hat, params=params, z=z, mu=q.mu, logvar=q.logvar, std=q.std)

    def kl_elementwise(self, q: VAEOutput | Posterior) -> Tensor:
        """Per-example, per-dimension KL of a posterior to the prior, ``(b, latent_dim)``."""
        if self.posterior == "sigma":
            return gaussian_kl_from_std(q.mu, q.std)
        return gaussian_kl(q.mu, q.logvar)

    def loss(self, x: Tensor, *, eps: Tensor | None = None) -> LossOutput:
        """``recon + beta * kl`` for a batch (one draw of ``z``; fixed when ``eps`` is given).

        With ``objective="iwae"`` the loss is the negative IWAE bound instead, and ``eps``, when
        given, has shape ``(k, b, latent_dim)``.
        """
        if self.objective == "iwae":
            return self._iwae_loss(x, eps)  # iwae_terms checks x
        self.check_input(x)
        out = self.forward(x, eps=eps)
        if self.validate:
            self.warn_if_probabilities(out.params, out.z)
        return elbo_loss(self, self.recon(out.params, x), self.kl_elementwise(out), x)

    def _iwae_loss(self, x: Tensor, eps: Tensor | None) -> LossOutput:
        t = iwae_terms(self, x, self.k, eps=eps)  # (b,) each
        scale = math.prod(x.shape[1:]) if self.reduction == "mean" else 1  # x[0] fails at b=0
        return LossOutput(
            loss=t.loss.mean() / scale, recon=t.recon.mean() / scale, kl=t.kl.mean() / scale
        )

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Decode the posterior mean of ``x`` in eval mode, without gradients."""
        with eval_mode(self):
            params = self.decoder(self.encode(x).mu)
            self.check_params(params, x)
            return self.likelihood.mean(params).reshape(x.shape)

    @torch.no_grad()
    def sample(
        self, n: int, *, generator: torch.Generator | None = None, device: Any = None
    ) -> Tensor:
        """Decode ``n`` draws from the prior :math:`\\mathcal N(0, I)` (the likelihood's means).

        Args:
            n: Number of samples.
            generator: Optional generator for reproducible draws.
            device: Where to draw; defaults to the model's device.
        """
        device = model_device(self, device)
        z = torch.randn(check_int(n, "n"), self.latent_dim, generator=generator, device=device)
        with eval_mode(self):
            return self.decode(z)

    @property
    def config(self) -> dict[str, Any]:
        """A JSON-able description of the model (everything but the weights)."""
        return {
            "encoder": module_config(self.encoder, "encoder"),
            "decoder": module_config(self.decoder, "decoder"),
            "latent_dim": self.latent_dim,
            "beta": self.beta,
            "likelihood": self.likelihood.config,
            "posterior": self.posterior,
            "reduction": self.reduction,
            "free_bits": self.free_bits,
            "logvar_clamp": list(self.logvar_clamp),
            "objective": self.objective,
            "k": self.k,
            "validate": self.validate,
        }


def resolve_likelihood(model: GaussianVAE, likelihood: Any) -> Likelihood:
    resolved = model.likelihood if likelihood is None else get_likelihood(likelihood)
    if isinstance(resolved, SquaredError):
        raise ValueError(
            "the 'mse' likelihood is a squared error, not a normalized density, so no "
            "log-likelihood can be computed from it. Squared error with beta=1 is, up to a "
            "constant, a Gaussian with standard deviation sqrt(1/2): pass "
            "likelihood=autoenc.Gaussian(scale=0.5 ** 0.5) to evaluate under that density, or "
            "train with likelihood='gaussian'"
        )
    return resolved


def log_weights(
    model: GaussianVAE,
    likelihood: Likelihood,
    x: Tensor,
    q: Posterior,
    eps: Tensor,
    c: Tensor | None = None,
    *,
    precision: str = "fp32",
    decode: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    r"""``log p(x|z_k)`` and ``log p(z_k) - log q(z_k|x)``, each ``(k, b)``, at ``mu + std * eps``.

    The proposal's standard deviation is ``exp(logvar / 2)`` for both posterior kinds, so the
    density we divide by is the one we drew from (with ``posterior="sigma"`` that is
    ``sqrt(1e-8 + sigma**2)``, matching the KL the model trains on). For a conditional model
    ``c`` is its condition (``(b, ...)``): the weights are those of
    :math:`\log p(x \mid c)`, with the decoder and the prior :math:`p(z \mid c)` taking ``c``.
    With ``precision="bf16"`` only the decoder runs in bfloat16; the densities are summed in
    the model's dtype. ``decode`` stands in for ``model.decoder`` of an unconditional model
    (e.g. :func:`autoenc.networks.fused_inference`'s).
    """
    k, b, latent = eps.shape
    z = q.mu + torch.exp(0.5 * q.logvar) * eps  # (k, b, latent)
    flat = z.reshape(k * b, latent)
    prior = None if c is None else model.prior_params(c)  # its (mu, logvar), (b, latent) each
    with autocast(precision, z.device):
        if c is not None:  # a ConditionalVAE: the k draws of an example share its condition
            params = model.decode_params(flat, c.repeat(k, *(1,) * (c.dim() - 1)))  # (k * b, ...)
        else:
            params = (model.decoder if decode is None else decode)(flat)
    params = params.reshape(k, *x.shape)  # (k, b, *shape), bf16 after a bf16 pass
    with torch.autocast(z.device.type, enabled=False):  # the caller may hold autocast open
        log_px_z = -likelihood.event_nll(params, x)  # (k, b), in x's dtype
        # log q(z|x) = log N(eps; 0, I) - logvar / 2 exactly, without recovering eps from z - mu;
        # under the standard normal prior the log(2 pi) terms cancel in log p(z) - log q(z|x)
        if c is None:
            sq = torch.linalg.vecdot(eps, eps) - torch.linalg.vecdot(z, z)  # (k, b)
            return log_px_z, 0.5 * (sq + q.logvar.sum(dim=-1))
        log_qz = (gaussian_log_prob(eps) - 0.5 * q.logvar).sum(dim=2)  # (k, b)
        log_pz = gaussian_log_prob(z, *prior).sum(dim=2)  # (k, b)
    return log_px_z, log_pz - log_qz


def check_vae(model: Any, fn: str) -> None:
    """Raise unless ``model`` is a :class:`GaussianVAE` or a conditional one (a
    :class:`ReconstructionModel` whose class sets ``conditional = True``, with ``prior_params``)."""
    conditional = (
        isinstance(model, ReconstructionModel)
        and getattr(model, "conditional", False) is True
        and callable(getattr(model, "prior_params", None))
    )
    if not (isinstance(model, GaussianVAE) or conditional):
        raise TypeError(
            f"{fn} needs an autoenc.GaussianVAE or ConditionalVAE, got {type(model).__name__}"
        )


def iwae_terms(
    model: GaussianVAE,
    x: Tensor,
    k: int,
    *,
    eps: Tensor | None = None,
    likelihood: Any = None,
    c: Tensor | None = None,
) -> IWAETerms:
    r"""The negative IWAE bound of a batch with its averaged reconstruction and KL terms.

    .. math::
        \mathcal L_K(x) = \log \frac1K \sum_{k=1}^K
        \frac{p(x \mid z_k)\, p(z_k)}{q(z_k \mid x)}, \qquad
        z_k = \mu(x) + \sigma(x) \odot \epsilon_k,

    (Burda et al., 2015). :math:`\mathcal L_1` is the ELBO with a sampled KL;
    :math:`\mathcal L_K` rises with :math:`K` towards :math:`\log p(x)`. The model's mode is
    left alone: this is a training objective.

    Args:
        model: A :class:`~autoenc.GaussianVAE` or :class:`~autoenc.ConditionalVAE`.
        x: A batch, ``(b, ...)``, as ``model.loss`` takes it.
        k: Number of importance samples per example.
        eps: Standard-normal noise ``(k, b, latent_dim)``; fresh noise when ``None``.
        likelihood: Evaluate under this likelihood instead of the model's own.
        c: For a :class:`~autoenc.ConditionalVAE`, the condition of ``x``: the bound is then
            on :math:`\log p(x \mid c)`.

    Returns:
        An :class:`IWAETerms` of ``(b,)`` tensors; only ``loss`` carries gradients.

    Raises:
        TypeError: If ``model`` is not a GaussianVAE or ``x`` is not a float tensor.
        ValueError: On a non-positive ``k``, a badly shaped ``eps``, the ``"mse"`` likelihood,
            or ``c`` missing for a conditional model (or given for another).
    """
    check_vae(model, "iwae_terms")
    check_int(k, "k")
    if (c is None) == (getattr(model, "conditional", False) is True):
        need = "needs its condition: pass c=" if c is None else "takes no condition c="
        raise ValueError(f"iwae_terms: a {type(model).__name__} {need}")
    lik = resolve_likelihood(model, likelihood)
    model.check_input(x)
    cond = () if c is None else (c,)
    q = model.encode(x, *cond)
    shape = (k, x.shape[0], model.latent_dim)
    if eps is None:
        eps = torch.randn(shape, dtype=q.mu.dtype, device=q.mu.device)
    elif tuple(eps.shape) != shape:
        raise ValueError(
            f"eps must have shape (k, b, latent_dim) = {shape}, got {tuple(eps.shape)}"
        )
    log_px_z, log_ratio = log_weights(model, lik, x, q, eps, c)
    bound = torch.logsumexp(log_px_z + log_ratio, dim=0) - math.log(k)  # (b,)
    kl = model.kl_elementwise(q, *cond).sum(dim=1)
    return IWAETerms(loss=-bound, recon=-log_px_z.mean(dim=0).detach(), kl=kl.detach())


def iwae_bound(model: GaussianVAE, x: Tensor, k: int, *, eps: Tensor | None = None) -> Tensor:
    """The per-example IWAE bound on ``log p(x)``, differentiable: ``-iwae_terms(...).loss``.

    Train on it with ``loss = -iwae_bound(model, x, k).mean()``. See :func:`iwae_terms`.

    Returns:
        A ``(b,)`` tensor in nats.

    Example:
        >>> from autoenc import Decoder, Encoder, GaussianVAE
        >>> vae = GaussianVAE(Encoder(6, [8], 4), Decoder(2, [8], 6), latent_dim=2)
        >>> iwae_bound(vae, torch.rand(3, 6), k=5).shape
        torch.Size([3])
    """
    return -iwae_terms(model, x, k, eps=eps).loss
