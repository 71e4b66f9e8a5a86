"""Train a VQ-VAE on MNIST, then look at its codebook, its reconstructions and prior samples.

    python examples/mnist_vqvae.py --epochs 3                    # full MNIST, ~1.5 CPU-min/epoch
    python examples/mnist_vqvae.py --epochs 1 --max-batches 20   # a smoke run

Reports the test MSE per pixel of the reconstructions, the fraction of codes the test images
use, and how well the simple prior (an independent categorical per grid position, fitted on
the training tokens) predicts the test tokens, in bits per token against a uniform prior's
log2(K). Writes to a new folder runs/vqvae/version_N (or --out): recon_epochNNN.png (test
images over their reconstructions), codebook_usage.png (test tokens per code; needs
matplotlib), prior_samples.png, history.csv, metrics.json and model.pt.
"""

from __future__ import annotations

import json
import math

import _cli as cli  # options, data flags, run folders: what is not about autoenc
import torch

from autoenc import VQVAE, ConvDecoder, ConvEncoder, CSVLogger, VectorQuantizer, fit, save
from autoenc.pictures import ImageSnapshots, prior_grid, save_image

p = cli.parser(__doc__, runs="runs/vqvae", epochs=3)
p.add_argument("--batch-size", type=int, default=128, help="examples per training step")
p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
p.add_argument("--codes", type=int, default=512, help="codebook size K")
p.add_argument("--code-dim", type=int, default=16, help="size D of each code")
p.add_argument(
    "--restart-after", type=int, default=5, help="move codes unused for this many steps (0: never)"
)
args = cli.parse(p)
out = cli.run_folder(args.out, "runs/vqvae")

# --- data: uint8 images (n, 1, 28, 28); fit and the model's methods scale them to [0, 1]
train_x, test_x = cli.load_mnist(args, batch_size=args.batch_size)

# --- model: a 7x7 grid of D-dim vectors, each replaced by the nearest of K codes
torch.manual_seed(args.seed)
model = VQVAE(
    ConvEncoder((1, 28, 28), [32, 64], out_channels=args.code_dim),
    VectorQuantizer(args.codes, args.code_dim, restart_after=args.restart_after),
    ConvDecoder(None, [64, 32], (1, 28, 28), in_channels=args.code_dim),
    likelihood="bernoulli",  # on grey levels: the decoder emits logits
)
print(model)

# --- training: the progress bar and history.csv show the codebook's perplexity and usage
callbacks = [
    CSVLogger(out),
    ImageSnapshots(out, test_x[:32], every_n_epochs=args.every),  # samples once it has a prior
    cli.SlowEpochHint(),
]
fit(
    model,
    train_x,
    epochs=args.epochs,
    batch_size=args.batch_size,
    lr=args.lr,
    device=args.device,
    seed=args.seed,
    callbacks=callbacks,
)

# --- evaluation
model.eval()
device = next(model.parameters()).device
with torch.no_grad():
    squared = [
        (model.reconstruct(x) - x).pow(2).sum().item()
        for x in (b.to(device).float() / 255 for b in test_x.split(1000))
    ]
mse = sum(squared) / test_x.numel()
model.fit_prior(train_x)  # the prior: per-position code frequencies of the training tokens
code_hist = model.token_counts(test_x).sum((0, 1)).cpu()  # (K,) test tokens per code
metrics = {
    "test_mse_per_pixel": mse,
    "test_codes_used": (code_hist > 0).float().mean().item(),
    "prior_bits_per_test_token": model.prior_bits_per_token(test_x),
    "uniform_bits_per_token": math.log2(args.codes),
}
print(json.dumps(metrics, indent=2))
(out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

# --- pictures: the codebook's usage, and samples from the per-position prior
try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print('matplotlib is not installed: no codebook_usage.png (pip install ".[plot]")')
else:
    fig, ax = plt.subplots(figsize=(8, 3))
    order = code_hist.sort(descending=True).values
    ax.bar(range(args.codes), order.numpy(), width=1.0)
    ax.set(xlabel="code (most used first)", ylabel="test tokens", yscale="log")
    ax.set_title(f"{metrics['test_codes_used']:.0%} of {args.codes} codes used on the test set")
    fig.tight_layout()
    fig.savefig(out / "codebook_usage.png", dpi=100)
save_image(prior_grid(model, 64, seed=args.seed), out / "prior_samples.png")
save(model, out / "model.pt")
cli.print_files(out)
