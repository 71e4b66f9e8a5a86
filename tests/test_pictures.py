"""Grids, PNG files, interpolations, traversals and plots: pixel content checked cell by cell."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.utils import make_grid

from autoenc import Autoencoder, Decoder, Encoder, GaussianVAE
from autoenc.pictures import (
    as_images,
    image_grid,
    interpolate,
    latent_scatter,
    plot_history,
    prior_grid,
    prior_samples,
    reconstruction_grid,
    reconstructions,
    save_image,
    to_uint8,
    traverse,
)

PAD = 2  # image_grid's default padding


def cell(grid: torch.Tensor, row: int, col: int, h: int, w: int) -> torch.Tensor:
    """The image at (row, col) of a make_grid layout."""
    top, left = PAD + row * (h + PAD), PAD + col * (w + PAD)
    return grid[:, top : top + h, left : left + w]


def rgb(images: torch.Tensor) -> torch.Tensor:
    """One-channel images as make_grid shows them: three equal channels."""
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def vae(latent: int = 2, shape=36) -> GaussianVAE:
    return GaussianVAE(Encoder(shape, [8], 2 * latent), Decoder(latent, [8], shape), latent)


def ae(latent: int = 3, shape=(1, 4, 6)) -> Autoencoder:
    return Autoencoder(Encoder(shape, [8], latent), Decoder(latent, [8], shape))


class Invert(nn.Module):
    """A stand-in model whose reconstruction is known exactly: 1 - x."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return 1 - x


@dataclass
class Out:
    x_hat: torch.Tensor


class ForwardOnly(nn.Module):
    """No reconstruct(); forward returns an object with x_hat (a user model)."""

    def forward(self, x: torch.Tensor) -> Out:
        return Out(x_hat=x.flip(-1))


# -- as_images / image_grid / save_image --------------------------------------------------------


def test_as_images_infers_or_takes_the_shape():
    x = torch.rand(3, 36)
    assert as_images(x).shape == (3, 1, 6, 6)
    assert as_images(torch.rand(3, 24), (4, 6)).shape == (3, 1, 4, 6)
    assert as_images(torch.rand(3, 24), model=ae()).shape == (3, 1, 4, 6)  # decoder.out_shape
    assert as_images(torch.rand(3, 5, 7)).shape == (3, 1, 5, 7)
    assert torch.equal(as_images(x)[1, 0, 2], x[1, 12:18])  # row-major, no copy of values


@pytest.mark.parametrize(
    ("x", "kwargs", "match"),
    [
        (torch.rand(3, 24), {}, "image_shape"),  # 24 is not square
        (torch.rand(3, 36), {"image_shape": (1, 5, 5)}, "expected 25"),
        (torch.rand(3, 36), {"image_shape": (0, 6, 6)}, "image_shape"),
    ],
)
def test_as_images_errors(x, kwargs, match):
    with pytest.raises(ValueError, match=match):
        as_images(x, **kwargs)


def test_image_grid_places_clamped_images_and_maps_value_range():
    x = torch.rand(5, 1, 4, 6) * 1.4 - 0.2  # some values outside [0, 1]
    grid = image_grid(x, nrow=3)
    assert grid.shape == (3, PAD + 2 * (4 + PAD), PAD + 3 * (6 + PAD))
    assert torch.equal(grid, make_grid(x.clamp(0, 1), nrow=3, padding=PAD, pad_value=1.0))
    assert torch.equal(cell(grid, 1, 1, 4, 6), rgb(x.clamp(0, 1))[4])
    assert (cell(grid, 1, 2, 4, 6) == 1.0).all()  # empty cell: padding colour
    shifted = image_grid(2 * x - 1, nrow=3, value_range=(-1, 1))
    torch.testing.assert_close(shifted, grid)
    with pytest.raises(ValueError, match="nrow"):
        image_grid(x, nrow=0)


def test_save_image_writes_the_quantized_grid(tmp_path):
    grid = image_grid(torch.rand(6, 36), nrow=3)
    path = save_image(grid, tmp_path / "sub" / "grid.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (grid.shape[2], grid.shape[1])
        pixels = torch.from_numpy(np.asarray(im).copy())
    assert torch.equal(pixels.permute(2, 0, 1), to_uint8(grid))
    gray = torch.rand(1, 5, 7)
    with Image.open(save_image(gray, tmp_path / "gray.png")) as im:  # torchvision writes RGB
        pixels = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)
        assert torch.equal(pixels, to_uint8(gray).expand(3, -1, -1))
    with pytest.raises(ValueError, match="channels"):
        save_image(torch.rand(2, 5, 5), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="grid"):
        save_image(torch.rand(5), tmp_path / "bad.png")


def test_to_uint8_rounds_and_clamps():
    assert to_uint8(torch.tensor([-1.0, 0.0, 0.2, 0.5, 1.0, 3.0])).tolist() == [
        0,
        0,
        51,
        128,
        255,
        255,
    ]


# -- reconstructions ----------------------------------------------------------------------------


def test_reconstruction_grid_puts_each_reconstruction_under_its_input():
    x = torch.rand(5, 24)
    grid = reconstruction_grid(Invert(), x, nrow=3, image_shape=(1, 4, 6))
    assert grid.shape == (3, PAD + 4 * (4 + PAD), PAD + 3 * (6 + PAD))
    images = rgb(x.reshape(5, 1, 4, 6))
    for i in range(5):
        row, col = 2 * (i // 3), i % 3
        assert torch.equal(cell(grid, row, col, 4, 6), images[i])
        torch.testing.assert_close(cell(grid, row + 1, col, 4, 6), 1 - images[i])
    assert (cell(grid, 2, 2, 4, 6) == 1.0).all() and (cell(grid, 3, 2, 4, 6) == 1.0).all()


def test_reconstructions_of_models_without_reconstruct_and_mode_is_restored():
    x = torch.rand(4, 1, 3, 5)
    assert torch.equal(reconstructions(ForwardOnly(), x), x.flip(-1))
    model = vae(shape=(1, 4, 6)).train()
    x = torch.rand(3, 1, 4, 6)
    torch.testing.assert_close(reconstructions(model, x), model.reconstruct(x))
    assert model.training
    with pytest.raises(TypeError, match="x_hat"):
        reconstructions(_ReturnsList(), x)


class _ReturnsList(nn.Module):
    def forward(self, x):
        return [x]


# -- prior samples ------------------------------------------------------------------------------


def test_prior_samples_are_fixed_by_the_seed_and_decode_standard_normal_draws():
    model = vae(latent=3)
    z = torch.randn(10, 3, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = model.eval().decode(z)
    model.train()
    torch.testing.assert_close(prior_samples(model, 10, seed=7), expected)
    assert torch.equal(prior_grid(model, 10, seed=7), prior_grid(model, 10, seed=7))
    assert not torch.equal(prior_grid(model, 10, seed=7), prior_grid(model, 10, seed=8))
    grid = prior_grid(model, 10, seed=7, nrow=5)
    assert grid.shape == (3, PAD + 2 * (6 + PAD), PAD + 5 * (6 + PAD))
    torch.testing.assert_close(cell(grid, 1, 0, 6, 6), rgb(expected.reshape(10, 1, 6, 6))[5])
    assert model.training


class SampleOnly(nn.Module):
    """A model with sample() but no decode()/latent_dim."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def sample(self, n, *, generator=None):
        return torch.rand(n, 1, 4, 4, generator=generator)


def test_prior_samples_fall_back_to_sample_with_a_seeded_generator():
    expected = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(prior_samples(SampleOnly(), 6, seed=3), expected)
    with pytest.raises(TypeError, match="sample"):
        prior_samples(ae(), 4)
    with pytest.raises(ValueError, match="n must"):
        prior_samples(vae(), 0)


# -- interpolate / traverse ---------------------------------------------------------------------


def decoded(model, z, shape):
    with torch.no_grad():
        return rgb(model.eval().decode(z).reshape(len(z), *shape)).clamp(0, 1)  # as grids show


@pytest.mark.parametrize(
    ("make", "in_shape", "shape"), [(vae, (36,), (1, 6, 6)), (ae, (24,), (1, 4, 6))]
)
def test_interpolate_decodes_the_line_between_codes(make, in_shape, shape):
    model = make()
    x1, x2 = torch.rand(2, *in_shape), torch.rand(2, *in_shape)
    grid = interpolate(model, x1, x2, steps=5)
    h, w = shape[1:]
    assert grid.shape == (3, PAD + 2 * (h + PAD), PAD + 5 * (w + PAD))
    code = (lambda q: q.mu) if isinstance(model, GaussianVAE) else (lambda q: q)
    with torch.no_grad():
        z1, z2 = code(model.encode(x1)), code(model.encode(x2))
    for row in range(2):
        for col, t in enumerate(torch.linspace(0, 1, 5).tolist()):
            z = (1 - t) * z1[row : row + 1] + t * z2[row : row + 1]
            torch.testing.assert_close(cell(grid, row, col, h, w), decoded(model, z, shape)[0])


def test_interpolate_takes_single_examples_and_checks_its_arguments():
    model = ae()
    single = interpolate(model, torch.rand(1, 4, 6), torch.rand(1, 4, 6), steps=3)
    assert single.shape == (3, PAD + 4 + PAD, PAD + 3 * (6 + PAD))  # one row
    with pytest.raises(ValueError, match="same shape"):
        interpolate(model, torch.rand(2, 24), torch.rand(3, 24))
    with pytest.raises(ValueError, match="steps"):
        interpolate(model, torch.rand(2, 24), torch.rand(2, 24), steps=1)
    with pytest.raises(TypeError, match="x1"):
        interpolate(model, [0.0] * 24, torch.rand(1, 24))


def test_traverse_sets_one_dim_per_row():
    model = vae(latent=3)
    x = torch.rand(36)
    values = [-2.0, 0.0, 1.5, 3.0]
    grid = traverse(model, x, dims=[2, 0], values=values)
    assert grid.shape == (3, PAD + 2 * (6 + PAD), PAD + 4 * (6 + PAD))
    with torch.no_grad():
        mu = model.encode(x[None]).mu
    for row, dim in enumerate([2, 0]):
        for col, v in enumerate(values):
            z = mu.clone()
            z[0, dim] = v
            torch.testing.assert_close(cell(grid, row, col, 6, 6), decoded(model, z, (1, 6, 6))[0])
    # relative=True with offset 0 gives the reconstruction itself (one image: no padding)
    torch.testing.assert_close(
        traverse(model, x, dims=[1], values=[0.0], relative=True),
        rgb(model.reconstruct(x[None]).reshape(1, 1, 6, 6))[0],
    )
    assert traverse(model, x, steps=5).shape == (3, PAD + 3 * (6 + PAD), PAD + 5 * (6 + PAD))


def test_traverse_errors():
    model = vae(latent=3)
    with pytest.raises(ValueError, match="one example"):
        traverse(model, torch.rand(2, 36))
    with pytest.raises(ValueError, match="dims"):
        traverse(model, torch.rand(36), dims=[3])
    with pytest.raises(TypeError, match="embed"):
        traverse(Invert(), torch.rand(36))


# -- inputs as fit takes them ---------------------------------------------------------------------


def test_pictures_take_uint8_float64_and_numpy_inputs_as_fit_does():
    model = vae(latent=3)
    pixels = torch.randint(0, 256, (4, 36), dtype=torch.uint8)
    x = pixels.float() / 255  # what fit makes of uint8 pixels
    for given in (pixels, x.double(), pixels.numpy(), x.double().numpy()):
        assert torch.equal(reconstructions(model, given), reconstructions(model, x))
        assert torch.equal(reconstruction_grid(model, given), reconstruction_grid(model, x))
        assert torch.equal(image_grid(given), image_grid(x))
        assert torch.equal(
            interpolate(model, given[:2], given[2:], steps=3), interpolate(model, x[:2], x[2:], 3)
        )
        assert torch.equal(traverse(model, given[0], steps=3), traverse(model, x[0], steps=3))
    with pytest.raises(TypeError, match="x must hold floating-point, uint8"):
        reconstruction_grid(model, torch.randint(0, 2, (4, 36)))


def test_a_float64_model_gets_its_inputs_and_prior_draws_in_float64():
    model = vae(latent=2).double()
    x = torch.rand(3, 36)  # float32
    with torch.no_grad():
        expected = model.eval().reconstruct(x.double())
        z = torch.randn(4, 2, generator=torch.Generator().manual_seed(0)).double()
        samples = model.decode(z)
    torch.testing.assert_close(reconstructions(model, x), expected.float())
    torch.testing.assert_close(prior_samples(model, 4, seed=0), samples.float())
    assert interpolate(model, x[:1], x[1:2], steps=3).shape == (3, PAD + 6 + PAD, PAD + 3 * 8)


# -- plots --------------------------------------------------------------------------------------

needs_matplotlib = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None,
    reason='needs the plot extra: pip install ".[plot]"',
)


def scatter_points(fig):
    (ax,) = fig.axes
    return torch.from_numpy(ax.collections[0].get_offsets().data.copy()).float()


@needs_matplotlib
def test_latent_scatter_of_2d_codes_plots_the_posterior_means():
    model, x = vae(latent=2), torch.rand(50, 36)
    labels = torch.arange(50) % 4
    fig = latent_scatter(model, x, labels, batch_size=16)
    with torch.no_grad():
        mu = model.encode(x).mu
    torch.testing.assert_close(scatter_points(fig), mu)
    (ax,) = fig.axes
    assert ax.collections[0].get_array().tolist() == labels.tolist()
    assert len(ax.get_legend().get_texts()) == 4


@needs_matplotlib
def test_latent_scatter_projects_wider_codes_with_pca_or_first_dims():
    model, x = ae(latent=4), torch.rand(40, 24)
    with torch.no_grad():
        z = model.encode(x)
    first = latent_scatter(model, x, projection="first")
    torch.testing.assert_close(scatter_points(first), z[:, :2])
    points = scatter_points(latent_scatter(model, x))
    centred = z - z.mean(0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    expected = centred @ vh[:2].T
    torch.testing.assert_close(points.abs(), expected.abs(), atol=1e-5, rtol=1e-4)  # signs free
    assert points.var(0)[0] >= points.var(0)[1]  # PC 1 carries the most variance
    with pytest.raises(ValueError, match="labels"):
        latent_scatter(model, x, labels=[1, 2])
    with pytest.raises(ValueError, match="projection"):
        latent_scatter(model, x, projection="tsne")


@needs_matplotlib
def test_latent_scatter_takes_uint8_pixels():
    model, pixels = vae(latent=2), torch.randint(0, 256, (20, 36), dtype=torch.uint8)
    expected = scatter_points(latent_scatter(model, pixels.float() / 255))
    torch.testing.assert_close(
        scatter_points(latent_scatter(model, pixels, batch_size=8)), expected
    )


@needs_matplotlib
def test_plot_history_draws_one_panel_per_quantity(tmp_path):
    history = {"train/loss": [3.0, 2.0, 1.5], "val/loss": [3.2, 2.5, 2.0], "train/kl": [1, 2, 3]}
    fig = plot_history(history)
    loss, kl = fig.axes
    assert loss.get_title() == "loss" and kl.get_title() == "kl"
    lines = {line.get_label(): line for line in loss.get_lines()}
    assert list(lines["val/loss"].get_ydata()) == history["val/loss"]
    assert list(lines["train/loss"].get_xdata()) == [1, 2, 3]
    assert len(plot_history(history, keys=["train/kl"]).axes) == 1
    fig.savefig(tmp_path / "history.png")
    assert Image.open(tmp_path / "history.png").format == "PNG"
    with pytest.raises(ValueError, match="keys"):
        plot_history(history, keys=["val/kl"])
    with pytest.raises(ValueError, match="history"):
        plot_history({})


def test_plots_without_matplotlib_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install \"\.\[plot\]\""):
        plot_history({"train/loss": [1.0]})
