"""The article's own networks and training loop, written out as the tutorial prints them.

The benchmarks and the reproduction check compare ``autoenc`` against this code; it
deliberately uses the tutorial's idioms (``view``, ``nn.MSELoss``, a ``DataLoader`` over
``ToTensor`` images) rather than the library's.
"""

from __future__ import annotations

import torch
from torch import nn, optim
from torch.utils.data import DataLoader


def article_encoder() -> nn.Sequential:
    """The article's encoder (AE and VAE alike): 784 -> 256 -> 64 -> 20, ReLU after each layer."""
    return nn.Sequential(
        nn.Linear(784, 256), nn.ReLU(),  # [b, 784] => [b, 256]
        nn.Linear(256, 64), nn.ReLU(),  # [b, 256] => [b, 64]
        nn.Linear(64, 20), nn.ReLU(),  # [b, 64] => [b, 20]
    )  # fmt: skip


def article_decoder(latent: int) -> nn.Sequential:
    """The article's decoder: latent (20 for the AE, 10 for the VAE) -> 64 -> 256 -> 784."""
    return nn.Sequential(
        nn.Linear(latent, 64), nn.ReLU(),  # [b, latent] => [b, 64]
        nn.Linear(64, 256), nn.ReLU(),  # [b, 64] => [b, 256]
        nn.Linear(256, 784), nn.Sigmoid(),  # [b, 256] => [b, 784]
    )  # fmt: skip


class ArticleAE(nn.Module):
    """The article's AE; ``forward`` returns ``(x_hat, None)`` so one loop serves both models."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder, self.decoder = article_encoder(), article_decoder(20)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        batchsz = x.size(0)
        x = x.view(batchsz, -1)
        x = self.decoder(self.encoder(x))
        return x.view(batchsz, 1, 28, 28), None


class ArticleVAE(nn.Module):
    """The article's VAE: ``forward`` returns the reconstruction and the KL / (b * 784)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder, self.decoder = article_encoder(), article_decoder(10)

    def forward(
        self, x: torch.Tensor, eps: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The article's forward; ``eps`` (tests only) replaces ``torch.randn_like(sigma)``."""
        batchsz = x.size(0)
        x = x.view(batchsz, -1)
        q = self.encoder(x)  # [b, 20] including mean and sigma
        mu, sigma = q.chunk(2, dim=1)
        q = mu + sigma * (torch.randn_like(sigma) if eps is None else eps)
        x_hat = self.decoder(q).view(batchsz, 1, 28, 28)
        kld = (
            0.5
            * torch.sum(
                torch.pow(mu, 2) + torch.pow(sigma, 2) - torch.log(1e-8 + torch.pow(sigma, 2)) - 1
            )
            / (batchsz * 28 * 28)
        )
        return x_hat, kld


def article_loader(dataset, batch_size: int = 32) -> DataLoader:
    """The article's ``DataLoader(mnist_train, batch_size=32, shuffle=True)``."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=True)


def article_optimizer(model: nn.Module) -> optim.Optimizer:
    return optim.Adam(model.parameters(), lr=1e-3)


def article_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: optim.Optimizer,
    *,
    max_batches: int | None = None,
) -> tuple[int, float, float | None]:
    """One epoch of the article's loop: (examples seen, last loss, last kld)."""
    criteon = nn.MSELoss()
    seen, loss, kld = 0, None, None
    for batchidx, (x, _) in enumerate(loader):
        if max_batches is not None and batchidx >= max_batches:
            break
        x_hat, kld = model(x)
        loss = criteon(x_hat, x)
        if kld is not None:
            loss = loss + 1.0 * kld
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += x.shape[0]
    return seen, loss.item(), None if kld is None else kld.item()
