"""Training throughput of a convolutional Bernoulli VAE: ``autoenc.fit`` against a plain loop.

Both contenders train the same network: the conv recipe's (``autoenc.recipes.conv_vae()``,
``--networks recipe``) or ``GaussianVAE(ConvEncoder((1, 28, 28), channels, 2 * latent),
ConvDecoder(latent, channels[::-1], (1, 28, 28)), latent)`` with the Bernoulli likelihood, in
the same precision (``--precision``, by default bf16 where the CPU runs it natively, as the
recipe trains; the loop then runs its forward pass under ``torch.autocast``), from the same
initial weights, on the same in-memory float tensor of binarized
MNIST images (or random binary images of that shape with ``--data random``), batch 128, Adam
1e-3 (fused where torch has the kernel, as ``fit``'s default):

* ``fit``: :func:`autoenc.fit` for one epoch, set-up and its first-batch checks included.
* ``loop``: what one writes by hand: a ``randperm`` per epoch, slices of the tensor, the
  negative ELBO written out (``binary_cross_entropy_with_logits`` summed, plus the Gaussian KL,
  both over the batch size), ``zero_grad`` / ``backward`` / ``step``.

The contenders run interleaved in this process (the order rotates between repeats) and the
table shows medians of the CPU time of the process (``time.process_time``), which on a shared
machine depends little on the other jobs, and of the wall time. ``--threads 1`` is the
recorded setting.

``kernel share`` is the part of the CPU time spent in the kernel. With glibc's default malloc
it is large: the big activation buffers of a conv step go back to the kernel every step and
their pages fault in, zeroed, again on the next. ``fit`` raises malloc's thresholds at its
first call (the guide's *Training* page), which keeps that memory in the process for the rest
of it, so both contenders run with it after the first ``fit``; set any of glibc's
``MALLOC_*_`` variables (e.g. ``MALLOC_CHECK_=0``) to measure glibc's own behaviour instead.

Run::

    python benchmarks/bench_conv.py --threads 1 --json benchmarks/results/conv.json
    python benchmarks/bench_conv.py --threads 1 --quick          # about a minute
"""

from __future__ import annotations

import copy
import os
import time

import torch
import torch.nn.functional as F
from harness import median, parser, setup, table, write_json

from autoenc import GaussianVAE, fit, native_bf16
from autoenc.data import mnist_or_sample
from autoenc.networks.conv import ConvDecoder, ConvEncoder
from autoenc.recipes import conv_vae as recipe_vae

BATCH = 128
LR = 1e-3
MNIST_TRAIN = 60_000


def conv_vae(spec: str) -> GaussianVAE:
    """``"recipe"``: the conv recipe's network; ``"32,64:16"``: encoder channels and latent
    width, the decoder mirrored."""
    if spec == "recipe":
        return recipe_vae()
    channels, latent = parse_network(spec)
    return GaussianVAE(
        ConvEncoder((1, 28, 28), channels, 2 * latent),
        ConvDecoder(latent, channels[::-1], (1, 28, 28)),
        latent,
        likelihood="bernoulli",
    )


def adam(model: torch.nn.Module) -> torch.optim.Optimizer:
    try:
        return torch.optim.Adam(model.parameters(), lr=LR, fused=True)
    except (RuntimeError, TypeError):  # a torch without the fused CPU kernel
        return torch.optim.Adam(model.parameters(), lr=LR)


def parse_network(spec: str) -> tuple[list[int], int]:
    """``"32,64:16"`` -> ``([32, 64], 16)``: the encoder's channels and the latent width."""
    channels, latent = spec.split(":")
    return [int(c) for c in channels.split(",")], int(latent)


# ---------------------------------------------------------------------------------------------
# the contenders: each trains one epoch from the given initial weights


def run_fit(model: GaussianVAE, x: torch.Tensor, seed: int, precision: str) -> None:
    fit(
        model, x, epochs=1, batch_size=BATCH, device="cpu", seed=seed, verbose=False,
        precision=precision,
    )  # fmt: skip


def run_loop(model: GaussianVAE, x: torch.Tensor, seed: int, precision: str) -> None:
    g = torch.Generator().manual_seed(seed)
    optimizer = adam(model)
    model.train()
    bf16 = precision == "bf16"
    for idx in torch.randperm(x.shape[0], generator=g).split(BATCH):
        xb = x[idx]  # (b, 1, 28, 28)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            mu, logvar = model.encoder(xb).float().chunk(2, dim=1)  # (b, latent) each
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            logits = model.decoder(z).float()  # (b, 1, 28, 28)
        recon = F.binary_cross_entropy_with_logits(logits, xb, reduction="sum")
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum()
        loss = (recon + kl) / xb.shape[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


CONTENDERS = {"fit": run_fit, "loop": run_loop}


def measure(
    name: str, initial: GaussianVAE, x: torch.Tensor, seed: int, precision: str
) -> list[float]:
    """Wall, CPU and kernel (system) seconds of one epoch of ``name``."""
    model = copy.deepcopy(initial)
    start, start_cpu, start_sys = time.perf_counter(), time.process_time(), os.times().system
    CONTENDERS[name](model, x, seed, precision)
    cpu = time.process_time() - start_cpu
    return [time.perf_counter() - start, cpu, os.times().system - start_sys]


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument(
        "--networks",
        nargs="+",
        default=["recipe", "32,64:16"],
        help="recipe (autoenc.recipes.conv_vae()) or CHANNELS:LATENT, e.g. 32,64:16 (encoder "
        "channels; decoder mirrored)",
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "auto"],
        default="auto",
        help="both contenders' precision (auto: bf16 where native, as the conv recipe)",
    )
    p.add_argument("--data", choices=["mnist", "random"], default="mnist")
    p.add_argument("--examples", type=int, default=MNIST_TRAIN, help="examples per epoch")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.quick:
        args.examples, args.repeats = 1280, 2
    info = setup(args)
    precision = args.precision
    if precision == "auto":
        precision = "bf16" if native_bf16() else "fp32"
    info["precision"] = precision

    if args.data == "mnist":
        ((images, _), _), is_sample = mnist_or_sample(
            args.data_root, download=False, hint="--data-root DIR"
        )
        x = (images[: args.examples] > 127).float()  # (n, 1, 28, 28), binarized
        data = "MNIST sample" if is_sample else "MNIST"
    else:
        gen = torch.Generator().manual_seed(0)
        x = torch.randint(0, 2, (args.examples, 1, 28, 28), generator=gen).float()
        data = "random binary"
    print(
        f"{x.shape[0]} {data} images per epoch, batch {BATCH}, {args.repeats} repeats, {precision}"
    )

    rows, results = [], []
    for spec in args.networks:
        torch.manual_seed(0)
        initial = conv_vae(spec)
        n_params = sum(p.numel() for p in initial.parameters())
        times: dict[str, list[list[float]]] = {name: [] for name in CONTENDERS}
        names = list(CONTENDERS)
        for name in names:  # warm-up: oneDNN builds its kernels on the first calls
            measure(name, initial, x[: 2 * BATCH], 0, precision)
        for r in range(args.repeats):
            for name in names[r % 2 :] + names[: r % 2]:  # rotate the order
                times[name].append(measure(name, initial, x, r, precision))
        per_cpu = {n: x.shape[0] / median([c for _, c, _ in t]) for n, t in times.items()}
        per_wall = {n: x.shape[0] / median([w for w, _, _ in t]) for n, t in times.items()}
        kernel = median([k / c for t in times.values() for _, c, k in t])
        epoch_cpu = {n: MNIST_TRAIN / v for n, v in per_cpu.items()}
        rows.append(
            [
                spec,
                f"{n_params:,}",
                f"{per_cpu['fit']:,.0f}",
                f"{per_cpu['loop']:,.0f}",
                f"{per_cpu['fit'] / per_cpu['loop']:.2f}x",
                f"{per_wall['fit']:,.0f}",
                f"{per_wall['loop']:,.0f}",
                f"{epoch_cpu['fit']:,.0f} s",
                f"{kernel:.0%}",
            ]
        )
        results.append(
            {
                "network": spec,
                "parameters": n_params,
                "wall_cpu_kernel_s": times,
                "samples_per_cpu_s": per_cpu,
                "samples_per_wall_s": per_wall,
                "cpu_s_per_mnist_epoch": epoch_cpu,
            }
        )
        print(
            f"{spec}: {per_cpu['fit']:,.0f} (fit) and {per_cpu['loop']:,.0f} (loop) samples/CPU s"
        )

    print()
    print(table(HEADER, rows))
    write_json(
        args.json,
        {
            "machine": info,
            "data": data,
            "examples": x.shape[0],
            "batch_size": BATCH,
            "repeats": args.repeats,
            "results": results,
        },
    )


HEADER = [
    "network",
    "params",
    "fit /cpu s",
    "loop /cpu s",
    "fit/loop",
    "fit /wall s",
    "loop /wall s",
    "fit CPU s per 60k epoch",
    "kernel share",
]

if __name__ == "__main__":
    main()
