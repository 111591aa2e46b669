"""Benchmark: what integrity costs in time and memory: opening a lake, ``info`` and ``verify``
on a scored lake (default 10M x 50 float16, 1000 classes, a stored CLD score).

Each step is a fresh process (the ``cld-lake`` entry point, or a few lines of Python for
"open"), so the times include interpreter start and imports, as a user sees them; its peak RSS
is the child's own ``ru_maxrss`` (``os.wait4``). Medians of ``--repeats``. ``--code NAME=DIR``
(repeatable) runs every step against the ``cld_lake`` of another checkout too (``PYTHONPATH``
and working directory ``DIR``), e.g. a ``git worktree`` of the commit before a change, with
its compiled kernel built in place (``python setup.py build_ext --inplace``); the first
``--code`` is the base of the ratios.

    python -m benchmarks.bench_verify                              # synth a 10M lake, then measure
    python -m benchmarks.bench_verify --lake LAKE --code before=../before --code after=.
    python -m benchmarks.bench_verify --train 200000 --checkpoints 90 --dtype float32
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._args import ArgumentParser, existing_lake, labelled_dir

REPO = Path(__file__).resolve().parents[1]
# the cld-lake command (the script next to the interpreter), run in the child process itself
CLI = (
    "import os, runpy; sys.argv[0] = 'cld-lake'; "
    "runpy.run_path(os.path.join(os.path.dirname(sys.executable), 'cld-lake'), run_name='__main__')"
)
OPEN = (
    "from cld_lake.lake import open_lake; lake = open_lake(sys.argv[1]); "
    "[lake.split(s).checkpoint_ids for s in ('train', 'val')]"
)
STEPS = {
    "open lake + 2 splits": [OPEN],
    "info": [CLI, "info"],
    "verify --quick": [CLI, "verify", "--quick"],
    "verify": [CLI, "verify"],
}


def measured(code: list[str], lake: Path, checkout: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of ``python -c CODE ARGS LAKE`` run in ``checkout``."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    source, *args = code
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", f"import sys; {source}", *args, str(lake)],
        cwd=checkout,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{source} {args} {lake} failed in {checkout} (exit {proc.returncode})")
    return wall, usage.ru_maxrss / 1024


def make_lake(lake: Path, args: argparse.Namespace) -> None:
    """A synthetic lake with a stored CLD score (``info`` then shows its per-class share)."""
    subprocess.run(
        [sys.executable, "-m", "benchmarks.synth", str(lake), "--train", str(args.train),
         "--checkpoints", str(args.checkpoints), "--dtype", args.dtype],
        check=True, stdout=subprocess.DEVNULL, cwd=REPO,
    )  # fmt: skip
    subprocess.run(
        [sys.executable, "-c", f"import sys; {CLI}", "score", str(lake)],
        check=True,
        stdout=subprocess.DEVNULL,
        cwd=REPO,
    )


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=10_000_000)
    parser.add_argument("--checkpoints", type=int, default=50)
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("--lake", type=existing_lake, help="an existing scored lake (kept)")
    parser.add_argument(
        "--code", action="append", default=[], type=labelled_dir, metavar="NAME=DIR"
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    checkouts = dict(c.split("=", 1) for c in args.code) or {"this checkout": str(REPO)}
    work = None if args.lake else Path(tempfile.mkdtemp(prefix="cld-bench-verify-"))
    lake = args.lake or work / "lake"
    try:
        if work is not None:
            make_lake(lake, args)
        print(f"{lake}: medians of {args.repeats}; peak RSS = the process's ru_maxrss")
        names = list(checkouts)
        head = " | ".join(f"{n} s | {n} MB" for n in names)
        ratio = " | ".join(f"{n}/{names[0]} s | MB" for n in names[1:])
        print(f"| step | {head} |" + (f" {ratio} |" if ratio else ""))
        print("|---|" + "---:|" * (2 * len(names) + 2 * (len(names) - 1)))
        for step, code in STEPS.items():
            runs: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
            for _ in range(args.repeats):  # versions interleaved: both under the same load
                for name in names:
                    runs[name].append(measured(code, lake, Path(checkouts[name]).resolve()))
            medians = [
                (statistics.median(r[0] for r in runs[n]), statistics.median(r[1] for r in runs[n]))
                for n in names
            ]
            cells = [f"{wall:.2f} | {rss:.0f}" for wall, rss in medians]
            base_wall, base_rss = medians[0]
            cells += [
                f"{wall / base_wall:.2f}x | {rss / base_rss:.2f}x" for wall, rss in medians[1:]
            ]
            print(f"| {step} | " + " | ".join(cells) + " |", flush=True)
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
