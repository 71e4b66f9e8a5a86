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
from torch.optim import optimizer as torch_optimizer  # its registries of global step hooks

from autoenc._utils import check_number

__all__ = [
    "DEFAULT_LR",
    "Adam",
    "adam",
    "build_optimizer",
    "build_scheduler",
    "is_plateau",
    "optimizer_step",
]

#: The default learning rate of Adam, the article's.
DEFAULT_LR = 1e-3


class Adam(torch.optim.Adam):
    """torch's fused Adam, stepping through lists kept from the step before.

    ``torch.optim.Adam.step`` gathers the parameters, gradients, moments and step counts into
    lists in Python at every call, and ``zero_grad`` walks the groups; for a small network at a
    small batch that is about a tenth of a CPU step. Here a step of one group with Adam's plain
    settings (no AMSGrad, weight decay, ``maximize``, tensor ``lr`` or gradient scaling), where
    every parameter has a gradient and its state, calls the same fused kernel on kept lists:
    the same arithmetic, bit for bit. Any other step (the first, which creates the state, a
    missing gradient, changed settings, a closure) is ``torch.optim.Adam.step``'s. Step hooks
    and LR schedulers see every step as usual. The class keeps the name ``Adam``: checkpoints
    name the optimizer class, and resuming compares it.
    """

    def __init__(self, params: Any, lr: float = DEFAULT_LR, **kwargs: Any) -> None:
        self._kept: tuple[Any, ...] | None = None
        super().__init__(params, lr=lr, **{"fused": True, **kwargs})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self._kept = None
        super().add_param_group(param_group)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._kept = None  # the moments are new tensors
        super().load_state_dict(state_dict)

    def _lists(self) -> tuple[Any, ...] | None:
        """``(group, params, exp_avgs, exp_avg_sqs, steps, all_steps)`` for a kept-list step, else
        None; ``steps`` are views of ``all_steps``."""
        if len(self.param_groups) != 1:
            return None
        group = self.param_groups[0]
        if not (
            group["fused"]
            and not group["amsgrad"]
            and group["weight_decay"] == 0
            and not group["maximize"]
            and not group["differentiable"]
            and not group.get("decoupled_weight_decay", False)
            and isinstance(group["lr"], float)
            and all(isinstance(b, float) for b in group["betas"])
            and getattr(self, "grad_scale", None) is None
            and getattr(self, "found_inf", None) is None
        ):
            return None
        kept = self._kept
        if kept is not None and kept[0] is group and _same(kept[1], group["params"]):
            return kept
        params = list(group["params"])
        states = [self.state.get(p) for p in params]
        first = params[0] if params else None
        if (
            first is None
            or not all(states)
            or any(
                p.device != first.device or p.dtype != first.dtype or p.is_complex() for p in params
            )
        ):
            return None
        counts = [s["step"] for s in states]
        if any(c.dim() != 0 or c.dtype != counts[0].dtype for c in counts):
            return None
        # The step counts become views of one tensor, so that one add counts every parameter's
        # step: a foreach add over a dozen scalars costs a percent of a small network's step.
        all_steps = torch.stack(counts)
        steps = list(all_steps.unbind())
        for s, view in zip(states, steps, strict=True):
            s["step"] = view
        moments = [[s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]]
        self._kept = (group, params, *moments, steps, all_steps)
        return self._kept

    def zero_grad(self, set_to_none: bool = True) -> None:
        kept = self._lists() if set_to_none else None
        if kept is None:
            super().zero_grad(set_to_none)
            return
        for p in kept[1]:
            p.grad = None

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        kept = None if closure is not None else self._lists()
        grads = None if kept is None else [p.grad for p in kept[1]]
        if grads is None or any(g is None or g.is_sparse for g in grads):
            return _torch_adam_step(self, closure)
        group, params, exp_avgs, exp_avg_sqs, steps, all_steps = kept
        beta1, beta2 = group["betas"]
        all_steps.add_(1)  # what torch.optim.adam._fused_adam does, in its order
        torch._fused_adam_(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            [],
            steps,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            weight_decay=0.0,
            eps=group["eps"],
            amsgrad=False,
            maximize=False,
        )
        return None


# Adam's own step, kept before torch wraps the class's ``step`` in its hook-and-profile wrapper
_adam_step = Adam.step


def optimizer_step(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.step()``; autoenc's :class:`Adam` skips torch's wrapper around it when there
    is nothing for the wrapper to do: no step hooks (its own or global), no LR scheduler's wrapper
    on the instance, the profiler off. For a small network the wrapper costs a few percent of a
    training step."""
    if (
        type(optimizer) is Adam
        and not optimizer._optimizer_step_pre_hooks
        and not optimizer._optimizer_step_post_hooks
        and not torch_optimizer._global_optimizer_pre_hooks
        and not torch_optimizer._global_optimizer_post_hooks
        and "step" not in vars(optimizer)
        and not torch.autograd.profiler._is_profiler_enabled
    ):
        _adam_step(optimizer)
    else:
        optimizer.step()


def _same(kept: list[Any], params: list[Any]) -> bool:
    return len(kept) == len(params) and all(a is b for a, b in zip(kept, params, strict=True))


def _torch_adam_step(optimizer: Adam, closure: Any) -> Any:
    """``torch.optim.Adam.step`` without the hooks wrapper that torch puts around a class's
    ``step`` once: our own ``step`` carries it already, and hooks must run once a step."""
    step = torch.optim.Adam.step
    if getattr(step, "hooked", False):
        step = step.__wrapped__
    return step(optimizer, closure)


def adam(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Adam with the fused kernel where this torch and device have one (on the CPU it is ~5x
    faster per step), else the multi-tensor one."""
    try:
        return Adam(params, lr=lr)
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
