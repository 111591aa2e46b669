"""Benchmark: a web-scale pruning run, step by step as a user runs it (default 100M x 50 float16).

Plain script (not part of the test suite). Every step is its own process, the way a user
types it: ``python -m benchmarks.synth`` -> ``cld-lake info`` -> ``verify`` -> ``score
--engine numpy`` -> ``score --engine dask`` (a LocalCluster of the CLI's own, 2 workers on
this machine) -> ``select --fraction 0.1`` -> ``sql`` (average CLD per label) -> the manifest
as training code loads it (``cld_lake.load_manifest``, checksum checked) -> ``report``;
``export`` (the train split to columns Parquet, removed afterwards) and ``select-dask``
(the same selection with ``--dask``) on request; ``--scheduler`` sends both dask steps to a
running cluster.

Each step runs the real entry point (``cld_lake._cli.main``, the ``benchmarks.synth``
module) under a few lines of wrapper that, after it returns, reads the process's own peak
RSS (``ru_maxrss`` of ``RUSAGE_SELF``: what ``/usr/bin/time -f %M`` reports, file pages
mapped in included), the largest of its own children (``RUSAGE_CHILDREN``: the dask
workers) and the CPU seconds of both (user + system: the per-core rate on a shared machine). Wall time is the whole process, interpreter start and imports included. Times are
medians over ``--repeat`` runs (``synth`` runs once per size: it is the setup); with several
``--samples`` the table of ratios between the largest and the smallest size comes from the
same invocation.

    python -m benchmarks.bench_scale --samples 1000000 --dir /tmp/bench
    python -m benchmarks.bench_scale --samples 10000000,100000000 --dir DIR --repeat 1
    python -m benchmarks.bench_scale --samples 100000000 --steps score-numpy,select --dir DIR

Targets (issue 11): every step under 1 GB of peak RSS, numpy scoring and select under 60 s at
100M samples, RSS flat in N.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks._args import ArgumentParser, output_file, work_dir

REPO = Path(__file__).resolve().parents[1]
STEPS = (
    "synth",
    "info",
    "verify",
    "score-numpy",
    "score-dask",
    "select",
    "select-dask",
    "sql",
    "manifest",
    "export",
    "report",
)
DEFAULT_STEPS = tuple(s for s in STEPS if s not in ("export", "select-dask"))
RSS_TARGET_MB = 1024.0
WALL_TARGETS_S = {"score-numpy": 60.0, "select": 60.0, "select-dask": 60.0}

# Runs in the step's own process: the entry point, then its rusage into a file.
WRAPPER = """
import json, os, resource, runpy, sys
kind, argv = sys.argv[1], sys.argv[2:]
code = 0
try:
    if kind == "cli":  # the cld-lake command, run in this process
        sys.argv = ["cld-lake", *argv]
        runpy.run_path(os.path.join(os.path.dirname(sys.executable), "cld-lake"), run_name="__main__")
    elif kind == "module":
        sys.argv = argv
        runpy.run_module(argv[0], run_name="__main__")
    else:
        exec(argv[0], {"__name__": "__main__", "ARGS": argv[1:]})
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
finally:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(os.environ["CLD_BENCH_RUSAGE"], "w") as out:
        json.dump({
            "self_kb": own.ru_maxrss, "children_kb": kids.ru_maxrss,
            "cpu_s": own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime,
        }, out)
sys.exit(code)
"""

LOAD_MANIFEST = """
import cld_lake
m = cld_lake.load_manifest(ARGS[0])
print(len(m.sample_ids), "samples in", ARGS[0])
"""

AVG_CLD_SQL = (
    "SELECT label, avg(cld) AS avg_cld, count(*) AS samples FROM scores GROUP BY label "
    "ORDER BY label"
)


@dataclass
class StepRun:
    samples: int
    step: str
    wall_s: float
    self_mb: float
    children_mb: float
    code: int
    tail: str = ""
    cpu_s: float = 0.0


@dataclass
class Size:
    samples: int
    lake: Path
    runs: list[StepRun] = field(default_factory=list)
    lake_bytes: int = 0


def step_command(step: str, lake: Path, work: Path, args: argparse.Namespace, n: int) -> list[str]:
    """The wrapper's arguments for ``step``: ``cli ARGS``, ``module NAME ARGS``, ``code SRC ARGS``."""
    lake_s = str(lake)
    manifest = str(work / f"coreset-{n}.parquet")
    scheduler = ["--scheduler", args.scheduler] if args.scheduler else []
    if step == "synth":
        return [
            "module",
            "benchmarks.synth",
            lake_s,
            "--train",
            str(n),
            "--val",
            str(args.val),
            "--checkpoints",
            str(args.checkpoints),
            "--classes",
            str(args.classes),
            "--dtype",
            args.dtype,
            "--seed",
            str(args.seed),
        ]
    cli = {
        "info": ["info", lake_s],
        "verify": ["verify", lake_s],
        "score-numpy": ["score", lake_s, "--engine", "numpy", "--force"],
        "score-dask": ["score", lake_s, "--engine", "dask", "--name", "cld_dask", "--force"]
        + scheduler,
        "select": ["select", lake_s, "--score", "cld", "--fraction", "0.1", "--out", manifest],
        "select-dask": ["select", lake_s, "--score", "cld", "--fraction", "0.1", "--dask"]
        + [*scheduler, "--out", str(work / f"coreset-dask-{n}.parquet")],
        "sql": ["sql", lake_s, AVG_CLD_SQL, "--out", str(work / f"avg-cld-{n}.csv")],
        "export": ["export", lake_s, "--split", "train", "--layout", "columns"]
        + ["--out", str(work / f"train-{n}.parquet")],
        "report": ["report", lake_s, "--out", str(work / f"report-{n}.html")],
    }
    if step == "manifest":
        return ["code", LOAD_MANIFEST, manifest]
    forced = ("select", "select-dask", "sql", "export", "report")
    return ["cli", *cli[step], *(["--force"] if step in forced else [])]


@dataclass
class Wrapped:
    """What one wrapped process did: exit code, wall time, its own and its children's peaks."""

    code: int
    wall_s: float
    self_mb: float
    children_mb: float
    out: str
    cpu_s: float = 0.0


def run_wrapped(arguments: list[str], work: Path) -> Wrapped:
    """Run the wrapper with ``arguments`` (``cli ...``, ``module ...``, ``code ...``) in a
    fresh process; ``work`` holds its rusage file."""
    rusage = work / f"rusage-{os.getpid()}.json"
    rusage.unlink(missing_ok=True)
    env = {**os.environ, "CLD_BENCH_RUSAGE": str(rusage)}
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", WRAPPER, *arguments],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    usage = {"self_kb": 0, "children_kb": 0, "cpu_s": 0.0}
    if rusage.exists():
        usage = json.loads(rusage.read_text())
    rusage.unlink(missing_ok=True)
    return Wrapped(
        proc.returncode,
        wall,
        usage["self_kb"] / 1024,
        usage["children_kb"] / 1024,
        proc.stdout + proc.stderr,
        usage["cpu_s"],
    )


def run_step(step: str, size: Size, work: Path, args: argparse.Namespace) -> StepRun:
    """One step in a fresh process: wall time, its own peak RSS and its children's."""
    if step == "synth":
        shutil.rmtree(size.lake, ignore_errors=True)
    done = run_wrapped(step_command(step, size.lake, work, args, size.samples), work)
    if step == "export":
        (work / f"train-{size.samples}.parquet").unlink(missing_ok=True)
    tail = done.out.strip().splitlines()[-3:] if done.code else []
    return StepRun(
        size.samples,
        step,
        done.wall_s,
        done.self_mb,
        done.children_mb,
        done.code,
        " | ".join(tail)[:300],
        done.cpu_s,
    )


def lake_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def median_run(runs: list[StepRun]) -> StepRun:
    """The median wall time; the largest RSS seen (a peak is a peak)."""
    ok = [r for r in runs if r.code == 0] or runs
    return StepRun(
        ok[0].samples,
        ok[0].step,
        statistics.median(r.wall_s for r in ok),
        max(r.self_mb for r in ok),
        max(r.children_mb for r in ok),
        max((r.code for r in runs), key=abs),
        next((r.tail for r in runs if r.code), ""),
        statistics.median(r.cpu_s for r in ok),
    )


def verdict(run: StepRun) -> str:
    if run.code:
        return f"FAILED (exit {run.code}): {run.tail}"
    misses = []
    if max(run.self_mb, run.children_mb) >= RSS_TARGET_MB:
        misses.append(f"RSS >= {RSS_TARGET_MB:.0f} MB")
    target = WALL_TARGETS_S.get(run.step)
    if target is not None and run.wall_s >= target:
        misses.append(f"wall >= {target:.0f} s")
    return "; ".join(misses) or "ok"


def size_table(size: Size, args: argparse.Namespace, steps: list[str]) -> str:
    values = size.samples * args.checkpoints
    lines = [
        f"### {size.samples:,} samples x {args.checkpoints} checkpoints, {args.dtype} "
        f"({size.lake_bytes / 1e9:.2f} GB on disk, {size.lake_bytes / values:.3f} bytes/value; "
        f"val {args.val:,}, {args.classes} classes)",
        "",
        "| step | wall s | CPU s | runs | peak RSS MB | children's peak MB | targets |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for step in steps:
        runs = [r for r in size.runs if r.step == step]
        if not runs:
            continue
        m = median_run(runs)
        kids = f"{m.children_mb:.0f}" if m.children_mb else ""
        lines.append(
            f"| {step} | {m.wall_s:.1f} | {m.cpu_s:.1f} | {len(runs)} | {m.self_mb:.0f} | {kids} "
            f"| {verdict(m)} |"
        )
    return "\n".join(lines)


def ratio_table(small: Size, large: Size, steps: list[str]) -> str:
    factor = large.samples / small.samples
    lines = [
        f"### {large.samples:,} / {small.samples:,} samples ({factor:g}x): flatness",
        "",
        "| step | RSS MB small | RSS MB large | RSS ratio | wall ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for step in steps:
        a = [r for r in small.runs if r.step == step]
        b = [r for r in large.runs if r.step == step]
        if not a or not b:
            continue
        ma, mb = median_run(a), median_run(b)
        peak_a, peak_b = max(ma.self_mb, ma.children_mb), max(mb.self_mb, mb.children_mb)
        lines.append(
            f"| {step} | {peak_a:.0f} | {peak_b:.0f} | {peak_b / peak_a:.2f} | "
            f"{mb.wall_s / ma.wall_s:.1f} |"
        )
    return "\n".join(lines)


def machine_line() -> str:
    load = os.getloadavg()
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return f"{stamp}, {os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--samples", default="100000000", help="training samples, comma-separated sizes"
    )
    parser.add_argument("--checkpoints", type=int, default=50)
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("--val", type=int, default=100_000, help="validation samples")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=work_dir, help="where the lakes go (default: a temp dir)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per step (median); synth once")
    parser.add_argument(
        "--steps", default=",".join(DEFAULT_STEPS), help=f"comma-separated, of {','.join(STEPS)}"
    )
    parser.add_argument(
        "--scheduler", default=None, help="dask scheduler address for score-dask and select-dask"
    )
    parser.add_argument("--keep", action="store_true", help="keep the lakes afterwards")
    parser.add_argument("--json", type=output_file, help="also write every run as JSON")
    args = parser.parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        parser.error(f"--steps: unknown {unknown}; choose from {','.join(STEPS)}")
    steps = [s for s in STEPS if s in steps]  # the pipeline's order
    sizes_n = sorted(int(s) for s in args.samples.split(","))
    work = args.dir or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# bench_scale: {machine_line()}; lakes under {work}\n", flush=True)
    sizes = [Size(n, work / f"scale-{n}x{args.checkpoints}-{args.dtype}.lake") for n in sizes_n]
    try:
        for size in sizes:
            for step in steps:
                if step != "synth" and not size.lake.exists():
                    print(f"{size.lake} does not exist: add synth to --steps", file=sys.stderr)
                    sys.exit(2)
                for _ in range(1 if step == "synth" else args.repeat):
                    run = run_step(step, size, work, args)
                    size.runs.append(run)
                    print(
                        f"  {size.samples:,} {step}: {run.wall_s:.1f} s, {run.self_mb:.0f} MB"
                        + (f" (children {run.children_mb:.0f} MB)" if run.children_mb else "")
                        + (f" FAILED {run.code}: {run.tail}" if run.code else ""),
                        flush=True,
                    )
                    if step == "synth" and run.code:
                        sys.exit(1)
            size.lake_bytes = lake_bytes(size.lake)
            print("\n" + size_table(size, args, steps) + "\n", flush=True)
        if len(sizes) > 1:
            print(ratio_table(sizes[0], sizes[-1], steps))
        print(f"\n(finished {machine_line()})")
        if args.json:
            runs = [asdict(r) for s in sizes for r in s.runs]
            args.json.write_text(
                json.dumps(
                    {"args": vars(args) | {"dir": str(work), "json": str(args.json)}, "runs": runs},
                    indent=1,
                )
            )
    finally:
        if not args.keep:
            for size in sizes:
                shutil.rmtree(size.lake, ignore_errors=True)
            if args.dir is None:
                shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
