"""The picture callbacks: PNG files, a real Visdom server, TensorBoard event files, and a
Visdom that is down, hangs or dies (one warning, bounded delay, training goes on)."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from autoenc import Autoencoder, Decoder, Encoder, GaussianVAE
from autoenc.pictures import (
    image_grid,
    prior_grid,
    reconstruction_grid,
    reconstructions,
    to_uint8,
)
from autoenc.pictures.dashboards import ImageSnapshots, TensorBoardDashboard, VisdomDashboard
from autoenc.training.callbacks import State

needs_visdom = pytest.mark.skipif(
    importlib.util.find_spec("visdom") is None,
    reason="needs the visdom extra: .ci/install-visdom.sh",
)
needs_tensorboard = pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None,
    reason='needs the tensorboard extra: pip install ".[tensorboard]"',
)

METRICS = [
    {"train/loss": 3.0, "train/kl": 0.5, "val/loss": 3.5},
    {"train/loss": 2.0, "train/kl": 0.75, "val/loss": 2.5},
    {"train/loss": 1.5, "train/kl": 1.0, "val/loss": 2.25},
]


def vae() -> GaussianVAE:
    return GaussianVAE(Encoder(36, [8], 4), Decoder(2, [8], 36), latent_dim=2)


def ae() -> Autoencoder:
    return Autoencoder(Encoder((1, 4, 6), [8], 3), Decoder(3, [8], (1, 4, 6)))


def run(
    callback, model, epochs: int, *, start: int = 0, stop: int | None = None, **state_kwargs
) -> State:
    """Drive the hooks as fit() does, with made-up metrics, from epoch index ``start`` to
    ``epochs`` (or, stopping early, to ``stop``); returns the final state."""
    state = State(model=model, optimizer=None, epochs=epochs, epoch=start, **state_kwargs)
    state.epochs_completed = start
    for key in METRICS[0]:
        state.history[key] = [m[key] for m in METRICS[:start]]
    callback.on_fit_start(state)
    for epoch in range(start, epochs if stop is None else stop):
        state.epoch = epoch
        state.metrics = dict(METRICS[epoch % len(METRICS)])
        for key, value in state.metrics.items():
            state.history[key].append(value)
        state.epochs_completed = epoch + 1
        callback.on_epoch_end(state)
    callback.on_fit_end(state)
    return state


def read_png(data: bytes | Path) -> torch.Tensor:
    """A PNG's pixels as a (C, H, W) uint8 tensor."""
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)


# -- ImageSnapshots -----------------------------------------------------------------------------


def test_image_snapshots_write_the_expected_grids_by_epoch(tmp_path):
    model, x = vae(), torch.rand(10, 36)
    callback = ImageSnapshots(tmp_path / "pics", x, every_n_epochs=2, n_samples=12, seed=5, nrow=4)
    run(callback, model, epochs=3)
    names = sorted(p.name for p in (tmp_path / "pics").iterdir())
    assert names == [  # every 2nd epoch and the last
        "recon_epoch002.png",
        "recon_epoch003.png",
        "samples_epoch002.png",
        "samples_epoch003.png",
    ]
    assert [p.name for p in callback.written] == [names[0], names[2], names[1], names[3]]
    recon = read_png(tmp_path / "pics" / "recon_epoch003.png")
    assert torch.equal(recon, to_uint8(reconstruction_grid(model, x, nrow=4)))
    samples = read_png(tmp_path / "pics" / "samples_epoch003.png")
    assert torch.equal(samples, to_uint8(prior_grid(model, 12, seed=5, nrow=4)))
    # the same weights give the same frame: the prior draws are fixed
    assert torch.equal(samples, read_png(tmp_path / "pics" / "samples_epoch002.png"))


def test_image_snapshots_draw_the_last_epoch_when_training_stops_early(tmp_path):
    callback = ImageSnapshots(tmp_path / "a", torch.rand(4, 36), every_n_epochs=2, n_samples=0)
    run(callback, vae(), epochs=10, stop=3)  # epochs 1..3 of 10: every 2nd, then the last
    assert [p.name for p in callback.written] == ["recon_epoch002.png", "recon_epoch003.png"]
    callback = ImageSnapshots(tmp_path / "b", torch.rand(4, 36), every_n_epochs=2, n_samples=0)
    run(callback, vae(), epochs=10, stop=3, exception=RuntimeError("boom"))
    assert [p.name for p in callback.written] == ["recon_epoch002.png"]  # none after an error


def test_image_snapshots_of_an_autoencoder_have_no_samples(tmp_path):
    model, x = ae(), torch.rand(4, 1, 4, 6)
    run(ImageSnapshots(tmp_path, x), model, epochs=1)
    assert [p.name for p in tmp_path.iterdir()] == ["recon_epoch001.png"]
    with pytest.raises(ValueError, match="nothing to draw"):
        run(ImageSnapshots(tmp_path, None), model, epochs=1)


def test_image_snapshots_only_on_the_main_process(tmp_path):
    run(ImageSnapshots(tmp_path / "p", torch.rand(4, 36)), vae(), epochs=2, is_main_process=False)
    assert not (tmp_path / "p").exists()


class NoisyInvert(nn.Module):
    """Its reconstruct uses the global RNG, as a generic forward would."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def reconstruct(self, x):
        return (1 - x + 0.01 * torch.randn_like(x)).clamp(0, 1)


def test_pictures_leave_the_training_rng_and_mode_alone(tmp_path):
    model, callback = (
        NoisyInvert().train(),
        ImageSnapshots(tmp_path, torch.rand(4, 24), image_shape=(4, 6)),
    )
    before = torch.random.get_rng_state()
    run(callback, model, epochs=2)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert model.training


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"x": torch.rand(4, 36), "every_n_epochs": 0}, ValueError, "every_n_epochs"),
        ({"x": torch.randint(0, 2, (4, 36))}, TypeError, "uint8"),
        ({"x": [1.0]}, TypeError, "x must"),
        ({"x": torch.rand(4, 36), "n_samples": -1}, ValueError, "n_samples"),
        ({"x": torch.rand(4, 36), "nrow": 0}, ValueError, "nrow"),
    ],
)
def test_image_snapshots_check_their_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ImageSnapshots(**kwargs)


# -- inputs as fit takes them; the names of the previous release --------------------------------


def test_image_snapshots_take_uint8_float64_and_numpy_inputs_as_fit_does(tmp_path):
    model, pixels = vae(), torch.randint(0, 256, (6, 36), dtype=torch.uint8)
    x = pixels.float() / 255  # what fit makes of uint8 pixels
    expected = to_uint8(reconstruction_grid(model, x))
    for name, given in [("uint8", pixels), ("float64", x.double()), ("numpy", pixels.numpy())]:
        callback = ImageSnapshots(tmp_path / name, given, n_samples=0)
        run(callback, model, epochs=1)
        assert torch.equal(read_png(callback.written[0]), expected), name


def test_image_snapshots_old_order_and_every_warn_and_draw_the_same(tmp_path):
    model, x = vae(), torch.rand(4, 36)
    new = ImageSnapshots(tmp_path / "new", x, every_n_epochs=2, n_samples=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = ImageSnapshots(x, tmp_path / "old", every=2, n_samples=4)
    messages = " | ".join(str(w.message) for w in caught)
    assert len(caught) == 2, messages
    assert "ImageSnapshots(directory, x)" in messages and "use every_n_epochs=" in messages
    assert all(w.category is FutureWarning and w.filename == __file__ for w in caught)
    run(new, model, epochs=3)
    run(old, model, epochs=3)
    assert old.directory == tmp_path / "old"
    assert [p.name for p in old.written] == [p.name for p in new.written]
    for a, b in zip(old.written, new.written, strict=True):
        assert torch.equal(read_png(a), read_png(b))
    with pytest.warns(FutureWarning, match="folder first"):
        alone = ImageSnapshots(x)  # the old default folder stays
    assert alone.directory == Path("pictures") and torch.equal(alone.frames.x, x)
    with pytest.raises(TypeError, match="pass only every_n_epochs="):
        ImageSnapshots(tmp_path, x, every=2, every_n_epochs=2)


@needs_tensorboard
def test_tensorboard_log_dir_and_every_warn_and_write_the_same(tmp_path):
    with pytest.warns(FutureWarning) as caught:
        callback = TensorBoardDashboard(log_dir=tmp_path / "tb", x=torch.rand(4, 36), every=2)
    assert sorted(str(w.message).rsplit(" ", 1)[1] for w in caught) == [
        "directory=",
        "every_n_epochs=",
    ]
    assert callback.directory == tmp_path / "tb" and callback.frames.every_n_epochs == 2
    run(callback, vae(), epochs=1)
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 1


@needs_visdom
def test_visdom_every_warns_and_sets_every_n_epochs():
    with pytest.warns(FutureWarning, match=r"VisdomDashboard\(every=...\).*use every_n_epochs="):
        callback = VisdomDashboard(every=3)
    assert callback.frames.every_n_epochs == 3


# -- TensorBoard --------------------------------------------------------------------------------


@needs_tensorboard
def test_tensorboard_writes_scalars_and_images(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, x = vae(), torch.rand(6, 36)
    callback = TensorBoardDashboard(tmp_path, x, every_n_epochs=2, n_samples=8, nrow=3)
    run(callback, model, epochs=3)
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "scalars": 0}).Reload()
    for key in METRICS[0]:
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [1, 2, 3]
        assert [s.value for s in scalars] == pytest.approx([m[key] for m in METRICS])
    expected = {
        "x": to_uint8(image_grid(x, nrow=3)),
        "x_hat": to_uint8(image_grid(reconstructions(model, x), nrow=3)),
        "samples": to_uint8(prior_grid(model, 8, nrow=3)),
    }
    assert sorted(events.Tags()["images"]) == sorted(expected)
    assert [e.step for e in events.Images("x")] == [2]  # the inputs once
    for tag, grid in expected.items():
        last = events.Images(tag)[-1]
        assert (last.height, last.width) == tuple(grid.shape[1:])
        assert torch.equal(read_png(last.encoded_image_string), grid)
    assert [e.step for e in events.Images("x_hat")] == [2, 3]
    assert "config" in "".join(events.Tags()["tensors"])


@needs_tensorboard
def test_tensorboard_only_on_the_main_process(tmp_path):
    run(TensorBoardDashboard(tmp_path / "tb", torch.rand(4, 36)), vae(), 2, is_main_process=False)
    assert not (tmp_path / "tb").exists()


def test_missing_tensorboard_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r"pip install \"\.\[tensorboard\]\""):
        TensorBoardDashboard()


# -- Visdom: a real server ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VisdomServer:
    """A real Visdom server on 127.0.0.1, started without internet.

    ``python -m visdom.server`` first downloads its web page's scripts and dies offline, so the
    app is started through ``visdom.server.run_server.main``, which skips the download and
    serves the full HTTP API (the browser page would be blank). torch is hidden from the server
    process (visdom imports it only to convert tensors), which makes it start in well under a
    second instead of ~4 s.
    """

    CODE = (
        "import sys; sys.modules['torch'] = None; from visdom.server.run_server import main; main()"
    )

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log = directory / f"visdom-{self.port}.log"
        args = ["-port", str(self.port), "-bind_local", "-env_path", str(directory)]
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", self.CODE, *args, "-logging_level", "WARNING"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Visdom server exited: {self.log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the Visdom server did not start: {self.log.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def visdom_server(tmp_path_factory):
    server = VisdomServer(tmp_path_factory.mktemp("visdom"))
    yield server
    server.stop()


def window(port: int, env: str, win: str) -> dict:
    """A window's content read back through Visdom's own client."""
    import visdom

    viz = visdom.Visdom(
        server="http://127.0.0.1", port=port, env=env, send=False, use_incoming_socket=False
    )
    viz.send, viz.raise_exceptions = True, True  # quiet: send=False skips the constructor's chat
    return json.loads(viz.get_window_data(win=win, env=env))


def window_image(port: int, env: str, win: str) -> torch.Tensor:
    src = window(port, env, win)["content"]["src"]
    assert src.startswith("data:image/png;base64,")
    return read_png(base64.b64decode(src.split(",", 1)[1]))


def traces(port: int, env: str, win: str) -> dict[str, tuple[list[float], list[float]]]:
    data = window(port, env, win)["content"]["data"]
    return {trace["name"]: (trace["x"], trace["y"]) for trace in data}


@needs_visdom
def test_visdom_posts_the_pictures_and_curves_to_a_real_server(visdom_server):
    port, env = visdom_server.port, f"test_{uuid.uuid4().hex[:8]}"
    model, x = vae(), torch.rand(10, 36)
    callback = VisdomDashboard(
        x, server="http://127.0.0.1", port=port, env=env, every_n_epochs=2, n_samples=9, nrow=5
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a working server gives no warning at all
        run(callback, model, epochs=3)
    assert callback.connected
    expected = {
        "x": to_uint8(image_grid(x, nrow=5)),
        "x_hat": to_uint8(image_grid(reconstructions(model, x), nrow=5)),
        "samples": to_uint8(prior_grid(model, 9, nrow=5)),
    }
    for win, grid in expected.items():
        posted = window_image(port, env, win)
        assert posted.shape == grid.shape
        assert (posted.int() - grid.int()).abs().max() <= 1
        assert window(port, env, win)["content"]["caption"] == "epoch 3"
    epochs = [1.0, 2.0, 3.0]
    assert traces(port, env, "loss") == {
        "train/loss": (epochs, [m["train/loss"] for m in METRICS]),
        "val/loss": (epochs, [m["val/loss"] for m in METRICS]),
    }
    assert traces(port, env, "kl") == {"train/kl": (epochs, [m["train/kl"] for m in METRICS])}

    # A new run in the same env starts its curves afresh; a resumed one redraws its history.
    run(VisdomDashboard(None, server="http://127.0.0.1", port=port, env=env), model, epochs=1)
    assert traces(port, env, "loss")["train/loss"] == ([1.0], [3.0])
    resumed = VisdomDashboard(None, server="http://127.0.0.1", port=port, env=env, n_samples=0)
    run(resumed, ae(), epochs=3, start=2)
    assert traces(port, env, "loss")["val/loss"] == (epochs, [m["val/loss"] for m in METRICS])


# -- Visdom: down, hanging, dying ---------------------------------------------------------------


def run_measured(callback, model, epochs: int = 3) -> tuple[float, list[warnings.WarningMessage]]:
    start = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(callback, model, epochs)
    return time.monotonic() - start, [w for w in caught if "Visdom" in str(w.message)]


@needs_visdom
def test_visdom_with_nothing_listening_warns_once_and_training_goes_on():
    port = free_port()  # closed again: nothing listens there
    callback = VisdomDashboard(torch.rand(4, 36), server="127.0.0.1", port=port, timeout=2)
    delay, caught = run_measured(callback, vae(), epochs=3)
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert issubclass(caught[0].category, RuntimeWarning)
    assert "cannot be reached" in str(caught[0].message)
    print(f"a closed port added {delay:.3f} s over 3 epochs")
    assert delay < 10, f"a closed port added {delay:.1f} s"
    assert not callback.connected


class SilentPeer:
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.05)  # so the accept loop sees `stop` soon
        self.port = self.server.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            self.connections.append(conn)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.server.close()
        for conn in self.connections:
            conn.close()


@needs_visdom
def test_visdom_with_a_peer_that_never_answers_has_a_bounded_delay():
    peer = SilentPeer()
    try:
        callback = VisdomDashboard(
            torch.rand(4, 36), server="http://127.0.0.1", port=peer.port, timeout=1.0
        )
        delay, caught = run_measured(callback, vae(), epochs=3)
    finally:
        peer.close()
    assert len(peer.connections) >= 1  # the client did connect, and got no answer
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert "TimeoutError" in str(caught[0].message)
    print(f"a silent peer added {delay:.2f} s over 3 epochs (timeout=1)")
    assert delay < 10, f"a silent peer added {delay:.1f} s"
    assert not callback.connected


@needs_visdom
def test_visdom_dying_mid_run_warns_once_then_reconnects_when_back(tmp_path):
    server = VisdomServer(tmp_path)
    port, env = server.port, "dying"
    callback = VisdomDashboard(
        None, server="http://127.0.0.1", port=port, env=env, timeout=2.0, retry_interval=0.5
    )
    model = ae()
    state = State(model=model, optimizer=None, epochs=6)
    state.history = {key: [] for key in METRICS[0]}

    def epoch(i: int) -> None:
        state.epoch, state.metrics = i, dict(METRICS[i % 3])
        for key, value in state.metrics.items():
            state.history[key].append(value)
        callback.on_epoch_end(state)

    start = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        callback.on_fit_start(state)
        epoch(0)
        assert callback.connected
        server.stop()
        epoch(1)  # the post fails: one warning
        epoch(2)  # within retry_interval: nothing is tried
        delay = time.monotonic() - start
        assert not callback.connected
        server = VisdomServer(tmp_path, port=port)  # back on the same port
        try:
            time.sleep(0.6)
            epoch(3)  # retried: reconnects and redraws the whole history
            assert callback.connected
            assert traces(port, env, "loss")["train/loss"][0] == [1.0, 2.0, 3.0, 4.0]
        finally:
            server.stop()
    caught = [w for w in caught if "Visdom" in str(w.message)]
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert "posting failed" in str(caught[0].message)
    print(f"a dying server added {delay:.3f} s over 3 epochs")
    assert delay < 10, f"a dead server added {delay:.1f} s"


@needs_visdom
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"server": "http://localhost:8097"}, "without a port"),
        ({"server": "ftp://localhost"}, "server"),
        ({"port": 0}, "port"),
        ({"env": ""}, "env"),
        ({"timeout": 0}, "timeout"),
        ({"retry_interval": -1}, "retry_interval"),
    ],
)
def test_visdom_checks_its_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VisdomDashboard(**kwargs)


def test_missing_visdom_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "visdom", None)
    with pytest.raises(ImportError, match=r"pip install \"\.\[visdom\]\""):
        VisdomDashboard()


def test_importing_the_picture_modules_stays_light():
    code = (
        "import sys, autoenc; before = set(sys.modules); "
        "import autoenc.pictures, autoenc.pictures.dashboards, autoenc.pictures.visdom; "
        "heavy = ('matplotlib', 'torchvision', 'visdom', 'tensorboard', 'PIL'); "
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@needs_visdom
@needs_tensorboard
def test_the_three_callbacks_in_fit(tmp_path, visdom_server):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from autoenc.training import fit

    model, data = vae(), torch.rand(64, 36).round()
    x, port, env = data[:6], visdom_server.port, "fit"
    snapshots = ImageSnapshots(tmp_path / "pics", x, every_n_epochs=2, n_samples=8)
    callbacks = [
        snapshots,
        TensorBoardDashboard(tmp_path / "tb", x, every_n_epochs=2, n_samples=8),
        VisdomDashboard(x, server="http://127.0.0.1", port=port, env=env, n_samples=8),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no dashboard trouble
        result = fit(
            model, data, epochs=3, batch_size=16, val_data=data[:16], callbacks=callbacks,
            device="cpu", verbose=False, seed=0,
        )  # fmt: skip
    trained = result.model
    assert [p.name for p in snapshots.written] == [
        "recon_epoch002.png",
        "samples_epoch002.png",
        "recon_epoch003.png",
        "samples_epoch003.png",
    ]
    assert torch.equal(
        read_png(tmp_path / "pics" / "recon_epoch003.png"),
        to_uint8(reconstruction_grid(trained, x)),
    )
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0}).Reload()
    for key, values in result.history.items():
        assert [s.value for s in events.Scalars(key)] == pytest.approx(values)
    epochs = [1.0, 2.0, 3.0]
    assert traces(port, env, "loss") == {
        "train/loss": (epochs, pytest.approx(result.history["train/loss"])),
        "val/loss": (epochs, pytest.approx(result.history["val/loss"])),
    }
    posted = window_image(port, env, "samples")
    assert (posted.int() - to_uint8(prior_grid(trained, 8)).int()).abs().max() <= 1
