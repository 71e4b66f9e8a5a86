"""Step time of ``fit`` at batch 32 for two revisions of autoenc, side by side in one run.

Each measurement is a fresh process that imports autoenc from one revision's ``src`` and trains
the article's VAE (``autoenc.recipes.article_vae``) with ``fit`` on MNIST-shaped uint8 images
for ``--steps`` steps on one thread; it prints the CPU milliseconds per step. The two revisions
alternate ``--repeats`` times and the table shows the medians and their ratio. The base
revision is checked out into a temporary ``git worktree`` and removed afterwards.

Run::

    python benchmarks/bench_revisions.py --base 4cf2d5c            # that revision vs this tree
    python benchmarks/bench_revisions.py --base 4cf2d5c --steps 300 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import revision_src

ROOT = Path(__file__).resolve().parents[1]

# Runs in the child: one timed fit of `steps` batches of 32 after an untimed warm-up.
CHILD = """
import sys, time, torch
torch.set_num_threads(1)
import autoenc
from autoenc.recipes import article_vae
steps = int(sys.argv[1])
torch.manual_seed(0)
x = torch.randint(0, 256, (32 * steps, 1, 28, 28), dtype=torch.uint8)
autoenc.fit(article_vae(), x[:320], epochs=1, batch_size=32, seed=0, verbose=False)
model = article_vae()
start = time.process_time()
autoenc.fit(model, x, epochs=1, batch_size=32, seed=0, verbose=False)
print(1000 * (time.process_time() - start) / steps)
"""


def measure(src: Path, steps: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(steps)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tempfile.gettempdir(),  # so the checkout's src is the only autoenc on the path
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--base", required=True, help="the git revision to compare with")
    p.add_argument("--steps", type=int, default=300, help="timed steps per measurement")
    p.add_argument("--repeats", type=int, default=3, help="measurements of each revision")
    args = p.parse_args()
    with revision_src(args.base) as base_src:
        times: dict[str, list[float]] = {args.base: [], "this tree": []}
        for _ in range(args.repeats):
            times[args.base].append(measure(base_src, args.steps))
            times["this tree"].append(measure(ROOT / "src", args.steps))
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"fit, article VAE, batch 32, {args.steps} steps, 1 thread: CPU ms per step")
    for name, values in times.items():
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(f"  {name:>12}: median {medians[name]:.2f}  ({runs})")
    print(f"  speed-up: {medians[args.base] / medians['this tree']:.2f}x")


if __name__ == "__main__":
    main()
