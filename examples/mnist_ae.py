"""Train the article's MNIST autoencoder and draw its reconstructions.

    python examples/mnist_ae.py                  # 10 epochs, files in runs/ae/version_N
    python examples/mnist_ae.py --preset conv    # the same with convolutional networks

The article's autoencoder: a 784-256-64-20 encoder and a 20-64-256-784 decoder, ReLU after
every layer but the decoder's last (a sigmoid), nn.MSELoss(), batch 32, Adam 1e-3. With
--preset conv, two stride-2 convolutions (32 and 64 channels) and a linear head to the same
20 numbers, mirrored by the decoder (autoenc.recipes.conv_autoencoder).
Writes recon_epochNNN.png (inputs over reconstructions), loss.png, model.pt and metrics.json.
"""

from __future__ import annotations

import json

import _cli as cli  # options, data flags, run folders: what is not about autoenc
import torch

from autoenc import ImageSnapshots, evaluate, fit, save
from autoenc.pictures import plot_history
from autoenc.recipes import article_autoencoder, conv_autoencoder

BATCH_SIZE, LR = 32, 1e-3  # the article's
PRESETS = {"article": article_autoencoder, "conv": conv_autoencoder}


def main() -> None:
    p = cli.parser(__doc__, runs="runs/ae", epochs=10)
    p.add_argument("--preset", choices=PRESETS, default="article", help="the networks to train")
    args = cli.parse(p)
    out = cli.run_folder(args.out, "runs/ae")

    # Data: uint8 images (fit scales them to [0, 1]); 32 fixed test digits for the pictures.
    train_x, test_x = cli.load_mnist(args, batch_size=BATCH_SIZE)
    x_show = test_x[:32].float() / 255

    # Model: the same initial weights for the same --seed.
    torch.manual_seed(args.seed)
    model = PRESETS[args.preset]()
    if cli.is_main_process():
        print(model)

    # Callbacks: each row of 8 test digits over its reconstructions, every --every epochs.
    snapshots = ImageSnapshots(out, x_show, every_n_epochs=args.every)

    result = fit(
        model,
        train_x,
        val_data=test_x,
        epochs=args.epochs,
        batch_size=BATCH_SIZE,
        lr=LR,
        callbacks=[snapshots, cli.SlowEpochHint()],
        seed=args.seed,
        device=args.device,
    )
    if not result.state.is_main_process:
        return  # under torchrun only rank 0 evaluates and writes files

    # Evaluation: the article's loss on the test set, the mean squared error per pixel.
    model = model.cpu()
    mse = evaluate(model, test_x)["loss"]
    print(f"test set, {len(test_x)} images: test/mse_per_pixel {mse:.4g} (the article's loss)")

    # Pictures: label the rows of the grids ImageSnapshots wrote.
    for path in snapshots.written:
        cli.label_rows(path, ["input", "recon"])

    save(model, out / "model.pt")
    metrics = {"test/mse_per_pixel": mse}
    (out / "metrics.json").write_text(json.dumps({"test": metrics, "history": result.history}))
    try:
        plot_history(result.history).savefig(out / "loss.png", dpi=100)
    except ImportError as err:  # matplotlib comes with the [plot] extra
        print(f"no loss.png: {err}")
    cli.print_files(out)


if __name__ == "__main__":
    main()
