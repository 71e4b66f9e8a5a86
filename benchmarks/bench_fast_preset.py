"""What each change of the fast preset buys: the recommended VAE at one short schedule, varied.

Every row trains the fast preset (``fast_vae_recipe()``: batch 128, cosine-decayed Adam, KL
warm-up over 10% of the steps, bf16 where the CPU runs it natively) for ``--epochs``, with the
activation, learning rate and precision its row names, once per seed. Each model is scored by
the importance-sampled ``-log p(x)`` (``--k`` samples) of all 10,000 test images, binarized once
with seed 0. Each job runs in a one-thread worker process, ``--jobs`` at a time; CPU seconds are
the worker's.

Run::

    python benchmarks/bench_fast_preset.py --json benchmarks/results/fast_preset.json
    python benchmarks/bench_fast_preset.py --sweep-lr 1.5e-3 2e-3 3e-3 4e-3 --seeds 0
    python benchmarks/bench_fast_preset.py --quick   # 1 epoch, K=20, 500 images, one seed
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context

import torch
from harness import binarized_test_images, describe, machine, mnist_uint8, parser, table, write_json

from autoenc import fit, log_likelihood, native_bf16
from autoenc.recipes import fast_vae_recipe, recommended_vae

FAST_LR = fast_vae_recipe().lr
# name: (activation, learning rate, precision); None takes the fast preset's.
ROWS = {
    "recommended (ReLU, lr 1e-3)": ("relu", 1e-3, None),
    f"lr {FAST_LR:g}": ("relu", FAST_LR, None),
    "SiLU": ("silu", 1e-3, None),
    f"SiLU and lr {FAST_LR:g} (the fast preset)": ("silu", FAST_LR, None),
    "the fast preset in fp32": ("silu", FAST_LR, "fp32"),
}


def job(name: str, seed: int, opts: dict, row: tuple) -> dict:
    """Train one row from ``seed`` and score it; this worker's CPU seconds."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    activation, lr, precision = row
    model = recommended_vae(activation=activation)  # built first: the seed's initial weights
    recipe = replace(fast_vae_recipe(), model=model, lr=lr)
    recipe = replace(recipe, precision=precision or recipe.precision)
    train_x = mnist_uint8(opts["root"])[: opts["n_train"]]
    start = time.process_time()
    settings = recipe.fit_kwargs(len(train_x), epochs=opts["epochs"])
    fit(recipe.model, train_x, **settings, seed=seed, device="cpu", verbose=False)
    cpu = time.process_time() - start
    x = binarized_test_images(opts["root"], opts["n_test"])
    ll = log_likelihood(recipe.model, x, k=opts["k"], seed=0)
    return {"name": name, "seed": seed, "cpu_s": cpu, "nll": ll.nll, "stderr": ll.stderr}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument(
        "--epochs", type=int, default=None, help="epochs of every run (default: the fast preset's)"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds")
    p.add_argument("--k", type=int, default=200, help="importance samples per test image")
    p.add_argument("--jobs", type=int, default=2, help="worker processes at a time")
    p.add_argument(
        "--sweep-lr", type=float, nargs="+", default=[], help="also SiLU at these learning rates"
    )
    args = p.parse_args()
    ROWS.update({f"SiLU, lr {lr:g}": ("silu", lr, None) for lr in args.sweep_lr})
    info = machine() | {"torch_threads": 1, "native_bf16": native_bf16()}
    print(describe(info), f"native bf16: {info['native_bf16']}", sep="; ", flush=True)
    opts = {
        "root": args.data_root,
        "epochs": 1 if args.quick else args.epochs or fast_vae_recipe().epochs,
        "k": 20 if args.quick else args.k, "n_test": 500 if args.quick else None,
        "n_train": 6400 if args.quick else None,
    }  # fmt: skip
    seeds = args.seeds[:1] if args.quick else args.seeds
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        jobs = [pool.submit(job, name, seed, opts, ROWS[name]) for name in ROWS for seed in seeds]
        runs = [j.result() for j in jobs]
    rows = []
    for name in ROWS:
        mine = [r for r in runs if r["name"] == name]
        nlls = [r["nll"] for r in mine]
        rows.append([
            name, f"{statistics.mean(nlls):.2f}", " ".join(f"{v:.2f}" for v in nlls),
            f"{statistics.mean(r['cpu_s'] for r in mine):.0f}",
        ])  # fmt: skip
    print(f"\n{opts['epochs']} epochs, 1 thread each; test NLL from K = {opts['k']}, seeds {seeds}")
    print(table(["run", "NLL (mean)", "NLL per seed", "CPU-s"], rows))
    write_json(args.json, {"machine": info, **opts, "seeds": seeds, "runs": runs})


if __name__ == "__main__":
    main()
