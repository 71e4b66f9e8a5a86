"""The Visdom dashboard and its guard against a Visdom server that is down, hangs or dies.

visdom is imported when a :class:`VisdomDashboard` is built, never with this module.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlparse

from torch import Tensor

from autoenc._utils import check_int, check_number, renamed_arguments
from autoenc.pictures.frames import Frames, scalar_metrics
from autoenc.pictures.images import to_uint8
from autoenc.training.callbacks import Callback, State

__all__ = ["VisdomDashboard"]

_Calls = list[tuple[str, dict[str, Any]]]  # (visdom method name, keyword arguments) pairs


def _quiet(record: logging.LogRecord) -> bool:
    """Drop the visdom client's per-connection chatter (it logs these at WARNING level)."""
    return not record.getMessage().startswith("Setting up a new session")


def _import_visdom() -> Any:
    try:
        import visdom
    except ImportError as err:
        raise ImportError(
            'VisdomDashboard needs visdom: pip install ".[visdom]" from a checkout of autoenc. If '
            "building visdom fails with \"No module named 'pkg_resources'\", retry with both "
            "PIP_CONSTRAINT and PIP_BUILD_CONSTRAINT set to a file that holds the line "
            '"setuptools<81" (see the installation page of the docs)'
        ) from err
    log = logging.getLogger("visdom")
    if _quiet not in log.filters:
        log.addFilter(_quiet)
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

    Windows ``x``, ``x_hat`` and ``samples`` show the image grids, captioned with the epoch;
    one line plot per quantity (``loss`` with ``train/loss`` and ``val/loss``, ``kl``, ...) grows
    every epoch and is redrawn from ``state.history`` when a run starts, resumes or reconnects.
    A server that is down never stops training: the first failure gives one ``RuntimeWarning``,
    then a reconnect is tried after ``retry_interval`` seconds, doubling after each failed try.

    Args:
        x: Fixed inputs to reconstruct, ``(b, ...)``: floats in [0, 1], ``uint8`` pixels or a
            NumPy array; ``None`` for no ``x``/``x_hat`` windows.
        server: Server URL without the port, e.g. ``"http://localhost"``.
        port: Server port.
        env: Visdom environment to post to.
        every_n_epochs: Post pictures every this many epochs (curves go out every epoch).
        n_samples: Prior samples per frame; 0 for none.
        seed: Seed of the prior draws.
        nrow: Images per row.
        image_shape: ``(C, H, W)`` of one image, for flat data.
        timeout: Seconds one epoch's posts may take (a connection attempt: about twice that).
        retry_interval: Seconds before the first reconnect try; ``None`` never retries.

    Raises:
        ImportError: If visdom is not installed (the ``visdom`` extra).

    Example:
        >>> dashboard = VisdomDashboard(torch.rand(16, 784), env="vae", every_n_epochs=5)
        >>> dashboard.connected  # nothing is sent before training starts
        False
        >>> autoenc.fit(vae, x_train, epochs=10, callbacks=[dashboard])  # doctest: +SKIP
    """

    @renamed_arguments(every="every_n_epochs")
    def __init__(
        self,
        x: Tensor | None = None,
        *,
        server: str = "http://localhost",
        port: int = 8097,
        env: str = "main",
        every_n_epochs: int = 1,
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
        if check_int(port, "port") > 65535:
            raise ValueError(f"port must be an int in 1..65535, got {port!r}")
        if not (isinstance(env, str) and env):
            raise ValueError(f"env must be a non-empty string, got {env!r}")
        self.timeout = check_number(timeout, "timeout", positive=True)
        if retry_interval is not None:
            check_number(retry_interval, "retry_interval", positive=True)
        self.frames = Frames(x, every_n_epochs, n_samples, seed, nrow, image_shape)
        netloc = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
        self.server, self.host, self.port = f"{url.scheme}://{netloc}", url.hostname, port
        self.env, self.retry_interval = env, retry_interval
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
        images = {} if n is None else self.frames.draw(state.model, n)
        for win, grid in images.items():
            opts = {"title": win, "caption": f"epoch {n}"}
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

    def _line_calls(self, state: State) -> _Calls:
        """One ``viz.line`` call per metric: the whole history on the first post of a window or
        trace on this connection (replacing the window for its first trace), then one point."""
        import numpy as np

        calls = []
        n = state.epoch + 1
        new_windows: set[str] = set()
        for key, value in scalar_metrics(state.metrics).items():
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
