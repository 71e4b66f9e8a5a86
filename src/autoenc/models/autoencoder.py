"""The deterministic :class:`Autoencoder`."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from autoenc._utils import check_choice, eval_mode
from autoenc.likelihoods import Likelihood, get_likelihood
from autoenc.models.base import (
    REDUCTIONS,
    AEOutput,
    LossOutput,
    ReconstructionModel,
    check_decoder_output,
    check_modules,
    module_config,
)

__all__ = ["Autoencoder"]


class Autoencoder(ReconstructionModel):
    """A deterministic autoencoder: ``x -> encoder -> z -> decoder -> x_hat``.

    Args:
        encoder: Any module mapping ``(b, *shape)`` or ``(b, d)`` to ``(b, latent)``.
        decoder: Any module mapping ``(b, latent)`` to the likelihood's parameters for ``x``.
        likelihood: Reconstruction term: a name (``"mse"``, ``"gaussian"``, ``"bernoulli"``,
            ``"continuous_bernoulli"``) or a :class:`~autoenc.likelihoods.Likelihood`.
        reduction: ``"sum"`` (sum over data dims, mean over batch) or ``"mean"`` (mean over all
            elements, as ``nn.MSELoss()``).
        validate: Check inputs for finiteness and range on every ``loss`` call.

    Example:
        >>> from autoenc import Encoder, Decoder
        >>> dec = Decoder(8, [64], 784, final_activation="sigmoid")
        >>> ae = Autoencoder(Encoder(784, [64], 8), dec)
        >>> ae.loss(torch.rand(4, 784)).loss.shape
        torch.Size([])
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        *,
        likelihood: str | dict[str, Any] | Likelihood = "mse",
        reduction: str = "sum",
        validate: bool = True,
    ) -> None:
        super().__init__()
        check_modules(encoder, decoder)
        check_choice(reduction, REDUCTIONS, "reduction")
        self.encoder, self.decoder = encoder, decoder
        self.likelihood = get_likelihood(likelihood)
        check_decoder_output(decoder, self.likelihood)
        self.reduction, self.validate = reduction, validate

    def encode(self, x: Tensor) -> Tensor:
        """Map ``x`` to its code ``z``, ``(b, latent)``."""
        return self.encoder(x)

    def embed(self, x: Tensor) -> Tensor:
        """The deterministic code of ``x``: :meth:`encode` (a VAE's is its posterior mean)."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """Map codes to reconstructions (the likelihood's mean)."""
        return self.likelihood.mean(self.decoder(z))

    def forward(self, x: Tensor) -> AEOutput:
        """Encode a batch and decode its codes.

        ``x`` is not validated here (:meth:`loss` checks its dtype, values and range).

        Args:
            x: A batch ``(b, ...)`` in a shape the encoder takes.

        Returns:
            An :class:`AEOutput`: ``x_hat`` (the likelihood's mean, shaped like ``x``), the code
            ``z`` and the decoder's raw output ``params``.

        Raises:
            ValueError: If the decoder's output does not fit ``x`` (batch size and elements per
                datum).

        Example:
            >>> from autoenc import Decoder, Encoder
            >>> ae = Autoencoder(Encoder(784, [32], 4), Decoder(4, [32], 784))
            >>> out = ae(torch.rand(2, 784))
            >>> out.x_hat.shape, out.z.shape
            (torch.Size([2, 784]), torch.Size([2, 4]))
        """
        z = self.encoder(x)
        params = self.decoder(z)
        self.check_params(params, x)
        return AEOutput(x_hat=self.likelihood.mean(params).reshape(x.shape), z=z, params=params)

    def loss(self, x: Tensor) -> LossOutput:
        """Reconstruction loss of a batch, reduced by ``reduction``."""
        self.check_input(x)
        z = self.encoder(x)
        params = self.decoder(z)
        self.check_params(params, x)
        if self.validate:
            self.warn_if_probabilities(params, z)
        recon = self.recon(params, x)
        return LossOutput(loss=recon, recon=recon.detach())

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Reconstruct ``x`` in eval mode without gradients; the training mode is restored."""
        with eval_mode(self):
            return self.forward(x).x_hat

    @property
    def config(self) -> dict[str, Any]:
        """A JSON-able description of the model (everything but the weights)."""
        return {
            "encoder": module_config(self.encoder, "encoder"),
            "decoder": module_config(self.decoder, "decoder"),
            "likelihood": self.likelihood.config,
            "reduction": self.reduction,
            "validate": self.validate,
        }
