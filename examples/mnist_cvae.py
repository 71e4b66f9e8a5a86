"""Train a conditional VAE on MNIST and draw any digit on demand ("draw me a 7").

    python examples/mnist_cvae.py                     # 20 epochs, writes class_grid.png
    python examples/mnist_cvae.py --iw-samples 1000   # also the test NLL -log p(x | y)

A Bernoulli ConditionalVAE on dynamically binarized MNIST with the widths of the library's
recommended VAE (784-512-512, 32 latents, mirrored decoder), each network 10 inputs wider for
the one-hot class, and a learned prior p(z | c); trained like the recipe: batch 128, Adam 1e-3
decayed to 0 by a per-step cosine, a KL warm-up over the first 10% of the steps. The labels go
to the model because the data is an (images, labels) pair and the model is conditional.

Writes ``classes_epochNNN.png`` (one row per digit, every --every epochs), ``class_grid.png``,
``model.pt`` and ``metrics.json`` to a new folder runs/cvae/version_N (or ``--out``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import _cli as cli  # options, data flags, run folders: what is not about autoenc
import torch

from autoenc import ConditionalVAE, Decoder, Encoder, KLWarmup, evaluate, fit, log_likelihood, save
from autoenc.data import dynamic_binarize
from autoenc.pictures import class_grid, save_image
from autoenc.training import Callback

BATCH_SIZE, LR = 128, 1e-3  # the recommended recipe's
LATENT, HIDDEN, IMAGE = 32, [512, 512], (1, 28, 28)


class ClassGrids(Callback):
    """Saves a class grid (one row per digit, fixed noise) every ``every`` epochs."""

    def __init__(self, out: Path, every: int) -> None:
        self.out, self.every = out, every

    def on_epoch_end(self, state) -> None:
        n = state.epoch + 1
        if state.is_main_process and (n % self.every == 0 or n == state.epochs):
            save_image(class_grid(state.model), self.out / f"classes_epoch{n:03d}.png")


def main() -> None:
    p = cli.parser(__doc__, runs="runs/cvae", epochs=20, every=5)
    p.add_argument("--iw-samples", type=int, default=0, help="K for the test NLL (0: skip)")
    args = cli.parse(p)
    out = cli.run_folder(args.out, "runs/cvae")
    batch_size, lr = BATCH_SIZE, LR

    # data: uint8 images and their labels; the test set binarized once, as published NLLs are
    train, test = cli.load_mnist_with_labels(args, batch_size=batch_size)
    x, y = train.images, train.labels
    test_x = dynamic_binarize(test.images, generator=torch.Generator().manual_seed(args.seed))

    # model: the condition is concatenated to the flat image and to z, hence the "+ 10"; the
    # learned prior p(z | c) keeps the samples of a class where that class's codes lie
    torch.manual_seed(args.seed)
    model = ConditionalVAE(
        Encoder(784 + 10, HIDDEN, 2 * LATENT),
        Decoder(LATENT + 10, HIDDEN[::-1], IMAGE),
        LATENT,
        num_classes=10,
        prior="learned",
    )

    # callbacks: KL warm-up over the first 10% of the steps, class grids as training goes
    steps = args.epochs * math.ceil(len(x) / batch_size)
    callbacks = [
        KLWarmup(steps=max(1, steps // 10)),
        ClassGrids(out, args.every),
        cli.SlowEpochHint(),
    ]

    result = fit(
        model,
        (x, y),  # (images, labels): the labels reach model.loss(x, y)
        val_data=(test_x, test.labels),
        epochs=args.epochs,
        batch_size=batch_size,
        lr=lr,
        scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps),
        scheduler_interval="step",
        callbacks=callbacks,
        transform=dynamic_binarize,  # every training batch binarized afresh
        seed=args.seed,
        device=args.device,
    )

    # evaluation: the negative ELBO and, with --iw-samples, -log p(x | y) by importance sampling
    metrics = {"test/neg_elbo_nats": evaluate(model, (test_x, test.labels), seed=args.seed)["loss"]}
    if args.iw_samples > 0:
        ll = log_likelihood(model, (test_x, test.labels), k=args.iw_samples, seed=args.seed)
        metrics[f"test/nll_nats_k{args.iw_samples}"] = ll.nll
        metrics[f"test/nll_stderr_k{args.iw_samples}"] = ll.stderr
    for key, value in metrics.items():
        print(f"{key}: {value:.4g}")

    # pictures: "draw me a 7" is model.sample(8, c=7); the grid asks for every digit
    save_image(class_grid(model, classes=range(10), n_per_class=8), out / "class_grid.png")
    save(model.cpu(), out / "model.pt")
    (out / "metrics.json").write_text(
        json.dumps({"test": metrics, "history": result.history}, indent=1)
    )
    cli.print_files(out)


if __name__ == "__main__":
    main()
