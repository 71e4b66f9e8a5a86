"""Small models, data and callbacks shared by the training tests (not a test module)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from autoenc import Autoencoder, Decoder, Encoder, GaussianVAE, LossOutput
from autoenc.training.callbacks import Callback, State


def tiny_vae(seed: int = 0, **kwargs) -> GaussianVAE:
    """A 4 -> 2 -> 4 VAE with a squared-error likelihood, identical for a given seed."""
    torch.manual_seed(seed)
    return GaussianVAE(
        Encoder(4, [8], 4), Decoder(2, [8], 4), latent_dim=2, likelihood="mse", **kwargs
    )


def tiny_ae(seed: int = 0) -> Autoencoder:
    """A deterministic 4 -> 2 -> 4 autoencoder."""
    torch.manual_seed(seed)
    return Autoencoder(Encoder(4, [8], 2), Decoder(2, [8], 4))


def tiny_data(n: int = 40, seed: int = 1) -> Tensor:
    """``(n, 4)`` values in [0, 1]."""
    return torch.rand(n, 4, generator=torch.Generator().manual_seed(seed))


def weights(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of the state dict."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    """Bit-for-bit equality of two state dicts."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def without_time(history: dict[str, list[float]]) -> dict[str, list[float]]:
    """The history without its wall-clock column."""
    return {k: v for k, v in history.items() if k != "time"}


class NaNAt(nn.Module):
    """A model whose ``kl`` term is NaN on its ``at``-th training call (counted from 1)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.net = nn.Linear(4, 4)
        self.at, self.calls = at, 0

    def loss(self, x: Tensor) -> LossOutput:
        recon = (self.net(x) - x).pow(2).sum(1).mean()
        kl = self.net.weight.pow(2).sum()
        if self.training and torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.at:
                kl = kl * float("nan")
        return LossOutput(loss=recon + kl, recon=recon.detach(), kl=kl.detach())


class Recorder(Callback):
    """Records every hook call as ``(hook, epoch, batch, step)``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, int, int]] = []

    def _record(self, hook: str, state: State) -> None:
        self.events.append((hook, state.epoch, state.batch, state.step))

    def on_fit_start(self, state: State) -> None:
        self._record("fit_start", state)

    def on_epoch_start(self, state: State) -> None:
        self._record("epoch_start", state)

    def on_batch_end(self, state: State) -> None:
        self._record("batch_end", state)

    def on_epoch_end(self, state: State) -> None:
        self._record("epoch_end", state)

    def on_fit_end(self, state: State) -> None:
        self._record("fit_end", state)

    def hooks(self) -> list[str]:
        return [e[0] for e in self.events]
