"""Callbacks that show training as pictures: PNG files (:class:`ImageSnapshots`), a Visdom
server (:class:`VisdomDashboard`) and TensorBoard event files (:class:`TensorBoardDashboard`).
All three draw the same frames, described in ``autoenc.pictures.frames``.

visdom and tensorboard are imported when a callback is built, never with this module.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from autoenc._utils import renamed_arguments
from autoenc.pictures.frames import Frames, scalar_metrics
from autoenc.pictures.images import save_image, to_uint8
from autoenc.pictures.visdom import VisdomDashboard
from autoenc.training.callbacks import Callback, State

__all__ = ["ImageSnapshots", "VisdomDashboard", "TensorBoardDashboard"]


def _folder_first(directory: Any, x: Any) -> tuple[Any, Any]:
    """``(directory, x)``, swapped with a ``FutureWarning`` when given in the order of the old
    ``ImageSnapshots(x, directory)``: a batch first, then a path or nothing."""
    is_path = isinstance(x, (str, os.PathLike))
    is_batch = isinstance(directory, Tensor) or type(directory).__module__ == "numpy"
    if (is_path and not isinstance(directory, (str, os.PathLike))) or (x is None and is_batch):
        warnings.warn(
            "ImageSnapshots(x, directory) is deprecated and will be removed in the next "
            "release; pass the folder first: ImageSnapshots(directory, x)",
            FutureWarning,
            stacklevel=4,  # the caller, above __init__ and the renamed_arguments wrapper
        )
        return ("pictures" if x is None else x), directory
    return directory, x


class ImageSnapshots(Callback):
    """Save PNG grids every few epochs: inputs over their reconstructions, and prior samples.

    Writes ``recon_epoch003.png`` (each row of inputs followed by the row of their
    reconstructions) and, for models with ``sample``, ``samples_epoch003.png`` into
    ``directory``, numbered by the epochs finished.

    Args:
        directory: Folder of the PNG files (created when needed).
        x: Fixed inputs to reconstruct, ``(b, ...)``: floats in [0, 1], ``uint8`` pixels or a
            NumPy array, as ``fit`` takes them; ``None`` for samples only.
        every_n_epochs: Draw every this many epochs (and after the last epoch).
        n_samples: Prior samples per frame; 0 for none.
        seed: Seed of the prior draws.
        nrow: Images per row.
        image_shape: ``(C, H, W)`` of one image, for flat data; by default the decoder's
            ``out_shape`` or, for square one-channel images, the data's.

    Attributes:
        written: Paths of the files written so far.

    Example:
        >>> import tempfile
        >>> from autoenc import GaussianVAE, Encoder, Decoder
        >>> from autoenc.training import State
        >>> vae = GaussianVAE(Encoder(784, [32], 4), Decoder(2, [32], 784), latent_dim=2)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     pictures = ImageSnapshots(d, torch.rand(8, 784), n_samples=16)
        ...     pictures.on_epoch_end(State(model=vae, optimizer=None, epochs=3, epoch=2))
        ...     [p.name for p in pictures.written]
        ['recon_epoch003.png', 'samples_epoch003.png']
    """

    @renamed_arguments(every="every_n_epochs")
    def __init__(
        self,
        directory: str | os.PathLike[str] = "pictures",
        x: Tensor | None = None,
        *,
        every_n_epochs: int = 1,
        n_samples: int = 64,
        seed: int = 0,
        nrow: int = 8,
        image_shape: Sequence[int] | None = None,
    ) -> None:
        directory, x = _folder_first(directory, x)
        self.frames = Frames(x, every_n_epochs, n_samples, seed, nrow, image_shape)
        self.directory = Path(directory)
        self.written: list[Path] = []

    def on_fit_start(self, state: State) -> None:
        self.frames.check(state.model, type(self).__name__)
        self.frames.last = 0

    def on_epoch_end(self, state: State) -> None:
        n = self.frames.due(state)
        if n is not None:
            self._draw(state.model, n)

    def on_fit_end(self, state: State) -> None:
        n = self.frames.due_at_end(state)
        if n is not None:
            self._draw(state.model, n)

    def _draw(self, model: nn.Module, n: int) -> None:
        for name, grid in self.frames.draw(model, n, paired=True).items():
            self.written.append(save_image(grid, self.directory / f"{name}_epoch{n:03d}.png"))


class TensorBoardDashboard(Callback):
    """Write every metric and the pictures to TensorBoard event files.

    Each number in ``state.metrics`` becomes a scalar under its key at step = epochs finished;
    the images ``x_hat`` and ``samples`` are written every ``every_n_epochs`` epochs (and after
    the last), ``x`` once, and the model's ``config`` as text. View with
    ``tensorboard --logdir DIRECTORY``.

    Args:
        directory: Folder of the event files.
        x: Fixed inputs to reconstruct, as for :class:`ImageSnapshots`; ``None`` for no
            ``x``/``x_hat`` images.
        every_n_epochs: Write pictures every this many epochs (scalars go out every epoch).
        n_samples: Prior samples per frame; 0 for none.
        seed: Seed of the prior draws.
        nrow: Images per row.
        image_shape: ``(C, H, W)`` of one image, for flat data.

    Raises:
        ImportError: If tensorboard is not installed (the ``tensorboard`` extra).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from autoenc import Autoencoder, Encoder, Decoder
        >>> from autoenc.training import State
        >>> ae = Autoencoder(Encoder(784, [32], 4), Decoder(4, [32], 784))
        >>> state = State(model=ae, optimizer=None, epochs=1, metrics={"train/loss": 0.5})
        >>> with tempfile.TemporaryDirectory() as d:
        ...     board = TensorBoardDashboard(d, torch.rand(8, 784))
        ...     for hook in (board.on_fit_start, board.on_epoch_end, board.on_fit_end):
        ...         hook(state)
        ...     len(list(Path(d).glob("events.out.tfevents.*")))
        1
    """

    @renamed_arguments(log_dir="directory", every="every_n_epochs")
    def __init__(
        self,
        directory: str | os.PathLike[str] = "runs",
        x: Tensor | None = None,
        *,
        every_n_epochs: int = 1,
        n_samples: int = 64,
        seed: int = 0,
        nrow: int = 8,
        image_shape: Sequence[int] | None = None,
    ) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ImportError(
                'TensorBoardDashboard needs tensorboard: pip install ".[tensorboard]" from a '
                "checkout of autoenc (or pip install tensorboard)"
            ) from err
        self._writer_class = SummaryWriter
        self.frames = Frames(x, every_n_epochs, n_samples, seed, nrow, image_shape)
        self.directory = Path(directory)
        self._writer: Any = None
        self._wrote_x = False

    def _open(self, state: State) -> Any:
        if self._writer is None:
            self._writer = self._writer_class(log_dir=str(self.directory))
            self._wrote_x = False
            config = getattr(state.model, "config", None)
            if isinstance(config, dict):
                text = json.dumps(config, indent=2, default=str)
                self._writer.add_text("config", f"```\n{text}\n```", global_step=state.epoch)
        return self._writer

    def on_fit_start(self, state: State) -> None:
        if state.is_main_process:
            self.frames.last = 0
            self._open(state)

    def on_epoch_end(self, state: State) -> None:
        if not state.is_main_process:
            return
        writer = self._open(state)
        for key, value in scalar_metrics(state.metrics).items():
            writer.add_scalar(key, value, global_step=state.epoch + 1)
        n = self.frames.due(state)
        if n is not None:
            self._images(writer, state.model, n)
        writer.flush()

    def on_fit_end(self, state: State) -> None:
        n = self.frames.due_at_end(state)
        if n is not None and self._writer is not None:
            self._images(self._writer, state.model, n)
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _images(self, writer: Any, model: nn.Module, n: int) -> None:
        for tag, grid in self.frames.draw(model, n).items():
            if tag == "x" and self._wrote_x:
                continue
            writer.add_image(tag, to_uint8(grid), global_step=n, dataformats="CHW")
            self._wrote_x = self._wrote_x or tag == "x"
