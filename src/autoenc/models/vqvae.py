r"""The :class:`VQVAE` (van den Oord et al., 2017): an encoder's grid of vectors, each replaced by
its nearest code of a learned codebook, decoded back to the input.

Its loss is the reconstruction term plus the quantizer's commitment (and, without EMA updates,
codebook) term, each summed over the grid and averaged over the batch:

.. math::
    \mathcal L(x) = -\log p(x \mid z_q(x)) + \beta\,\lVert z_e(x) - \mathrm{sg}(z_q)\rVert^2
    \;[+\; \lVert \mathrm{sg}(z_e(x)) - z_q \rVert^2].

A VQ-VAE has no fixed prior to sample from: new images need a model of the code grids.
:meth:`VQVAE.fit_prior` fits the simplest one after training, an independent categorical per
grid position; it ignores how neighbouring codes depend on each other, so its samples are
plausible strokes put together loosely, not digits. An autoregressive prior (PixelCNN, a
transformer) over :meth:`VQVAE.encode_indices` tokens is the way to real samples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from autoenc._utils import (
    check_choice,
    check_int,
    check_number,
    eval_mode,
    model_device,
    model_dtype,
)
from autoenc.data.batching import make_batches
from autoenc.likelihoods import Likelihood, get_likelihood
from autoenc.models.base import (
    REDUCTIONS,
    LossOutput,
    ReconstructionModel,
    check_decoder_output,
    check_modules,
    module_config,
)
from autoenc.networks import Quantized, VectorQuantizer, build_network

__all__ = ["VQVAE", "VQVAEOutput"]


def _announced(module: nn.Module, shape_attr: str, width_attr: str) -> tuple[int, ...] | None:
    """The shape of one example a network says it emits (encoder) or takes (decoder): ``(D, h,
    w)`` for a grid, ``(width,)`` for a vector, ``None`` when it does not say."""
    shape = getattr(module, shape_attr, None)
    if shape is None:
        width = getattr(module, width_attr, None)
        shape = None if width is None else (width,)
    return None if shape is None else tuple(shape)


def _resize_prior(module: VQVAE, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Make room for a saved prior (its shape is its grid's, or empty) before it is copied in."""
    saved = state_dict.get(prefix + "prior_probs")
    if isinstance(saved, Tensor) and saved.shape != module.prior_probs.shape:
        module.prior_probs = module.prior_probs.new_empty(saved.shape)


@dataclass
class VQVAEOutput:
    """What :meth:`VQVAE.forward` returns.

    Attributes:
        x_hat: The likelihood's mean, shaped like the input.
        params: The decoder's raw output (logits for the Bernoulli likelihoods).
        z: The encoder's continuous grid, ``(b, D, h, w)``.
        quantized: The quantizer's output: ``z_q``, the ``indices`` and the loss terms.
    """

    x_hat: Tensor
    params: Tensor
    z: Tensor
    quantized: Quantized


class VQVAE(ReconstructionModel):
    """A VQ-VAE: ``x -> encoder -> z (b, D, h, w) -> quantizer -> z_q -> decoder -> x_hat``.

    The tokens of an image are its grid of code indices, ``(b, h, w)``
    (:meth:`encode_indices`, :meth:`decode_indices`). ``loss`` logs ``commitment``,
    ``codebook`` (without EMA), and the codebook's ``perplexity`` (effective number of codes)
    and ``usage`` (fraction of codes used): these two are per batch, averaged over the epoch
    like every term; :meth:`token_counts` counts the codes over a whole data set.
    :meth:`sample` needs a prior fitted first with :meth:`fit_prior`.

    Args:
        encoder: Any module mapping ``x`` to ``(b, D, *grid)``, e.g.
            ``ConvEncoder(shape, channels, out_channels=D)``.
        quantizer: A :class:`~autoenc.VectorQuantizer` with ``code_dim=D``.
        decoder: Any module mapping ``(b, D, *grid)`` to the likelihood's parameters, e.g.
            ``ConvDecoder(None, channels[::-1], shape, in_channels=D)``.
        likelihood: Reconstruction term: a name (``"bernoulli"``, ``"mse"``, ``"gaussian"``,
            ``"continuous_bernoulli"``) or a :class:`~autoenc.likelihoods.Likelihood`.
        reduction: ``"sum"`` (sum over data dims, mean over batch) or ``"mean"`` (every term,
            the quantizer's too, divided by the elements of one datum).
        validate: Check inputs for finiteness and range on every ``loss`` call.

    Raises:
        TypeError: If a network is not a module or the quantizer not a VectorQuantizer.
        ValueError: If the encoder's or decoder's announced channels differ from ``code_dim``,
            or their grids differ.

    Example:
        >>> from autoenc import ConvDecoder, ConvEncoder, VectorQuantizer
        >>> vq = VQVAE(
        ...     ConvEncoder((1, 28, 28), [16, 32], out_channels=8),
        ...     VectorQuantizer(64, 8),
        ...     ConvDecoder(None, [32, 16], (1, 28, 28), in_channels=8),
        ... )
        >>> x = torch.rand(4, 1, 28, 28)
        >>> sorted(vq.loss(x).terms())
        ['commitment', 'loss', 'perplexity', 'recon', 'usage']
        >>> tokens = vq.encode_indices(x)
        >>> tokens.shape, vq.decode_indices(tokens).shape
        (torch.Size([4, 7, 7]), torch.Size([4, 1, 28, 28]))
    """

    def __init__(
        self,
        encoder: nn.Module,
        quantizer: VectorQuantizer,
        decoder: nn.Module,
        *,
        likelihood: str | dict[str, Any] | Likelihood = "bernoulli",
        reduction: str = "sum",
        validate: bool = True,
    ) -> None:
        super().__init__()
        check_modules(encoder, decoder)
        if not isinstance(quantizer, VectorQuantizer):
            raise TypeError(f"quantizer must be a VectorQuantizer, got {type(quantizer).__name__}")
        check_choice(reduction, REDUCTIONS, "reduction")
        d = quantizer.code_dim
        enc = _announced(encoder, "out_shape", "out_features")
        dec = _announced(decoder, "in_shape", "in_features")
        for arg, verb, fix, shape in (
            ("encoder", "emits", "out_channels", enc),
            ("decoder", "takes", "in_channels", dec),
        ):
            if shape is not None and shape[0] != d:
                raise ValueError(
                    f"the {arg} {verb} {shape} per example, but its first (channel) dim must be "
                    f"the quantizer's code_dim = {d}; build a Conv{arg.title()} with {fix}={d}"
                )
        if enc is not None and dec is not None and enc != dec:
            raise ValueError(
                f"the encoder emits grids of {enc} but the decoder takes {dec}; build both "
                "for the same image shape and number of stages"
            )
        self.encoder, self.quantizer, self.decoder = encoder, quantizer, decoder
        self.likelihood = get_likelihood(likelihood)
        check_decoder_output(decoder, self.likelihood)
        self.reduction, self.validate = reduction, validate
        announced = enc or dec
        self._grid = None if announced is None else announced[1:]
        # (*grid, K) code probabilities per position once fit_prior ran; empty until then
        self.register_buffer("prior_probs", torch.zeros(0))
        self.register_load_state_dict_pre_hook(_resize_prior)

    @property
    def grid_shape(self) -> tuple[int, ...] | None:
        """The token grid ``(h, w)``, from the networks or the fitted prior; ``None`` if unknown."""
        if self._grid is None and self.has_prior:
            return tuple(self.prior_probs.shape[:-1])
        return self._grid

    @property
    def has_prior(self) -> bool:
        """Whether :meth:`fit_prior` has fitted (or a loaded file brought) a prior."""
        return self.prior_probs.numel() > 0

    def encode(self, x: Tensor) -> Tensor:
        """The encoder's continuous grid ``z``, ``(b, D, h, w)``."""
        z = self.encoder(x)
        if z.dim() < 2 or z.shape[1] != self.quantizer.code_dim:
            raise ValueError(
                f"the encoder must emit (b, code_dim={self.quantizer.code_dim}, *grid), got "
                f"{tuple(z.shape)}"
            )
        return z

    def quantize(self, z: Tensor) -> Quantized:
        """Quantize ``z`` (in training mode the codebook initializes, updates and restarts)."""
        return self.quantizer(z)

    def decode(self, z_q: Tensor) -> Tensor:
        """The likelihood's mean for a quantized grid ``(b, D, h, w)`` or its flat form (what
        :meth:`embed` returns)."""
        grid = self.grid_shape
        if z_q.dim() == 2 and grid is not None:
            z_q = z_q.reshape(z_q.shape[0], self.quantizer.code_dim, *grid)
        return self.likelihood.mean(self.decoder(z_q))

    def forward(self, x: Tensor) -> VQVAEOutput:
        """Encode, quantize (straight-through) and decode a batch.

        Raises:
            ValueError: If the encoder's or the decoder's output has the wrong shape.
        """
        z = self.encode(x)
        q = self.quantizer(z)
        params = self.decoder(q.z_q)
        self.check_params(params, x)
        x_hat = self.likelihood.mean(params).reshape(x.shape)
        return VQVAEOutput(x_hat=x_hat, params=params, z=z, quantized=q)

    def loss(self, x: Tensor) -> LossOutput:
        """``recon`` plus the quantizer's loss, with the codebook statistics in ``extra``."""
        self.check_input(x)
        out = self.forward(x)
        q = out.quantized
        if self.validate:
            self.warn_if_probabilities(out.params, q.z_q)
        recon = self.recon(out.params, x)
        per_datum = x.shape[0] * self.scale(x)  # 1, or 1 / elements of a datum for "mean"
        extra = {"commitment": q.commitment * per_datum}
        if not self.quantizer.ema:
            extra["codebook"] = q.codebook * per_datum
        extra.update(perplexity=q.perplexity, usage=q.usage)
        return LossOutput(loss=recon + q.loss * per_datum, recon=recon.detach(), extra=extra)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Reconstruct ``x`` in eval mode without gradients; the training mode is restored."""
        with eval_mode(self):
            return self.forward(x).x_hat

    def embed(self, x: Tensor) -> Tensor:
        """The quantized grid flattened, ``(b, D * h * w)``; the codebook is left as it is."""
        with eval_mode(self.quantizer):
            return rearrange(self.quantizer(self.encode(x)).z_q, "b ... -> b (...)")

    @torch.no_grad()
    def encode_indices(self, x: Tensor) -> Tensor:
        """The tokens of ``x``: code indices ``(b, h, w)``, in eval mode."""
        with eval_mode(self):
            return self.quantizer(self.encode(x)).indices

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Decode tokens ``(b, h, w)``: the likelihood's mean of their codes' grid.

        Raises:
            TypeError: If ``indices`` is not an integer tensor.
            ValueError: If its grid is not the model's or a value is not in ``[0, K)``.
        """
        integer = isinstance(indices, Tensor) and not indices.is_floating_point()
        if not integer or indices.is_complex() or indices.dtype == torch.bool:
            raise TypeError(f"indices must be an integer tensor, got {indices!r:.80}")
        grid, k = self.grid_shape, self.quantizer.num_codes
        if indices.dim() < 1 or (grid is not None and tuple(indices.shape[1:]) != grid):
            raise ValueError(
                f"indices must have shape (b, *grid) = (b, {', '.join(map(str, grid or ()))}), "
                f"got {tuple(indices.shape)}"
            )
        if indices.numel():
            low, high = torch.stack(torch.aminmax(indices)).tolist()
            if low < 0 or high >= k:
                raise ValueError(f"indices must be in [0, {k}), got values in [{low}, {high}]")
        return self.decode(self.quantizer.lookup(indices.long()))

    @torch.no_grad()
    def token_counts(
        self,
        data: Any,
        *,
        batch_size: int = 256,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor:
        """How often each code is the token at each grid position over ``data``, in eval mode.

        Args:
            data: Anything :func:`autoenc.fit` takes (a tensor, a dataset, a ``DataLoader``).
            batch_size: Examples per batch.
            transform: A callable applied to every float batch (as in ``fit``).

        Returns:
            Counts ``(*grid, K)``; ``.sum(0).sum(0)`` is the code histogram of a 2-D grid.
        """
        k, counts, grid = self.quantizer.num_codes, None, ()
        batches = make_batches(
            data, batch_size=batch_size, device=model_device(self), dtype=model_dtype(self),
            transform=transform,
        )  # fmt: skip
        with eval_mode(self):
            for x in batches:
                idx = self.quantizer(self.encode(x)).indices  # (b, *grid)
                grid = tuple(idx.shape[1:])
                flat = rearrange(idx, "b ... -> b (...)")
                cells = flat + k * torch.arange(flat.shape[1], device=flat.device)  # (b, P)
                c = torch.bincount(cells.flatten(), minlength=flat.shape[1] * k)
                counts = c if counts is None else counts + c
        return counts.view(*grid, k)

    def fit_prior(
        self,
        data: Any,
        *,
        smoothing: float = 1.0,
        batch_size: int = 256,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor:
        """Fit the prior of :meth:`sample`: an independent categorical per grid position.

        The probability of code ``i`` at a position is its count there plus ``smoothing``
        (Laplace), normalized: ``(n_i + a) / (n + K a)``, so every token of new data has a
        finite likelihood. The prior is a buffer: :func:`autoenc.save` keeps it.

        Args:
            data: Training data, as :meth:`token_counts` takes it.
            smoothing: Pseudo-count ``a`` added to every code at every position, > 0.
            batch_size: Examples per batch.
            transform: A callable applied to every float batch.

        Returns:
            The counts ``(*grid, K)`` it was fitted on.
        """
        smoothing = check_number(smoothing, "smoothing", positive=True)
        counts = self.token_counts(data, batch_size=batch_size, transform=transform)
        smoothed = counts + smoothing
        probs = smoothed / smoothed.sum(-1, keepdim=True)
        self.prior_probs = probs.to(self.prior_probs.device, model_dtype(self))
        return counts

    def prior_bits_per_token(
        self,
        data: Any,
        *,
        batch_size: int = 256,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> float:
        """Mean ``-log2`` prior probability of the tokens of ``data`` (e.g. the test set), in
        bits per token.

        A uniform prior over ``K`` codes scores ``log2(K)``: the difference is what the
        per-position statistics capture.

        Raises:
            RuntimeError: If no prior was fitted.
        """
        self._require_prior("prior_bits_per_token")
        counts = self.token_counts(data, batch_size=batch_size, transform=transform).double()
        bits = -torch.log2(self.prior_probs.double())
        return ((counts * bits).sum() / counts.sum()).item()

    def _require_prior(self, method: str) -> None:
        if not self.has_prior:
            raise RuntimeError(
                f"VQVAE.{method} needs a prior over the codes, which a VQ-VAE does not have by "
                "itself: call model.fit_prior(train_data) after training first (while training, "
                "give ImageSnapshots n_samples=0)"
            )

    @torch.no_grad()
    def sample_indices(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` token grids ``(n, h, w)`` from the fitted prior (on its device).

        Raises:
            RuntimeError: If no prior was fitted.
        """
        check_int(n, "n")
        self._require_prior("sample")
        probs = rearrange(self.prior_probs.float(), "... k -> (...) k")  # (P, K)
        idx = torch.multinomial(probs, n, replacement=True, generator=generator)  # (P, n)
        return rearrange(idx, "p n -> n p").reshape(n, *self.prior_probs.shape[:-1])

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Decode ``n`` token grids drawn from the prior of :meth:`fit_prior`, in eval mode.

        Raises:
            RuntimeError: If no prior was fitted.
        """
        idx = self.sample_indices(n, generator=generator)
        with eval_mode(self):
            return self.decode_indices(idx)

    @property
    def config(self) -> dict[str, Any]:
        """A JSON-able description of the model (everything but the weights and the prior)."""
        return {
            "encoder": module_config(self.encoder, "encoder"),
            "quantizer": module_config(self.quantizer, "quantizer"),
            "decoder": module_config(self.decoder, "decoder"),
            "likelihood": self.likelihood.config,
            "reduction": self.reduction,
            "validate": self.validate,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> VQVAE:
        """Build an untrained model (and an empty prior) from its ``config``."""
        kwargs = dict(config)
        nets = [build_network(kwargs.pop(key)) for key in ("encoder", "quantizer", "decoder")]
        return cls(*nets, **kwargs)
