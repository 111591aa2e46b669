"""Benchmark: class-balanced selection of 10% of a 1.28M-sample, 1000-class score table.

Plain script (not part of the test suite). Builds a benchmark lake whose ``scores.parquet``
is synthetic (seeded; 0.1% NaN scores, many ties), then runs the selection in fresh
subprocesses and prints a table of medians: the ``cld_lake.select`` call alone, the whole
``cld-lake select`` command, and each one's peak RSS.

    .venv/bin/python benchmarks/bench_select.py [--samples 1281167] [--classes 1000] [--runs 5]

``--paths``: the streaming path (bounded memory) next to the in-memory one, each forced with
``CLD_LAKE_SELECT_STREAM_ROWS``, on the whole ``cld-lake select`` process (wall, and peak RSS
from the child's own ``ru_maxrss``); the two manifests are checked to be equal.

    .venv/bin/python benchmarks/bench_select.py --paths --samples 10000000 --runs 3 \
        [--lake DIR (reuse, or build there and keep)] [--memory-runs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._args import ArgumentParser, lake_to_build

CALL = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import cld_lake
t1 = time.perf_counter()
m = cld_lake.select(sys.argv[1], "cld", fraction=float(sys.argv[3]), balance=sys.argv[4], out=sys.argv[2], force=True)
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "select_s": t2 - t1, "rows": len(m),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _has_scores(lake: Path) -> bool:
    from cld_lake.lake import open_lake, scores_path

    return lake.exists() and scores_path(open_lake(lake)) is not None


def build_lake(path: Path, n: int, classes: int, seed: int = 0) -> None:
    """A lake with a one-checkpoint train split and a synthetic ``cld`` score stored through the
    real scores-table writer (what selection reads)."""
    from cld_lake import Lake, SplitWriter
    from cld_lake.lake import store_score

    lake = Lake.create(path, num_classes=classes)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n).astype(np.int64)
    ids = np.arange(n, dtype=np.int64)
    with SplitWriter(lake, "train", num_classes=classes) as writer:
        ck = writer.checkpoint(0)
        ck.add(ids, np.zeros(n, np.float32), labels=labels)
        ck.commit()
    scores = np.round(rng.uniform(-1, 1, n), 4)  # rounded: many exact ties
    scores[rng.choice(n, n // 1000, replace=False)] = np.nan
    prov = {"method": "cld", "engine": "synthetic", "checkpoints": "0..89 (90)"}
    store_score(Lake(path), Lake(path).split("train"), "cld", scores, prov)


def run_call(lake: Path, out: Path, fraction: float, balance: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CALL, str(lake), str(out), str(fraction), balance],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout)


def run_cli(lake: Path, out: Path, fraction: float, balance: str) -> tuple[float, float]:
    """Wall time and peak RSS (MB, from /usr/bin/time -f %M) of the whole command."""
    cli = Path(sys.executable).with_name("cld-lake")
    cmd = [
        str(cli),
        "select",
        str(lake),
        "--score",
        "cld",
        "--fraction",
        str(fraction),
        "--balance",
        balance,
        "--out",
        str(out),
        "--force",
    ]
    timer = Path("/usr/bin/time")
    prefix = [str(timer), "-f", "%M"] if timer.exists() else []
    t0 = time.perf_counter()
    proc = subprocess.run(prefix + cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    rss = float(proc.stderr.strip().splitlines()[-1]) / 1024 if prefix else float("nan")
    return wall, rss


STREAM_ENV = "CLD_LAKE_SELECT_STREAM_ROWS"
PATHS = {"streaming": "0", "in-memory": str(10**15), "dask": "0"}


def run_path(
    lake: Path, out: Path, fraction: float, balance: str, path: str
) -> tuple[float, float, float]:
    """Wall time (s), CPU time (s, user + system) and peak RSS (MB, the child's ru_maxrss) of
    one ``cld-lake select`` process on ``path`` (streaming or in-memory)."""
    cli = Path(sys.executable).with_name("cld-lake")
    cmd = [str(cli), "select", str(lake), "--score", "cld", "--fraction", str(fraction)]
    cmd += ["--balance", balance, "--out", str(out), "--force"]
    cmd += ["--dask"] if path == "dask" else []
    env = {**os.environ, STREAM_ENV: PATHS[path]}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{path} select failed: {proc.stderr.read().decode()}")
    proc.stderr.close()
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def compare_paths(args: argparse.Namespace, lake: Path, scratch: Path) -> None:
    """Streaming vs in-memory select on ``lake``: medians, ratios, and the manifests compared."""
    import cld_lake

    med = statistics.median
    header = f"{'path':<11} {'runs':>4} {'wall s':>8} {'CPU s':>8} {'peak RSS MB':>12}"
    print(header)
    print("-" * len(header))
    results = {}
    for path in [p for p in PATHS if p != "dask" or args.dask]:
        runs = args.memory_runs if path == "in-memory" else args.runs
        out = scratch / f"{path}.parquet"
        measured = [run_path(lake, out, args.fraction, args.balance, path) for _ in range(runs)]
        results[path] = tuple(med(m[i] for m in measured) for i in range(3))
        wall, cpu, rss = results[path]
        print(f"{path:<11} {runs:>4} {wall:>8.1f} {cpu:>8.1f} {rss:>12.0f}")
    (sw, sc, sr), (mw, mc, mr) = results["streaming"], results["in-memory"]
    streamed = cld_lake.load_manifest(scratch / "streaming.parquet")
    same = all(
        streamed.table.equals(cld_lake.load_manifest(scratch / f"{path}.parquet").table)
        for path in results
    )
    print()
    print(
        f"streaming / in-memory: wall {sw / mw:.2f}x, CPU {sc / mc:.2f}x, peak RSS {sr / mr:.2f}x; "
        f"{len(streamed):,} rows selected; manifests identical across paths: {same}"
    )
    print(
        f"select --fraction {args.fraction} --balance {args.balance}, whole `cld-lake select` "
        "processes (interpreter start included), medians; RSS = the child's ru_maxrss (for "
        "dask: the largest of the client and its LocalCluster worker processes)."
    )


def main() -> None:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1_281_167)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--paths", action="store_true", help="streaming vs in-memory select")
    ap.add_argument("--balance", default="proportional", help="--paths: the balance rule")
    ap.add_argument("--memory-runs", type=int, default=None, help="--paths: in-memory runs")
    ap.add_argument(
        "--lake", type=lake_to_build, help="--paths: lake to use (built there if missing)"
    )
    ap.add_argument("--dask", action="store_true", help="--paths: also select --dask")
    args = ap.parse_args()
    if args.paths:
        args.memory_runs = args.runs if args.memory_runs is None else args.memory_runs
        with tempfile.TemporaryDirectory(prefix="bench-select-") as tmp:
            lake = args.lake or Path(tmp) / "lake"
            if not _has_scores(lake):
                t0 = time.perf_counter()
                build_lake(lake, args.samples, args.classes)
                print(f"built a score table of {args.samples:,} samples x {args.classes} classes "
                      f"in {time.perf_counter() - t0:.1f} s")  # fmt: skip
            compare_paths(args, lake, Path(tmp))
        return
    with tempfile.TemporaryDirectory(prefix="bench-select-") as tmp:
        lake = Path(tmp) / "lake"
        t0 = time.perf_counter()
        build_lake(lake, args.samples, args.classes)
        print(
            f"built a score table of {args.samples:,} samples x {args.classes} classes in {time.perf_counter() - t0:.1f} s"
        )
        print()
        header = f"{'balance':<13} {'rows':>9} {'select() s':>11} {'py RSS MB':>10} {'CLI wall s':>11} {'CLI RSS MB':>11}"
        print(header)
        print("-" * len(header))
        for balance in ("proportional", "equal", "none"):
            calls = [
                run_call(lake, Path(tmp) / "m.parquet", args.fraction, balance)
                for _ in range(args.runs)
            ]
            clis = [
                run_cli(lake, Path(tmp) / "c.parquet", args.fraction, balance)
                for _ in range(args.runs)
            ]
            med = statistics.median
            print(
                f"{balance:<13} {calls[0]['rows']:>9,} {med(c['select_s'] for c in calls):>11.3f} "
                f"{med(c['peak_rss_mb'] for c in calls):>10.0f} {med(w for w, _ in clis):>11.3f} {med(r for _, r in clis):>11.0f}"
            )
        print()
        print(
            f"medians of {args.runs} runs, each in a fresh subprocess; select() = the cld_lake.select call "
            "(read scores.parquet, rank, write the manifest); CLI = the whole `cld-lake select` process "
            "(interpreter start and imports included); RSS = peak resident set of that process."
        )


if __name__ == "__main__":
    main()
