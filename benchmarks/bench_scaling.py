"""How cost grows: training throughput against batch size, evaluation time against K.

* **Batch size.** The article's VAE trained on the first ``--examples`` MNIST images at batch
  sizes 32 ... 1024 by the three contenders of ``bench_fit.py`` (the article's loop,
  :func:`autoenc.fit`, pythae's trainer when installed), interleaved, ``--repeats`` times:
  examples per CPU second, medians.
* **Importance samples.** :func:`autoenc.log_likelihood` of the recommended VAE on
  ``--nll-examples`` test images for K = 10 ... 5000, in fp32 and with its default precision
  (bf16 where native): CPU seconds (of the call), and the peak resident memory of the process
  during the call, sampled every millisecond, against what it held before (each K runs in a
  fresh process, Linux only).

Writes ``scaling_fit.png`` and ``scaling_nll.png`` to ``--plots`` (the docs' benchmarks page
shows them). One thread unless ``--threads`` says otherwise.

Run::

    python benchmarks/bench_scaling.py --plots docs/_static/benchmarks \\
        --json benchmarks/results/scaling.json
    python benchmarks/bench_scaling.py --quick --plots /tmp/plots
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from bench_fit import run_article, run_fit, run_pythae
from harness import median, mnist, parser, quiet_pythae, setup, table, write_json

NLL_CHILD = """
import json, os, sys, threading, time, torch
torch.set_num_threads(1)
from autoenc import log_likelihood
from autoenc.recipes import recommended_vae
k, n, precision = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
model = recommended_vae()
x = (torch.rand(n, 1, 28, 28) > 0.8).float()
page = os.sysconf("SC_PAGE_SIZE") / 2**20
def rss():  # the resident set now, MiB
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
before, peak, done = rss(), [0.0], threading.Event()
def watch():  # the resident set every millisecond while the call runs
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.001)
thread = threading.Thread(target=watch)
thread.start()
start = time.process_time()
log_likelihood(model, x, k=k, precision=precision)
cpu = time.process_time() - start
done.set()
thread.join()
print(json.dumps({"cpu_s": cpu, "peak_mib": max(peak[0], rss()), "before_mib": before}))
"""

MIB = ("peak_mib", "before_mib")


def fit_scaling(args, sizes: list[int]) -> list[dict]:
    dataset = mnist(args.data_root)
    images = dataset.data.unsqueeze(1)[: args.examples]
    contenders = {
        "article": lambda b: run_article(dataset, b, args.examples // b),
        "fit": lambda b: run_fit(images, b),
    }
    if importlib.util.find_spec("pythae") is not None:
        quiet_pythae()
        floats = images.float() / 255
        contenders["pythae"] = lambda b: run_pythae(floats, b)
    else:
        print("pythae is not installed: its line is left out")
    runs = []
    for repeat in range(args.repeats):
        for b in sizes:
            names = list(contenders)[repeat % len(contenders) :] + list(contenders)
            for name in names[: len(contenders)]:
                torch.manual_seed(repeat)
                start = time.process_time()
                seen = contenders[name](b)
                rate = seen / (time.process_time() - start)
                runs.append({"loop": name, "batch_size": b, "samples_per_cpu_s": rate})
                print(f"  batch {b:>4} {name:>7}: {rate:9,.0f} examples per CPU second", flush=True)
    return runs


def nll_scaling(args, ks: list[int]) -> list[dict]:
    runs = []
    for precision in ("fp32", "auto"):
        for k in ks:
            out = subprocess.run(
                [sys.executable, "-c", NLL_CHILD, str(k), str(args.nll_examples), precision],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            run = {
                "k": k,
                "precision": precision,
                **json.loads(out.stdout.strip().splitlines()[-1]),
            }
            runs.append(run)
            print(
                f"  K {k:>5} {precision}: {run['cpu_s']:.2f} CPU-s, peak {run['peak_mib']:.0f} MiB"
                f" ({run['before_mib']:.0f} before the call)"
            )
    return runs


def rate(fit_runs: list[dict], loop: str, b: int) -> float:
    """The median examples per CPU second of ``loop`` at batch size ``b``."""
    return median(
        [r["samples_per_cpu_s"] for r in fit_runs if (r["loop"], r["batch_size"]) == (loop, b)]
    )


def plot(fit_runs: list[dict], nll_runs: list[dict], folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for loop in dict.fromkeys(r["loop"] for r in fit_runs):
        sizes = sorted({r["batch_size"] for r in fit_runs if r["loop"] == loop})
        ax.plot(sizes, [rate(fit_runs, loop, b) for b in sizes], marker="o", label=loop)
    ax.set(xscale="log", xlabel="batch size", ylabel="examples per CPU second")
    ax.set_xticks(sizes, [str(b) for b in sizes])
    ax.set_title("Training the article's VAE, one thread")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "scaling_fit.png", dpi=100)

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    for precision in ("fp32", "auto"):
        rows = [r for r in nll_runs if r["precision"] == precision]
        label = "fp32" if precision == "fp32" else "default (bf16 where native)"
        left.plot([r["k"] for r in rows], [r["cpu_s"] for r in rows], marker="o", label=label)
        right.plot([r["k"] for r in rows], [r["peak_mib"] for r in rows], marker="o", label=label)
    left.set(xscale="log", yscale="log", xlabel="K", ylabel="CPU seconds")
    before = max(r["before_mib"] for r in nll_runs)
    right.axhline(before, color="gray", linestyle=":", label="before the call")
    right.set(xscale="log", xlabel="K", ylabel="peak resident memory (MiB)", ylim=(0, None))
    left.set_title("log_likelihood time")
    right.set_title("log_likelihood memory")
    left.legend()
    right.legend()
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "scaling_nll.png", dpi=100)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=16384, help="training images per run")
    p.add_argument("--batch-sizes", default="32,64,128,256,512,1024")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--nll-examples", type=int, default=100, help="test images per estimate")
    p.add_argument("--ks", default="10,30,100,300,1000,3000,5000")
    p.add_argument("--plots", default=None, help="write the two PNGs to this folder")
    args = p.parse_args()
    if args.threads is None:
        args.threads = 1
    if args.quick:
        args.examples, args.repeats, args.batch_sizes, args.ks = 2048, 1, "32,256,1024", "10,100"
    info = setup(args)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    fit_runs = fit_scaling(args, sizes)
    nll_runs = nll_scaling(args, [int(k) for k in args.ks.split(",")])

    loops = list(dict.fromkeys(r["loop"] for r in fit_runs))
    rows = [[b] + [f"{rate(fit_runs, loop, b):,.0f}" for loop in loops] for b in sizes]
    print(f"\nexamples per CPU second (medians of {args.repeats}, {args.examples} images a run)")
    print(table(["batch"] + loops, rows))
    print(f"\nlog_likelihood on {args.nll_examples} images (an untrained recommended VAE)")
    print(table(
        ["K", "precision", "CPU-s", "peak MiB", "MiB before"],
        [
            [r["k"], r["precision"], f"{r['cpu_s']:.2f}", *(f"{r[m]:.0f}" for m in MIB)]
            for r in nll_runs
        ],
    ))  # fmt: skip
    if args.plots:
        plot(fit_runs, nll_runs, Path(args.plots))
        print(f"plots in {args.plots}/: scaling_fit.png, scaling_nll.png")
    write_json(args.json, {"machine": info, "fit": fit_runs, "log_likelihood": nll_runs})


if __name__ == "__main__":
    main()
