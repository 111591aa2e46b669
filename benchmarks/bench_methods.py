"""Benchmark: every scoring method on an ImageNet-sized synthetic lake (loss, correct, margin and
el2n channels), next to CLD, and all methods in one pass against one pass each.

Every measurement runs in its own subprocess (``benchmarks.bench_score.run_child``): peak RSS is
``/usr/bin/time -f %M`` of that process; the time is measured inside it around
``compute_scores`` (library imports and interpreter start excluded), storing the column(s) into
``scores.parquet`` included. Medians of ``--repeats`` runs. The lake is generated into a
temporary directory (``benchmarks/synth.py``) and removed afterwards.

    python -m benchmarks.bench_methods                        # 1.28M x 90, 1000 classes
    python -m benchmarks.bench_methods --rows 300000          # quicker
    python -m benchmarks.bench_methods --methods cld,aum,dynunc --repeats 1
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._args import ArgumentParser, existing_dir
from benchmarks.bench_score import run_child, warm
from benchmarks.synth import SynthConfig, synth_lake
from cld_lake.score import METHODS

CHANNELS = ("loss", "correct", "margin", "el2n")

SCORE = """
import zarr, pyarrow.parquet  # library imports are not part of the data path
from cld_lake.score import compute_scores
methods, engine = sys.argv[2], sys.argv[3]
if engine == "dask":  # a running cluster, as a dask user has; its start-up is not counted
    from distributed import Client, LocalCluster
    client = Client(LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None))
t = time.perf_counter()
results = compute_scores(sys.argv[1], methods, engine=engine, collect_ids=False, keep_scores=False, force=True)
s = time.perf_counter() - t
report(s, nan={n: r.provenance["nan"] for n, r in results.items()})
"""


def measure(label: str, lake: Path, methods: str, engine: str, repeats: int) -> dict:
    runs = [run_child(SCORE, str(lake), methods, engine) for _ in range(repeats)]
    row = {
        "step": label,
        "seconds": statistics.median(r["seconds"] for r in runs),
        "rss_mib": statistics.median(r["rss_mib"] for r in runs),
        "runs": [round(r["seconds"], 3) for r in runs],
    }
    print(
        f"  {label:<30} {row['seconds']:7.2f} s  {row['rss_mib']:6.0f} MiB  (runs {row['runs']})",
        flush=True,
    )
    return row


def print_table(title: str, rows: list[dict], together: dict, methods: list[str]) -> None:
    cld = next((r["seconds"] for r in rows if r["step"] == "cld"), None)
    print(f"\n{title}")
    header = f"| {'method':<30} | {'median s':>8} | {'x cld':>6} | {'peak RSS MiB':>12} |"
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    for r in rows:
        ratio = f"{r['seconds'] / cld:6.2f}" if cld else f"{'':>6}"
        print(f"| {r['step']:<30} | {r['seconds']:8.2f} | {ratio} | {r['rss_mib']:12.0f} |")
    each = sum(r["seconds"] for r in rows if r["step"] in methods)
    peak = max(r["rss_mib"] for r in rows if r["step"] in methods)
    print(f"| {'one pass each (sum)':<30} | {each:8.2f} | {'':>6} | {peak:12.0f} |")
    print(
        f"| {together['step']:<30} | {together['seconds']:8.2f} | {'':>6} | "
        f"{together['rss_mib']:12.0f} |"
    )
    print(
        f"\none pass for {len(methods)} methods: {each / together['seconds']:.1f}x faster than one each"
    )


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description="Scoring methods benchmark (see module docstring).")
    parser.add_argument("--rows", type=int, default=SynthConfig.train)
    parser.add_argument("--val", type=int, default=SynthConfig.val)
    parser.add_argument("--checkpoints", type=int, default=SynthConfig.checkpoints)
    parser.add_argument("--classes", type=int, default=SynthConfig.classes)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    parser.add_argument("--engine", default="numpy", choices=["numpy", "dask"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--workdir",
        type=existing_dir,
        help="An existing directory for the lake (default: temp).",
    )
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    work = Path(tempfile.mkdtemp(prefix="cld-bench-methods-", dir=args.workdir))
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
        f"engine {args.engine}; medians of {args.repeats}; work dir {work}"
    )
    try:
        config = SynthConfig(args.rows, args.val, args.checkpoints, args.classes, channels=CHANNELS)
        lake = work / "lake"
        started = time.perf_counter()
        synth_lake(lake, config)
        print(
            f"generated {config.train:,} x {config.checkpoints} lake ({', '.join(CHANNELS)}) in "
            f"{time.perf_counter() - started:.1f} s"
        )
        warm(lake)
        rows = [measure(m, lake, m, args.engine, args.repeats) for m in methods]
        together = measure(
            f"all {len(methods)} in one pass", lake, ",".join(methods), args.engine, args.repeats
        )
        print_table(
            f"{config.train:,} train x {config.checkpoints} checkpoints, {config.classes} classes, "
            f"{config.val:,} val; engine {args.engine}; load {os.getloadavg()[0]:.1f}",
            rows,
            together,
            methods,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
