r"""Evaluation a researcher can trust: marginal log-likelihood, the IWAE bound, latent diagnostics.

* :func:`log_likelihood` estimates :math:`\log p(x)` of a :class:`~autoenc.GaussianVAE` (or
  :math:`\log p(x \mid c)` of a :class:`~autoenc.ConditionalVAE`) by importance sampling with
  the encoder as proposal (Burda et al., 2015),

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

from autoenc._utils import (
    autocast,
    check_int,
    check_number,
    check_precision,
    eval_mode,
    flush_denormals,
    keep_freed_memory,
    model_device,
    model_dtype,
)
from autoenc.data.batching import make_batches
from autoenc.likelihoods import Bernoulli, Likelihood
from autoenc.models.vae import GaussianVAE, check_vae, log_weights, resolve_likelihood
from autoenc.networks import fused_inference

__all__ = [
    "LogLikelihood",
    "LatentDiagnostics",
    "PosteriorCollapseWarning",
    "log_likelihood",
    "latent_diagnostics",
]

# Decoder rows per pass (importance samples x examples) when ``chunk_size`` is left to us: large
# enough that per-call overhead vanishes, small enough that an MNIST-sized MLP stays near 100 MB.
# On a CPU fewer rows keep the temporaries in cache: with malloc keeping freed memory
# (keep_freed_memory), 4096 rows ran about 10% faster than 1024 and 16384 slower again for the
# fast preset's VAE on a 2-core AVX512-BF16 EPYC, one thread.
_ROWS_PER_PASS = {"cpu": 4096}
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


def _batches(model: Any, data: Any, batch_size: int, device: Any, transform: Any) -> Any:
    """Batches in the model's dtype, with the conditions for a conditional model."""
    conditional = getattr(model, "conditional", False) is True
    return make_batches(
        data,
        batch_size=batch_size,
        device=device,
        transform=transform,
        dtype=model_dtype(model),
        labels=conditional,
    )


def _progress(batches: Iterable[Tensor], progress: bool, desc: str) -> Iterable[Tensor]:
    if not progress:
        return batches
    try:
        from tqdm.auto import tqdm
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("progress=True needs tqdm: pip install tqdm") from err
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
    precision: str = "auto",
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

    For a :class:`~autoenc.ConditionalVAE` the data's labels are the conditions and the
    estimate is :math:`\log p(x \mid c)`, with :math:`q(z \mid x, c)` as proposal and the
    model's prior :math:`p(z \mid c)`.

    Args:
        model: A :class:`~autoenc.GaussianVAE` or :class:`~autoenc.ConditionalVAE`.
        data: A tensor ``(n, ...)``, an ``(x, y)`` pair, a ``TensorDataset`` or anything
            :func:`autoenc.data.make_batches` accepts; labels are ignored (or, for a
            conditional model, required: they are the conditions), ``uint8`` is scaled to
            ``[0, 1]``.
        k: Importance samples per example (Burda et al. use 5000; 1000 is common).
        batch_size: Examples per encoder pass.
        chunk_size: Importance samples per decoder pass; ``None`` picks one so that a pass
            holds about 4096 rows on a CPU and 8192 on an accelerator.
        seed: Seed of the noise (default 0, so two calls agree). Exclusive with ``generator``.
        generator: A ``torch.Generator`` on ``device`` to draw the noise from instead.
        likelihood: Evaluate under this likelihood instead of the model's own.
        device: Where to compute; defaults to the model's device.
        transform: Applied to each batch before it is encoded (e.g. a fixed binarization).
        progress: Show a tqdm bar over the batches (needs the ``progress`` extra).
        precision: ``"bf16"`` runs the decoder passes in bfloat16 (the densities and the
            logsumexp stay in the model's dtype; an MLP decoder on a CPU runs through
            :func:`autoenc.networks.fused_inference`); ``"fp32"`` runs them in the model's dtype;
            ``"auto"`` (the default) picks ``"bf16"`` where it runs natively
            (:func:`autoenc.native_bf16`). The two agree far within the Monte-Carlo error (the
            guide's *Evaluation* page has the measured difference). Denormal floats are flushed
            to zero during the estimate (the caller's setting comes back afterwards), and
            on glibc malloc keeps freed memory for reuse (the guide's *Training* page, *Two
            process-wide CPU settings*).

    Returns:
        A :class:`LogLikelihood` with the per-example estimates and ``nll``, ``stderr`` and
        ``bits_per_dim`` summaries.

    Raises:
        TypeError: If ``model`` is not a GaussianVAE or ConditionalVAE.
        ValueError: On non-positive ``k``, ``batch_size`` or ``chunk_size``, on both ``seed``
            and ``generator``, on empty data, on a conditional model given data without
            labels, or on the ``"mse"`` likelihood.

    Example:
        >>> from autoenc import Decoder, Encoder, GaussianVAE
        >>> vae = GaussianVAE(Encoder(6, [8], 4), Decoder(2, [8], 6), latent_dim=2)
        >>> x = torch.randint(0, 2, (10, 6)).float()
        >>> result = log_likelihood(vae, x, k=50)
        >>> result.log_px.shape, result.nll > 0
        (torch.Size([10]), True)
    """
    check_vae(model, "log_likelihood")
    check_int(k, "k")
    check_int(batch_size, "batch_size")
    if chunk_size is not None:
        check_int(chunk_size, "chunk_size")
    if seed is not None and generator is not None:
        raise ValueError("pass seed or generator, not both")
    lik = resolve_likelihood(model, likelihood)
    device = model_device(model, device)
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(0 if seed is None else seed)
    rows = _ROWS_PER_PASS.get(device.type, _ROWS_PER_PASS_DEFAULT)
    chunk = chunk_size or max(1, rows // batch_size)
    chunk = min(chunk, k)
    conditional = getattr(model, "conditional", False) is True

    estimates: list[Tensor] = []
    dims, warned = 0, False
    precision = check_precision(precision, device)
    # bf16 on a CPU: each Linear and its activation as one oneDNN call, the weights cast once
    fused = precision == "bf16" and not conditional and device.type == "cpu"
    decode = fused_inference(model.decoder) if fused else None
    keep_freed_memory()
    with eval_mode(model), flush_denormals():
        batches = _batches(model, data, batch_size, device, transform)
        for batch in _progress(batches, progress, "log p(x)"):
            x, c = batch if conditional else (batch, None)
            model.check_input(x)
            lik.check_target(x)
            if not warned and isinstance(lik, Bernoulli) and not ((x == 0) | (x == 1)).all():
                warned = True
                warnings.warn(_NOT_BINARY, UserWarning, stacklevel=3)
            dims = x[0].numel()
            q = model.encode(x) if c is None else model.encode(x, c)
            like = {"dtype": q.mu.dtype, "device": q.mu.device}
            total = torch.full((x.shape[0],), -math.inf, **like)  # (b,)
            # One autocast region for all the chunks: the decoder's weights are cast once.
            with autocast(precision, x.device):
                for start in range(0, k, chunk):
                    n = min(chunk, k - start)
                    # One draw per sample keeps the stream the same whatever the chunking.
                    draws = [torch.randn(q.mu.shape, generator=generator, **like) for _ in range(n)]
                    eps = torch.stack(draws)  # (n, b, latent)
                    log_px_z, log_ratio = log_weights(
                        model, lik, x, q, eps, c, precision=precision, decode=decode
                    )
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
        model: A :class:`~autoenc.GaussianVAE` or :class:`~autoenc.ConditionalVAE` (then the
            KL is to its prior :math:`p(z \mid c)`).
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
    check_vae(model, "latent_diagnostics")
    check_int(batch_size, "batch_size")
    threshold = check_number(threshold, "threshold", low=0)
    if min_active is None:
        min_active = math.ceil(model.latent_dim / 2)
    elif not (isinstance(min_active, int) and 0 <= min_active <= model.latent_dim):
        raise ValueError(
            f"min_active must be an int in [0, latent_dim={model.latent_dim}], got {min_active!r}"
        )
    device = model_device(model, device)
    conditional = getattr(model, "conditional", False) is True

    # Running mean and sum of squared deviations of mu, merged batch by batch (Chan et al.),
    # in float64 so a million examples lose nothing.
    count = 0
    mean = torch.zeros(model.latent_dim, dtype=torch.float64, device=device)
    m2 = torch.zeros_like(mean)
    kl_sum = torch.zeros_like(mean)
    with eval_mode(model):
        for batch in _batches(model, data, batch_size, device, transform):
            x, *c = batch if conditional else (batch,)  # c: [the conditions] or []
            model.check_input(x)
            q = model.encode(x, *c)
            kl_sum += model.kl_elementwise(q, *c).double().sum(dim=0)
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
