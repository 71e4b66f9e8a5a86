r"""The vector quantizer of a VQ-VAE: :class:`VectorQuantizer` and its output :class:`Quantized`.

Each encoder output vector is replaced by its nearest code of a learned codebook; gradients pass
the lookup by the straight-through estimator. Three things keep the codebook from collapsing onto
a few codes: it starts from the encoder outputs of the first training batch (k-means or random
picks), it can follow the vectors assigned to it by exponential moving averages (the VQ-VAE
paper's appendix), and codes left unused for ``restart_after`` steps can be moved onto random
encoder outputs.

Loss convention, as everywhere in autoenc: every term is summed over the non-batch dimensions
and averaged over the batch, so ``beta`` weighs the commitment term against a reconstruction
term summed over pixels as in the paper (which uses ``beta = 0.25``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import Tensor, nn

from autoenc._utils import check_choice, check_int

__all__ = ["Quantized", "VectorQuantizer"]

_INITS = ("kmeans", "random")


def _check_number(value: Any, name: str, expected: str, ok: Callable[[float], bool]) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
        raise ValueError(f"{name} must be a number {expected}, got {value!r}")


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduce_sum(x: Tensor) -> Tensor:
    if _distributed():
        torch.distributed.all_reduce(x)
    return x


def _broadcast(x: Tensor) -> Tensor:
    """Rank 0's ``x`` on every rank, so random choices leave the codebooks identical."""
    if _distributed():
        torch.distributed.broadcast(x, src=0)
    return x


def _nearest(x: Tensor, codes: Tensor, *, chunk_size: int, cosine: bool) -> Tensor:
    """Index of the nearest code for each row of ``x`` ``(n, d)``; distances ``chunk_size`` rows
    at a time, so memory stays ``chunk_size * K`` however large the grid."""
    if cosine:
        x, codes = F.normalize(x, dim=-1), F.normalize(codes, dim=-1)
    sq_norms = codes.pow(2).sum(-1)  # (K,); |x|^2 is the same for every code of a row
    out = []
    # In the codebook's precision even under mixed precision: bf16 scores misplace close codes.
    with torch.autocast(x.device.type, enabled=False):
        for chunk in x.split(chunk_size):
            scores = chunk @ codes.T  # (chunk, K)
            out.append(scores.argmax(-1) if cosine else (sq_norms - 2 * scores).argmin(-1))
    return torch.cat(out)


def _sample_rows(x: Tensor, k: int) -> Tensor:
    """``k`` random rows of ``x``, without repeats when there are enough."""
    n = x.shape[0]
    if n >= k:
        return x[torch.randperm(n, device=x.device)[:k]]
    return x[torch.randint(n, (k,), device=x.device)]


def _kmeans_pp_seeds(x: Tensor, k: int) -> Tensor:
    """``k`` rows of ``x`` drawn one by one with probability proportional to the squared distance
    to the nearest row drawn so far (k-means++): seeds spread over all clusters, where uniform
    picks often put two in one cluster and leave another without."""
    seeds = [x[torch.randint(x.shape[0], (1,), device=x.device)]]  # (1, D) each
    d2 = (x - seeds[0]).pow(2).sum(-1)  # (n,)
    for _ in range(k - 1):
        # the tiny floor keeps the weights valid when every row is already a seed
        seeds.append(x[torch.multinomial(d2 + 1e-12, 1)])
        d2 = torch.minimum(d2, (x - seeds[-1]).pow(2).sum(-1))
    return torch.cat(seeds)


def _kmeans(x: Tensor, k: int, *, iters: int, chunk_size: int, cosine: bool) -> Tensor:
    """``k`` centroids of the rows of ``x``: k-means++ seeds, then ``iters`` steps of Lloyd's
    algorithm; an empty cluster keeps its centroid."""
    codes = _kmeans_pp_seeds(x, k)
    for _ in range(iters):
        idx = _nearest(x, codes, chunk_size=chunk_size, cosine=cosine)
        counts = torch.bincount(idx, minlength=k).to(x.dtype)
        means = torch.zeros_like(codes).index_add_(0, idx, x) / counts.clamp(min=1)[:, None]
        if cosine:
            means = F.normalize(means, dim=-1)
        codes = torch.where(counts[:, None] > 0, means, codes)
    return codes


def _perplexity(counts: Tensor) -> Tensor:
    """``exp`` of the entropy of the histogram ``counts``: the effective number of codes used."""
    p = counts / counts.sum().clamp(min=1)
    return torch.exp(-torch.xlogy(p, p).sum())


@dataclass
class Quantized:
    """What :meth:`VectorQuantizer.forward` returns.

    Attributes:
        z_q: Quantized vectors shaped like the input; their gradient is passed to the input
            unchanged (straight-through).
        indices: Code index of each vector, ``(b, *spatial)``: ``(b, h, w)`` for ``(b, D, h, w)``.
        loss: Scalar to add to the reconstruction term: ``commitment + codebook``.
        commitment: ``beta * |z - sg(z_q)|^2``, detached, for logging.
        codebook: ``|sg(z) - z_q|^2`` when the codebook is learned by gradient, zero with EMA
            updates; detached, for logging.
        perplexity: ``exp`` of the entropy of this batch's code histogram (``K`` at most).
        usage: Fraction of the ``K`` codes used in this batch.
    """

    z_q: Tensor
    indices: Tensor
    loss: Tensor
    commitment: Tensor
    codebook: Tensor
    perplexity: Tensor
    usage: Tensor


class VectorQuantizer(nn.Module):
    r"""Nearest-code quantization of encoder outputs ``(b, D, *spatial)`` with a codebook of ``K``
    codes.

    The input is ``(b, D)``, ``(b, D, n)`` or ``(b, D, h, w)`` (any number of spatial dimensions):
    each ``D``-vector is quantized on its own. With ``ema=True`` the codebook follows the mean of
    the vectors assigned to each code, with Laplace-smoothed cluster sizes:

    .. math::
        N_i \leftarrow \gamma N_i + (1-\gamma) n_i, \quad
        m_i \leftarrow \gamma m_i + (1-\gamma) \sum_{z \mapsto i} z, \quad
        e_i = m_i \Big/ \frac{(N_i + \epsilon)\, N}{N + K\epsilon}, \quad N = \textstyle\sum_j N_j.

    These statistics are buffers (in ``state_dict``, out of reach of optimizers); under
    ``torch.distributed`` the counts and sums of all ranks are added before each update. All
    updates, initialization and restarts happen in training mode only.

    Args:
        num_codes: Codebook size ``K``.
        code_dim: Vector size ``D``, the input's channel dimension.
        beta: Weight of the commitment term.
        ema: Update the codebook by moving averages (else by gradient of the codebook term).
        decay: Moving-average decay :math:`\gamma`, in (0, 1).
        eps: Laplace smoothing :math:`\epsilon` of the cluster sizes, > 0.
        init: ``"kmeans"`` (k-means++ seeds and ``kmeans_iters`` Lloyd steps) or ``"random"``
            (random picks): the codebook's start from the first training batch's vectors.
        kmeans_iters: Lloyd iterations of the k-means start.
        restart_after: Move a code unused for this many training steps onto a random vector of
            the batch (its statistics reset to a cluster of that one vector); ``None`` or 0: never.
        cosine: Compare by cosine similarity: vectors and codes are L2-normalised, and ``z_q``
            and the losses use the normalised vectors.
        chunk_size: Rows per block of the distance computation (bounds its memory).

    Raises:
        ValueError: If an argument is out of range.

    Example:
        >>> import torch
        >>> vq = VectorQuantizer(16, 4, restart_after=100)
        >>> out = vq(torch.randn(2, 4, 3, 3))  # training mode: k-means start, EMA update
        >>> out.z_q.shape, out.indices.shape
        (torch.Size([2, 4, 3, 3]), torch.Size([2, 3, 3]))
        >>> out = vq.eval()(torch.randn(2, 4, 3, 3))
        >>> torch.allclose(vq.lookup(out.indices), out.z_q)
        True
    """

    def __init__(
        self,
        num_codes: int,
        code_dim: int,
        *,
        beta: float = 0.25,
        ema: bool = True,
        decay: float = 0.99,
        eps: float = 1e-5,
        init: str = "kmeans",
        kmeans_iters: int = 10,
        restart_after: int | None = None,
        cosine: bool = False,
        chunk_size: int = 8192,
    ) -> None:
        super().__init__()
        self.num_codes = check_int(num_codes, "num_codes")
        self.code_dim = check_int(code_dim, "code_dim")
        check_int(kmeans_iters, "kmeans_iters", minimum=0)
        check_int(chunk_size, "chunk_size")
        if restart_after is not None:
            check_int(restart_after, "restart_after", minimum=0)
        check_choice(init, _INITS, "init")
        _check_number(beta, "beta", ">= 0", lambda v: v >= 0)
        _check_number(decay, "decay", "in (0, 1)", lambda v: 0 < v < 1)
        _check_number(eps, "eps", "> 0", lambda v: v > 0)
        self.beta, self.ema, self.decay, self.eps = beta, bool(ema), decay, eps
        self.init, self.kmeans_iters, self.chunk_size = init, kmeans_iters, chunk_size
        self.restart_after, self.cosine = restart_after or 0, bool(cosine)
        codes = torch.randn(num_codes, code_dim)  # replaced by the first training batch
        if self.ema:
            self.register_buffer("codes", codes)
            self.register_buffer("cluster_size", torch.ones(num_codes))
            self.register_buffer("embed_sum", codes.clone())
        else:
            self.codes = nn.Parameter(codes)
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("unused_steps", torch.zeros(num_codes, dtype=torch.long))
        self.register_buffer(
            "usage_counts", torch.zeros(num_codes, dtype=torch.long), persistent=False
        )
        # A Python mirror of ``initialized``: reading the buffer each step would wait on the GPU.
        self._ready = False
        self.register_load_state_dict_post_hook(_sync_ready)
        self.config: dict[str, Any] = {
            "type": "VectorQuantizer",
            "num_codes": num_codes,
            "code_dim": code_dim,
            "beta": beta,
            "ema": self.ema,
            "decay": decay,
            "eps": eps,
            "init": init,
            "kmeans_iters": kmeans_iters,
            "restart_after": restart_after,
            "cosine": self.cosine,
            "chunk_size": chunk_size,
        }

    def _unit_codes(self) -> Tensor:
        return F.normalize(self.codes, dim=-1) if self.cosine else self.codes

    def forward(self, z: Tensor) -> Quantized:
        """Quantize ``z``; in training mode also initialize, update and restart the codebook.

        Args:
            z: Encoder outputs ``(b, D, *spatial)``.

        Returns:
            The :class:`Quantized` output.

        Raises:
            ValueError: If ``z`` is not ``(b, D, ...)`` with ``D == code_dim``.
        """
        if z.dim() < 2 or z.shape[1] != self.code_dim:
            raise ValueError(
                f"VectorQuantizer expects z of shape (b, {self.code_dim}, *spatial), "
                f"got {tuple(z.shape)}"
            )
        z_last = rearrange(z, "b d ... -> b ... d")
        if self.cosine:
            z_last = F.normalize(z_last, dim=-1)
        flat = z_last.reshape(-1, self.code_dim).detach().to(self.codes.dtype)  # (n, D)
        if self.training and not self._ready:
            self._initialize(flat)
        idx = _nearest(flat, self.codes.detach(), chunk_size=self.chunk_size, cosine=self.cosine)
        counts = torch.bincount(idx, minlength=self.num_codes)  # (K,)
        self.usage_counts += counts
        counts = counts.to(flat.dtype)
        if self.training:
            stats = counts[:, None].clone()  # (K, 1), or (K, 1 + D) with the sums for EMA
            if self.ema:
                sums = torch.zeros_like(self.codes).index_add_(0, idx, flat)
                stats = torch.cat([stats, sums], 1)
            # Totals of all ranks, so every rank applies the same update to the same codebook.
            stats = _all_reduce_sum(stats)
            self._restart(flat, stats[:, 0])  # before the lookup: a restarted code is unused here
        z_q = rearrange(self._unit_codes()[idx].view_as(z_last), "b ... d -> b d ...")
        z_in = rearrange(z_last, "b ... d -> b d ...")
        commitment = self.beta * reduce((z_in - z_q.detach()) ** 2, "b ... -> b", "sum").mean()
        codebook = torch.zeros_like(commitment)
        if not self.ema:
            codebook = reduce((z_in.detach() - z_q) ** 2, "b ... -> b", "sum").mean()
        if self.training and self.ema:
            self._ema_update(stats[:, 0], stats[:, 1:])
        return Quantized(
            z_q=z_in + (z_q - z_in).detach(),
            indices=idx.view(z_last.shape[:-1]),
            loss=commitment + codebook,
            commitment=commitment.detach(),
            codebook=codebook.detach(),
            perplexity=_perplexity(counts),
            usage=(counts > 0).float().mean(),
        )

    @torch.no_grad()
    def _initialize(self, flat: Tensor) -> None:
        if self.init == "kmeans":
            codes = _kmeans(
                flat,
                self.num_codes,
                iters=self.kmeans_iters,
                chunk_size=self.chunk_size,
                cosine=self.cosine,
            )
        else:
            codes = _sample_rows(flat, self.num_codes)
        self.codes.copy_(_broadcast(codes.contiguous()))
        if self.ema:
            self.cluster_size.fill_(1.0)
            self.embed_sum.copy_(self.codes)
        self.unused_steps.zero_()
        self.initialized.fill_(True)
        self._ready = True

    @torch.no_grad()
    def _restart(self, flat: Tensor, counts: Tensor) -> None:
        self.unused_steps.add_(1).masked_fill_(counts > 0, 0)
        if not self.restart_after:
            return
        # A candidate for every code, chosen with `where`: no host sync to count the dead ones.
        dead = (self.unused_steps >= self.restart_after)[:, None]  # (K, 1)
        new = _broadcast(_sample_rows(flat, self.num_codes).contiguous())
        self.codes.copy_(torch.where(dead, new, self.codes))
        if self.ema:
            self.cluster_size.masked_fill_(dead[:, 0], 1.0)
            self.embed_sum.copy_(torch.where(dead, new, self.embed_sum))
        self.unused_steps.masked_fill_(dead[:, 0], 0)

    @torch.no_grad()
    def _ema_update(self, counts: Tensor, sums: Tensor) -> None:
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.num_codes * self.eps) * n
        self.codes.copy_(self.embed_sum / smoothed[:, None])

    def lookup(self, indices: Tensor) -> Tensor:
        """The codes of ``indices``, channels first: turns tokens back into a decoder's input.

        Args:
            indices: Code indices ``(b, *spatial)``, e.g. :attr:`Quantized.indices`.

        Returns:
            ``(b, D, *spatial)``; equal to ``z_q`` of an eval-mode forward (in training mode the
            EMA update moves the codes after ``z_q`` is looked up).

        Raises:
            TypeError: If ``indices`` is not an integer tensor.
        """
        if indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise TypeError(f"indices must be an integer tensor, got dtype {indices.dtype}")
        return rearrange(self._unit_codes()[indices], "b ... d -> b d ...")

    def usage_fraction(self) -> float:
        """Fraction of codes used by any batch since the last :meth:`reset_usage` (train or
        eval mode; counted on this process only)."""
        return (self.usage_counts > 0).float().mean().item()

    def reset_usage(self) -> None:
        """Start counting code usage afresh (e.g. at the start of an epoch)."""
        self.usage_counts.zero_()

    def extra_repr(self) -> str:
        return f"num_codes={self.num_codes}, code_dim={self.code_dim}, ema={self.ema}"


def _sync_ready(module: VectorQuantizer, incompatible_keys: Any) -> None:
    """A loaded codebook counts as initialized (or not) as its saved flag says."""
    module._ready = bool(module.initialized)
