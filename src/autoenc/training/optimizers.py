"""The optimizer and LR scheduler :func:`autoenc.fit` builds from its arguments.

``optimizer=None`` means Adam (fused where this torch and device have the kernel) at
:data:`DEFAULT_LR`, the article's; an optimizer instance, class or factory is checked against the
model's parameters. A scheduler is an instance for that optimizer or a factory
``optimizer -> scheduler``.

Example:
    >>> from torch import nn
    >>> opt = build_optimizer(nn.Linear(2, 2), None, None)
    >>> type(opt).__name__, opt.param_groups[0]["lr"]
    ('Adam', 0.001)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from autoenc._utils import check_number

__all__ = ["DEFAULT_LR", "adam", "build_optimizer", "build_scheduler", "is_plateau"]

#: The default learning rate of Adam, the article's.
DEFAULT_LR = 1e-3


def adam(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Adam with the fused kernel where this torch and device have one (on the CPU it is ~5x
    faster per step), else the multi-tensor one."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.Adam(params, lr=lr, foreach=True)


def build_optimizer(model: nn.Module, optimizer: Any, lr: float | None) -> torch.optim.Optimizer:
    """The optimizer of :func:`autoenc.fit` from its ``optimizer`` and ``lr`` arguments.

    Raises:
        ValueError: No trainable parameters, a bad ``lr``, an ``lr`` that cannot apply, or an
            optimizer over other parameters.
        TypeError: An ``optimizer`` of another kind, or a factory that returns one.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"the model ({type(model).__name__}) has no trainable parameters")
    if lr is not None:
        lr = check_number(lr, "lr", positive=True)
    if optimizer is None:
        return adam(params, DEFAULT_LR if lr is None else lr)
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        return optimizer(params) if lr is None else optimizer(params, lr=lr)
    if isinstance(optimizer, torch.optim.Optimizer):
        if lr is not None:
            raise ValueError("lr= cannot change an optimizer instance; set lr when you build it")
        own = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if not any(id(p) in own for p in params):
            raise ValueError("the optimizer holds none of the model's parameters")
        return optimizer
    if callable(optimizer):
        if lr is not None:
            raise ValueError("lr= applies to the default Adam or an optimizer class, not a factory")
        built = optimizer(params)
        if not isinstance(built, torch.optim.Optimizer):
            raise TypeError(
                f"the optimizer factory must return a torch.optim.Optimizer, got "
                f"{type(built).__name__}"
            )
        return built
    raise TypeError(
        "optimizer must be None, a torch.optim.Optimizer, an optimizer class or a callable "
        f"params -> optimizer, got {type(optimizer).__name__}"
    )


def is_plateau(scheduler: Any) -> bool:
    """Whether ``scheduler`` steps on a metric (``ReduceLROnPlateau``)."""
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def build_scheduler(scheduler: Any, optimizer: torch.optim.Optimizer, interval: str) -> Any:
    """The LR scheduler of :func:`autoenc.fit`, attached to ``optimizer`` (or ``None``).

    Raises:
        TypeError: A ``scheduler`` that is neither a scheduler nor a factory of one.
        ValueError: A scheduler of another optimizer, or ``ReduceLROnPlateau`` per step.
    """
    if scheduler is None:
        return None
    built = scheduler
    if not (hasattr(scheduler, "step") and hasattr(scheduler, "state_dict")):
        if not callable(scheduler):
            raise TypeError(
                "scheduler must be an LR scheduler or a callable optimizer -> scheduler, got "
                f"{type(scheduler).__name__}"
            )
        built = scheduler(optimizer)
        if not (hasattr(built, "step") and hasattr(built, "state_dict")):
            raise TypeError(f"the scheduler factory returned a {type(built).__name__}")
    if getattr(built, "optimizer", optimizer) is not optimizer:
        raise ValueError(
            "the scheduler was built for another optimizer; pass a factory "
            "(e.g. lambda opt: StepLR(opt, 10)) so fit() attaches it to its optimizer"
        )
    if is_plateau(built) and interval == "step":
        raise ValueError("ReduceLROnPlateau needs an epoch metric: use scheduler_interval='epoch'")
    return built
