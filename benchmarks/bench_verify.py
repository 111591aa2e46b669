"""Benchmark: what integrity costs: opening a lake, ``info`` and ``verify`` on a scored
ImageNet-sized lake (1.28M x 90 float32, 1000 classes, a stored CLD score).

Each step is a fresh ``cld-lake`` process (or a tiny Python process for "open"), so the times
include interpreter start and imports, as a user sees them; medians of ``--repeats``. Run it
once per code version to compare them (e.g. an older checkout with ``PYTHONPATH`` pointing at
it, from that checkout's directory, so that its own ``benchmarks.synth`` builds the lake).

    python -m benchmarks.bench_verify                 # 1.28M x 90
    python -m benchmarks.bench_verify --train 200000  # quicker
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = str(Path(sys.executable).with_name("cld-lake"))
OPEN = (
    "import sys; from cld_lake.lake import open_lake; lake = open_lake(sys.argv[1]); "
    "[lake.split(s).checkpoint_ids for s in ('train', 'val')]"
)
STEPS = {
    "open lake + 2 splits": [sys.executable, "-c", OPEN],
    "info": [CLI, "info"],
    "verify --quick": [CLI, "verify", "--quick"],
    "verify": [CLI, "verify"],
}


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=1_280_000)
    parser.add_argument("--checkpoints", type=int, default=90)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="cld-bench-verify-"))
    lake = work / "lake"
    try:
        subprocess.run(
            [sys.executable, "-m", "benchmarks.synth", str(lake), "--train", str(args.train),
             "--checkpoints", str(args.checkpoints)],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        subprocess.run([CLI, "score", str(lake)], check=True, stdout=subprocess.DEVNULL)
        print(
            f"{args.train:,} x {args.checkpoints} lake with a cld score; medians of {args.repeats}"
        )
        print("| step | seconds |\n|---|---:|")
        for name, cmd in STEPS.items():
            runs = [timed([*cmd, str(lake)]) for _ in range(args.repeats)]
            print(f"| {name} | {statistics.median(runs):.3f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
