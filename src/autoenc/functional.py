"""The maths of autoencoders as plain functions on tensors.

The functions here are elementwise and return an unreduced tensor, which the caller reduces
with :func:`sum_except_batch` (or its own reduction), except the two Bernoulli sums
(:func:`bernoulli_nll_sum` for training, :func:`bernoulli_event_nll` for evaluation), which
reduce in a form faster than the elementwise one. That keeps one formula in one place, the way
``torch.distributions.kl`` does, and lets models, losses and evaluation share it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from autoenc._utils import LOG_2PI

__all__ = [
    "reparameterize",
    "gaussian_kl",
    "gaussian_kl_from_std",
    "gaussian_log_prob",
    "sum_except_batch",
    "continuous_bernoulli_log_norm",
    "bernoulli_nll",
    "bernoulli_nll_sum",
    "bernoulli_event_nll",
]


def _check_same_shape(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )


def reparameterize(mu: Tensor, logvar: Tensor, eps: Tensor | None = None) -> Tensor:
    r"""Draw :math:`z = \mu + \sigma \odot \epsilon` with :math:`\sigma = e^{\text{logvar}/2}`.

    The draw is differentiable in ``mu`` and ``logvar`` (the reparameterization trick).

    Args:
        mu: Posterior mean, any shape.
        logvar: Posterior log-variance, same shape as ``mu``.
        eps: Standard-normal noise of the same shape. When given the result is deterministic;
            when ``None`` fresh noise is drawn with :func:`torch.randn_like`.

    Returns:
        A tensor shaped like ``mu``.

    Raises:
        ValueError: If the shapes of ``mu``, ``logvar`` and ``eps`` differ.

    Example:
        >>> mu, logvar = torch.zeros(2, 3), torch.zeros(2, 3)
        >>> reparameterize(mu, logvar, eps=torch.ones(2, 3))
        tensor([[1., 1., 1.],
                [1., 1., 1.]])
    """
    _check_same_shape("mu", mu, "logvar", logvar)
    if eps is None:
        eps = torch.randn_like(mu)
    else:
        _check_same_shape("mu", mu, "eps", eps)
    return mu + torch.exp(0.5 * logvar) * eps


def gaussian_kl(
    mu: Tensor,
    logvar: Tensor,
    mu_p: Tensor | None = None,
    logvar_p: Tensor | None = None,
) -> Tensor:
    r"""Elementwise KL divergence between diagonal Gaussians, in nats.

    With the defaults the prior is the standard normal:

    .. math::
        \mathrm{KL}\big(\mathcal N(\mu, \sigma^2)\,\|\,\mathcal N(0, 1)\big)
        = \tfrac12\left(\mu^2 + \sigma^2 - \log\sigma^2 - 1\right).

    Against another diagonal Gaussian :math:`\mathcal N(\mu_p, \sigma_p^2)`:

    .. math::
        \tfrac12\left(\log\sigma_p^2 - \log\sigma^2
        + \frac{\sigma^2 + (\mu - \mu_p)^2}{\sigma_p^2} - 1\right).

    Args:
        mu: Mean of ``q``.
        logvar: Log-variance of ``q``, same shape as ``mu``.
        mu_p: Mean of ``p`` (broadcastable); ``None`` means 0.
        logvar_p: Log-variance of ``p`` (broadcastable); ``None`` means 0.

    Returns:
        The unreduced KL, shaped like ``mu``. Reduce with :func:`sum_except_batch`.

    Example:
        >>> gaussian_kl(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0]))
        tensor([0.0000, 0.5000])
    """
    _check_same_shape("mu", mu, "logvar", logvar)
    if mu_p is None and logvar_p is None:
        return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0)
    mu_p = torch.zeros_like(mu) if mu_p is None else mu_p
    logvar_p = torch.zeros_like(logvar) if logvar_p is None else logvar_p
    return 0.5 * (
        logvar_p - logvar + (logvar.exp() + (mu - mu_p).pow(2)) * torch.exp(-logvar_p) - 1.0
    )


def gaussian_kl_from_std(mu: Tensor, std: Tensor, *, eps: float = 1e-8) -> Tensor:
    r"""Elementwise KL to :math:`\mathcal N(0, 1)` from a standard deviation, as in the article.

    .. math::
        \tfrac12\left(\mu^2 + \sigma^2 - \log(\epsilon + \sigma^2) - 1\right)

    The :math:`\epsilon` keeps the logarithm finite when ``std`` comes straight out of a ReLU and
    is exactly zero. With ``eps=0`` this equals :func:`gaussian_kl` at ``logvar = log(std**2)``.

    Args:
        mu: Posterior mean.
        std: Posterior standard deviation, same shape as ``mu``.
        eps: Added to the variance inside the logarithm.

    Returns:
        The unreduced KL, shaped like ``mu``.

    Raises:
        ValueError: If ``mu`` and ``std`` differ in shape.

    Example:
        >>> gaussian_kl_from_std(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0]))
        tensor([0.0000, 9.2103])
    """
    _check_same_shape("mu", mu, "std", std)
    var = std.pow(2)
    return 0.5 * (mu.pow(2) + var - torch.log(eps + var) - 1.0)


def gaussian_log_prob(x: Tensor, mu: Tensor | float = 0.0, logvar: Tensor | float = 0.0) -> Tensor:
    r"""Elementwise log-density of a diagonal Gaussian, constants included.

    .. math::
        \log\mathcal N(x; \mu, \sigma^2) = -\tfrac12\left(\log 2\pi + \log\sigma^2
        + \frac{(x-\mu)^2}{\sigma^2}\right)

    Args:
        x: Points to evaluate.
        mu: Mean, broadcastable to ``x``.
        logvar: Log-variance, broadcastable to ``x``.

    Returns:
        The unreduced log-density, in nats, shaped like the broadcast of the inputs.

    Example:
        >>> gaussian_log_prob(torch.tensor([0.0, 1.0]))
        tensor([-0.9189, -1.4189])
    """
    logvar = torch.as_tensor(logvar, dtype=x.dtype, device=x.device)
    return -0.5 * (LOG_2PI + logvar + (x - mu).pow(2) * torch.exp(-logvar))


def sum_except_batch(t: Tensor) -> Tensor:
    """Sum over every dimension but the first.

    Args:
        t: A tensor of shape ``(b, ...)``.

    Returns:
        A tensor of shape ``(b,)``.

    Raises:
        ValueError: If ``t`` is a scalar.

    Example:
        >>> sum_except_batch(torch.ones(2, 3, 4))
        tensor([12., 12.])
    """
    if t.dim() == 0:
        raise ValueError("sum_except_batch needs a tensor with a batch dimension, got a scalar")
    if t.dim() == 1:
        return t
    return t.flatten(1).sum(dim=1)  # flatten, unlike reshape(b, -1), also takes an empty batch


def continuous_bernoulli_log_norm(logits: Tensor, *, taylor_band: float = 1e-2) -> Tensor:
    r"""Log normalizing constant :math:`\log C(\lambda)` of the continuous Bernoulli.

    For :math:`\lambda = \sigma(\text{logits}) \ne \tfrac12`,

    .. math::
        C(\lambda) = \frac{2\,\operatorname{artanh}(1 - 2\lambda)}{1 - 2\lambda}
        = \frac{\text{logits}}{2\lambda - 1},

    and :math:`C \to 2` as :math:`\lambda \to \tfrac12`, where the Taylor expansion
    :math:`\log C \approx \log 2 + \tfrac13 t^2 + \tfrac{13}{90} t^4 + \tfrac{251}{2835} t^6`,
    :math:`t = 1 - 2\lambda`, replaces the 0/0 form (Loaiza-Ganem & Cunningham, 2019).

    Args:
        logits: Logits of :math:`\lambda`.
        taylor_band: Half-width of the band around :math:`\lambda = 1/2` where the series is used.

    Returns:
        ``log C`` elementwise, shaped like ``logits``.

    Example:
        >>> continuous_bernoulli_log_norm(torch.tensor([0.0, 2.0, -50.0]))
        tensor([0.6931, 0.9655, 3.9120])
    """
    lam = torch.sigmoid(logits)
    u = lam - 0.5
    near = u.abs() < taylor_band
    # Evaluate the exact branch on safe logits so its gradient is finite where the series is used.
    safe = torch.where(near, torch.full_like(logits, 1.0), logits)
    # 2*lam - 1 = tanh(logits / 2), which keeps precision for large |logits|.
    exact = torch.log(safe.abs()) - torch.log(torch.tanh(safe.abs() / 2))
    t2 = (2.0 * u).pow(2)
    # Three terms: the first one left out (~0.063 t^8) is below float64 rounding at the band edge.
    series = math.log(2.0) + t2 * (1.0 / 3.0 + t2 * (13.0 / 90.0 + t2 * (251.0 / 2835.0)))
    return torch.where(near, series, exact)


def bernoulli_nll(logits: Tensor, x: Tensor) -> Tensor:
    """Elementwise Bernoulli negative log-likelihood from logits (binary cross-entropy).

    Computed as ``softplus(logits) - x * logits``, which never takes the log of a rounded
    sigmoid and so stays finite for any logits.

    Args:
        logits: Logits of the success probability.
        x: Targets in ``[0, 1]``, same shape as ``logits``.

    Returns:
        The unreduced NLL, in nats, shaped like ``logits``.

    Example:
        >>> bernoulli_nll(torch.tensor([0.0, 100.0]), torch.tensor([1.0, 0.0]))
        tensor([  0.6931, 100.0000])
    """
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none")


def _sum_dtype(logits: Tensor, x: Tensor) -> torch.dtype:
    """The dtype the Bernoulli sums work in: the wider of the inputs', at least float32."""
    return torch.promote_types(torch.promote_types(logits.dtype, x.dtype), torch.float32)


class _BernoulliNLLSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: Tensor, x: Tensor) -> Tensor:
        ctx.save_for_backward(logits, x)
        with torch.autocast(logits.device.type, enabled=False):
            return bernoulli_event_nll(logits.reshape(1, -1), x.reshape(1, -1))[0]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        logits, x = ctx.saved_tensors
        dtype = _sum_dtype(logits, x)
        logits = logits.to(dtype)
        grad_logits = (torch.sigmoid(logits) - x) * grad if ctx.needs_input_grad[0] else None
        grad_x = -logits * grad if ctx.needs_input_grad[1] else None
        return grad_logits, grad_x


def bernoulli_nll_sum(logits: Tensor, x: Tensor) -> Tensor:
    """:func:`bernoulli_nll` summed over all elements, differentiable; the training loss.

    The same sum as ``F.binary_cross_entropy_with_logits(logits, x, reduction="sum")``, computed
    as in :func:`bernoulli_event_nll` (torch's CPU ``log_sigmoid`` kernel behind the former is
    several times slower than the whole of this), with the gradient ``sigmoid(logits) - x``.
    bfloat16 logits (under autocast) are summed in float32.

    Args:
        logits: Logits of the success probability.
        x: Targets in ``[0, 1]``, same shape as ``logits``.

    Returns:
        A scalar: the NLL in nats, in float32 or the inputs' wider dtype.

    Raises:
        ValueError: If the shapes differ.

    Example:
        >>> bernoulli_nll_sum(torch.tensor([0.0, 100.0]), torch.tensor([1.0, 0.0]))
        tensor(100.6931)
    """
    _check_same_shape("logits", logits, "x", x)
    if logits.numel() == 0:
        dtype = _sum_dtype(logits, x)
        return (logits.to(dtype) * x).sum()  # 0, and a gradient of the right shape
    return _BernoulliNLLSum.apply(logits, x)


def bernoulli_event_nll(logits: Tensor, x: Tensor) -> Tensor:
    """:func:`bernoulli_nll` summed over the last dimension, without autograd; for evaluation.

    ``x`` broadcasts against ``logits``, so ``k`` draws ``(k, b, d)`` share one ``(b, d)``
    batch. Low-precision logits (bfloat16 from a bf16 decoder pass) are summed in float32 or
    ``x``'s dtype. Written as ``(1/2 - x) . l + sum(|l|) / 2 - sum(log(sigmoid(|l|)))``, the
    last sum taken as the log of products of a few dozen factors in ``[1/2, 1]`` (they cannot
    underflow): torch's CPU ``softplus`` and ``log1p`` kernels cost several times a
    ``sigmoid``, and this needs one ``sigmoid`` per element and a ``log`` per group. It agrees
    with :func:`bernoulli_nll` to float rounding of the sums.

    Args:
        logits: Logits ``(..., d)``.
        x: Targets ``(..., d)`` in ``[0, 1]``, broadcastable against ``logits``.

    Returns:
        The NLL in nats, shaped like ``logits`` without its last dimension.

    Example:
        >>> logits, x = torch.tensor([[0.0, 100.0]]), torch.tensor([[1.0, 0.0]])
        >>> bernoulli_event_nll(logits, x), bernoulli_nll(logits, x).sum(-1)
        (tensor([100.6931]), tensor([100.6931]))
    """
    rows = max(1, _EVENT_BLOCK // max(1, logits[:1].numel()))  # along the first dimension
    if logits.dim() < 2 or rows >= logits.shape[0]:
        return _event_nll(logits, x)
    whole_x = x.dim() == logits.dim() and x.shape[0] == logits.shape[0]  # else it broadcasts
    return torch.cat(
        [
            _event_nll(logits[i : i + rows], x[i : i + rows] if whole_x else x)
            for i in range(0, logits.shape[0], rows)
        ]
    )


# Elements per block of bernoulli_event_nll: a decoder pass of thousands of rows is summed a few
# rows at a time, so that the float32 copy (2 MiB) stays in cache through the passes of
# _event_nll instead of going out to memory and back for each; about 15% faster on the
# (40, 100, 784) logits of an evaluation pass.
_EVENT_BLOCK = 2**19


def _event_nll(logits: Tensor, x: Tensor) -> Tensor:
    """:func:`bernoulli_event_nll` of one block."""
    with torch.no_grad():
        d = logits.shape[-1]
        group = max(g for g in range(1, min(d, 64) + 1) if d % g == 0)  # 2**-64 fits any float
        dtype = _sum_dtype(logits, x)
        logits = logits.to(dtype, copy=True)  # worked on in place below
        dot = torch.linalg.vecdot(logits, 0.5 - x.to(dtype))
        magnitude = logits.abs_()
        half_abs = magnitude.sum(-1).mul_(0.5)
        log_sigmoid = magnitude.sigmoid_().unflatten(-1, (d // group, group)).prod(-1).log_()
        return dot + half_abs - log_sigmoid.sum(-1)
