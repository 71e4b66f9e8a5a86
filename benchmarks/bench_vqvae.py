"""A VQ-VAE on MNIST: autoenc's ``VQVAE`` against pythae's ``VQVAE``, and the codebook ablation.

Every contender trains the same convolutional network, from the same initial weights, with the
same codebook (512 codes of 16 dims on a 7x7 grid), batch 128, Adam 1e-3, for the same epochs
on the same images (floats in [0, 1]), with a squared-error reconstruction term:

* encoder ``ConvEncoder((1, 28, 28), [32, 64], out_channels=16)``: two stride-2 3x3
  convolutions with ReLUs and a 1x1 convolution to the 16-dim grid;
* decoder ``ConvDecoder(None, [64, 32], (1, 28, 28), in_channels=16)``: a 3x3 convolution,
  two stride-2 transposed convolutions and a last 3x3 convolution, whose output is the
  reconstruction itself (a final sigmoid under this summed squared error saturates at 0 early
  in training, for both libraries, and the decoder then stops learning).

Contenders (pythae's wrap the very same autoenc modules in its ``BaseEncoder``/``BaseDecoder``):

* ``pythae``: pythae 0.1.2's ``VQVAE`` trained by its ``BaseTrainer`` (codebook by gradient,
  ``use_ema=False``, its default), and ``pythae EMA`` (``use_ema=True``);
* ``autoenc EMA+restart``: ``autoenc.VQVAE`` trained by ``autoenc.fit``, with EMA codebook
  updates and restarts of codes unused for 5 steps (and the k-means start every row has);
* ``autoenc EMA`` and ``autoenc plain`` (codebook by gradient): the ablation.

Reported: the test MSE per pixel of the reconstructions, the CPU seconds per epoch
(``time.process_time`` of the whole training call, set-up included, over the epochs), and on the
test set the fraction of the 512 codes used and the perplexity of the code histogram. The
losses differ in one convention: pythae averages its commitment and codebook terms over the
grid's elements where autoenc sums them, as it sums the reconstruction term.

pythae is optional (``pip install pythae==0.1.2``; to keep another environment's packages as
they are: ``pip install --target DIR --no-deps pythae==0.1.2 pydantic pydantic_core
annotated-types typing-inspection imageio cloudpickle scikit-learn joblib threadpoolctl
narwhals`` and ``PYTHONPATH=DIR``); without it, its rows are skipped.

Run::

    python benchmarks/bench_vqvae.py --json benchmarks/results/vqvae.json   # ~15 CPU-min
    python benchmarks/bench_vqvae.py --quick                                # ~1 CPU-min
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import math
import tempfile
import time

import torch
from harness import mnist_uint8, parser, quiet_pythae, setup, table, write_json
from torch import nn

from autoenc import VQVAE, ConvDecoder, ConvEncoder, VectorQuantizer, fit

CODES, CODE_DIM, BATCH, LR = 512, 16, 128, 1e-3
RESTART_AFTER = 5


def networks() -> tuple[nn.Module, nn.Module]:
    encoder = ConvEncoder((1, 28, 28), [32, 64], out_channels=CODE_DIM)
    decoder = ConvDecoder(None, [64, 32], (1, 28, 28), in_channels=CODE_DIM)
    return encoder, decoder


def codebook_stats(tokens: torch.Tensor) -> tuple[float, float]:
    """Fraction of the codes used and the perplexity of the tokens' histogram."""
    counts = torch.bincount(tokens.flatten(), minlength=CODES).double()
    p = counts / counts.sum()
    return (counts > 0).double().mean().item(), math.exp(-torch.xlogy(p, p).sum().item())


# ---------------------------------------------------------------------------------------------
# the contenders: each trains from the given networks and returns (x_hat, tokens) on the test set


def run_autoenc(
    nets: tuple[nn.Module, nn.Module], x: torch.Tensor, test: torch.Tensor, epochs: int, **vq
) -> tuple[torch.Tensor, torch.Tensor]:
    model = VQVAE(nets[0], VectorQuantizer(CODES, CODE_DIM, **vq), nets[1], likelihood="mse")
    fit(model, x, epochs=epochs, batch_size=BATCH, lr=LR, device="cpu", seed=0, verbose=False)
    x_hat = torch.cat([model.reconstruct(b) for b in test.split(1000)])
    tokens = torch.cat([model.encode_indices(b) for b in test.split(1000)])
    return x_hat, tokens


def run_pythae(
    nets: tuple[nn.Module, nn.Module], x: torch.Tensor, test: torch.Tensor, epochs: int, *,
    use_ema: bool,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    from pythae.data.datasets import BaseDataset
    from pythae.models import VQVAE as PythaeVQVAE
    from pythae.models import VQVAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.trainers import BaseTrainer, BaseTrainerConfig

    class Encoder(BaseEncoder):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> ModelOutput:
            return ModelOutput(embedding=self.net(x))

    class Decoder(BaseDecoder):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, z: torch.Tensor) -> ModelOutput:
            return ModelOutput(reconstruction=self.net(z))

    config = VQVAEConfig(
        input_dim=(1, 28, 28), latent_dim=CODE_DIM, num_embeddings=CODES, use_ema=use_ema
    )
    model = PythaeVQVAE(config, encoder=Encoder(nets[0]), decoder=Decoder(nets[1]))
    with (
        tempfile.TemporaryDirectory() as out,
        contextlib.redirect_stderr(io.StringIO()),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        trainer_config = BaseTrainerConfig(
            output_dir=out,
            num_epochs=epochs,
            learning_rate=LR,
            per_device_train_batch_size=BATCH,
            steps_saving=None,
            no_cuda=True,
            keep_best_on_train=True,  # without validation data pythae needs it to save
        )
        data = BaseDataset(x, torch.zeros(x.shape[0]))
        BaseTrainer(model=model, train_dataset=data, training_config=trainer_config).train()
    model.eval()
    x_hat, tokens = [], []
    with torch.no_grad():
        for b in test.split(1000):
            out = model({"data": b})
            x_hat.append(out.recon_x)
            tokens.append(out.quantized_indices)
    return torch.cat(x_hat), torch.cat(tokens)


# ---------------------------------------------------------------------------------------------


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.set_defaults(threads=1)
    p.add_argument("--epochs", type=int, default=3, help="epochs per contender")
    p.add_argument("--train-size", type=int, default=20_000, help="first N training images")
    p.add_argument("--test-size", type=int, default=10_000, help="first N test images")
    p.add_argument("--no-pythae", action="store_true", help="leave pythae out")
    args = p.parse_args()
    if args.quick:
        args.epochs, args.train_size, args.test_size = 1, 2_000, 1_000
    info = setup(args)
    x = mnist_uint8(args.data_root)[: args.train_size].float() / 255
    test = mnist_uint8(args.data_root, train=False)[: args.test_size].float() / 255
    print(f"{len(x)} training images, {len(test)} test images, {args.epochs} epochs", flush=True)

    has_pythae = importlib.util.find_spec("pythae") is not None and not args.no_pythae
    if not has_pythae:
        print("pythae is not installed (or --no-pythae): its rows are skipped")
    else:
        quiet_pythae()

    contenders = {
        "autoenc EMA+restart": lambda n: run_autoenc(*n, restart_after=RESTART_AFTER),
        "autoenc EMA": lambda n: run_autoenc(*n),
        "autoenc plain": lambda n: run_autoenc(*n, ema=False),
    }
    if has_pythae:
        contenders["pythae"] = lambda n: run_pythae(*n, use_ema=False)
        contenders["pythae EMA"] = lambda n: run_pythae(*n, use_ema=True)
    torch.manual_seed(0)
    initial = networks()
    runs, rows = [], []
    for name, run in contenders.items():
        torch.manual_seed(0)
        nets = copy.deepcopy(initial)
        start = time.process_time()
        x_hat, tokens = run((nets, x, test, args.epochs))
        seconds = time.process_time() - start
        mse = (x_hat - test).pow(2).mean().item()
        used, perplexity = codebook_stats(tokens)
        runs.append(
            {
                "contender": name,
                "test_mse_per_pixel": mse,
                "cpu_seconds_per_epoch": seconds / args.epochs,
                "codes_used": used,
                "perplexity": perplexity,
            }
        )
        rows.append([name, f"{mse:.5f}", f"{seconds / args.epochs:.1f}", f"{used:.1%}",
                     f"{perplexity:.1f}"])  # fmt: skip
        print(f"{name}: done in {seconds:.0f} CPU s", flush=True)
    header = ["contender", "test MSE/pixel", "CPU s/epoch", "codes used", "perplexity"]
    print()
    print(table(header, rows))
    settings = {
        "epochs": args.epochs,
        "train_size": len(x),
        "test_size": len(test),
        "codes": CODES,
        "code_dim": CODE_DIM,
        "batch_size": BATCH,
        "lr": LR,
        "restart_after": RESTART_AFTER,
    }
    write_json(args.json, {"machine": info, "settings": settings, "runs": runs})


if __name__ == "__main__":
    main()
