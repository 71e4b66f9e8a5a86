"""The article's VAE in nats: importance-sampled test NLL next to the recommended recipe's.

The article's VAE is trained on grey pixels with squared error, which is not a density, so its
loss cannot be compared with published numbers. Two honest readings of the same trained model:

* ``bernoulli``: its sigmoid outputs taken as Bernoulli probabilities on the binarized test set
  (one fixed binarization, seed 0) -- the quantity published MNIST NLLs measure, so it is
  comparable with the recipe's figure;
* ``gaussian``: a Gaussian with variance 1/2 on the grey test images, the density whose negative
  log is the article's squared error up to a constant (per image, in nats; a density, so it is
  comparable only with other grey-pixel Gaussian figures).

Run (models saved by the examples' ``--out`` folders)::

    python benchmarks/evaluate_article.py --article runs/vae/model.pt \
        --recipe runs/vae-recommended/model.pt --k 1000
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

from autoenc import Gaussian, Likelihood, load, log_likelihood
from autoenc.data import dynamic_binarize, mnist


class BernoulliProbs(Likelihood):
    """Bernoulli on probabilities (a decoder ending in a sigmoid), clamped away from 0 and 1."""

    name = "bernoulli_probs"
    needs_unit_interval = True

    def nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        p = params.clamp(1e-6, 1 - 1e-6)
        return F.binary_cross_entropy(p, x, reduction="none")

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--article", required=True, help="a saved article VAE (model.pt)")
    parser.add_argument("--recipe", default=None, help="a saved recommended VAE (model.pt)")
    parser.add_argument("--k", type=int, default=1000, help="importance samples")
    parser.add_argument("--n", type=int, default=10000, help="test images to use")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    test = mnist(args.data_root, train=False).images[: args.n]
    grey = test.float() / 255
    binary = dynamic_binarize(test, generator=torch.Generator().manual_seed(0))
    rows = []

    def measure(label: str, model, data, likelihood=None) -> None:
        start = time.perf_counter()
        ll = log_likelihood(model, data, k=args.k, seed=0, likelihood=likelihood)
        rows.append(
            {
                "model": label,
                "nll": ll.nll,
                "stderr": ll.stderr,
                "k": args.k,
                "n": len(ll.log_px),
                "seconds": time.perf_counter() - start,
            }
        )
        print(f"{label:<44} NLL {ll.nll:8.2f} ± {ll.stderr:.2f} nats  (K={args.k}, n={args.n})")

    article = load(args.article)
    measure("article VAE, Bernoulli on binarized test", article, binary, BernoulliProbs())
    measure("article VAE, Gaussian var 1/2 on grey test", article, grey, Gaussian(math.sqrt(0.5)))
    if args.recipe is not None:
        measure("recommended VAE, Bernoulli on binarized test", load(args.recipe), binary)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
