"""The article's MLP autoencoder against a convolutional one with the same code width.

Both train as ``examples/mnist_ae.py`` does (``--preset article`` and ``--preset conv``): 20
code numbers, ``nn.MSELoss()``, batch 32, Adam 1e-3, the same epochs and seed, one thread. The
table shows the test reconstruction error per pixel (all 10,000 test images) and the CPU
seconds of training; ``--pictures`` writes both models' reconstructions of the same test
digits as one grid.

Run::

    python benchmarks/bench_conv_ae.py --json benchmarks/results/conv_ae.json \\
        --pictures docs/_static/figures/conv_ae_recon.png
    python benchmarks/bench_conv_ae.py --quick
"""

from __future__ import annotations

import time

import torch
from harness import mnist_uint8, parser, setup, table, write_json

from autoenc import evaluate, fit
from autoenc.recipes import article_autoencoder, conv_autoencoder

MODELS = {"article MLP": article_autoencoder, "conv": conv_autoencoder}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--pictures", default=None, help="write the reconstruction grid here")
    args = p.parse_args()
    args.threads = args.threads or 1
    info = setup(args)
    train_x, test_x = mnist_uint8(args.data_root), mnist_uint8(args.data_root, train=False)
    if args.quick:
        train_x, test_x, args.epochs = train_x[:2048], test_x[:1000], 1
    runs, models = [], {}
    for name, build in MODELS.items():
        torch.manual_seed(0)
        model = build()
        start = time.process_time()
        fit(model, train_x, epochs=args.epochs, batch_size=32, lr=1e-3, seed=0, verbose=False)
        cpu = time.process_time() - start
        mse = evaluate(model, test_x)["loss"]
        params = sum(p.numel() for p in model.parameters())
        runs.append({"model": name, "params": params, "cpu_s": cpu, "mse_per_pixel": mse})
        models[name] = model.eval()
        print(f"  {name}: test MSE per pixel {mse:.5f}, {cpu:.0f} CPU-s", flush=True)
    print(f"\n{args.epochs} epochs at batch 32, 20 code numbers, one thread")
    print(table(
        ["model", "parameters", "test MSE per pixel", "training CPU-s"],
        [[r["model"], f"{r['params']:,}", f"{r['mse_per_pixel']:.5f}", f"{r['cpu_s']:.0f}"]
         for r in runs],
    ))  # fmt: skip
    if args.pictures:
        from autoenc.pictures import image_grid, save_image

        x = test_x[:16].float() / 255
        with torch.no_grad():
            rows = [x] + [m.reconstruct(x) for m in models.values()]
        save_image(image_grid(torch.cat(rows), nrow=16), args.pictures)
        print(f"rows of {args.pictures}: inputs, " + ", ".join(models))
    write_json(args.json, {"machine": info, "epochs": args.epochs, "runs": runs})


if __name__ == "__main__":
    main()
