"""Plots of a model's latent space and of its training history (needs matplotlib, the ``plot``
extra). Each returns a ``matplotlib.figure.Figure``; save it with ``fig.savefig(path)``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from autoenc.pictures.grids import latent_codes
from autoenc.pictures.images import check_batch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["latent_scatter", "plot_history"]


# ---------------------------------------------------------------------------------------------
# plots


def _figure(*, nrows: int = 1, ncols: int = 1, width: float = 5.0, height: float = 4.0) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            'plots need matplotlib: pip install ".[plot]" from a checkout of autoenc'
        ) from err
    # A bare Figure (no pyplot) touches no global state and needs no display backend.
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def latent_scatter(
    model: nn.Module,
    x: Tensor,
    labels: Sequence[int] | Tensor | None = None,
    *,
    projection: str = "pca",
    batch_size: int = 1024,
) -> Figure:
    """Scatter the codes of ``x`` (posterior means for a VAE) in 2-D, coloured by label.

    Args:
        model: A model with ``encode``.
        x: Inputs, ``(b, ...)``: floats, ``uint8`` pixels or a NumPy array, as ``fit`` takes
            them; encoded in chunks of ``batch_size``.
        labels: Optional class of each input, ``b`` ints.
        projection: How codes with more than two dims are shown: ``"pca"`` (the first two
            principal components of the codes) or ``"first"`` (their first two dims). A 2-D code
            is drawn as it is, a 1-D code along the x-axis.
        batch_size: Inputs encoded at once.

    Returns:
        A matplotlib Figure with one axes; save it with ``fig.savefig(path)``.

    Raises:
        ImportError: If matplotlib is missing (the ``plot`` extra).
    """
    if projection not in ("pca", "first"):
        raise ValueError(f"projection must be 'pca' or 'first', got {projection!r}")
    x = check_batch(x, "x")
    z = torch.cat([latent_codes(model, chunk) for chunk in x.split(batch_size)])  # (b, d)
    if labels is not None:
        labels = torch.as_tensor(labels).flatten()
        if labels.numel() != z.shape[0]:
            raise ValueError(
                f"labels must have one entry per input ({z.shape[0]}), got {labels.numel()}"
            )
    axis_names = ["z[0]", "z[1]"]
    if z.shape[1] == 1:
        z = torch.cat([z, torch.zeros_like(z)], dim=1)
        axis_names[1] = ""
    elif z.shape[1] > 2 and projection == "pca":
        centred = z - z.mean(dim=0)
        _, s, vh = torch.linalg.svd(centred, full_matrices=False)
        z = centred @ vh[:2].T  # (b, 2)
        share = s.pow(2) / s.pow(2).sum().clamp_min(1e-12)
        axis_names = [f"PC {i + 1} ({100 * share[i]:.0f}% of variance)" for i in range(2)]
    fig, axes = _figure(width=6.0, height=5.0)
    ax = axes[0, 0]
    colours = {} if labels is None else {"c": labels.numpy(), "cmap": "tab10"}
    points = ax.scatter(z[:, 0].numpy(), z[:, 1].numpy(), s=6, alpha=0.8, **colours)
    if labels is not None:
        if labels.unique().numel() <= 20:
            ax.legend(*points.legend_elements(), title="label", loc="best", fontsize="small")
        else:
            fig.colorbar(points, ax=ax, label="label")
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    ax.set_title("latent codes" + (" (PCA)" if axis_names[0].startswith("PC") else ""))
    return fig


def plot_history(
    history: Mapping[str, Sequence[float]],
    *,
    keys: Sequence[str] | None = None,
    log_scale: bool = False,
) -> Figure:
    """Loss curves from a ``fit()`` history: one panel per quantity, one line per split.

    Keys are grouped by what follows the ``/``: ``train/loss`` and ``val/loss`` share the
    ``loss`` panel, ``train/kl`` and ``val/kl`` the ``kl`` panel. Epochs count from 1.

    Args:
        history: A dict of per-epoch lists, e.g. ``{"train/loss": [...], "val/loss": [...]}``.
        keys: Keys to draw; by default every ``split/quantity`` key (``train/loss``,
            ``val/kl``, ...), leaving out bookkeeping such as ``lr`` and ``time``.
        log_scale: Use a log y-axis.

    Returns:
        A matplotlib Figure; save it with ``fig.savefig(path)``.

    Raises:
        ImportError: If matplotlib is missing (the ``plot`` extra).
    """
    if not isinstance(history, Mapping) or not history:
        raise ValueError(f"history must be a non-empty dict of lists, got {history!r}")
    keys = [k for k in history if "/" in k] if keys is None else list(keys)
    missing = [k for k in keys if k not in history]
    if missing or not keys:
        raise ValueError(f"keys must be some of {sorted(history)}, got {keys!r}")
    panels: dict[str, list[str]] = {}
    for key in keys:
        panels.setdefault(key.rsplit("/", 1)[-1], []).append(key)
    fig, axes = _figure(ncols=len(panels), width=4.5, height=3.5)
    for ax, (name, members) in zip(axes[0], panels.items(), strict=True):
        for key in members:
            values = [float(v) for v in history[key]]
            marker = "." if len(values) < 30 else None
            ax.plot(range(1, len(values) + 1), values, label=key, marker=marker)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        if log_scale:
            ax.set_yscale("log")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    return fig
