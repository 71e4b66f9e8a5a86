"""Does a ConditionalVAE draw the class it is asked for, and does the class lower the NLL?

Measured side by side in one run, on real MNIST, with ``torch.set_num_threads(1)``:

1. A small CNN classifier is trained here on the grayscale training images and its test
   accuracy reported. It then classifies 1000 class-conditional samples per class, drawn from
   the model's prior (``--prior``: the learned ``p(z | c)`` by default, or ``N(0, I)``); the
   decoded means (Bernoulli probabilities) and one Bernoulli draw of each are scored. The
   figure is the share that carries the class asked for.
2. The conditional test NLL ``-log p(x | y)`` against the unconditional recipe's
   ``-log p(x)``: importance sampling with K = 1000 on all 10,000 test images, binarized once
   with ``--seed``. Both models have the recipe's widths (784-512-512, 32 latents, mirrored
   decoder; the conditional one 10 inputs wider at the encoder and at the decoder, for the
   one-hot class) and the recipe's training budget: batch 128, Adam 1e-3 decayed to 0 by a
   per-step cosine, a KL warm-up over the first 10% of the steps, dynamic binarization,
   ``--epochs`` epochs (the recipe's 60 by default).

CPU seconds of every phase are printed. ``--grid PATH`` saves the conditional model's class
grid: the model and its training are those of ``examples/mnist_cvae.py`` with the same
``--epochs`` and ``--seed``, so it is the picture the example writes. Run::

    python benchmarks/bench_cvae.py --epochs 20 --json benchmarks/results/cvae.json \
        --grid docs/_static/figures/class_grid.png
    python benchmarks/bench_cvae.py --epochs 20 --prior standard \
        --json benchmarks/results/cvae_standard_prior.json
    python benchmarks/bench_cvae.py --quick   # seconds: a smoke run on a few batches
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from harness import mnist, parser, setup, table, write_json
from torch import nn
from torch.nn import functional as F

from autoenc import ConditionalVAE, Decoder, Encoder, KLWarmup, fit, log_likelihood, save
from autoenc.data import dynamic_binarize
from autoenc.pictures import class_grid, save_image
from autoenc.recipes import MNIST_SHAPE, recommended_vae

RECIPE_BATCH_SIZE, RECIPE_LR, RECIPE_WARMUP, LATENT, HIDDEN = 128, 1e-3, 0.1, 32, [512, 512]


class Clock:
    """CPU seconds per named phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, fn, *args, **kwargs):
        start = time.process_time()
        out = fn(*args, **kwargs)
        self.seconds[name] = time.process_time() - start
        print(f"{name}: {self.seconds[name]:.1f} CPU s", flush=True)
        return out


def classifier() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (16, 13, 13)
        nn.Conv2d(16, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (32, 5, 5)
        nn.Flatten(),
        nn.Linear(32 * 5 * 5, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def train_classifier(x: torch.Tensor, y: torch.Tensor, epochs: int) -> nn.Module:
    torch.manual_seed(0)
    net = classifier()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(64):
            opt.zero_grad()
            F.cross_entropy(net(x[idx].float() / 255), y[idx]).backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def predict(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([net(b.reshape(-1, *MNIST_SHAPE)).argmax(1) for b in x.split(1000)])


def train_vae(model, data, n: int, epochs: int, seed: int):
    """The recommended recipe's training on ``n`` examples: batch 128, cosine-decayed Adam,
    KL warm-up."""
    steps = epochs * math.ceil(n / RECIPE_BATCH_SIZE)
    fit(
        model,
        data,
        epochs=epochs,
        batch_size=RECIPE_BATCH_SIZE,
        lr=RECIPE_LR,
        scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps),
        scheduler_interval="step",
        callbacks=[KLWarmup(steps=round(RECIPE_WARMUP * steps))],
        transform=dynamic_binarize,
        seed=seed,
        device="cpu",
        verbose=False,
    )
    return model


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.set_defaults(threads=1)
    p.add_argument("--epochs", type=int, default=60, help="training epochs of both VAEs")
    p.add_argument("--k", type=int, default=1000, help="importance samples for the NLL")
    p.add_argument("--per-class", type=int, default=1000, help="samples per class to classify")
    p.add_argument("--classifier-epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prior", choices=("standard", "learned"), default="learned")
    p.add_argument("--grid", default=None, help="save the ConditionalVAE's class grid here")
    p.add_argument("--models", default=None, help="save both trained models in this folder")
    args = p.parse_args()
    info = setup(args)
    train, test = mnist(args.data_root), mnist(args.data_root, train=False)
    x, y = train.data.unsqueeze(1), train.targets  # uint8 (n, 1, 28, 28), int64 (n,)
    x_test, y_test = test.data.unsqueeze(1), test.targets
    if args.quick:  # a smoke run: every phase on a few batches
        x, y, x_test, y_test = x[:1024], y[:1024], x_test[:200], y_test[:200]
        args.epochs, args.k, args.per_class, args.classifier_epochs = 1, 10, 20, 1
    clock = Clock()

    # 1. a classifier of our own, then the classes of class-conditional samples
    net = clock("classifier training", train_classifier, x, y, args.classifier_epochs)
    accuracy = (predict(net, x_test.float() / 255) == y_test).float().mean().item()
    torch.manual_seed(args.seed)
    cvae = ConditionalVAE(
        Encoder(784 + 10, HIDDEN, 2 * LATENT),
        Decoder(LATENT + 10, HIDDEN[::-1], MNIST_SHAPE),
        LATENT,
        num_classes=10,
        prior=args.prior,
    )
    clock("ConditionalVAE training", train_vae, cvae, (x, y), len(x), args.epochs, args.seed)
    torch.manual_seed(args.seed)
    vae = recommended_vae(LATENT, HIDDEN)
    clock("GaussianVAE training", train_vae, vae, x, len(x), args.epochs, args.seed)
    if args.grid:
        save_image(class_grid(cvae), args.grid)
    if args.models:
        save(cvae, Path(args.models) / "cvae.pt")
        save(vae, Path(args.models) / "vae.pt")
    asked = torch.arange(10).repeat_interleave(args.per_class)
    means = cvae.sample(len(asked), c=asked, generator=torch.Generator().manual_seed(args.seed))
    draws = torch.bernoulli(means, generator=torch.Generator().manual_seed(args.seed))
    carry = {
        "means": (predict(net, means) == asked).float().mean().item(),
        "bernoulli": (predict(net, draws) == asked).float().mean().item(),
    }

    # 2. -log p(x | y) against -log p(x) on the same fixed binarization
    test_bin = dynamic_binarize(x_test, generator=torch.Generator().manual_seed(args.seed))
    kw = dict(k=args.k, seed=args.seed)
    nll_c = clock("NLL ConditionalVAE", log_likelihood, cvae, (test_bin, y_test), **kw)
    nll_u = clock("NLL GaussianVAE", log_likelihood, vae, test_bin, **kw)
    gain = (nll_c.log_px - nll_u.log_px).double()  # paired: the same images
    gain_stderr = gain.std().item() / math.sqrt(len(gain))

    print()
    print(f"classifier test accuracy: {accuracy:.2%} ({args.classifier_epochs} epochs)")
    print(
        table(
            ["samples", "carry the class asked for"],
            [[f"{args.per_class}/class, {kind}", f"{v:.2%}"] for kind, v in carry.items()],
        )
    )
    rows = [
        [
            f"ConditionalVAE ({args.prior} prior)",
            "-log p(x | y)",
            f"{nll_c.nll:.2f} ± {nll_c.stderr:.2f}",
        ],
        ["GaussianVAE (recipe)", "-log p(x)", f"{nll_u.nll:.2f} ± {nll_u.stderr:.2f}"],
    ]
    print(table(["model", f"test NLL, K={args.k}, {args.epochs} epochs", "nats"], rows))
    print(f"the class lowers the NLL by {gain.mean():.2f} ± {gain_stderr:.2f} nats (paired)")
    print(f"CPU seconds in all: {sum(clock.seconds.values()):.0f}")
    write_json(
        args.json,
        {
            "machine": info,
            # what was run, without the paths of this machine's files
            "args": {
                k: v
                for k, v in vars(args).items()
                if k not in ("json", "data_root", "grid", "models")
            },
            "classifier_test_accuracy": accuracy,
            "samples_carry_the_class": carry,
            "nll_conditional": nll_c.nll,
            "nll_conditional_stderr": nll_c.stderr,
            "nll_unconditional": nll_u.nll,
            "nll_unconditional_stderr": nll_u.stderr,
            "nll_gain_paired": gain.mean().item(),
            "nll_gain_paired_stderr": gain_stderr,
            "cpu_seconds": clock.seconds,
        },
    )


if __name__ == "__main__":
    main()
