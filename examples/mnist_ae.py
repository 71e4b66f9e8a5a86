"""Train the article's MNIST autoencoder: 784-256-64-20 MLP, MSE, batch 32, Adam 1e-3.

    python examples/mnist_ae.py --epochs 10 --out runs/ae

Writes ``recon_epochNNN.png`` (test images over their reconstructions, the article's Visdom
windows ``x`` and ``x_hat``), ``loss.png``, ``model.pt`` and ``metrics.json`` to ``--out``.
"""

from __future__ import annotations

import torch
from mnist_common import finish, is_main_process, limit, load_data, parser, train

from autoenc.recipes import article_autoencoder


def main() -> None:
    args = parser(__doc__.splitlines()[0], out="runs/ae").parse_args()
    batch_size, lr = args.batch_size or 32, args.lr or 1e-3
    train_x, test_x = load_data(args)
    torch.manual_seed(args.seed)  # the initial weights follow --seed too
    model = article_autoencoder()
    if is_main_process():
        print(model)
    result = train(
        model, limit(train_x, args, batch_size), test_x, args, batch_size=batch_size, lr=lr
    )
    finish(model, result, test_x, args)


if __name__ == "__main__":
    main()
