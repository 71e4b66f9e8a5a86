"""Pictures of what a model learned: reconstructions, prior samples, interpolations, traversals.

Grid functions return ``(3, H, W)`` float tensors in ``[0, 1]`` laid out by
``torchvision.utils.make_grid``; :func:`~autoenc.pictures.save_image` writes one as a PNG. They
only assume what every autoenc model has, so they work with user models too: ``encode(x)``
(through ``embed``: a VAE's posterior mean, otherwise the code itself), ``decode(z)``,
``reconstruct(x)`` (or a ``forward`` returning ``x_hat``), and for prior samples
``sample(n, generator=...)``. Inputs are taken as :func:`autoenc.fit` takes data (see
``autoenc.pictures.images``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from autoenc._utils import eval_mode, model_device, model_dtype
from autoenc.pictures.images import as_images, check_batch, float_batch, image_grid

__all__ = [
    "reconstructions",
    "prior_samples",
    "reconstruction_grid",
    "prior_grid",
    "class_grid",
    "interpolate",
    "traverse",
]


def _require(model: Any, method: str, why: str) -> None:
    if not callable(getattr(model, method, None)):
        raise TypeError(f"{why} needs a model with a {method}() method, got {type(model).__name__}")


def _as_batch(x: Any, model: nn.Module, arg: str) -> Tensor:
    """Add a batch dim to one example (a 1-D tensor, or one shaped like the encoder's input)."""
    if type(x).__module__ == "numpy" and hasattr(x, "dtype"):
        x = torch.as_tensor(x)
    if isinstance(x, Tensor):
        in_shape = getattr(getattr(model, "encoder", None), "in_shape", None)
        if x.dim() == 1 or (in_shape is not None and tuple(x.shape) == tuple(in_shape)):
            x = x.unsqueeze(0)
    return check_batch(x, arg)


@torch.no_grad()
def latent_codes(model: nn.Module, x: Tensor) -> Tensor:
    """Deterministic codes of a batch (``model.embed``: a VAE's posterior mean), on the CPU."""
    _require(model, "embed", "this picture")
    x = float_batch(x, "x", model)
    with eval_mode(model):
        z = model.embed(x)
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
        return model.decode(z.to(model_device(model), model_dtype(model))).float().cpu()


@torch.no_grad()
def reconstructions(model: nn.Module, x: Tensor) -> Tensor:
    """Reconstruct ``x`` in eval mode without gradients, on the CPU.

    Uses ``model.reconstruct(x)`` when there is one, else ``model(x)`` (its ``.x_hat`` if it has
    one). ``x`` (floats or ``uint8`` pixels) is moved to the model's device and dtype.

    Example:
        >>> from autoenc import Autoencoder, Encoder, Decoder
        >>> ae = Autoencoder(Encoder(784, [32], 4), Decoder(4, [32], 784))
        >>> reconstructions(ae, torch.rand(3, 784)).shape
        torch.Size([3, 784])
    """
    x = float_batch(x, "x", model)
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
    a conditional model with ``num_classes`` samples the classes in turn (0, 1, ..., 0, 1, ...);
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
    classes = getattr(model, "num_classes", None)
    if getattr(model, "conditional", False) is True and isinstance(classes, int):
        generator = torch.Generator(device=device).manual_seed(seed)
        with eval_mode(model):
            c = torch.arange(n, device=device) % classes
            return model.sample(n, c=c, generator=generator).float().cpu()
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
        x: The inputs, ``(b, ...)``: floats in [0, 1] or ``uint8`` pixels.
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
    x = float_batch(x, "x")
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
