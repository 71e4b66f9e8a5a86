r"""Evaluation a researcher can trust: marginal log-likelihood, the IWAE bound, latent diagnostics.

* :func:`log_likelihood` estimates :math:`\log p(x)` of a :class:`~autoenc.GaussianVAE` by
  importance sampling with the encoder as proposal (Burda et al., 2015),

  .. math::
      \log p(x) \approx \log \frac1K \sum_{k=1}^K
      \frac{p(x \mid z_k)\, p(z_k)}{q(z_k \mid x)}, \qquad z_k \sim q(z \mid x),

  the number papers report as "NLL" (e.g. on binarized MNIST). The estimate is a stochastic
  lower bound: it is below :math:`\log p(x)` in expectation and rises towards it as ``K`` grows.
* :func:`iwae_bound` is the same quantity, differentiable, for training on the IWAE objective;
  :func:`iwae_terms` adds the sample-averaged reconstruction and KL for logging.
* :func:`latent_diagnostics` reports the KL per latent dimension, the active units and warns
  (:class:`PosteriorCollapseWarning`) when most of the latent space is unused.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from autoenc._validation import check_int
from autoenc.batching import make_batches
from autoenc.functional import gaussian_kl, gaussian_kl_from_std, gaussian_log_prob
from autoenc.likelihoods import Bernoulli, Likelihood, SquaredError, get_likelihood
from autoenc.models import GaussianVAE, Posterior, _eval_mode

__all__ = [
    "LogLikelihood",
    "IWAETerms",
    "LatentDiagnostics",
    "PosteriorCollapseWarning",
    "log_likelihood",
    "iwae_bound",
    "iwae_terms",
    "latent_diagnostics",
]

# Decoder rows per pass (importance samples x examples) when ``chunk_size`` is left to us: large
# enough that per-call overhead vanishes, small enough that an MNIST-sized MLP stays near 100 MB.
# On a CPU fewer rows keep the temporaries in cache: 1024 ran 20-25% faster than 8192 in
# benchmarks/bench_eval.py on a 2-core Zen 3.
_ROWS_PER_PASS = {"cpu": 1024}
_ROWS_PER_PASS_DEFAULT = 8192

_NOT_BINARY = (
    "the Bernoulli likelihood is a probability only for binary data, but x has values strictly "
    "between 0 and 1: the result is a cross-entropy, not log p(x), and is not comparable with "
    "published (binarized MNIST) NLLs. Binarize the data (e.g. transform=torch.bernoulli for "
    "dynamic or lambda x: (x > 0.5).float() for fixed binarization) or train and evaluate with "
    "likelihood='continuous_bernoulli'"
)


class PosteriorCollapseWarning(UserWarning):
    """Warned by :func:`latent_diagnostics` when too few latent dimensions are active."""


@dataclass
class LogLikelihood:
    """What :func:`log_likelihood` returns.

    Attributes:
        log_px: Per-example estimates of :math:`\\log p(x)` in nats, shape ``(n,)``, on the CPU.
        k: Number of importance samples per example.
        dims: Number of elements in one datum (for :attr:`bits_per_dim`).
    """

    log_px: Tensor
    k: int
    dims: int

    @property
    def nll(self) -> float:
        """Mean negative log-likelihood over the data, in nats (the number papers report)."""
        return -self.log_px.double().mean().item()

    @property
    def stderr(self) -> float:
        """Standard error of :attr:`nll` over the data (the Monte-Carlo error is much smaller)."""
        n = self.log_px.numel()
        return self.log_px.double().std().item() / math.sqrt(n) if n > 1 else float("nan")

    @property
    def bits_per_dim(self) -> float:
        """:attr:`nll` in bits per data element."""
        return self.nll / (self.dims * math.log(2))


@dataclass
class IWAETerms:
    """What :func:`iwae_terms` returns; every field has shape ``(b,)``.

    Attributes:
        bound: The IWAE bound :math:`\\log\\frac1K\\sum_k w_k`, differentiable.
        recon: :math:`-\\log p(x \\mid z_k)` averaged over the ``K`` samples, detached.
        kl: :math:`\\mathrm{KL}(q(z \\mid x)\\,\\|\\,p(z))` in closed form, as the model's
            ``loss`` logs it, detached. ``-(recon + kl)`` is the ELBO (its reconstruction
            averaged over the ``K`` draws); ``bound`` exceeds it in expectation by what the
            IWAE objective gains, and equals it in expectation at ``K = 1``.
    """

    bound: Tensor
    recon: Tensor
    kl: Tensor


@dataclass
class LatentDiagnostics:
    """What :func:`latent_diagnostics` returns.

    Attributes:
        kl_per_dim: :math:`\\mathrm{KL}(q(z_u \\mid x)\\,\\|\\,p(z_u))` averaged over the data,
            shape ``(latent_dim,)``, in nats.
        variances: :math:`\\mathrm{Var}_x\\,\\mathbb E_{q(z|x)}[z_u]`, shape ``(latent_dim,)``.
        active: ``variances > threshold``, a boolean mask of shape ``(latent_dim,)``.
        n_active: Number of active units.
        threshold: The activity threshold used.
    """

    kl_per_dim: Tensor
    variances: Tensor
    active: Tensor
    n_active: int
    threshold: float

    @property
    def kl(self) -> float:
        """Total KL summed over the latent dimensions, in nats per example."""
        return self.kl_per_dim.sum().item()


def _check_vae(model: Any, fn: str) -> None:
    if not isinstance(model, GaussianVAE):
        raise TypeError(f"{fn} needs an autoenc.GaussianVAE, got {type(model).__name__}")


def _resolve_likelihood(model: GaussianVAE, likelihood: Any) -> Likelihood:
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


def _kl(model: GaussianVAE, q: Posterior) -> Tensor:
    """The KL to the prior that the model trains on, ``(b, latent_dim)``."""
    if model.posterior == "sigma":
        return gaussian_kl_from_std(q.mu, q.std)
    return gaussian_kl(q.mu, q.logvar)


def _log_weights(
    model: GaussianVAE, likelihood: Likelihood, x: Tensor, q: Posterior, eps: Tensor
) -> tuple[Tensor, Tensor]:
    """``log p(x|z_k)`` and ``log p(z_k) - log q(z_k|x)``, each ``(k, b)``, at ``mu + std * eps``.

    The proposal's standard deviation is ``exp(logvar / 2)`` for both posterior kinds, so the
    density we divide by is the one we drew from (with ``posterior="sigma"`` that is
    ``sqrt(1e-8 + sigma**2)``, matching the KL the model trains on).
    """
    k, b, latent = eps.shape
    z = q.mu + torch.exp(0.5 * q.logvar) * eps  # (k, b, latent)
    params = model.decoder(z.reshape(k * b, latent))  # (k * b, ...)
    params = params.reshape(k, *x.shape)  # (k, b, *shape)
    nll = likelihood.nll(params, x.expand(k, *x.shape))
    log_px_z = -nll.flatten(2).sum(dim=2)  # (k, b); reshape(k, b, -1) fails at b = 0
    # log q(z|x) = log N(eps; 0, I) - logvar / 2 exactly, without recovering eps from z - mu.
    log_qz = (gaussian_log_prob(eps) - 0.5 * q.logvar).sum(dim=2)  # (k, b)
    log_pz = gaussian_log_prob(z).sum(dim=2)  # (k, b)
    return log_px_z, log_pz - log_qz


def iwae_terms(model: GaussianVAE, x: Tensor, k: int, *, eps: Tensor | None = None) -> IWAETerms:
    r"""The IWAE bound of a batch with its averaged reconstruction and KL terms.

    .. math::
        \mathcal L_K(x) = \log \frac1K \sum_{k=1}^K
        \frac{p(x \mid z_k)\, p(z_k)}{q(z_k \mid x)}, \qquad
        z_k = \mu(x) + \sigma(x) \odot \epsilon_k,

    (Burda et al., 2015). :math:`\mathcal L_1` is the ELBO with a sampled KL;
    :math:`\mathcal L_K` rises with :math:`K` towards :math:`\log p(x)`. The model's mode is
    left alone: this is a training objective.

    Args:
        model: A :class:`~autoenc.GaussianVAE`.
        x: A batch, ``(b, ...)``, as ``model.loss`` takes it.
        k: Number of importance samples per example.
        eps: Standard-normal noise ``(k, b, latent_dim)``; fresh noise when ``None``.

    Returns:
        An :class:`IWAETerms` of ``(b,)`` tensors; only ``bound`` carries gradients.

    Raises:
        TypeError: If ``model`` is not a GaussianVAE or ``x`` is not a float tensor.
        ValueError: On a non-positive ``k``, a badly shaped ``eps`` or the ``"mse"`` likelihood.
    """
    _check_vae(model, "iwae_terms")
    check_int(k, "k")
    likelihood = _resolve_likelihood(model, None)
    model._check_input(x)
    q = model.encode(x)
    shape = (k, x.shape[0], model.latent_dim)
    if eps is None:
        eps = torch.randn(shape, dtype=q.mu.dtype, device=q.mu.device)
    elif tuple(eps.shape) != shape:
        raise ValueError(
            f"eps must have shape (k, b, latent_dim) = {shape}, got {tuple(eps.shape)}"
        )
    log_px_z, log_ratio = _log_weights(model, likelihood, x, q, eps)
    bound = torch.logsumexp(log_px_z + log_ratio, dim=0) - math.log(k)  # (b,)
    recon = -log_px_z.mean(dim=0).detach()
    return IWAETerms(bound=bound, recon=recon, kl=_kl(model, q).sum(dim=1).detach())


def iwae_bound(model: GaussianVAE, x: Tensor, k: int, *, eps: Tensor | None = None) -> Tensor:
    """The per-example IWAE bound, differentiable: ``iwae_terms(model, x, k, eps=eps).bound``.

    Train on it with ``loss = -iwae_bound(model, x, k).mean()``. See :func:`iwae_terms`.

    Returns:
        A ``(b,)`` tensor in nats.

    Example:
        >>> from autoenc import Decoder, Encoder, GaussianVAE
        >>> vae = GaussianVAE(Encoder(6, [8], 4), Decoder(2, [8], 6), latent_dim=2)
        >>> iwae_bound(vae, torch.rand(3, 6), k=5).shape
        torch.Size([3])
    """
    return iwae_terms(model, x, k, eps=eps).bound


def _model_device(model: GaussianVAE, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _progress(batches: Iterable[Tensor], progress: bool, desc: str) -> Iterable[Tensor]:
    if not progress:
        return batches
    try:
        from tqdm.auto import tqdm
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError('progress=True needs tqdm: pip install "autoenc[progress]"') from err
    return tqdm(batches, desc=desc, total=len(batches) if hasattr(batches, "__len__") else None)


@torch.no_grad()
def log_likelihood(
    model: GaussianVAE,
    data: Any,
    *,
    k: int = 1000,
    batch_size: int = 100,
    chunk_size: int | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    likelihood: str | dict[str, Any] | Likelihood | None = None,
    device: torch.device | str | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
    progress: bool = False,
) -> LogLikelihood:
    r"""Importance-sampled :math:`\log p(x)` of every example, with the encoder as proposal.

    For each example, ``k`` draws :math:`z_k \sim q(z|x)` give

    .. math::
        \log p(x) \approx \operatorname{logsumexp}_k\big[\log p(x|z_k) + \log p(z_k)
        - \log q(z_k|x)\big] - \log K.

    The samples go through the decoder ``chunk_size`` at a time per example, as one
    ``(chunk_size * batch_size, latent_dim)`` batch, and a running logsumexp combines the
    chunks, so memory does not grow with ``k``. The noise is drawn one sample at a time from one
    generator, so the result depends on ``seed``, ``k`` and ``batch_size`` but not on
    ``chunk_size``. The model runs in eval mode without gradients; its mode is restored.

    What the number means depends on the likelihood: with ``"bernoulli"`` on binary data it is a
    log-probability (published MNIST NLLs); with ``"gaussian"`` or ``"continuous_bernoulli"`` it
    is a log-density, not comparable with the former (a warning says so when Bernoulli data is
    not binary). ``"mse"`` is no density and is refused; evaluate such a model with
    ``likelihood=Gaussian(scale=0.5 ** 0.5)``, the density that squared error with ``beta=1``
    implies.

    Args:
        model: A :class:`~autoenc.GaussianVAE`.
        data: A tensor ``(n, ...)``, an ``(x, y)`` pair, a ``TensorDataset`` or anything
            :func:`autoenc.batching.make_batches` accepts; labels are ignored, ``uint8`` is
            scaled to ``[0, 1]``.
        k: Importance samples per example (Burda et al. use 5000; 1000 is common).
        batch_size: Examples per encoder pass.
        chunk_size: Importance samples per decoder pass; ``None`` picks one so that a pass
            holds about 1024 rows on a CPU and 8192 on an accelerator.
        seed: Seed of the noise (default 0, so two calls agree). Exclusive with ``generator``.
        generator: A ``torch.Generator`` on ``device`` to draw the noise from instead.
        likelihood: Evaluate under this likelihood instead of the model's own.
        device: Where to compute; defaults to the model's device.
        transform: Applied to each batch before it is encoded (e.g. a fixed binarization).
        progress: Show a tqdm bar over the batches (needs ``autoenc[progress]``).

    Returns:
        A :class:`LogLikelihood` with the per-example estimates and ``nll``, ``stderr`` and
        ``bits_per_dim`` summaries.

    Raises:
        TypeError: If ``model`` is not a GaussianVAE.
        ValueError: On non-positive ``k``, ``batch_size`` or ``chunk_size``, on both ``seed``
            and ``generator``, on empty data or on the ``"mse"`` likelihood.

    Example:
        >>> from autoenc import Decoder, Encoder, GaussianVAE
        >>> vae = GaussianVAE(Encoder(6, [8], 4), Decoder(2, [8], 6), latent_dim=2)
        >>> x = torch.randint(0, 2, (10, 6)).float()
        >>> result = log_likelihood(vae, x, k=50)
        >>> result.log_px.shape, result.nll > 0
        (torch.Size([10]), True)
    """
    _check_vae(model, "log_likelihood")
    check_int(k, "k")
    check_int(batch_size, "batch_size")
    if chunk_size is not None:
        check_int(chunk_size, "chunk_size")
    if seed is not None and generator is not None:
        raise ValueError("pass seed or generator, not both")
    lik = _resolve_likelihood(model, likelihood)
    device = _model_device(model, device)
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(0 if seed is None else seed)
    rows = _ROWS_PER_PASS.get(torch.device(device).type, _ROWS_PER_PASS_DEFAULT)
    chunk = chunk_size or max(1, rows // batch_size)
    chunk = min(chunk, k)

    estimates: list[Tensor] = []
    dims, warned = 0, False
    with _eval_mode(model):
        batches = make_batches(data, batch_size=batch_size, device=device, transform=transform)
        for x in _progress(batches, progress, "log p(x)"):
            model._check_input(x)
            lik.check_target(x)
            if not warned and isinstance(lik, Bernoulli) and not ((x == 0) | (x == 1)).all():
                warned = True
                warnings.warn(_NOT_BINARY, UserWarning, stacklevel=3)
            dims = x[0].numel()
            q = model.encode(x)
            like = {"dtype": q.mu.dtype, "device": q.mu.device}
            total = torch.full((x.shape[0],), -math.inf, **like)  # (b,)
            for start in range(0, k, chunk):
                n = min(chunk, k - start)
                # One draw per sample keeps the stream the same whatever the chunking.
                draws = [torch.randn(q.mu.shape, generator=generator, **like) for _ in range(n)]
                eps = torch.stack(draws)  # (n, b, latent)
                log_px_z, log_ratio = _log_weights(model, lik, x, q, eps)
                total = torch.logaddexp(total, torch.logsumexp(log_px_z + log_ratio, dim=0))
            estimates.append((total - math.log(k)).cpu())
    if not estimates:
        raise ValueError("data is empty: log_likelihood needs at least one example")
    return LogLikelihood(log_px=torch.cat(estimates), k=k, dims=dims)


@torch.no_grad()
def latent_diagnostics(
    model: GaussianVAE,
    data: Any,
    *,
    threshold: float = 1e-2,
    min_active: int | None = None,
    batch_size: int = 1000,
    device: torch.device | str | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> LatentDiagnostics:
    r"""KL per latent dimension, active units, and a warning on posterior collapse.

    A unit :math:`u` is *active* when :math:`\mathrm{Var}_x\,\mathbb E_{q(z|x)}[z_u]` exceeds
    ``threshold`` (Burda et al., 2015): an inactive unit's posterior mean ignores the input, so
    it carries no information about :math:`x`. The KL is the one the model trains on (its
    ``posterior`` parameterization), averaged over the data. Runs in eval mode without
    gradients; the model's mode is restored. Nothing is sampled, so the result is deterministic.

    Args:
        model: A :class:`~autoenc.GaussianVAE`.
        data: As in :func:`log_likelihood`; at least two examples.
        threshold: Activity threshold on the variance of the posterior mean.
        min_active: Warn when fewer units are active; default: half the latent dimensions.
        batch_size: Examples per encoder pass.
        device: Where to compute; defaults to the model's device.
        transform: Applied to each batch before it is encoded.

    Returns:
        A :class:`LatentDiagnostics`.

    Raises:
        TypeError: If ``model`` is not a GaussianVAE.
        ValueError: On a negative ``threshold``, a bad ``batch_size`` or ``min_active``, or
            fewer than two examples.

    Warns:
        PosteriorCollapseWarning: When fewer than ``min_active`` units are active.

    Example:
        >>> from autoenc import Decoder, Encoder, GaussianVAE
        >>> vae = GaussianVAE(Encoder(6, [8], 8), Decoder(4, [8], 6), latent_dim=4)
        >>> diag = latent_diagnostics(vae, torch.rand(50, 6), threshold=0.0)
        >>> diag.kl_per_dim.shape, diag.n_active
        (torch.Size([4]), 4)
    """
    _check_vae(model, "latent_diagnostics")
    check_int(batch_size, "batch_size")
    if not (isinstance(threshold, (int, float)) and threshold >= 0 and math.isfinite(threshold)):
        raise ValueError(f"threshold must be a non-negative finite number, got {threshold!r}")
    if min_active is None:
        min_active = math.ceil(model.latent_dim / 2)
    elif not (isinstance(min_active, int) and 0 <= min_active <= model.latent_dim):
        raise ValueError(
            f"min_active must be an int in [0, latent_dim={model.latent_dim}], got {min_active!r}"
        )
    device = _model_device(model, device)

    # Running mean and sum of squared deviations of mu, merged batch by batch (Chan et al.),
    # in float64 so a million examples lose nothing.
    count = 0
    mean = torch.zeros(model.latent_dim, dtype=torch.float64, device=device)
    m2 = torch.zeros_like(mean)
    kl_sum = torch.zeros_like(mean)
    with _eval_mode(model):
        for x in make_batches(data, batch_size=batch_size, device=device, transform=transform):
            model._check_input(x)
            q = model.encode(x)
            kl_sum += _kl(model, q).double().sum(dim=0)
            mu = q.mu.double()  # (b, latent)
            b = mu.shape[0]
            batch_mean = mu.mean(dim=0)
            delta = batch_mean - mean
            total = count + b
            mean = mean + delta * (b / total)
            m2 = m2 + (mu - batch_mean).pow(2).sum(dim=0) + delta.pow(2) * (count * b / total)
            count = total
    if count < 2:
        raise ValueError(f"latent_diagnostics needs at least two examples, got {count}")
    variances = (m2 / (count - 1)).cpu()
    active = variances > threshold
    n_active = int(active.sum())
    if n_active < min_active:
        warnings.warn(
            f"posterior collapse: only {n_active} of {model.latent_dim} latent dimensions are "
            f"active (variance of the posterior mean over the data > {threshold:g}); the others "
            "carry no information about x. Consider a beta warm-up, free_bits=, a smaller "
            "latent_dim or a weaker decoder",
            PosteriorCollapseWarning,
            stacklevel=3,
        )
    return LatentDiagnostics(
        kl_per_dim=(kl_sum / count).cpu(),
        variances=variances,
        active=active,
        n_active=n_active,
        threshold=float(threshold),
    )
