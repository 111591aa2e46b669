"""Benchmark: import and full row-block scan of an ImageNet-sized lake, next to np.save/np.load.

Every measurement runs in its own subprocess, so peak RSS (``ru_maxrss``, what
``/usr/bin/time -f %M`` reports, file pages mapped into the process included) belongs to that
step alone. Times are medians over ``--repeats`` runs, measured in one invocation.

    python -m benchmarks.bench_lake                 # 1.28M x 90 float32 (ImageNet-1k, 90 epochs)
    python -m benchmarks.bench_lake --rows 200000   # quicker
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

from benchmarks._args import ArgumentParser, work_dir

CHILD_PRELUDE = """
import json, sys, time
import numpy as np
def report(seconds, **extra):
    print(json.dumps({"seconds": seconds, **extra}))
"""

STEPS = {
    # the reference: np.save of the same array held in memory (generation not timed)
    "np.save": """
a = np.load(sys.argv[1])
t = time.perf_counter(); np.save(sys.argv[2], a); s = time.perf_counter() - t
report(s)
""",
    "np.load": """
t = time.perf_counter(); a = np.load(sys.argv[1]); s = time.perf_counter() - t
report(s, checksum=float(a[:, -1].sum()))
""",
    "cld-lake import": """
import zarr, pyarrow.parquet  # library import time is not part of the data path
from cld_lake.lake import import_file
import shutil; shutil.rmtree(sys.argv[2], ignore_errors=True)
t = time.perf_counter(); import_file(sys.argv[2], "train", loss=sys.argv[1], labels=sys.argv[3]); s = time.perf_counter() - t
report(s)
""",
    "cld-lake scan": """
import zarr  # library import time is not part of the data path
from cld_lake.lake import open_lake
split = open_lake(sys.argv[2]).split("train")
t = time.perf_counter(); total = 0.0; nbytes = 0
for block in split.blocks():
    total += float(block.loss[:, -1].sum()); nbytes += block.loss.nbytes
s = time.perf_counter() - t
report(s, checksum=total, nbytes=nbytes)
""",
}

# Where a scan's time goes (measurement only): the parts of Split.blocks timed one by one over
# the same chunks, each from the page cache. Printed as a second table with --scan-parts.
SCAN_PARTS = """
import os, resource, zarr, google_crc32c
from concurrent.futures import ThreadPoolExecutor
from cld_lake.lake import open_lake

def split_now():
    return open_lake(sys.argv[2]).split("train")

split = split_now()
(seg,) = split.segment_names()
folder = split.path / "segments" / seg / "loss"
array = split.open_segment(seg)["loss"]
rows, width = array.chunks  # one chunk: a block of rows, every checkpoint
itemsize = array.dtype.itemsize
n = split.num_samples
starts = range(0, n, rows)
nbytes = rows * width * itemsize
paths = [folder / "c" / str(i) / "0" for i in range(len(starts))]
reused = np.empty(nbytes + 4, np.uint8)

# median wall and CPU seconds (every thread of this process) of a few runs: on a shared
# machine the CPU time is what a part costs, the wall time what it waited for too
# and the minor page faults (fresh memory touched) of the median-CPU run
def timed(fn, repeats=5):
    walls, runs = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        fn()
        walls.append(time.perf_counter() - t)
        runs.append((time.process_time() - c, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f))
    cpu, faults = sorted(runs)[len(runs) // 2]
    return sorted(walls)[len(walls) // 2], cpu, faults

def read_into(buf, path):
    with open(path, "rb", buffering=0) as fh:
        fh.readinto(memoryview(buf))

def fresh_read(path):
    buf = np.empty(nbytes + 4, np.uint8)
    read_into(buf, path)
    return buf

def drain(items):  # consume, holding one item at a time (as a scoring loop does)
    for _ in items:
        pass

def sample_rows():
    s = split_now()
    for a in starts:
        s.sample_rows(a, min(a + rows, n))

def crcs():
    for _ in paths:
        google_crc32c.value(reused[:-4])

def copies():
    out = np.empty_like(reused)
    for _ in paths:
        np.copyto(out, reused)

def touches():
    for _ in paths:
        np.empty(nbytes + 4, np.uint8)[::4096] = 0

def two_threads():
    with ThreadPoolExecutor(2) as pool:
        for buf in pool.map(lambda p: google_crc32c.value(fresh_read(p)[:-4]), paths):
            pass

for p in paths:  # warm the page cache
    read_into(reused, p)
parts = {
    "Split.blocks (as scored: prefetch thread)": timed(lambda: drain(split_now().blocks())),
    "Split.blocks, no prefetch (chunk reads + sample_rows)": timed(
        lambda: drain(split_now().blocks(prefetch=False))
    ),
    "open the lake and the split (commit record, checksums)": timed(split_now),
    "sample_rows (ids, labels, row-group CRC)": timed(sample_rows),
    "readinto a fresh np.empty buffer": timed(lambda: drain(fresh_read(p) for p in paths)),
    "readinto one reused buffer": timed(lambda: [read_into(reused, p) for p in paths]),
    "page faults of a fresh buffer (np.empty, one write per page)": timed(touches),
    "CRC32C of the chunk bytes": timed(crcs),
    "memcpy of the chunk bytes (np.copyto)": timed(copies),
    "fresh readinto + CRC32C in 2 threads": timed(two_threads),
}
report(parts["Split.blocks (as scored: prefetch thread)"][0], parts=parts, nbytes=nbytes * len(paths))
"""


def write_npy(path: Path, rows: int, cols: int, block: int = 65536, seed: int = 0) -> None:
    """Decaying loss curves with noise, written block by block (bounded memory)."""
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, cols))
    t = np.arange(cols, dtype=np.float32)
    for a in range(0, rows, block):
        b = min(a + block, rows)
        rate = rng.uniform(0.01, 0.2, (b - a, 1)).astype(np.float32)
        start = rng.uniform(2.0, 7.0, (b - a, 1)).astype(np.float32)
        out[a:b] = start * np.exp(-rate * t) + 0.1 * rng.random((b - a, cols), dtype=np.float32)
    out.flush()
    del out


def run_step(name: str, *args: str) -> dict:
    """Run one step in a fresh process under /usr/bin/time: its peak RSS is the step's own."""
    code = CHILD_PRELUDE + textwrap.dedent(STEPS[name] if name in STEPS else SCAN_PARTS)
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "RSS_KB %M", sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    rss_line = [line for line in proc.stderr.splitlines() if line.startswith("RSS_KB ")][-1]
    result["rss_mb"] = int(rss_line.split()[1]) / 1024
    return result


def main() -> None:
    parser = ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_280_000)
    parser.add_argument("--checkpoints", type=int, default=90)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=work_dir, default=None)
    parser.add_argument(
        "--scan-parts", action="store_true", help="also time the parts of a scan, one by one"
    )
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_lake_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        src, copy, lake = work / "loss.npy", work / "copy.npy", work / "lake"
        labels = work / "labels.npy"
        write_npy(src, args.rows, args.checkpoints)
        np.save(labels, np.random.default_rng(1).integers(0, args.classes, args.rows))
        nbytes = args.rows * args.checkpoints * 4
        results: dict[str, list[dict]] = {name: [] for name in STEPS}
        for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits all alike
            results["np.save"].append(run_step("np.save", str(src), str(copy)))
            results["np.load"].append(run_step("np.load", str(copy)))
            results["cld-lake import"].append(
                run_step("cld-lake import", str(src), str(lake), str(labels))
            )
            results["cld-lake scan"].append(run_step("cld-lake scan", str(src), str(lake)))
        seg_bytes = sum(
            f.stat().st_size
            for f in (lake / "splits" / "train" / "segments").rglob("*")
            if f.is_file()
        )
        expected = float(np.load(src, mmap_mode="r")[:, -1].astype(np.float64).sum())
        scanned = results["cld-lake scan"][0]["checksum"]
        assert abs(scanned - expected) <= 1e-3 * abs(expected), (scanned, expected)

        med = {k: statistics.median(r["seconds"] for r in v) for k, v in results.items()}
        rss = {k: max(r["rss_mb"] for r in v) for k, v in results.items()}
        print(
            f"\n{args.rows:,} x {args.checkpoints} float32 = {nbytes / 1e6:.0f} MB; median of {args.repeats} runs, warm page cache\n"
        )
        print("| step | seconds (median) | GB/s | peak RSS (MB, max) | bytes on disk / value |")
        print("|---|---:|---:|---:|---:|")
        disk = {
            "np.save": copy.stat().st_size / (args.rows * args.checkpoints),
            "np.load": copy.stat().st_size / (args.rows * args.checkpoints),
            "cld-lake import": seg_bytes / (args.rows * args.checkpoints),
            "cld-lake scan": seg_bytes / (args.rows * args.checkpoints),
        }
        for k in STEPS:
            print(
                f"| {k} | {med[k]:.3f} | {nbytes / med[k] / 1e9:.2f} | {rss[k]:.0f} | {disk[k]:.3f} |"
            )
        print(
            f"\nimport / np.save = {med['cld-lake import'] / med['np.save']:.2f}x   "
            f"scan / np.load = {med['cld-lake scan'] / med['np.load']:.2f}x   "
            f"scan throughput = {nbytes / med['cld-lake scan'] / 1e9:.2f} GB/s"
        )
        if args.scan_parts:
            print_scan_parts(
                [run_step("scan parts", str(src), str(lake)) for _ in range(args.repeats)]
            )
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def print_scan_parts(runs: list[dict]) -> None:
    """Median wall and CPU seconds of each part of a scan (see SCAN_PARTS), and GB/s of each."""
    nbytes = runs[0]["nbytes"]
    print(f"\nwhere a scan's time goes ({nbytes / 1e6:.0f} MB of chunks; median of {len(runs)})\n")
    print(
        "| part, over every chunk of the split | wall s | CPU s | GB/s (wall) | GB/s (CPU) "
        "| page faults |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for part in runs[0]["parts"]:
        wall = statistics.median(r["parts"][part][0] for r in runs)
        cpu = statistics.median(r["parts"][part][1] for r in runs)
        faults = statistics.median(r["parts"][part][2] for r in runs)
        print(
            f"| {part} | {wall:.3f} | {cpu:.3f} | {nbytes / wall / 1e9:.2f} | "
            f"{nbytes / max(cpu, 1e-9) / 1e9:.2f} | {faults:,.0f} |"
        )


if __name__ == "__main__":
    main()
