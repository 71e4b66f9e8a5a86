"""Callbacks that show training as pictures: PNG files, Visdom and TensorBoard.

:class:`ImageSnapshots` writes PNG grids, :class:`VisdomDashboard` posts to a Visdom server and
:class:`TensorBoardDashboard` writes TensorBoard event files. All three draw the same frames: a
fixed batch ``x`` given to the constructor and its reconstructions, and, for models with
``sample`` (VAEs), prior samples decoded from latents fixed by ``seed``, so that frames of
different epochs can be compared. Pictures are drawn every ``every`` epochs and after the last
epoch, only on the main process, in eval mode and without touching the training RNG.

visdom and tensorboard are imported when a callback is built, never with this module.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from torch import Tensor, nn

from autoenc._utils import check_int, fork_rng, model_device
from autoenc.pictures.grids import (
    image_grid,
    prior_grid,
    reconstruction_grid,
    reconstructions,
    save_image,
    to_uint8,
)
from autoenc.training.callbacks import Callback, State

__all__ = ["ImageSnapshots", "VisdomDashboard", "TensorBoardDashboard"]

_Calls = list[tuple[str, dict[str, Any]]]  # (visdom method name, keyword arguments) pairs


# ---------------------------------------------------------------------------------------------
# helpers


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The metrics that are real numbers (floats, ints, one-element tensors), as floats."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return out


class _Frames:
    """What the three callbacks draw, checked once and drawn the same way for all."""

    def __init__(
        self,
        x: Tensor | None,
        *,
        every: int,
        n_samples: int,
        seed: int,
        nrow: int,
        image_shape: Sequence[int] | None,
    ) -> None:
        if x is not None:
            if not isinstance(x, Tensor):
                raise TypeError(f"x must be a torch.Tensor or None, got {type(x).__name__}")
            if not x.is_floating_point() or x.dim() < 2 or x.shape[0] == 0:
                raise ValueError(
                    "x must be a non-empty floating-point batch (b, ...), got "
                    f"{x.dtype} of shape {tuple(x.shape)}"
                )
            x = x.detach().cpu().clone()
        if not (isinstance(n_samples, int) and n_samples >= 0):
            raise ValueError(f"n_samples must be an int >= 0, got {n_samples!r}")
        if not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if not (isinstance(nrow, int) and nrow > 0):
            raise ValueError(f"nrow must be a positive int, got {nrow!r}")
        self.x, self.n_samples, self.seed, self.nrow = x, n_samples, seed, nrow
        self.image_shape = None if image_shape is None else tuple(image_shape)
        self.every = check_int(every, "every")
        self.last = 0  # number of the epoch drawn last in this run

    def due(self, state: State) -> int | None:
        """After an epoch: its number when pictures are due (every ``every`` epochs and after
        the last epoch), else ``None``."""
        n = state.epoch + 1
        if state.is_main_process and (n % self.every == 0 or n == state.epochs):
            return n
        return None

    def due_at_end(self, state: State) -> int | None:
        """When training ends: the last finished epoch's number if it was not drawn (training
        stopped early), else ``None``. Nothing after an error or an interrupt."""
        n = state.epochs_completed
        if state.exception is not None or state.interrupted or not state.is_main_process:
            return None
        return n if n > self.last else None

    def samples_from(self, model: nn.Module) -> bool:
        return self.n_samples > 0 and callable(getattr(model, "sample", None))

    def check(self, model: nn.Module, owner: str) -> None:
        if self.x is None and not self.samples_from(model):
            raise ValueError(
                f"{owner} has nothing to draw: give it a batch x to reconstruct, or train a model "
                f"with a sample() method and n_samples > 0 (got {type(model).__name__}, "
                f"n_samples={self.n_samples})"
            )

    def grids(self, model: nn.Module) -> dict[str, Tensor]:
        """``x``, ``x_hat`` and ``samples`` grids (those that apply), ``(3, H, W)`` in [0, 1]."""
        kw = {"nrow": self.nrow, "image_shape": self.image_shape}
        out = {}
        with fork_rng(model_device(model)):
            if self.x is not None:
                out["x"] = image_grid(self.x, model=model, **kw)
                out["x_hat"] = image_grid(reconstructions(model, self.x), model=model, **kw)
            if self.samples_from(model):
                out["samples"] = prior_grid(model, self.n_samples, seed=self.seed, **kw)
        return out


# ---------------------------------------------------------------------------------------------
# PNG files


class ImageSnapshots(Callback):
    """Save PNG grids every few epochs: inputs over their reconstructions, and prior samples.

    Writes ``recon_epoch003.png`` (each row of inputs followed by the row of their
    reconstructions) and, for models with ``sample``, ``samples_epoch003.png`` (prior samples
    decoded from latents fixed by ``seed``) into ``directory``, numbered by the epochs finished
    (1 after the first epoch).

    Args:
        x: Fixed inputs to reconstruct, ``(b, ...)``, kept on the CPU; ``None`` for samples only.
        directory: Where the PNGs go (created when needed).
        every: Draw every this many epochs (and after the last epoch).
        n_samples: Prior samples per frame; 0 for none.
        seed: Seed of the prior draws.
        nrow: Images per row.
        image_shape: ``(C, H, W)`` of one image, for flat data; by default taken from the
            model's ``decoder.out_shape`` or, for square one-channel images, from the data.

    Attributes:
        written: Paths of the files written so far.

    Example:
        >>> from autoenc import GaussianVAE, Encoder, Decoder
        >>> from autoenc.training import State
        >>> import tempfile
        >>> vae = GaussianVAE(Encoder(784, [32], 4), Decoder(2, [32], 784), latent_dim=2)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     pictures = ImageSnapshots(torch.rand(8, 784), d, n_samples=16)
        ...     pictures.on_epoch_end(State(model=vae, optimizer=None, epochs=3, epoch=2))
        ...     [p.name for p in pictures.written]
        ['recon_epoch003.png', 'samples_epoch003.png']
    """

    def __init__(
        self,
        x: Tensor | None = None,
        directory: str | Path = "pictures",
        *,
        every: int = 1,
        n_samples: int = 64,
        seed: int = 0,
        nrow: int = 8,
        image_shape: Sequence[int] | None = None,
    ) -> None:
        self.frames = _Frames(
            x, every=every, n_samples=n_samples, seed=seed, nrow=nrow, image_shape=image_shape
        )
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
        f = self.frames
        f.last = n
        with fork_rng(model_device(model)):
            if f.x is not None:
                grid = reconstruction_grid(model, f.x, nrow=f.nrow, image_shape=f.image_shape)
                self.written.append(save_image(grid, self.directory / f"recon_epoch{n:03d}.png"))
            if f.samples_from(model):
                grid = prior_grid(
                    model, f.n_samples, seed=f.seed, nrow=f.nrow, image_shape=f.image_shape
                )
                self.written.append(save_image(grid, self.directory / f"samples_epoch{n:03d}.png"))


# ---------------------------------------------------------------------------------------------
# Visdom


class _QuietVisdomLog(logging.Filter):
    """Drop the visdom client's per-connection chatter (it logs these at WARNING level)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not message.startswith("Setting up a new session")


def _import_visdom() -> Any:
    try:
        import visdom
    except ImportError as err:
        raise ImportError(
            'VisdomDashboard needs visdom: pip install "autoenc[visdom]". If building visdom '
            "fails with \"No module named 'pkg_resources'\", retry with both PIP_CONSTRAINT and "
            'PIP_BUILD_CONSTRAINT set to a file that holds the line "setuptools<81" (see the '
            "installation page of the docs)"
        ) from err
    log = logging.getLogger("visdom")
    if not any(isinstance(f, _QuietVisdomLog) for f in log.filters):
        log.addFilter(_QuietVisdomLog())
    return visdom


def _run_bounded(fn: Callable[[], Any], timeout: float) -> Any:
    """Run ``fn`` in a daemon thread and wait at most ``timeout`` seconds for it.

    The visdom client sets no timeouts, so a server that accepts a connection and never answers
    would block training forever; a thread that does not finish is left behind (daemon, so it
    cannot keep the process alive) and the call raises :class:`TimeoutError`.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # handed to the caller below
            box["error"] = err

    worker = threading.Thread(target=run, name="autoenc-visdom", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise TimeoutError(f"no answer within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


class VisdomDashboard(Callback):
    """Post pictures and loss curves to a Visdom server, as the article does.

    Windows: ``x`` (the fixed inputs), ``x_hat`` (their reconstructions), ``samples`` (prior
    samples, for models with ``sample``), each an image grid captioned with the epoch, and one
    line plot per quantity (``loss`` with ``train/loss`` and ``val/loss``, ``kl``, ``recon``,
    ...), appended to every epoch. Curves restart from ``state.history`` when a run starts or
    resumes, or the callback reconnects, so a reused env does not mix runs.

    A Visdom that is down never stops training: the first failure (nothing listening, no answer
    within ``timeout``, an error answer, the server dying mid-run) gives ONE warning; then posting
    pauses and a reconnect is tried after ``retry_interval`` seconds, doubling after each failed
    try. One epoch's posts take at most about ``timeout`` seconds, a connection attempt about
    twice that (a TCP connect, then one request).

    Start a server with ``python -m visdom.server`` (it downloads its web page's scripts on
    first start); without internet, ``python -c "from visdom.server.run_server import main;
    main()" -port 8097 -bind_local`` serves the full API (the browser page stays blank).

    Args:
        x: Fixed inputs to reconstruct, ``(b, ...)``; ``None`` for no ``x``/``x_hat`` windows.
        server: Server URL without the port, e.g. ``"http://localhost"``.
        port: Server port.
        env: Visdom environment to post to.
        every: Post pictures every this many epochs (curves go out every epoch).
        n_samples: Prior samples per frame; 0 for none.
        seed: Seed of the prior draws.
        nrow: Images per row.
        image_shape: ``(C, H, W)`` of one image, for flat data.
        timeout: Seconds one connection attempt or one epoch's posts may take.
        retry_interval: Seconds before the first reconnect try after a failure (doubling after
            each failed try); ``None`` never retries.

    Raises:
        ImportError: If visdom is not installed (the ``visdom`` extra).

    Example:
        >>> dashboard = VisdomDashboard(torch.rand(16, 784), env="vae", every=5)
        >>> dashboard.connected  # nothing is sent before training starts
        False
        >>> autoenc.fit(vae, x_train, epochs=10, callbacks=[dashboard])  # doctest: +SKIP
    """

    def __init__(
        self,
        x: Tensor | None = None,
        *,
        server: str = "http://localhost",
        port: int = 8097,
        env: str = "main",
        every: int = 1,
        n_samples: int = 64,
        seed: int = 0,
        nrow: int = 8,
        image_shape: Sequence[int] | None = None,
        timeout: float = 5.0,
        retry_interval: float | None = 60.0,
    ) -> None:
        self._visdom = _import_visdom()
        url = urlparse(server if "://" in server else f"http://{server}")
        if url.scheme not in ("http", "https") or not url.hostname or url.port is not None:
            raise ValueError(
                "server must be a URL without a port, like 'http://localhost' (give the port "
                f"as port=), got {server!r}"
            )
        if not (isinstance(port, int) and 0 < port < 65536):
            raise ValueError(f"port must be an int in 1..65535, got {port!r}")
        if not (isinstance(env, str) and env):
            raise ValueError(f"env must be a non-empty string, got {env!r}")
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if retry_interval is not None and not (
            isinstance(retry_interval, (int, float)) and retry_interval > 0
        ):
            raise ValueError(
                f"retry_interval must be a positive number or None, got {retry_interval!r}"
            )
        self.frames = _Frames(
            x, every=every, n_samples=n_samples, seed=seed, nrow=nrow, image_shape=image_shape
        )
        netloc = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
        self.server, self.host, self.port = f"{url.scheme}://{netloc}", url.hostname, port
        self.env = env
        self.timeout, self.retry_interval = float(timeout), retry_interval
        self._viz: Any = None
        self._warned = False
        self._next_try = 0.0  # time.monotonic() after which a (re)connect may be tried
        self._wait = retry_interval
        self._windows: set[str] = set()  # line windows (re)drawn on this connection
        self._traces: set[str] = set()  # metric keys with a trace on this connection

    @property
    def connected(self) -> bool:
        """Whether the last connection attempt and post succeeded."""
        return self._viz is not None

    def on_fit_start(self, state: State) -> None:
        if not state.is_main_process:
            return
        self._windows, self._traces = set(), set()
        self.frames.last = 0
        self._connect()

    def on_epoch_end(self, state: State) -> None:
        if state.is_main_process and self._connect():
            self._publish(state, self._line_calls(state), self.frames.due(state))

    def on_fit_end(self, state: State) -> None:
        n = self.frames.due_at_end(state)
        if n is not None and self._connect():
            self._publish(state, [], n)

    def _publish(self, state: State, calls: _Calls, n: int | None) -> None:
        """Post ``calls`` and, when ``n`` is given, the pictures of epoch ``n``."""
        images = {} if n is None else self.frames.grids(state.model)
        if n is not None:
            self.frames.last = n
        caption = f"epoch {n}"
        for win, grid in images.items():
            opts = {"title": win, "caption": caption}
            calls.append(("image", {"img": to_uint8(grid).numpy(), "win": win, "opts": opts}))
        viz = self._viz
        try:
            _run_bounded(lambda: self._post(viz, calls), self.timeout)
        except Exception as err:
            self._fail(f"posting failed ({type(err).__name__}: {err})")
            return
        for _, kwargs in calls:
            if "name" in kwargs:
                self._windows.add(kwargs["win"])
                self._traces.add(kwargs["name"])

    # -- connection ----------------------------------------------------------------------------

    def _connect(self) -> bool:
        if self._viz is not None:
            return True
        if time.monotonic() < self._next_try:
            return False
        try:
            # Cheap first: nothing listening fails here in milliseconds.
            socket.create_connection((self.host, self.port), timeout=self.timeout).close()
            self._viz = _run_bounded(self._client, self.timeout)
        except Exception as err:
            self._fail(f"cannot be reached ({type(err).__name__}: {err})")
            return False
        self._windows, self._traces = set(), set()
        self._wait = self.retry_interval
        return True

    def _client(self) -> Any:
        # With send=False the constructor neither posts nor logs (its one post only creates the
        # env, which the first window creates anyway); sending is switched on afterwards.
        viz = self._visdom.Visdom(
            server=self.server,
            port=self.port,
            env=self.env,
            send=False,
            raise_exceptions=True,
            use_incoming_socket=False,
        )
        viz.send = True
        viz.get_env_list()  # a Visdom server answers with the JSON list of its envs
        return viz

    def _fail(self, reason: str) -> None:
        self._viz = None
        if self._wait is None:
            self._next_try, then = math.inf, "it is not retried"
        else:
            self._next_try = time.monotonic() + self._wait
            then = f"a reconnect is tried after {self._wait:g} s, then less and less often"
            self._wait *= 2
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"Visdom at {self.server}:{self.port} (env {self.env!r}) {reason}; training "
                f"goes on without posting to it ({then})",
                RuntimeWarning,
                stacklevel=3,
            )

    # -- posts ---------------------------------------------------------------------------------

    def _line_calls(self, state: State) -> _Calls:
        """One ``viz.line`` call per metric: the whole history on the first post of a window or
        trace on this connection (replacing the window for its first trace), then one point."""
        import numpy as np

        calls = []
        n = state.epoch + 1
        new_windows: set[str] = set()
        for key, value in _scalars(state.metrics).items():
            win = key.rsplit("/", 1)[-1]
            if key in self._traces:
                y, update = [value], "append"
            else:
                y = [float(v) for v in state.history.get(key, [])] or [value]
                fresh = win not in self._windows and win not in new_windows
                update = None if fresh else "append"
                new_windows.add(win)
            x = list(range(n - len(y) + 1, n + 1))
            opts = {"title": win, "xlabel": "epoch", "showlegend": True}
            kwargs = {"Y": np.asarray(y), "X": np.asarray(x), "win": win, "name": key}
            calls.append(("line", {**kwargs, "update": update, "opts": opts}))
        return calls

    def _post(self, viz: Any, calls: _Calls) -> None:
        for method, kwargs in calls:
            reply = getattr(viz, method)(env=self.env, **kwargs)
            if method == "image" and reply != kwargs["win"]:
                raise ConnectionError(f"unexpected answer {str(reply)[:80]!r}")


# ---------------------------------------------------------------------------------------------
# TensorBoard


def _summary_writer() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ImportError(
            'TensorBoardDashboard needs tensorboard: pip install "autoenc[tensorboard]"'
        ) from err
    return SummaryWriter


class TensorBoardDashboard(Callback):
    """Write every metric and the pictures to TensorBoard event files.

    Every epoch, each number in ``state.metrics`` becomes a scalar under its key
    (``train/loss``, ``val/loss``, ...) at step = epochs finished. Every ``every`` epochs (and
    after the last), the images ``x_hat`` and ``samples`` are written, and ``x`` once; they are
    the same grids as :class:`VisdomDashboard` shows. The model's ``config``, when it has one, is
    written as text ``config``. View with ``tensorboard --logdir runs``.

    Args:
        log_dir: Directory of the event files.
        x: Fixed inputs to reconstruct, ``(b, ...)``; ``None`` for no ``x``/``x_hat`` images.
        every: Write pictures every this many epochs.
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

    def __init__(
        self,
        log_dir: str | Path = "runs",
        x: Tensor | None = None,
        *,
        every: int = 1,
        n_samples: int = 64,
        seed: int = 0,
        nrow: int = 8,
        image_shape: Sequence[int] | None = None,
    ) -> None:
        self._writer_class = _summary_writer()
        self.frames = _Frames(
            x, every=every, n_samples=n_samples, seed=seed, nrow=nrow, image_shape=image_shape
        )
        self.log_dir = Path(log_dir)
        self._writer: Any = None
        self._wrote_x = False

    def _open(self, state: State) -> Any:
        if self._writer is None:
            self._writer = self._writer_class(log_dir=str(self.log_dir))
            self._wrote_x = False
            config = getattr(state.model, "config", None)
            if isinstance(config, dict):
                import json

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
        for key, value in _scalars(state.metrics).items():
            writer.add_scalar(key, value, global_step=state.epoch + 1)
        n = self.frames.due(state)
        if n is not None:
            self._images(writer, state.model, n)
        writer.flush()

    def _images(self, writer: Any, model: nn.Module, n: int) -> None:
        self.frames.last = n
        for tag, grid in self.frames.grids(model).items():
            if tag == "x" and self._wrote_x:
                continue
            writer.add_image(tag, to_uint8(grid), global_step=n, dataformats="CHW")
            self._wrote_x = self._wrote_x or tag == "x"

    def on_fit_end(self, state: State) -> None:
        n = self.frames.due_at_end(state)
        if n is not None and self._writer is not None:
            self._images(self._writer, state.model, n)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
