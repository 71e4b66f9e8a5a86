"""Resuming a run from a checkpoint: check that this run fits it, then restore it.

``fit(..., resume=path)`` continues the run that a :mod:`~autoenc.training.checkpoint` holds.
Everything that would make the resumed run silently differ is compared before anything is
loaded into the model or the optimizer:

- another model kind, weights of other shapes or another config (likelihood, networks, ...), or
  another optimizer or LR scheduler class: a ``ValueError`` that names what differs;
- other hyper-parameters of the same optimizer, other settings of the LR scheduler (e.g. a
  ``T_max`` computed from a new ``epochs``), another KL schedule, another ``beta`` or
  ``free_bits``, another number of batches per epoch: a warning for each. The checkpoint's
  optimizer and scheduler states are restored, hyper-parameters included; the model's own
  ``beta``/``free_bits`` and this run's KL schedules are used.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from autoenc._utils import config_json
from autoenc.training.callbacks import State
from autoenc.training.checkpoint import (
    callback_keys,
    check_weights_fit,
    load_checkpoint,
    schedule_settings,
)
from autoenc.training.distributed import DistributedSetup, any_rank
from autoenc.training.schedules import FreeBits, KLCyclical, KLWarmup

__all__ = ["load_resume", "restore_training", "restore_callbacks", "rng_of_rank"]

# fit turns input checks off while it trains, so every checkpoint says validate=False
_IGNORED_CONFIG = frozenset({"validate"})
# callbacks set these during a run; compared only when none of those callbacks is there
_MANAGED_CONFIG = {"beta": (KLWarmup, KLCyclical), "free_bits": (FreeBits,)}
# how an optimizer computes, not what: they follow the device, not the run
_NOT_HYPERPARAMETERS = frozenset(
    {"params", "param_names", "initial_lr", "foreach", "fused", "capturable", "differentiable"}
)
# a scheduler's position, not its settings (base_lrs follow the optimizer's initial lr)
_SCHEDULER_PROGRESS = frozenset(
    {
        "last_epoch",
        "_step_count",
        "_is_initial",
        "_get_lr_called_within_step",
        "_last_lr",
        "base_lrs",
        "best",
        "num_bad_epochs",
        "cooldown_counter",
        "T_cur",
        "T_i",
    }
)
_ABSENT = "<absent>"


# ---------------------------------------------------------------------------------------------
# comparing nested settings


def _flatten(value: Any, prefix: str = "", skip: Iterable[str] = ()) -> dict[str, Any]:
    """``{"a.b[0].c": leaf}`` of nested dicts and lists of dicts; tensors become lists."""
    skip = frozenset(skip)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key not in skip:
                out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key), skip))
        return out
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, dict) for v in value):
        out = {}
        for i, item in enumerate(value):
            out.update(_flatten(item, f"{prefix}[{i}]", skip))
        return out
    if isinstance(value, torch.Tensor):
        return {prefix: value.tolist()}
    if isinstance(value, tuple):
        return {prefix: list(value)}
    return {prefix: value}


def _differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"key: saved in the checkpoint, current here"`` for every key whose values differ."""
    return [
        f"{key}: {saved.get(key, _ABSENT)!r} in the checkpoint, {current.get(key, _ABSENT)!r} here"
        for key in sorted(saved.keys() | current.keys())
        if saved.get(key, _ABSENT) != current.get(key, _ABSENT)
    ]


def _config(text: str | None, source: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as err:
        raise ValueError(f"{source} holds a model config that is not valid JSON ({err})") from err


# ---------------------------------------------------------------------------------------------
# checks that raise


def check_model_matches(payload: dict[str, Any], model: nn.Module, source: str) -> None:
    """Raise a ``ValueError`` when ``model`` is of another kind or config than the checkpoint's.

    ``validate`` is not compared, nor ``beta`` and ``free_bits`` (callbacks change them during
    a run; :func:`restore_training` warns when they differ).
    """
    kind, own_kind = payload.get("kind"), type(model).__name__
    if kind is not None and kind != own_kind:
        raise ValueError(
            f"{source} was written by a {kind}, but this model is a {own_kind}: resume into a "
            f"{kind} built with the checkpoint's config"
        )
    saved, own = _config(payload.get("config"), source), _config(config_json(model), source)
    if saved is None or own is None:  # networks of the user's own: the weights were checked
        return
    skip = _IGNORED_CONFIG | _MANAGED_CONFIG.keys()
    saved = {k: v for k, v in saved.items() if k not in skip}
    own = {k: v for k, v in own.items() if k not in skip}
    diffs = _differences(_flatten(saved), _flatten(own))
    if diffs:
        raise ValueError(
            f"{source} was written by a {kind} with another config than this model's: "
            f"{'; '.join(diffs[:8])}{' ...' if len(diffs) > 8 else ''}. Resume into the model "
            f"it was written by, e.g. {kind}.from_config(json.loads(ckpt['config'])) with "
            "ckpt = load_checkpoint(path)"
        )


def _hyperparameter_names(groups: list[dict[str, Any]]) -> set[str]:
    return {key for group in groups for key in group} - _NOT_HYPERPARAMETERS


def check_optimizer(payload: dict[str, Any], optimizer: torch.optim.Optimizer, source: str) -> None:
    """Raise a ``ValueError`` when the checkpoint was written by another optimizer class.

    Checkpoints that do not store the class are compared by their hyper-parameters' names
    (Adam's ``betas`` and ``eps`` against SGD's ``momentum`` and ``nesterov``, ...).
    """
    own = type(optimizer).__name__
    saved = payload.get("optimizer_class")
    if saved is not None:
        if saved != own:
            hint = f"optimizer=torch.optim.{saved}" if hasattr(torch.optim, saved) else saved
            raise ValueError(
                f"{source} was written by a run with the {saved} optimizer, but this run's is "
                f"{own}: {saved}'s state cannot continue in {own}. Resume with {hint} (with the "
                "settings of the original run), or start a new run from the checkpoint's "
                "weights: load_checkpoint(path, model=model), then fit without resume="
            )
        return
    saved_names = _hyperparameter_names(payload["optimizer"].get("param_groups", []))
    own_names = _hyperparameter_names(optimizer.param_groups)
    if saved_names and saved_names != own_names:
        raise ValueError(
            f"{source} holds the state of an optimizer with the hyper-parameters "
            f"{sorted(saved_names)}, but this run's {own} has {sorted(own_names)}: it was "
            "written by another optimizer. Resume with the optimizer of the original run, or "
            "start a new run from the checkpoint's weights: load_checkpoint(path, model=model), "
            "then fit without resume="
        )


def check_scheduler(payload: dict[str, Any], scheduler: Any, source: str) -> None:
    """Raise a ``ValueError`` when the checkpoint was written with another scheduler class."""
    saved = payload.get("scheduler_class")
    if saved is not None and scheduler is not None and saved != type(scheduler).__name__:
        own = type(scheduler).__name__
        raise ValueError(
            f"{source} was written with a {saved} LR scheduler, but this run's is {own}: "
            f"{saved}'s state cannot continue in {own}. Resume with the scheduler of the "
            "original run"
        )


# ---------------------------------------------------------------------------------------------
# differences that only warn


def _warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=4)


def _warn_lr(
    payload: dict[str, Any], optimizer: torch.optim.Optimizer, lr: Any, chosen: bool, source: str
) -> None:
    # A scheduler moves "lr"; the rate a run was started with is its "initial_lr".
    def started(groups: list[dict[str, Any]]) -> set[float]:
        return {float(group.get("initial_lr", group.get("lr"))) for group in groups}

    saved = started(payload["optimizer"].get("param_groups", []))
    own = {float(lr)} if lr is not None else started(optimizer.param_groups)
    if saved and (lr is not None or chosen) and saved != own:
        rates = ", ".join(f"{r:g}" for r in sorted(own))
        _warn(
            f"resuming restores the optimizer's learning rate from {source} (the run started "
            f"at {', '.join(f'{r:g}' for r in sorted(saved))}); lr={rates} is not applied. To "
            "change it, set optimizer.param_groups[i]['lr'] in a callback's on_fit_start"
        )


def _warn_hyperparameters(
    payload: dict[str, Any], optimizer: torch.optim.Optimizer, source: str
) -> None:
    """A warning per hyper-parameter of this run's optimizer that the checkpoint's replaces."""
    skip = _NOT_HYPERPARAMETERS | {"lr"}
    reported: set[str] = set()
    groups = payload["optimizer"].get("param_groups", [])
    # another number of groups is refused when the state is loaded
    for saved, own in zip(groups, optimizer.param_groups, strict=False):
        saved, own = _flatten(saved, skip=skip), _flatten(own, skip=skip)
        for key in sorted(saved.keys() | own.keys()):
            old, new = saved.get(key, _ABSENT), own.get(key, _ABSENT)
            if old != new and key not in reported:
                reported.add(key)
                _warn(
                    f"resuming restores the optimizer's hyper-parameters from {source}: this "
                    f"run's {key}={new!r} is not applied, the checkpoint's {key}={old!r} is. To "
                    f"change it, set optimizer.param_groups[i][{key!r}] in a callback's "
                    "on_fit_start"
                )


def _warn_scheduler(payload: dict[str, Any], scheduler: Any, source: str) -> None:
    saved = payload["scheduler"]
    if (scheduler is None) != (saved is None):
        _warn(
            f"{source} was written {'with' if saved is not None else 'without'} an LR scheduler "
            f"but this run has {'one' if scheduler is not None else 'none'}"
        )
        return
    if scheduler is None:
        return
    diffs = _differences(
        _flatten(saved, skip=_SCHEDULER_PROGRESS),
        _flatten(scheduler.state_dict(), skip=_SCHEDULER_PROGRESS),
    )
    if diffs:
        _warn(
            f"{source} was written with a {type(scheduler).__name__} whose settings differ "
            f"from this run's: {'; '.join(diffs)}. Resuming restores the checkpoint's "
            "scheduler, so this run's settings are not applied (a schedule computed from a new "
            "epochs= is not stretched to it)"
        )


def _warn_schedules(payload: dict[str, Any], state: State, source: str) -> None:
    if "schedules" not in payload:  # written before checkpoints stored them
        return
    diffs = _differences(
        _flatten(payload["schedules"]), _flatten(schedule_settings(state.callbacks))
    )
    if diffs:
        _warn(
            f"the KL schedules of this run differ from those of the run that wrote {source}: "
            f"{'; '.join(diffs)}. The resumed run follows this run's schedules, so beta will "
            "not continue as in the interrupted run"
        )


def _warn_managed_config(payload: dict[str, Any], state: State, source: str) -> None:
    saved = _config(payload.get("config"), source) or {}
    for key, setters in _MANAGED_CONFIG.items():
        if key not in saved or any(isinstance(cb, setters) for cb in state.callbacks):
            continue
        own = getattr(state.model, key, None)
        if own != saved[key]:
            _warn(
                f"{source} was written with {key}={saved[key]!r}, but this model has "
                f"{key}={own!r}: the resumed run trains with {own!r}, so it does not continue "
                f"the interrupted run. Build the model with {key}={saved[key]!r} to continue it "
                f"(a callback of yours that sets {key} during the run makes this harmless)"
            )


def warn_on_resume_changes(
    payload: dict[str, Any],
    state: State,
    source: str,
    *,
    lr: Any = None,
    optimizer_chosen: bool = False,
) -> None:
    """Warn for every difference that makes the resumed run differ from the interrupted one.

    Call it before loading: it compares this run's optimizer and scheduler settings with the
    checkpoint's. The optimizer's hyper-parameters are compared when this run chose its
    optimizer (``optimizer_chosen``), the learning rate also when ``lr`` is given.
    """
    saved = payload.get("batches_per_epoch")
    current = state.batches_per_epoch
    if saved is not None and current is not None and saved != current:
        _warn(
            f"{source} was written by a run with {saved} batches per epoch, this one has "
            f"{current}: the data or batch_size changed, so the resumed run will not match the "
            "interrupted one"
        )
    _warn_lr(payload, state.optimizer, lr, optimizer_chosen, source)
    if optimizer_chosen:
        _warn_hyperparameters(payload, state.optimizer, source)
    _warn_scheduler(payload, state.scheduler, source)
    _warn_schedules(payload, state, source)
    _warn_managed_config(payload, state, source)


# ---------------------------------------------------------------------------------------------
# reading and restoring (used by fit and the loop)


def load_resume(resume: Any, target: nn.Module, run: DistributedSetup) -> dict[str, Any] | None:
    """The resume checkpoint, read by every process and checked against ``target`` (kind,
    config, weights); all fail together if one cannot read it."""
    if resume is None:
        return None
    payload, error = None, None
    try:
        payload = load_checkpoint(resume)
        source = f"the resume checkpoint {str(resume)!r}"
        check_weights_fit(payload["model"], target, source)
        check_model_matches(payload, target, source)
    except (OSError, ValueError) as err:
        if not run.enabled:
            raise
        error = err
    if run.enabled and any_rank([error is not None], run.device, "the resume check")[0]:
        if error is not None:
            raise error
        raise ValueError(
            f"another process could not read the resume checkpoint {str(resume)!r} (see its "
            "error); every process reads it, so it must be on a file system they all see"
        )
    return payload


def restore_training(
    payload: dict[str, Any],
    state: State,
    *,
    source: str,
    lr: Any = None,
    optimizer_chosen: bool = False,
) -> None:
    """Check this run against ``payload``, then load its optimizer, scheduler and model and
    put ``state`` at its position.

    Nothing is loaded before every check has passed and every warning of
    :func:`warn_on_resume_changes` is given.

    Raises:
        ValueError: If the checkpoint was written by another optimizer or scheduler class, or
            its optimizer state does not fit the optimizer.
    """
    check_optimizer(payload, state.optimizer, source)
    check_scheduler(payload, state.scheduler, source)
    warn_on_resume_changes(payload, state, source, lr=lr, optimizer_chosen=optimizer_chosen)
    try:
        state.optimizer.load_state_dict(payload["optimizer"])
    except (ValueError, KeyError, RuntimeError) as err:
        raise ValueError(
            f"the optimizer state in {source} does not fit this run's "
            f"{type(state.optimizer).__name__} ({err}); resume with the optimizer that wrote it"
        ) from err
    state.model.load_state_dict(payload["model"])
    if state.scheduler is not None and payload["scheduler"] is not None:
        state.scheduler.load_state_dict(payload["scheduler"])
    state.epoch, state.batch = payload["epoch"], payload["batch"]
    state.epochs_completed, state.step = payload["epochs_completed"], payload["step"]
    state.history = {k: list(v) for k, v in payload["history"].items()}
    state.metrics = dict(payload["metrics"])
    if payload["running"] is not None:
        state.running.load_state_dict(payload["running"], device=state.device)


def rng_of_rank(payload: dict[str, Any], state: State) -> dict[str, Any] | None:
    """The RNG states this process should resume with, or ``None`` when the checkpoint has none
    for it (it was written by a different number of processes; a warning says so)."""
    saved = payload.get("rng_ranks")
    if saved is not None and len(saved) == state.world_size:
        return saved[state.rank]
    written_by = payload.get("world_size", 1)
    if written_by != state.world_size and state.is_main_process:
        warnings.warn(
            f"the checkpoint was written by {written_by} process(es) and this run has "
            f"{state.world_size}: the data order continues exactly, but the random draws "
            "(e.g. a VAE's noise) of the other processes cannot, so the run will differ slightly "
            "from the uninterrupted one",
            stacklevel=3,
        )
    return payload["rng"] if state.rank == 0 else None


def restore_callbacks(payload: dict[str, Any], state: State) -> None:
    """Give each callback the state it saved (matched by class name and position); callbacks
    that the checkpoint does not know keep their fresh state."""
    saved = payload["callbacks"]
    for key, cb in zip(callback_keys(state.callbacks), state.callbacks, strict=True):
        if key in saved:
            cb.load_state_dict(saved[key])
