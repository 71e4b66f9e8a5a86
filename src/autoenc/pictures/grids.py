"""Pictures of what a model learned: image grids, interpolations, traversals and plots.

Grid functions return ``(C, H, W)`` float tensors in ``[0, 1]`` laid out by
``torchvision.utils.make_grid``; :func:`save_image` writes one as a PNG. Plot functions return a
``matplotlib.figure.Figure`` (the ``plot`` extra); save it with ``fig.savefig(path)``.

The helpers only assume what every autoenc model has, so they work with user models too:
``encode(x)`` (whose ``.mu`` is used when it has one, i.e. a VAE's posterior mean; otherwise the
code itself), ``decode(z)``, ``reconstruct(x)`` (or a ``forward`` returning ``x_hat``), and for
prior samples ``sample(n, generator=...)``. Flat data such as ``(b, 784)`` is reshaped to images by
``image_shape=(1, 28, 28)``, by the decoder's ``out_shape`` when it has three dims, or for square
one-channel images by itself.

torchvision, Pillow and matplotlib are imported on first use, never with this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from autoenc._utils import eval_mode, model_device

__all__ = [
    "as_images",
    "image_grid",
    "to_uint8",
    "save_image",
    "reconstructions",
    "prior_samples",
    "reconstruction_grid",
    "prior_grid",
    "class_grid",
    "interpolate",
    "traverse",
]


# ---------------------------------------------------------------------------------------------
# helpers


def check_batch(x: Any, arg: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{arg} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{arg} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"{arg} must be a non-empty batch (b, ...), got shape {tuple(x.shape)}")
    return x


def _require(model: Any, method: str, why: str) -> None:
    if not callable(getattr(model, method, None)):
        raise TypeError(f"{why} needs a model with a {method}() method, got {type(model).__name__}")


def _as_batch(x: Any, model: nn.Module, arg: str) -> Tensor:
    """Add a batch dim to one example (a 1-D tensor, or one shaped like the encoder's input)."""
    if isinstance(x, Tensor):
        in_shape = getattr(getattr(model, "encoder", None), "in_shape", None)
        if x.dim() == 1 or (in_shape is not None and tuple(x.shape) == tuple(in_shape)):
            x = x.unsqueeze(0)
    return check_batch(x, arg)


@torch.no_grad()
def latent_codes(model: nn.Module, x: Tensor) -> Tensor:
    """Deterministic codes of a batch (``model.embed``: a VAE's posterior mean), on the CPU."""
    _require(model, "embed", "this picture")
    with eval_mode(model):
        z = model.embed(x.to(model_device(model)))
    if not isinstance(z, Tensor) or z.dim() != 2:
        raise TypeError(
            "model.embed(x) must return a (b, latent_dim) tensor, "
            f"got {type(z).__name__} {tuple(z.shape) if isinstance(z, Tensor) else ''}".rstrip()
        )
    return z.float().cpu()


@torch.no_grad()
def _decode(model: nn.Module, z: Tensor) -> Tensor:
    _require(model, "decode", "this picture")
    with eval_mode(model):
        return model.decode(z.to(model_device(model))).float().cpu()


def _image_shape(image_shape: Sequence[int] | None, model: Any) -> tuple[int, ...] | None:
    if image_shape is None:
        out_shape = getattr(getattr(model, "decoder", None), "out_shape", None)
        if out_shape is not None and len(out_shape) in (2, 3):
            image_shape = out_shape
        else:
            return None
    shape = tuple(image_shape)
    if len(shape) not in (2, 3) or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(
            f"image_shape must be (C, H, W) or (H, W) with positive ints, got {image_shape!r}"
        )
    return shape if len(shape) == 3 else (1, *shape)


# ---------------------------------------------------------------------------------------------
# images and grids


def as_images(x: Tensor, image_shape: Sequence[int] | None = None, *, model: Any = None) -> Tensor:
    """Reshape a batch to images ``(b, C, H, W)``.

    The shape comes from ``image_shape``, else from ``model.decoder.out_shape`` when that has two
    or three dims, else from ``x`` itself: ``(b, C, H, W)`` is kept, ``(b, H, W)`` gets one
    channel, and flat ``(b, d)`` with a square ``d`` becomes ``(b, 1, √d, √d)``.

    Args:
        x: A batch, ``(b, ...)``.
        image_shape: ``(C, H, W)`` or ``(H, W)`` of one image.
        model: A model whose decoder may know the image shape.

    Returns:
        The batch as ``(b, C, H, W)`` (a view when possible).

    Raises:
        ValueError: If the shape cannot be told or does not match ``x``.

    Example:
        >>> as_images(torch.zeros(2, 784)).shape
        torch.Size([2, 1, 28, 28])
    """
    x = check_batch(x, "x")
    shape = _image_shape(image_shape, model)
    b = x.shape[0]
    if shape is not None:
        if x[0].numel() != math.prod(shape):
            raise ValueError(
                f"cannot show x of shape {tuple(x.shape)} as images of shape {shape}: "
                f"{x[0].numel()} values per example, expected {math.prod(shape)}"
            )
        return x.reshape(b, *shape)
    if x.dim() == 4:
        return x
    if x.dim() == 3:
        return x.unsqueeze(1)  # (b, h, w) -> (b, 1, h, w)
    if x.dim() == 2 and math.isqrt(x.shape[1]) ** 2 == x.shape[1]:
        side = math.isqrt(x.shape[1])
        return x.reshape(b, 1, side, side)
    raise ValueError(
        f"cannot tell the image shape of a batch shaped {tuple(x.shape)}; pass "
        "image_shape=(C, H, W)"
    )


def image_grid(
    images: Tensor,
    *,
    nrow: int = 8,
    image_shape: Sequence[int] | None = None,
    model: Any = None,
    padding: int = 2,
    pad_value: float = 1.0,
    value_range: tuple[float, float] | None = None,
) -> Tensor:
    """Lay a batch out as one picture with ``nrow`` images per row.

    Args:
        images: A batch of images or of flat data (see :func:`as_images`).
        nrow: Images per row.
        image_shape: Shape of one image, for flat data.
        model: A model whose decoder may know the image shape.
        padding: Pixels between images.
        pad_value: Colour of the padding (``1.0``: white, as in the article's Visdom grids).
        value_range: ``(low, high)`` of the data, mapped to ``[0, 1]``; by default the data is
            taken to be in ``[0, 1]`` already. Values outside are clamped.

    Returns:
        A ``(C, H, W)`` float tensor in ``[0, 1]`` on the CPU; one-channel images come out
        with three equal channels.

    Example:
        >>> image_grid(torch.rand(16, 784), nrow=8).shape
        torch.Size([3, 62, 242])
    """
    from torchvision.utils import make_grid

    if not (isinstance(nrow, int) and nrow > 0):
        raise ValueError(f"nrow must be a positive int, got {nrow!r}")
    images = as_images(images, image_shape, model=model).detach().float().cpu()
    if value_range is not None:
        low, high = value_range
        if not high > low:
            raise ValueError(f"value_range must be (low, high) with low < high, got {value_range}")
        images = (images - low) / (high - low)
    return make_grid(images.clamp(0, 1), nrow=nrow, padding=padding, pad_value=pad_value)


def to_uint8(grid: Tensor) -> Tensor:
    """Quantize a ``[0, 1]`` image to ``uint8`` as ``torchvision.utils.save_image`` does, for
    the dashboards that take pixels (torchvision has no public function for this step).

    Example:
        >>> to_uint8(torch.tensor([0.0, 0.5, 1.0, 2.0])).tolist()
        [0, 128, 255, 255]
    """
    return grid.detach().float().cpu().mul(255).add(0.5).clamp(0, 255).to(torch.uint8)


def save_image(grid: Tensor, path: str | Path) -> Path:
    """Save a ``(C, H, W)`` or ``(H, W)`` image in ``[0, 1]`` as a PNG (parents are created).

    Args:
        grid: The image, e.g. from :func:`image_grid`; ``C`` is 1, 3 or 4.
        path: Where to write it.

    Returns:
        The path written.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     save_image(image_grid(torch.rand(4, 784)), f"{d}/grid.png").name
        'grid.png'
    """
    from torchvision.utils import save_image as write_png

    if not isinstance(grid, Tensor) or grid.dim() not in (2, 3):
        shape = tuple(grid.shape) if isinstance(grid, Tensor) else type(grid).__name__
        raise ValueError(f"grid must be a (C, H, W) or (H, W) tensor, got {shape}")
    if grid.dim() == 3 and grid.shape[0] not in (1, 3, 4):
        raise ValueError(f"grid must have 1, 3 or 4 channels, got {grid.shape[0]}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(grid.detach().float().cpu(), path, format="PNG")
    return path


# ---------------------------------------------------------------------------------------------
# what a model draws


@torch.no_grad()
def reconstructions(model: nn.Module, x: Tensor) -> Tensor:
    """Reconstruct ``x`` in eval mode without gradients, on the CPU.

    Uses ``model.reconstruct(x)`` when there is one, else ``model(x)`` (its ``.x_hat`` if it has
    one). ``x`` is moved to the model's device.

    Example:
        >>> from autoenc import Autoencoder, Encoder, Decoder
        >>> ae = Autoencoder(Encoder(784, [32], 4), Decoder(4, [32], 784))
        >>> reconstructions(ae, torch.rand(3, 784)).shape
        torch.Size([3, 784])
    """
    x = check_batch(x, "x").to(model_device(model))
    with eval_mode(model):
        if callable(getattr(model, "reconstruct", None)):
            x_hat = model.reconstruct(x)
        else:
            out = model(x)
            x_hat = getattr(out, "x_hat", out)
    if not isinstance(x_hat, Tensor):
        raise TypeError(
            "cannot get reconstructions: the model has no reconstruct() and its forward returns "
            f"{type(x_hat).__name__}, not a tensor or an object with .x_hat"
        )
    return x_hat.float().cpu()


@torch.no_grad()
def prior_samples(model: nn.Module, n: int = 64, *, seed: int = 0) -> Tensor:
    """Decode ``n`` prior draws fixed by ``seed``: the same images for the same weights.

    A model with ``decode`` and an int ``latent_dim`` gets ``z ~ N(0, I)`` drawn on the CPU
    with a generator seeded by ``seed`` (so the draws are the same on every device) and decoded;
    any other model with ``sample`` gets ``model.sample(n, generator=...)`` with a seeded
    generator on its device.

    Returns:
        The samples on the CPU, shaped as the model's decoder emits them.

    Raises:
        TypeError: If the model has no ``sample`` method.

    Example:
        >>> from autoenc import GaussianVAE, Encoder, Decoder
        >>> vae = GaussianVAE(Encoder(784, [32], 4), Decoder(2, [32], (1, 28, 28)), latent_dim=2)
        >>> prior_samples(vae, 5, seed=1).shape
        torch.Size([5, 1, 28, 28])
    """
    _require(model, "sample", "drawing prior samples")
    if not (isinstance(n, int) and n > 0):
        raise ValueError(f"n must be a positive int, got {n!r}")
    device = model_device(model)
    latent_dim = getattr(model, "latent_dim", None)
    if callable(getattr(model, "decode", None)) and isinstance(latent_dim, int):
        z = torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(seed))
        return _decode(model, z)
    generator = torch.Generator(device=device).manual_seed(seed)
    with eval_mode(model):
        return model.sample(n, generator=generator).float().cpu()


def reconstruction_grid(
    model: nn.Module,
    x: Tensor,
    *,
    nrow: int = 8,
    image_shape: Sequence[int] | None = None,
    pad_value: float = 1.0,
) -> Tensor:
    """Inputs over their reconstructions: each row of inputs is followed by a row of their
    reconstructions, so every reconstruction sits right under its input.

    Args:
        model: Any model with ``reconstruct`` (or a forward returning ``x_hat``).
        x: The inputs, ``(b, ...)``.
        nrow: Images per row.
        image_shape: Shape of one image, for flat data.
        pad_value: Colour of the padding and of the blank cells filling a last, short row.

    Returns:
        A ``(3, H, W)`` grid with ``2 * ceil(b / nrow)`` rows.

    Example:
        >>> from autoenc import Autoencoder, Encoder, Decoder
        >>> ae = Autoencoder(Encoder(784, [32], 4), Decoder(4, [32], (1, 28, 28)))
        >>> reconstruction_grid(ae, torch.rand(10, 784), nrow=5).shape
        torch.Size([3, 122, 152])
    """
    x_hat = reconstructions(model, x)
    pair = [as_images(t, image_shape, model=model).float().cpu() for t in (x, x_hat)]
    nrow = min(nrow, pair[0].shape[0])
    short = -pair[0].shape[0] % nrow
    if short:
        blank = pair[0].new_full((short, *pair[0].shape[1:]), pad_value)
        pair = [torch.cat([t, blank]) for t in pair]
    rows = rearrange(pair, "two (r n) c h w -> (r two n) c h w", n=nrow)
    return image_grid(rows, nrow=nrow, pad_value=pad_value)


def prior_grid(
    model: nn.Module,
    n: int = 64,
    *,
    seed: int = 0,
    nrow: int = 8,
    image_shape: Sequence[int] | None = None,
) -> Tensor:
    """A grid of ``n`` prior samples fixed by ``seed`` (see :func:`prior_samples`).

    Example:
        >>> from autoenc import GaussianVAE, Encoder, Decoder
        >>> vae = GaussianVAE(Encoder(784, [32], 4), Decoder(2, [32], 784), latent_dim=2)
        >>> torch.equal(prior_grid(vae, 16, seed=3), prior_grid(vae, 16, seed=3))
        True
    """
    return image_grid(
        prior_samples(model, n, seed=seed), nrow=nrow, image_shape=image_shape, model=model
    )


@torch.no_grad()
def class_grid(
    model: nn.Module,
    classes: Sequence[int] = range(10),
    n_per_class: int = 8,
    *,
    seed: int = 0,
    image_shape: Sequence[int] | None = None,
) -> Tensor:
    """Prior samples of a class-conditional model: one row per class ("draw me a 7").

    Column ``j`` uses the same standard-normal noise in every row (drawn on the CPU from
    ``seed``), so with the standard prior a column is one ``z`` decoded under every class: the
    style stays while the class changes.

    Args:
        model: A :class:`~autoenc.ConditionalVAE` with class conditions (or any model with
            ``latent_dim``, ``prior_params(c)`` and ``decode(z, c)``).
        classes: The class of each row.
        n_per_class: Images per row.
        seed: Seed of the noise: the same picture for the same weights.
        image_shape: Shape of one image, for flat data.

    Returns:
        A ``(3, H, W)`` grid with ``len(classes)`` rows of ``n_per_class`` images.

    Example:
        >>> from autoenc import ConditionalVAE, Decoder, Encoder
        >>> cvae = ConditionalVAE(Encoder(784 + 10, [32], 4), Decoder(2 + 10, [32], 784),
        ...                       latent_dim=2, num_classes=10)
        >>> class_grid(cvae, classes=[3, 7], n_per_class=5).shape
        torch.Size([3, 62, 152])
    """
    for method in ("prior_params", "decode"):
        _require(model, method, "class_grid")
    if not (isinstance(n_per_class, int) and n_per_class > 0):
        raise ValueError(f"n_per_class must be a positive int, got {n_per_class!r}")
    rows = torch.as_tensor(list(classes), dtype=torch.long)
    if rows.dim() != 1 or rows.numel() == 0:
        raise ValueError(f"classes must be a non-empty sequence of ints, got {classes!r}")
    device = model_device(model)
    c = repeat(rows, "r -> (r n)", n=n_per_class).to(device)
    eps = torch.randn(n_per_class, model.latent_dim, generator=torch.Generator().manual_seed(seed))
    with eval_mode(model):
        mu_p, logvar_p = model.prior_params(c)  # (r * n, latent_dim) each
        eps = repeat(eps, "n d -> (r n) d", r=rows.numel()).to(mu_p)
        x = model.decode(mu_p + torch.exp(0.5 * logvar_p) * eps, c).float().cpu()
    return image_grid(x, nrow=n_per_class, image_shape=image_shape, model=model)


def interpolate(
    model: nn.Module,
    x1: Tensor,
    x2: Tensor,
    steps: int = 8,
    *,
    image_shape: Sequence[int] | None = None,
) -> Tensor:
    """Decode straight lines in latent space from the codes of ``x1`` to those of ``x2``.

    The codes are posterior means for a VAE and the codes themselves for an autoencoder; row
    ``i`` decodes ``(1 - t) z1[i] + t z2[i]`` for ``steps`` values of ``t`` from 0 to 1.

    Args:
        model: A model with ``encode`` and ``decode``.
        x1: Start inputs, ``(b, ...)``, or one example.
        x2: End inputs, same shape as ``x1``.
        steps: Images per row, ends included (at least 2).
        image_shape: Shape of one image, for flat data.

    Returns:
        A ``(3, H, W)`` grid with ``b`` rows of ``steps`` images.

    Example:
        >>> from autoenc import Autoencoder, Encoder, Decoder
        >>> ae = Autoencoder(Encoder(784, [32], 4), Decoder(4, [32], 784))
        >>> interpolate(ae, torch.rand(784), torch.rand(784), steps=5).shape
        torch.Size([3, 32, 152])
    """
    if not (isinstance(steps, int) and steps >= 2):
        raise ValueError(f"steps must be an int >= 2, got {steps!r}")
    x1, x2 = _as_batch(x1, model, "x1"), _as_batch(x2, model, "x2")
    if x1.shape != x2.shape:
        raise ValueError(
            f"x1 and x2 must have the same shape, got {tuple(x1.shape)} and {tuple(x2.shape)}"
        )
    z1, z2 = latent_codes(model, x1), latent_codes(model, x2)  # (b, d) each
    t = torch.linspace(0, 1, steps)[None, :, None]  # (1, steps, 1)
    z = z1[:, None] + t * (z2 - z1)[:, None]  # (b, steps, d)
    x_hat = _decode(model, rearrange(z, "b s d -> (b s) d"))
    return image_grid(x_hat, nrow=steps, image_shape=image_shape, model=model)


def traverse(
    model: nn.Module,
    x: Tensor,
    *,
    dims: Sequence[int] | None = None,
    values: Sequence[float] | Tensor | None = None,
    steps: int = 7,
    relative: bool = False,
    image_shape: Sequence[int] | None = None,
) -> Tensor:
    """Latent traversals around one encoded input: one row per latent dim.

    Row ``i`` decodes the code of ``x`` (the posterior mean for a VAE) with dim ``dims[i]`` set
    to each of ``values`` in turn, all other dims held.

    Args:
        model: A model with ``encode`` and ``decode``.
        x: One example (or a batch of one).
        dims: Latent dims to traverse; all by default.
        values: Values given to the traversed dim; ``linspace(-3, 3, steps)`` by default, which
            spans the prior of a VAE (an autoencoder's codes have no fixed scale: choose values
            that suit them, or use ``relative=True``).
        steps: Number of default values.
        relative: Add ``values`` to the encoded value instead of replacing it.
        image_shape: Shape of one image, for flat data.

    Returns:
        A ``(3, H, W)`` grid with ``len(dims)`` rows of ``len(values)`` images.

    Example:
        >>> from autoenc import GaussianVAE, Encoder, Decoder
        >>> vae = GaussianVAE(Encoder(784, [32], 6), Decoder(3, [32], 784), latent_dim=3)
        >>> traverse(vae, torch.rand(784), steps=5).shape
        torch.Size([3, 92, 152])
    """
    mu = latent_codes(model, _as_batch(x, model, "x"))  # (1, d)
    if mu.shape[0] != 1:
        raise ValueError(f"x must be one example, got a batch of {mu.shape[0]}")
    latent_dim = mu.shape[1]
    dims = list(range(latent_dim)) if dims is None else list(dims)
    if not dims or not all(isinstance(d, int) and 0 <= d < latent_dim for d in dims):
        raise ValueError(f"dims must be ints in [0, {latent_dim}), got {dims!r}")
    if values is None:
        if not (isinstance(steps, int) and steps > 0):
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        values = torch.linspace(-3, 3, steps)
    values = torch.as_tensor(values, dtype=torch.float32).flatten()
    if values.numel() == 0:
        raise ValueError("values must not be empty")
    z = mu.repeat(len(dims), values.numel(), 1)  # (n_dims, n_values, d)
    for row, dim in enumerate(dims):
        z[row, :, dim] = values + (mu[0, dim] if relative else 0.0)
    x_hat = _decode(model, rearrange(z, "r v d -> (r v) d"))
    return image_grid(x_hat, nrow=values.numel(), image_shape=image_shape, model=model)
