"""Train the article's MNIST VAE and draw what it learned.

    python examples/mnist_vae.py                 # 10 epochs, files in runs/vae/version_N
    python examples/mnist_vae.py --visdom        # also post the pictures to Visdom, as the article

The article's VAE: a 784-256-64-20 encoder whose ReLU outputs are split into mu and sigma, a
10-64-256-784 sigmoid decoder, nn.MSELoss() + KL / (b * 784), batch 32, Adam 1e-3.
Writes recon_epochNNN.png (inputs over decoded posterior means), samples_epochNNN.png,
reconstructions.png (inputs, posterior means and draws), loss.png, model.pt and metrics.json.
"""

from __future__ import annotations

import json

import _cli as cli  # options, data flags, run folders: what is not about autoenc
import torch
from einops import rearrange

from autoenc import ImageSnapshots, VisdomDashboard, evaluate, fit, save
from autoenc.pictures import image_grid, plot_history, save_image
from autoenc.recipes import article_vae

BATCH_SIZE, LR = 32, 1e-3  # the article's


def main() -> None:
    p = cli.parser(__doc__, runs="runs/vae", epochs=10)
    p.add_argument("--visdom", action="store_true", help="also post x, x_hat and samples to Visdom")
    p.add_argument("--visdom-server", default="http://localhost", help="the Visdom server")
    p.add_argument("--visdom-port", type=int, default=8097, help="its port")
    p.add_argument("--visdom-env", default="main", help="the Visdom environment to post to")
    args = cli.parse(p)
    out = cli.run_folder(args.out, "runs/vae")

    # Data: uint8 images (fit scales them to [0, 1]); 32 fixed test digits for the pictures.
    train_x, test_x = cli.load_mnist(args, batch_size=BATCH_SIZE)
    x_show = test_x[:32].float() / 255

    # Model: the same initial weights for the same --seed.
    torch.manual_seed(args.seed)
    model = article_vae()
    if cli.is_main_process():
        print(model)

    # Callbacks: PNG grids every --every epochs, the article's Visdom windows with --visdom.
    snapshots = ImageSnapshots(out, x_show, every_n_epochs=args.every)
    callbacks = [snapshots, cli.SlowEpochHint()]
    if args.visdom:
        server, port, env = args.visdom_server, args.visdom_port, args.visdom_env
        callbacks.append(
            VisdomDashboard(x_show, server=server, port=port, env=env, every_n_epochs=args.every)
        )

    result = fit(
        model,
        train_x,
        val_data=test_x,
        epochs=args.epochs,
        batch_size=BATCH_SIZE,
        lr=LR,
        callbacks=callbacks,
        seed=args.seed,
        device=args.device,
    )
    if not result.state.is_main_process:
        return  # under torchrun only rank 0 evaluates and writes files

    # Evaluation on the test set: the article's loss and its terms (one sampled z per image),
    # and the error of the decoded posterior mean, which is what recon_epochNNN.png shows.
    model = model.cpu().eval()
    x = test_x.float() / 255
    terms = evaluate(model, x, seed=args.seed)
    metrics = {
        "test/loss_article": (terms["loss"], "the article's loss: sampled MSE + KL / 784"),
        "test/mse_per_pixel_sampled": (terms["recon"], "decoder(mu + sigma * eps) vs input"),
        "test/mse_per_pixel_posterior_mean": (
            (model.reconstruct(x) - x).pow(2).mean().item(),
            "decoder(mu) vs input",
        ),
        "test/kl_nats_per_image": (terms["kl"] * 784, "KL(q(z|x) || N(0, I)), summed over z"),
    }
    print(f"test set, {len(x)} images (val/... above: the same set after each epoch):")
    for key, (value, meaning) in metrics.items():
        print(f"  {key:<34} {value:<9.4g} {meaning}")

    # Pictures: each row of 8 test digits over its decoded posterior mean and a decoded draw.
    eps = torch.randn(32, model.latent_dim, generator=torch.Generator().manual_seed(args.seed))
    with torch.no_grad():
        rows = [x_show, model.reconstruct(x_show), model(x_show, eps=eps).x_hat]
    grid = image_grid(rearrange(rows, "k (r n) c h w -> (r k n) c h w", n=8), nrow=8)
    cli.label_rows(save_image(grid, out / "reconstructions.png"), ["input", "mean", "sampled"])
    for path in snapshots.written:
        if path.name.startswith("recon_epoch"):
            cli.label_rows(path, ["input", "mean"])

    save(model, out / "model.pt")
    values = {key: value for key, (value, _) in metrics.items()}
    (out / "metrics.json").write_text(json.dumps({"test": values, "history": result.history}))
    try:
        plot_history(result.history).savefig(out / "loss.png", dpi=100)
    except ImportError as err:  # matplotlib comes with the [plot] extra
        print(f"no loss.png: {err}")
    cli.print_files(out)


if __name__ == "__main__":
    main()
