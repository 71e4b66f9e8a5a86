"""Time to quality: the recommended recipe against the fast preset, in one run.

Three comparisons, each side by side in this run, as ratios:

* **Training.** ``recommended_vae_recipe()`` as it ran before ``fit`` flushed denormal floats
  (60 epochs, fp32, ``flush_denormals=False``) against ``fast_vae_recipe()`` (SiLU, learning
  rate 2.5e-3, 20 epochs, bf16 where the CPU runs it natively, denormals flushed).
  ``--ablation`` adds the steps between: the recipe with flushing, then the fast preset in
  fp32 (``bench_fast_preset.py`` splits the fast preset's own changes). Each model is scored
  by the importance-sampled ``-log p(x)`` (``--k`` samples, default 1000) of all 10,000 test
  images, binarized once with seed 0.
* **Evaluation.** The recipe's model and the fast preset's, each scored by ``log_likelihood`` of
  an earlier revision (``--eval-base``, its fp32 defaults) and of this tree (its defaults), on
  the same images and noise, each in a fresh process as an evaluation script runs (an
  evaluation in the process that trained may find memory the training left): the CPU-time
  ratios and the paired NLL differences. Beside them, this CPU's bf16 and fp32 matmul speeds:
  where bf16 products are not much faster than fp32 ones, they bound the evaluation's gain.
* **Batch 32, the article's setting.** One epoch of ``fit`` on the article's VAE against the
  article's loop (``article.py``), interleaved, ``--repeats`` times: the medians of examples
  per CPU second, and the fp32 matmul speed measured just before and after them, which shows
  how much of the core the host left to this job (the ratio falls on a busy host).

Every job runs in a fresh worker process with one thread, ``--jobs`` at a time; the figures
are the worker's CPU seconds (``time.process_time``), which depend little on other jobs on the
machine.

Run::

    python benchmarks/bench_time_to_quality.py --ablation \
        --json benchmarks/results/time_to_quality.json
    python benchmarks/bench_time_to_quality.py --quick   # minutes: 2 epochs, K=20, 500 images
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

import torch
from harness import (
    HERE,
    binarized_test_images,
    describe,
    machine,
    matmul_peak,
    median,
    mnist,
    mnist_uint8,
    parser,
    revision_src,
    table,
    write_json,
)

from autoenc import fit, log_likelihood, native_bf16, save
from autoenc.recipes import fast_vae_recipe, recommended_vae_recipe

RECIPES = {"recipe": recommended_vae_recipe, "fast": fast_vae_recipe}

# Each row: (name, recipe, changes to it, flush denormals). Cumulative: each adds one change.
TRAININGS = [
    ("recipe, as before", "recipe", {}, False),
    ("+ flushed denormals", "recipe", {}, True),
    ("+ SiLU, lr 2.5e-3, 20 epochs (fast, fp32)", "fast", {"precision": "fp32"}, True),
    ("+ bf16 where native (fast)", "fast", {}, True),
]

EVAL_CHILD = """
import json, sys, time, torch
torch.set_num_threads(1)
from autoenc import load, log_likelihood
path, data, k, out = sys.argv[1:5]
model, x = load(path), torch.load(data)
start = time.process_time()
ll = log_likelihood(model, x, k=int(k), seed=0)
cpu = time.process_time() - start
torch.save(ll.log_px, out)
print(json.dumps({"cpu_s": cpu, "nll": ll.nll, "stderr": ll.stderr}))
"""


def train_job(name: str, recipe: str, changes: dict, flush: bool, opts: dict) -> dict:
    """Train one recipe from seed 0, score it, save it; CPU seconds of this worker."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    r = replace(RECIPES[recipe](), **changes)
    epochs = opts["epochs"] or r.epochs
    train_x = mnist_uint8(opts["root"])
    settings = r.fit_kwargs(len(train_x), epochs=epochs)
    start, wall = time.process_time(), time.perf_counter()
    fit(r.model, train_x, **settings, flush_denormals=flush, seed=0, device="cpu", verbose=False)
    train_cpu, train_wall = time.process_time() - start, time.perf_counter() - wall
    x = binarized_test_images(opts["root"], opts["n_test"])
    start = time.process_time()
    ll = log_likelihood(r.model, x, k=opts["k"], seed=0)
    eval_cpu = time.process_time() - start
    path = Path(opts["tmp"]) / f"{recipe}-{len(changes)}-{flush}.pt"
    save(r.model, path)
    precision = "bf16" if r.precision == "auto" and native_bf16() else r.precision
    return {
        "name": name, "epochs": epochs, "precision": precision, "flush_denormals": flush,
        "train_cpu_s": train_cpu, "train_wall_s": train_wall, "nll": ll.nll,
        "stderr": ll.stderr, "eval_cpu_s": eval_cpu, "path": str(path),
    }  # fmt: skip


def eval_job(revision: str | None, model_path: str, opts: dict) -> dict:
    """Score ``model_path`` with the ``log_likelihood`` of ``revision`` (``None``: this tree) in
    a fresh subprocess, as an evaluation script would run it."""
    tmp = Path(opts["tmp"])
    data = tmp / "test.pt"  # written by main() before the evaluations start
    name = revision or "this tree"
    out_path = tmp / f"{Path(model_path).stem}-{revision or 'tree'}.logpx"
    with contextlib.ExitStack() as stack:
        src = (
            HERE.parent / "src" if revision is None else stack.enter_context(revision_src(revision))
        )
        env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
        out = subprocess.run(
            [sys.executable, "-c", EVAL_CHILD, model_path, str(data), str(opts["k"]),
             str(out_path)],
            env=env, capture_output=True, text=True, check=True, cwd=tmp,
        )  # fmt: skip
    return {
        "revision": name,
        "logpx": str(out_path),
        **json.loads(out.stdout.strip().splitlines()[-1]),
    }


def compared(base: dict, tree: dict) -> dict:
    """The two evaluators' records of one model, their time ratio and the paired difference of
    their estimates (its mean and standard error); the ``log p(x)`` files are read here."""
    diff = torch.load(tree.pop("logpx")) - torch.load(base.pop("logpx"))  # this tree - base
    return {
        "base": base, "tree": tree, "ratio": base["cpu_s"] / tree["cpu_s"],
        "nll_diff": (-diff.mean().item(), diff.std().item() / math.sqrt(len(diff))),
    }  # fmt: skip


def batch32_job(opts: dict) -> dict:
    """One epoch of the article's loop and of ``fit`` at batch 32, interleaved."""
    torch.set_num_threads(1)
    from bench_fit import run_article, run_fit  # the same contenders as bench_fit.py

    dataset = mnist(opts["root"], train=True)
    images = dataset.data.unsqueeze(1)
    if opts["quick"]:
        images = images[:6400]
    limit = None if not opts["quick"] else 200
    rates: dict[str, list[float]] = {"article": [], "fit": []}
    matmul = [matmul_peak()["cpu"]]
    for repeat in range(opts["repeats"]):
        order = ["article", "fit"] if repeat % 2 == 0 else ["fit", "article"]
        for name in order:
            start = time.process_time()
            seen = run_article(dataset, 32, limit) if name == "article" else run_fit(images, 32)
            rates[name].append(seen / (time.process_time() - start))
    matmul.append(matmul_peak()["cpu"])
    return {name: median(values) for name, values in rates.items()} | {
        "all": rates, "matmul_fp32_gflops": matmul,
    }  # fmt: skip


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=2, help="worker processes at a time")
    p.add_argument("--k", type=int, default=1000, help="importance samples per test image")
    p.add_argument("--ablation", action="store_true", help="also train the rows between")
    p.add_argument("--eval-base", default="becfb4b", help="revision whose evaluator to compare")
    p.add_argument("--repeats", type=int, default=5, help="epochs of each batch-32 contender")
    args = p.parse_args()
    info = machine()
    info["torch_threads"] = 1
    info["native_bf16"] = native_bf16()
    torch.set_num_threads(1)
    info["matmul_gflops"] = {
        name: matmul_peak(dtype=dtype)["cpu"]
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }
    print(describe(info), f"native bf16: {info['native_bf16']}", sep="; ", flush=True)
    trainings = TRAININGS if args.ablation else [TRAININGS[0], TRAININGS[-1]]
    with tempfile.TemporaryDirectory() as tmp:
        opts = {
            "root": args.data_root, "tmp": tmp, "k": 20 if args.quick else args.k,
            "n_test": 500 if args.quick else None, "epochs": 2 if args.quick else None,
            "quick": args.quick, "repeats": 1 if args.quick else args.repeats,
        }  # fmt: skip
        # a fresh process for every job: none inherits memory or settings from another
        with ProcessPoolExecutor(
            args.jobs, mp_context=get_context("spawn"), max_tasks_per_child=1
        ) as pool:
            jobs = [pool.submit(train_job, *row, opts) for row in trainings]
            batch32 = pool.submit(batch32_job, opts)
            runs = [job.result() for job in jobs]
            torch.save(binarized_test_images(opts["root"], opts["n_test"]), Path(tmp) / "test.pt")
            # each model by both evaluators, in turn first (the machine's speed drifts)
            order = {"recipe": (args.eval_base, None), "fast": (None, args.eval_base)}
            scoring = {
                (model, rev): pool.submit(eval_job, rev, run["path"], opts)
                for model, run in (("recipe", runs[0]), ("fast", runs[-1]))
                for rev in order[model]
            }
            evals = {
                model: compared(
                    scoring[model, args.eval_base].result(), scoring[model, None].result()
                )
                for model in order
            }
            batch32 = batch32.result()

    recipe, fast = runs[0], runs[-1]
    rows = [
        [r["name"], r["epochs"], r["precision"], r["flush_denormals"], f"{r['train_cpu_s']:.0f}",
         f"{r['train_cpu_s'] / recipe['train_cpu_s']:.3f}", f"{r['nll']:.2f} ± {r['stderr']:.2f}"]
        for r in runs
    ]  # fmt: skip
    print(f"\ntraining, 1 thread each; test NLL from K = {opts['k']} importance samples")
    print(table(["run", "epochs", "precision", "flush", "CPU-s", "x recipe", "NLL (nats)"], rows))
    print(f"fast preset / recipe CPU time: {fast['train_cpu_s'] / recipe['train_cpu_s']:.3f}")
    print(f"\nlog_likelihood, K = {opts['k']}, same images and noise, each in a fresh process")
    print(table(
        ["model", f"{args.eval_base} CPU-s", "this tree CPU-s", "time ratio",
         "NLL difference (this tree - base)"],
        [[model, f"{e['base']['cpu_s']:.1f}", f"{e['tree']['cpu_s']:.1f}", f"{e['ratio']:.2f}x",
          f"{e['nll_diff'][0]:+.4f} ± {e['nll_diff'][1]:.4f} (paired stderr)"]
         for model, e in evals.items()],
    ))  # fmt: skip
    peak = info["matmul_gflops"]
    print(f"matmul 2048^2, one thread, GFLOP/s per CPU second: fp32 {peak['fp32']:.0f}, bf16 "
          f"{peak['bf16']:.0f} ({peak['bf16'] / peak['fp32']:.2f}x)")  # fmt: skip
    ratio = batch32["fit"] / batch32["article"]
    each = batch32["all"]
    repeats = ", ".join(f"{f / a:.2f}" for f, a in zip(each["fit"], each["article"], strict=True))
    before, after = batch32["matmul_fp32_gflops"]
    print(f"\nbatch 32, article VAE, examples per CPU second: fit {batch32['fit']:.0f}, article "
          f"loop {batch32['article']:.0f}, ratio {ratio:.2f}x (repeats {repeats}; fp32 matmul "
          f"just before and after, GFLOP/s: {before:.0f}, {after:.0f})")  # fmt: skip
    # the temporary files are gone with the run: the record keeps the figures
    runs = [{key: v for key, v in r.items() if key != "path"} for r in runs]
    write_json(args.json, {
        "machine": info, "k": opts["k"], "runs": runs, "eval": evals,
        "batch32": batch32, "batch32_ratio": ratio,
        "time_ratio": fast["train_cpu_s"] / recipe["train_cpu_s"],
    })  # fmt: skip


if __name__ == "__main__":
    main()
