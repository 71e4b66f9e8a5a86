"""Distributed training speed: ``fit`` on 1 process against ``fit`` on 2 (or more) processes.

Every configuration trains the article's VAE (:func:`harness.library_vae`) on MNIST for the
same global batch (``--batch-size``, the examples per optimizer step over all processes), so
each run does the same optimization; only the number of processes changes. The processes are
started the way ``torchrun`` starts them (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR=127.0.0.1``, a free ``MASTER_PORT``), on the CPU with Gloo unless ``--device``
says otherwise, and each gets ``--threads`` torch threads (default: the cores divided by the
number of processes, so every configuration uses the whole machine). The figure is samples
per second over the epochs after the first (which pays for warm-up), from ``fit``'s
``history["time"]``: process start-up and imports are not counted. The configurations are
interleaved over ``--repeats`` rounds and the median is printed.

Run::

    python benchmarks/bench_ddp.py                          # 1 and 2 processes, batch 128
    python benchmarks/bench_ddp.py --procs 1,2 --batch-size 512 --max-batches 100 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import torch
from harness import (
    describe,
    library_vae,
    machine,
    median,
    mnist_uint8,
    parser,
    table,
    write_json,
)

from autoenc.training import fit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(args: argparse.Namespace) -> None:
    """One process of a configuration: train, and on rank 0 print the result as JSON."""
    torch.set_num_threads(args.threads)
    images = mnist_uint8(args.data_root)
    if args.max_batches is not None:
        images = images[: args.max_batches * args.batch_size]
    torch.manual_seed(0)
    result = fit(
        library_vae(),
        images,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=0,
        device=args.device,
        verbose=False,
    )
    if result.state.is_main_process:
        seconds = sum(result.history["time"][1:])
        examples = images.shape[0] * (args.epochs - 1)
        print("RESULT " + json.dumps({"seconds": seconds, "examples": examples}), flush=True)


def run(procs: int, args: argparse.Namespace) -> float:
    """Samples/s of one configuration, with ``procs`` processes."""
    threads = args.threads or max(1, (os.cpu_count() or 1) // procs)
    command = [sys.executable, __file__, "--worker", "--threads", str(threads)]
    for name in ("epochs", "batch_size", "max_batches", "data_root", "device"):
        value = getattr(args, name)
        if value is not None:
            command += [f"--{name.replace('_', '-')}", str(value)]
    port = _free_port()
    children = []
    for rank in range(procs):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        if procs > 1:
            env.update(
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                WORLD_SIZE=str(procs),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
            )
        children.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True))
    outputs = [c.communicate()[0] for c in children]
    if any(c.returncode for c in children):
        sys.exit(
            f"a worker of the {procs}-process run failed (exit codes "
            f"{[c.returncode for c in children]})"
        )
    line = next(line for line in outputs[0].splitlines() if line.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    return result["examples"] / result["seconds"]


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--procs", default="1,2", help="process counts to compare")
    p.add_argument("--batch-size", type=int, default=128, help="the global batch")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is not timed")
    p.add_argument("--max-batches", type=int, default=150, help="global batches per epoch")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    if args.epochs < 2:
        p.error("--epochs must be at least 2: the first epoch is not timed")
    if args.quick:
        args.max_batches, args.repeats = min(args.max_batches or 60, 60), 1
    info = machine()
    print(describe(info), flush=True)
    counts = [int(c) for c in args.procs.split(",")]
    speeds: dict[int, list[float]] = {c: [] for c in counts}
    for repeat in range(args.repeats):
        shift = repeat % len(counts)
        for procs in counts[shift:] + counts[:shift]:
            start = time.perf_counter()
            speeds[procs].append(run(procs, args))
            print(
                f"  repeat {repeat} {procs} process(es): {speeds[procs][-1]:>8,.0f} samples/s "
                f"({time.perf_counter() - start:.0f} s with start-up)",
                flush=True,
            )
    base = median(speeds[counts[0]])
    rows = [
        [str(c), f"{median(speeds[c]):,.0f}", f"{median(speeds[c]) / base:.2f}x"] for c in counts
    ]
    threads = args.threads or f"cores/processes = {os.cpu_count()}/k"
    print(
        f"\nglobal batch {args.batch_size}, {args.max_batches} steps per epoch, device "
        f"{args.device}, torch threads per process: {threads}, median of {args.repeats}"
    )
    print(table(["processes", "samples/s", f"vs {counts[0]}"], rows))
    write_json(
        args.json,
        {
            "machine": info,
            "batch_size": args.batch_size,
            "max_batches": args.max_batches,
            "device": args.device,
            "threads_per_process": args.threads,
            "samples_per_s": {str(c): v for c, v in speeds.items()},
        },
    )


if __name__ == "__main__":
    main()
