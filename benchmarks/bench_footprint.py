"""Footprint: ``import autoenc`` time over ``import torch``, and peak memory (RSS) of training.

Every figure comes from a fresh Python subprocess (medians over repeats, the order of the kinds
alternating):

* import: the time of ``import torch``, then of ``import autoenc`` in the same process (what
  autoenc adds), and the peak RSS after each;
* training: the peak RSS of a process that trains the article's VAE for one (capped) epoch at
  batch 32, with the article's loop or with ``autoenc.fit`` (which keeps MNIST in memory as
  uint8: 47 MB).

Run::

    python benchmarks/bench_footprint.py --json benchmarks/results/footprint.json
    python benchmarks/bench_footprint.py --quick
"""

from __future__ import annotations

import json
import subprocess
import sys

from harness import HERE, median, parser, setup, table, write_json

IMPORT_CODE = """
import json, resource, sys, time
t0, c0 = time.perf_counter(), time.process_time()
import torch
t1, c1 = time.perf_counter(), time.process_time()
rss_torch = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with_torch = {m.partition(".")[0] for m in sys.modules}
import autoenc
t2, c2 = time.perf_counter(), time.process_time()
rss_autoenc = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
added = sorted({m.partition(".")[0] for m in sys.modules} - with_torch - {"autoenc"})
print(json.dumps({"torch_s": t1 - t0, "autoenc_s": t2 - t1, "torch_cpu_s": c1 - c0,
                  "autoenc_cpu_s": c2 - c1, "rss_torch_mb": rss_torch / 1024,
                  "rss_autoenc_mb": rss_autoenc / 1024, "added_modules": added}))
"""

TRAIN_CODE = """
import json, resource, sys, time
sys.path.insert(0, {here!r})
import torch
torch.set_num_threads({threads})
from harness import library_vae, mnist
from article import ArticleVAE, article_epoch, article_loader, article_optimizer
dataset = mnist({root!r})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if {kind!r} == "article":
    model = ArticleVAE()
    article_epoch(model, article_loader(dataset, 32), article_optimizer(model),
                  max_batches={max_batches})
else:
    from autoenc import fit
    images = dataset.data.unsqueeze(1)
    n = images.shape[0] if {max_batches} is None else {max_batches} * 32
    fit(library_vae(), images[:n], epochs=1, batch_size=32, device="cpu", verbose=False)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"rss_before_mb": before / 1024, "rss_peak_mb": after / 1024}}))
"""


def child(code: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=HERE
    )
    if out.returncode != 0:
        sys.exit(f"the subprocess failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7, help="import measurements")
    p.add_argument("--train-repeats", type=int, default=2)
    p.add_argument("--max-batches", type=int, default=None, help="cap the training epoch")
    args = p.parse_args()
    if args.quick:
        args.repeats, args.train_repeats, args.max_batches = 3, 1, args.max_batches or 100
    info = setup(args)

    imports = [child(IMPORT_CODE) for _ in range(args.repeats)]
    for i, r in enumerate(imports):
        print(
            f"  import {i}: torch {r['torch_s']:.2f} s, autoenc +{1000 * r['autoenc_s']:.0f} ms "
            f"({1000 * r['autoenc_cpu_s']:.0f} ms CPU)"
        )
    threads = args.threads or 0
    trains: dict[str, list[dict]] = {"article": [], "fit": []}
    for r in range(args.train_repeats):
        for kind in ["article", "fit"][:: 1 if r % 2 == 0 else -1]:
            code = TRAIN_CODE.format(
                here=str(HERE),
                threads=threads if threads else "torch.get_num_threads()",
                root=args.data_root,
                kind=kind,
                max_batches=args.max_batches,
            )
            trains[kind].append(child(code))
            print(f"  train {kind}: peak RSS {trains[kind][-1]['rss_peak_mb']:.0f} MB", flush=True)

    summary = {
        "import_torch_s": median([r["torch_s"] for r in imports]),
        "import_autoenc_ms": 1000 * median([r["autoenc_s"] for r in imports]),
        "import_autoenc_cpu_ms": 1000 * median([r["autoenc_cpu_s"] for r in imports]),
        "rss_torch_mb": median([r["rss_torch_mb"] for r in imports]),
        "rss_autoenc_mb": median([r["rss_autoenc_mb"] for r in imports]),
        "added_modules": sorted({m for r in imports for m in r["added_modules"]}),
        **{
            f"train_{k}_peak_rss_mb": median([r["rss_peak_mb"] for r in v])
            for k, v in trains.items()
        },
        **{
            f"train_{k}_rss_growth_mb": median([r["rss_peak_mb"] - r["rss_before_mb"] for r in v])
            for k, v in trains.items()
        },
    }
    rows = [
        [
            "import torch",
            f"{summary['import_torch_s']:.2f} s",
            "",
            f"{summary['rss_torch_mb']:.0f} MB",
        ],
        [
            "+ import autoenc",
            f"+{summary['import_autoenc_ms']:.0f} ms",
            f"+{summary['import_autoenc_cpu_ms']:.0f} ms",
            f"{summary['rss_autoenc_mb']:.0f} MB",
        ],
    ]
    for kind in trains:
        rows.append(
            [
                f"{kind}, 1 epoch",
                "",
                "",
                f"{summary[f'train_{kind}_peak_rss_mb']:.0f} MB "
                f"(+{summary[f'train_{kind}_rss_growth_mb']:.0f} MB training)",
            ]
        )
    print()
    print(table(["process", "wall time", "CPU time", "peak RSS"], rows))
    print(
        f"(fresh subprocesses; medians of {args.repeats} imports and {args.train_repeats} "
        f"trainings{'' if args.max_batches is None else f' of {args.max_batches} batches'}; "
        f"modules `import autoenc` adds to torch's: {summary['added_modules'] or 'none'}; "
        "'training' is the growth of the peak RSS after MNIST is loaded)"
    )
    write_json(
        args.json, {"machine": info, "imports": imports, "trains": trains, "summary": summary}
    )


if __name__ == "__main__":
    main()
