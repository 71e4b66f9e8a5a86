"""Train the library's recommended MNIST VAE recipe and measure its test log-likelihood.

    python examples/mnist_vae_recipe.py --iw-samples 1000    # 60 epochs, then the test NLL
    python examples/mnist_vae_recipe.py --preset fast --iw-samples 1000   # SiLU, 20 epochs, bf16
    python examples/mnist_vae_recipe.py --preset conv --iw-samples 1000   # a convolutional VAE
    python examples/mnist_vae_recipe.py --resume runs/vae_recipe/version_0/checkpoints/last.pt

autoenc.recipes.recommended_vae_recipe() holds the model and every training setting: a Bernoulli
VAE (784-512-512 encoder, 32 latents) on dynamically binarized digits, batch 128, Adam 1e-3
decayed to 0 by a cosine, a KL warm-up over the first 10% of the steps, 60 epochs (--epochs N
scales it all). --preset fast trains it with SiLU activations and learning rate 2.5e-3 for 20
epochs, in bf16 where the CPU runs it natively; --preset conv trains
autoenc.recipes.conv_vae_recipe(). Writes recon_epochNNN.png, samples_epochNNN.png, loss.png,
model.pt, metrics.json and checkpoints/last.pt (after every epoch, for --resume).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import _cli as cli  # options, data flags, run folders: what is not about autoenc
import torch

from autoenc import ImageSnapshots, ModelCheckpoint, evaluate, fit, log_likelihood, save
from autoenc.data import dynamic_binarize
from autoenc.pictures import plot_history
from autoenc.recipes import conv_vae_recipe, fast_vae_recipe, recommended_vae_recipe

PRESETS = {"recommended": recommended_vae_recipe, "fast": fast_vae_recipe, "conv": conv_vae_recipe}


def main() -> None:
    # The recipe's epochs as the default; the model that trains is built after seeding.
    p = cli.parser(__doc__, runs="runs/vae_recipe", epochs=None, every=10)
    p.add_argument(
        "--preset",
        choices=PRESETS,
        default="recommended",
        help="recommended: the MLP recipe; fast: it in less CPU time; conv: a convolutional VAE "
        "(autoenc.recipes.<preset>_vae_recipe)",
    )
    p.add_argument(
        "--eval-precision",
        choices=("fp32", "bf16", "auto"),
        default="auto",
        help="precision of the decoder passes of the test NLL (auto: bf16 where native)",
    )
    p.add_argument(
        "--iw-samples",
        type=int,
        default=0,
        metavar="K",
        help="importance samples per test image for the test NLL; 0 skips it "
        "(published figures use K=1000 or more)",
    )
    p.add_argument(
        "--resume",
        default=None,
        metavar="CKPT",
        help="continue the run that wrote this checkpoint, in its folder unless --out is given "
        "(default: a new run)",
    )
    args = cli.parse(p)
    resumed = Path(args.resume).parent.parent if args.resume else None  # .../checkpoints/last.pt
    out = cli.run_folder(args.out or resumed, "runs/vae_recipe", keep=resumed is not None)

    # Model and training settings: the same initial weights for the same --seed.
    torch.manual_seed(args.seed)
    recipe = PRESETS[args.preset]()
    args.epochs = args.epochs or recipe.epochs
    if cli.is_main_process():
        print(recipe.model)

    # Data: uint8 training images, binarized afresh in every batch by recipe.transform; the test
    # set binarized once, so that every evaluation sees the same digits.
    train_x, test_x = cli.load_mnist(args, batch_size=recipe.batch_size)
    test_bin = dynamic_binarize(test_x, generator=torch.Generator().manual_seed(args.seed))
    snapshots = ImageSnapshots(out, test_bin[:32], every_n_epochs=args.every)
    # fit's settings from the recipe (batch size, learning rate and its schedule, KL warm-up,
    # binarizing transform, precision), scaled to this run's epochs.
    settings = recipe.fit_kwargs(
        len(train_x),
        epochs=args.epochs,
        # after the recipe's KL warm-up: pictures, and last.pt after every epoch (no best.pt:
        # "best" would be chosen on the test set)
        callbacks=[
            snapshots,
            ModelCheckpoint(out / "checkpoints", save_best=False),
            cli.SlowEpochHint(),
        ],
    )
    if cli.is_main_process():
        steps = recipe.total_steps(len(train_x), epochs=args.epochs)
        print(f"{recipe}\nthis run: {args.epochs} epochs, {steps} steps (all scaled to them)")

    cpu_start = time.process_time()
    result = fit(
        recipe.model,
        train_x,
        val_data=test_bin,  # already binary: the transform leaves it as it is
        **settings,
        seed=args.seed,
        device=args.device,
        resume=args.resume,
    )
    train_cpu_s = time.process_time() - cpu_start  # all threads, the per-epoch test loss too
    if not result.state.is_main_process:
        return  # under torchrun only rank 0 evaluates and writes files

    # Evaluation in nats per image: the loss with one z per image and, with --iw-samples K, the
    # importance-sampled negative log-likelihood (the published measure; tighter as K grows).
    model, k = recipe.model, args.iw_samples
    terms = evaluate(model, test_bin, seed=args.seed)
    metrics = {
        "test/neg_elbo_nats": (terms["loss"], "-ELBO, one z per image: the loss (val/loss)"),
        "test/kl_nats": (terms["kl"], "its KL(q(z|x) || N(0, I)) term"),
    }
    if k > 0:
        # A conv decoder holds far more activations per sample than an MLP: fewer samples per
        # decoder pass keep them in the CPU's cache (the estimate does not depend on it).
        chunk = 2 if args.preset == "conv" else None
        ll = log_likelihood(
            model, test_bin, k=k, seed=args.seed, progress=True, precision=args.eval_precision,
            chunk_size=chunk,
        )  # fmt: skip
        metrics[f"test/nll_nats_k{k}"] = (ll.nll, f"-log p(x) from {k} importance samples")
        metrics[f"test/nll_stderr_k{k}"] = (ll.stderr, "its standard error over the images")
    print(f"training: {train_cpu_s:.0f} CPU-s (all threads, the per-epoch test loss included)")
    print(f"test set, {len(test_bin)} binarized images, nats per image:")
    for key, (value, meaning) in metrics.items():
        print(f"  {key:<24} {value:<9.4g} {meaning}")

    # Pictures: label the rows of the grids ImageSnapshots wrote.
    for path in snapshots.written:
        if path.name.startswith("recon_epoch"):
            cli.label_rows(path, ["input", "mean"])

    save(model.cpu(), out / "model.pt")
    values = {key: value for key, (value, _) in metrics.items()}
    (out / "metrics.json").write_text(
        json.dumps({"test": values, "train_cpu_seconds": train_cpu_s, "history": result.history})
    )
    try:
        plot_history(result.history).savefig(out / "loss.png", dpi=100)
    except ImportError as err:  # matplotlib comes with the [plot] extra
        print(f"no loss.png: {err}")
    cli.print_files(out)


if __name__ == "__main__":
    main()
