"""Evaluation throughput: the importance-sampled NLL, vectorized against a per-example loop.

:func:`autoenc.evaluation.log_likelihood` encodes a batch at once and decodes ``k`` samples of
many examples in one pass (about 8192 rows). The baseline is what one writes first (and what
pythae's ``get_nll`` does): a loop over the examples, each one's ``k`` samples decoded in one
pass. Both use the article's VAE with a Bernoulli decoder on binarized MNIST test images; the
two estimates agree within their Monte-Carlo error (printed).

Run::

    python benchmarks/bench_eval.py --threads 1 --json benchmarks/results/eval.json
    python benchmarks/bench_eval.py --quick
"""

from __future__ import annotations

import math
import time

import torch
from harness import library_vae, median, mnist, parser, setup, table, write_json

from autoenc.evaluation import log_likelihood
from autoenc.functional import bernoulli_nll, gaussian_log_prob


@torch.no_grad()
def naive_log_likelihood(model, x: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """``log p(x)`` one example at a time, its ``k`` samples decoded in one pass."""
    g = torch.Generator().manual_seed(seed)
    model.eval()
    out = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1]  # (1, 1, 28, 28)
        h = model.encoder(xi)
        mu, sigma = h.chunk(2, dim=1)  # (1, latent) each
        logvar = torch.log(1e-8 + sigma.pow(2))
        eps = torch.randn(k, mu.shape[1], generator=g)  # (k, latent)
        z = mu + torch.exp(0.5 * logvar) * eps
        logits = model.decoder(z).reshape(k, -1)  # (k, 784)
        log_px_z = -bernoulli_nll(logits, xi.reshape(1, -1).expand(k, -1)).sum(dim=1)
        log_pz = gaussian_log_prob(z).sum(dim=1)
        log_qz = (gaussian_log_prob(eps) - 0.5 * logvar).sum(dim=1)
        out.append(torch.logsumexp(log_px_z + log_pz - log_qz, dim=0) - math.log(k))
    return torch.stack(out)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=500)
    p.add_argument("--k", default="10,1000", help="importance samples per example, a list")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.quick:
        args.examples, args.k = 100, "10,300"
    info = setup(args)

    x = (mnist(args.data_root, train=False).data[: args.examples].unsqueeze(1) > 127).float()
    torch.manual_seed(0)
    model = library_vae(likelihood="bernoulli")
    model.eval()
    methods = {
        "vectorized": lambda k, seed: log_likelihood(model, x, k=k, seed=seed).log_px,
        "per-example loop": lambda k, seed: naive_log_likelihood(model, x, k, seed=seed),
    }

    rows, summary, timings = [], [], []
    for k in (int(v) for v in args.k.split(",")):
        seconds: dict[str, list[float]] = {name: [] for name in methods}
        nll: dict[str, float] = {}
        for r in range(args.repeats):
            for name in list(methods)[:: 1 if r % 2 == 0 else -1]:
                start = time.perf_counter()
                log_px = methods[name](k, r)
                seconds[name].append(time.perf_counter() - start)
                nll[name] = float(-log_px.mean())
                print(f"  k={k} repeat {r} {name:>17}: {seconds[name][-1]:6.2f} s", flush=True)
        base = median(seconds["per-example loop"])
        for name, ts in seconds.items():
            t = median(ts)
            entry = {
                "k": k,
                "method": name,
                "seconds": t,
                "examples_per_s": args.examples / t,
                "speedup": base / t,
                "nll": nll[name],
            }
            summary.append(entry)
            timings.append({"k": k, "method": name, "seconds": ts})
            rows.append(
                [
                    k,
                    name,
                    f"{t:.2f}",
                    f"{args.examples / t:,.0f}",
                    f"{base / t:.1f}x",
                    f"{nll[name]:.2f}",
                ]
            )
    print()
    print(table(["k", "method", "seconds", "examples/s", "speed-up", "NLL (nats)"], rows))
    print(
        f"({args.examples} binarized test images, median of {args.repeats}; an untrained "
        "model, so the NLL is only a cross-check of the two estimators)"
    )
    write_json(
        args.json,
        {"machine": info, "examples": args.examples, "timings": timings, "summary": summary},
    )


if __name__ == "__main__":
    main()
