"""Benchmark: the Polars and Dask engines at two sizes, one source tree against another.

For each lake, engine and source tree (``--tree LABEL=PATH``, imported through ``PYTHONPATH``),
a fresh interpreter scores the lake the way ``cld-lake score`` does (``keep_scores=False``: the
score column spills to disk; stored into the scores table) and reports:

* wall seconds of the call (the dask engine's own 2-worker LocalCluster start-up included), and
  CPU seconds of the process and its reaped children (the dask workers; imports included): on a
  shared machine the wall time depends on the load, the CPU time much less;
* peak RSS of that process (``ru_maxrss``): the client, with the scheduler it hosts;
* the peak of the sampled sum of RSS over its child processes (dask's nannies and workers).

Medians of ``--repeats`` runs; the ratios compare medians measured in this run. Lakes come from
``python -m benchmarks.synth`` (not made here)::

    python -m benchmarks.synth --train 1280000 --checkpoints 90 /scratch/l128
    python -m benchmarks.synth --train 10000000 --checkpoints 50 --dtype float16 /scratch/l10m
    python -m benchmarks.bench_engines_scale /scratch/l128 /scratch/l10m \\
        --tree before=/scratch/before --tree after=.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._args import ArgumentParser, existing_lake, labelled_dir, output_file

REPO = Path(__file__).resolve().parents[1]
ENGINES = ("polars", "dask")

CHILD = """
import json, resource, sys, time
from cld_lake.score import compute_cld
lake, engine = sys.argv[1], sys.argv[2]
options = {"n_workers": 2} if engine == "dask" else {}
import pyarrow.parquet, zarr  # library imports are not part of the measured call
if engine == "polars":
    import polars
if engine == "dask":
    import distributed
t = time.perf_counter()
r = compute_cld(lake, engine=engine, name="bench_" + engine, collect_ids=False,
                keep_scores=False, engine_options=options, force=True)
seconds = time.perf_counter() - t
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime  # workers: once reaped
print(json.dumps({"seconds": seconds, "cpu": cpu, "rss": me.ru_maxrss * 1024, "nan": r.provenance["nan"]}))
"""


def run_child(tree: Path, lake: Path, engine: str) -> dict:
    """One scoring run in a fresh interpreter importing cld_lake from ``tree``."""
    import psutil

    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, "-c", CHILD, str(lake), engine]
    proc = psutil.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    children_peak = 0
    while proc.poll() is None:
        try:
            total = 0
            for child in proc.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    pass
            children_peak = max(children_peak, total)
        except psutil.Error:
            pass
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} on {lake} ({tree}) failed:\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["children_rss"] = children_peak
    return result


def measure(tree: Path, lake: Path, engine: str, repeats: int) -> dict:
    runs = [run_child(tree, lake, engine) for _ in range(repeats)]
    row = {
        "seconds": statistics.median(r["seconds"] for r in runs),
        "cpu_s": statistics.median(r["cpu"] for r in runs),
        "rss_mib": statistics.median(r["rss"] for r in runs) / 2**20,
        "children_mib": statistics.median(r["children_rss"] for r in runs) / 2**20,
        "runs": [[round(r["seconds"], 2), round(r["rss"] / 2**20)] for r in runs],
    }
    return row


def describe(lake: Path) -> str:
    from cld_lake.lake import open_lake

    train = open_lake(lake).split("train")
    return f"{train.num_samples:,} x {train.num_checkpoints} {train.channels['loss']}"


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description="Polars / Dask engines at scale (see docstring).")
    parser.add_argument("lakes", nargs="+", type=existing_lake)
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        type=labelled_dir,
        metavar="LABEL=PATH",
        help="a source tree to import cld_lake from (repeat; default: this one as 'this')",
    )
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--json", type=output_file, default=None, help="Also write the rows as JSON here."
    )
    args = parser.parse_args(argv)
    trees = [t.split("=", 1) for t in args.tree] or [["this", str(REPO)]]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    rows = []
    header = (
        f"| {'lake':<22} | {'engine':<6} | {'tree':<8} | {'median s':>8} | {'CPU s':>6} | "
        f"{'client peak MiB':>15} | {'workers peak MiB':>16} |"
    )
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    for lake in args.lakes:
        shape = describe(lake)
        for engine in args.engines:
            for label, tree in trees:
                row = measure(Path(tree).resolve(), lake, engine, args.repeats)
                row |= {"lake": shape, "engine": engine, "tree": label}
                rows.append(row)
                workers = f"{row['children_mib']:16.0f}" if engine == "dask" else f"{'-':>16}"
                print(
                    f"| {shape:<22} | {engine:<6} | {label:<8} | {row['seconds']:8.2f} | "
                    f"{row['cpu_s']:6.1f} | "
                    f"{row['rss_mib']:15.0f} | {workers} |  runs {row['runs']}",
                    flush=True,
                )
    _print_ratios(rows, [label for label, _ in trees])
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def _print_ratios(rows: list[dict], labels: list[str]) -> None:
    """Client peak RSS of the largest lake over the smallest, per engine and tree (flatness)."""
    print()
    for engine in ENGINES:
        for label in labels:
            mine = [r for r in rows if r["engine"] == engine and r["tree"] == label]
            if len(mine) >= 2:
                first, last = mine[0], mine[-1]
                print(
                    f"{engine} {label}: client peak RSS {last['lake']} / {first['lake']} = "
                    f"{last['rss_mib'] / first['rss_mib']:.2f}x"
                )


if __name__ == "__main__":
    main()
