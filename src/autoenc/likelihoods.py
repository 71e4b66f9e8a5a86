r"""Reconstruction likelihoods :math:`p(x \mid z)`.

A likelihood turns the decoder's raw output (``params``) into an elementwise negative
log-likelihood of the data, in nats, plus a way to read an image (``mean``) or a draw
(``sample``) off the same output. Models sum the elementwise term over the data dimensions, so
VAE losses are comparable with published numbers.

Which constants are included:

* :class:`SquaredError` is :math:`(x - \hat x)^2`, not a normalized density: it is
  :math:`2\times` the unit-variance Gaussian NLL minus :math:`\log 2\pi`. It exists because
  tutorials (and the article) train on it.
* :class:`Gaussian` is the full :math:`-\log\mathcal N(x;\hat x,\sigma^2)`, with
  :math:`\tfrac12\log 2\pi` and :math:`\log\sigma`. Its NLL is a density, not a probability, so
  it is not comparable with the Bernoulli numbers.
* :class:`Bernoulli` is the exact binary cross-entropy on logits: a probability for binary
  data, which is what published MNIST numbers use.
* :class:`ContinuousBernoulli` adds the log normalizing constant :math:`\log C(\lambda)`, so it
  is a proper density on :math:`[0, 1]`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from autoenc._utils import LOG_2PI
from autoenc.functional import (
    bernoulli_event_nll,
    bernoulli_nll,
    bernoulli_nll_sum,
    continuous_bernoulli_log_norm,
)

__all__ = [
    "Likelihood",
    "SquaredError",
    "Gaussian",
    "Bernoulli",
    "ContinuousBernoulli",
    "get_likelihood",
]


class Likelihood(nn.Module):
    """Base class: maps decoder output ``params`` and data ``x`` to an elementwise NLL.

    Subclasses set ``name`` and ``output`` (what the decoder must emit: ``"mean"`` or
    ``"logits"``) and implement :meth:`nll` and :meth:`mean`.
    """

    name: str = ""
    output: str = "mean"
    needs_unit_interval: bool = False

    def nll(self, params: Tensor, x: Tensor) -> Tensor:
        """Elementwise negative log-likelihood of ``x`` given decoder output ``params``."""
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:
        """The expected value of ``x`` under the likelihood (what to show as the reconstruction)."""
        raise NotImplementedError

    def sample(self, params: Tensor) -> Tensor:
        """A draw of ``x`` from the likelihood."""
        raise NotImplementedError

    def nll_sum(self, params: Tensor, x: Tensor) -> Tensor:
        """The sum of :meth:`nll` over every element, as a scalar.

        The models reduce the reconstruction term through this method. Subclasses override it
        with a fused kernel where torch has one (one autograd node per training step instead of
        several); a custom likelihood needs only :meth:`nll`.

        Args:
            params: The decoder's output, shaped like ``x``.
            x: The data.

        Returns:
            A 0-dim tensor: ``nll(params, x).sum()``.

        Example:
            >>> lik = SquaredError()
            >>> lik.nll_sum(torch.zeros(2, 3), torch.ones(2, 3))
            tensor(6.)
        """
        return self.nll(params, x).sum()

    def event_nll(self, params: Tensor, x: Tensor) -> Tensor:
        """:meth:`nll` summed over each datum: ``params`` ``(k, b, *shape)`` against the batch
        ``x`` ``(b, *shape)``, broadcast over ``k``; returns ``(k, b)`` in ``x``'s dtype
        (bfloat16 parameters from a bf16 decoder pass are cast up first).

        Evaluation (:func:`~autoenc.evaluation.log_likelihood`) reduces through it; subclasses
        override it with a faster form where they have one.

        Example:
            >>> SquaredError().event_nll(torch.zeros(3, 2, 1, 4, 4), torch.ones(2, 1, 4, 4)).shape
            torch.Size([3, 2])
        """
        nll = self.nll(params.to(x.dtype), x.expand_as(params))  # params may be bf16
        return nll.flatten(nll.dim() - x.dim() + 1).sum(-1)

    def check_target(self, x: Tensor) -> None:
        """Raise ``ValueError`` when ``x`` is outside the likelihood's support."""
        if self.needs_unit_interval and x.numel():
            low, high = torch.stack(torch.aminmax(x)).tolist()  # one pass, one host sync
            self.check_range(low, high)

    def check_range(self, low: float, high: float) -> None:
        """:meth:`check_target` on the data's extremes, which the models find in the same fused
        pass that looks for NaN and Inf."""
        if self.needs_unit_interval and (low < 0 or high > 1):
            raise ValueError(
                f"{type(self).__name__} likelihood needs targets in [0, 1], got values in "
                f"[{low:.4g}, {high:.4g}]; scale images to [0, 1] "
                "(e.g. divide uint8 pixels by 255)"
            )

    @property
    def config(self) -> dict[str, Any]:
        """A JSON-able description from which :func:`get_likelihood` rebuilds this object."""
        return {"name": self.name}


class SquaredError(Likelihood):
    r"""Squared error :math:`(x - \hat x)^2` per element (``"mse"``); the decoder emits the mean."""

    name = "mse"

    def nll(self, params: Tensor, x: Tensor) -> Tensor:
        return (params - x).pow(2)

    def nll_sum(self, params: Tensor, x: Tensor) -> Tensor:
        return F.mse_loss(params, x, reduction="sum")

    def mean(self, params: Tensor) -> Tensor:
        return params

    def sample(self, params: Tensor) -> Tensor:
        return params


def _as_shape(shape: Any) -> list[int]:
    dims = [shape] if isinstance(shape, numbers.Integral) else shape
    try:
        ok = len(dims) > 0 and all(
            isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0 for d in dims
        )
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"shape must be a positive int or a tuple of positive ints, got {shape!r}")
    return [int(d) for d in dims]


class Gaussian(Likelihood):
    r"""Gaussian :math:`\mathcal N(x; \hat x, \sigma^2)` with fixed or learned :math:`\sigma`.

    Args:
        scale: The standard deviation :math:`\sigma` (the initial one when learned).
        learn_scale: ``None`` for a fixed :math:`\sigma`; ``"global"`` for one learned
            :math:`\sigma`; ``"pixel"`` for one learned :math:`\sigma` per data element (needs
            ``shape``).
        shape: Shape of one datum, e.g. ``784`` or ``(1, 28, 28)``; required with
            ``learn_scale="pixel"``.
    """

    name = "gaussian"

    def __init__(
        self,
        scale: float = 1.0,
        *,
        learn_scale: str | None = None,
        shape: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if not (isinstance(scale, (int, float)) and scale > 0 and math.isfinite(scale)):
            raise ValueError(f"scale must be a positive finite float, got {scale!r}")
        if learn_scale not in (None, "global", "pixel"):
            raise ValueError(f"learn_scale must be None, 'global' or 'pixel', got {learn_scale!r}")
        if learn_scale == "pixel" and shape is None:
            raise ValueError("learn_scale='pixel' needs shape=, the shape of one datum")
        self.scale, self.learn_scale = float(scale), learn_scale
        self.shape = None if shape is None else _as_shape(shape)
        log_scale = torch.full(
            self.shape if learn_scale == "pixel" else [], math.log(scale), dtype=torch.float32
        )
        if learn_scale is None:
            self.register_buffer("log_scale", log_scale)
        else:
            self.log_scale = nn.Parameter(log_scale)

    def nll(self, params: Tensor, x: Tensor) -> Tensor:
        log_scale = self.log_scale.to(params.dtype)
        return 0.5 * ((x - params) * torch.exp(-log_scale)).pow(2) + log_scale + 0.5 * LOG_2PI

    def mean(self, params: Tensor) -> Tensor:
        return params

    def sample(self, params: Tensor) -> Tensor:
        return params + torch.exp(self.log_scale.to(params.dtype)) * torch.randn_like(params)

    @property
    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "scale": self.scale,
            "learn_scale": self.learn_scale,
            "shape": self.shape,
        }


class Bernoulli(Likelihood):
    """Bernoulli on logits (binary cross-entropy); the decoder emits logits, not probabilities."""

    name = "bernoulli"
    output = "logits"
    needs_unit_interval = True

    def nll(self, params: Tensor, x: Tensor) -> Tensor:
        return bernoulli_nll(params, x)

    def nll_sum(self, params: Tensor, x: Tensor) -> Tensor:
        return bernoulli_nll_sum(params, x)

    def event_nll(self, params: Tensor, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and params.requires_grad:  # the IWAE objective trains on it
            return super().event_nll(params, x)
        flat_x = x.flatten(1) if x.dim() > 1 else x[:, None]  # (b, d)
        return bernoulli_event_nll(params.flatten(params.dim() - x.dim() + 1), flat_x)

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params)

    def sample(self, params: Tensor) -> Tensor:
        return torch.bernoulli(torch.sigmoid(params))


class ContinuousBernoulli(Likelihood):
    r"""Continuous Bernoulli on logits, with its normalizing constant :math:`C(\lambda)`.

    :math:`-\log p(x) = \mathrm{BCE}(\text{logits}, x) - \log C(\lambda)`. Its mean is not
    :math:`\lambda`; :meth:`mean` returns the true mean.
    """

    name = "continuous_bernoulli"
    output = "logits"
    needs_unit_interval = True

    def nll(self, params: Tensor, x: Tensor) -> Tensor:
        return bernoulli_nll(params, x) - continuous_bernoulli_log_norm(params)

    def mean(self, params: Tensor) -> Tensor:
        # mean = lam / (2 lam - 1) + 1 / (2 artanh(1 - 2 lam)) = 1/(1 - e^-l) - 1/l, -> 1/2 at l=0.
        # The two terms cancel near l=0 (losing ~eps/|l|), so a series covers a band around 0
        # whose edge balances that loss against the truncation error (l^7 / 1209600).
        band = 0.05 if torch.finfo(params.dtype).eps < 1e-10 else 0.5
        near = params.abs() < band
        safe = torch.where(near, torch.ones_like(params), params)
        exact = -1.0 / torch.expm1(-safe) - 1.0 / safe
        l2 = params.pow(2)
        series = 0.5 + params * (1.0 / 12.0 - l2 * (1.0 / 720.0 - l2 / 30240.0))
        return torch.where(near, series, exact)

    def sample(self, params: Tensor) -> Tensor:
        return torch.distributions.ContinuousBernoulli(logits=params, validate_args=False).sample()


_BY_NAME: dict[str, type[Likelihood]] = {
    cls.name: cls for cls in (SquaredError, Gaussian, Bernoulli, ContinuousBernoulli)
}


def get_likelihood(spec: str | dict[str, Any] | Likelihood) -> Likelihood:
    """Resolve a likelihood from a name, a ``config`` dict or an instance.

    Args:
        spec: ``"mse"``, ``"gaussian"``, ``"bernoulli"``, ``"continuous_bernoulli"``, a dict as
            returned by :attr:`Likelihood.config`, or a :class:`Likelihood`.

    Returns:
        A :class:`Likelihood` instance.

    Raises:
        ValueError: On an unknown name.
        TypeError: On anything else.

    Example:
        >>> get_likelihood("bernoulli")
        Bernoulli()
    """
    if isinstance(spec, Likelihood):
        return spec
    if isinstance(spec, dict):
        kwargs = dict(spec)
        name = kwargs.pop("name", None)
        return _by_name(name)(**kwargs)
    if isinstance(spec, str):
        return _by_name(spec)()
    raise TypeError(
        f"likelihood must be a name, a config dict or a Likelihood, got {type(spec).__name__}"
    )


def _by_name(name: Any) -> type[Likelihood]:
    if name not in _BY_NAME:
        raise ValueError(f"likelihood must be one of {sorted(_BY_NAME)}, got {name!r}")
    return _BY_NAME[name]
