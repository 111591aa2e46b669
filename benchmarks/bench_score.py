"""Benchmark: CLD scoring per engine on an ImageNet-sized synthetic lake, next to an in-memory
reference of the kind the paper's code uses and the page-cache read floor.

Every measurement runs in its own subprocess: peak RSS is ``/usr/bin/time -f %M`` of that
process (``ru_maxrss``) and, for process trees (dask workers), the peak of the sampled sum of
RSS over the tree. Times are measured inside the child around the work (interpreter start-up
excluded, library imports included for the engines) and reported as medians of ``--repeats``
runs. The lake is generated into a temporary directory (``benchmarks/synth.py``) and removed
afterwards.

``--cli`` measures instead the whole ``cld-lake score`` process per engine (interpreter start,
imports, scoring and storing the column into a copy of the lake without scores), one source
tree against another (``--tree LABEL=PATH``, imported through ``PYTHONPATH``; runs interleaved
so that both see the same load).

    python -m benchmarks.bench_score                      # 1.28M x 90, 1000 classes, 12.8K val
    python -m benchmarks.bench_score --scale 4            # also 4x samples: RSS must not grow
    python -m benchmarks.bench_score --rows 200000 --engines numpy duckdb   # quicker
    python -m benchmarks.bench_score --cli --tree before=/scratch/before --tree after=.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._args import ArgumentParser, existing_dir, labelled_dir, output_file
from benchmarks.synth import SynthConfig, synth_lake

ENGINES = ("numpy", "duckdb", "polars", "dask")

PRELUDE = """
import json, sys, time
import numpy as np
def report(seconds, **extra):
    print(json.dumps({"seconds": seconds, **extra}))
"""

READ_FLOOR = """
import os
paths = [os.path.join(r, f) for r, _, fs in os.walk(sys.argv[1]) for f in fs]
buf = bytearray(16 << 20); view = memoryview(buf); total = 0
t = time.perf_counter()
for p in paths:
    with open(p, "rb", buffering=0) as fh:
        while (n := fh.readinto(view)):
            total += n
report(time.perf_counter() - t, nbytes=total)
"""

# What the authors' style of code does: the whole N x T matrix in RAM, np.diff, per-class
# validation mean trajectories, z-scores, mean of products.
IN_MEMORY_REFERENCE = """
d = sys.argv[1]
t = time.perf_counter()
L = np.load(d + "/train_loss.npy"); y = np.load(d + "/train_labels.npy")
V = np.load(d + "/val_loss.npy").astype(np.float64); vy = np.load(d + "/val_labels.npy")
C = int(max(y.max(), vy.max())) + 1
M = np.zeros((C, V.shape[1])); np.add.at(M, vy, V); M /= np.bincount(vy, minlength=C)[:, None]
D = np.diff(L.astype(np.float64), axis=1); del L
U = np.diff(M, axis=1)
Dz = (D - D.mean(1, keepdims=True)) / D.std(1, keepdims=True); del D
Uz = (U - U.mean(1, keepdims=True)) / U.std(1, keepdims=True)
cld = (Dz * Uz[y]).mean(1)
s = time.perf_counter() - t
report(s, checksum=float(np.nansum(cld)))
"""

ENGINE = """
import zarr, pyarrow.parquet  # library imports are not part of the data path
from cld_lake.score import compute_cld
engine = sys.argv[2]
if engine == "duckdb":
    import duckdb
if engine == "polars":
    import polars
if engine == "dask":  # a running cluster, as a dask user has; its start-up is reported apart
    from distributed import Client, LocalCluster
    t = time.perf_counter()
    client = Client(LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None))
    print("cluster start-up", round(time.perf_counter() - t, 2), "s", file=sys.stderr)
t = time.perf_counter()
r = compute_cld(sys.argv[1], engine=engine, name="bench_" + engine, collect_ids=False, keep_scores=False, force=True)
s = time.perf_counter() - t
from cld_lake.lake import open_lake, scores_path
stored = pyarrow.parquet.ParquetFile(scores_path(open_lake(sys.argv[1])).local_path)  # checksum, streamed: no RSS added
checksum = sum(float(np.nansum(b.column(0).to_numpy())) for b in stored.iter_batches(65536, columns=["bench_" + engine]))
report(s, checksum=checksum, nan=r.provenance["nan"])
"""


def run_child(code: str, *args: str) -> dict:
    """Run ``code`` in a fresh interpreter; return its report plus peak RSS (MiB)."""
    import psutil

    with tempfile.NamedTemporaryFile("w+", suffix=".err") as err:
        cmd = ["/usr/bin/time", "-f", "MAXRSS_KB=%M", sys.executable, "-c", PRELUDE + code, *args]
        proc = psutil.Popen(
            cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=Path(__file__).parents[1]
        )
        tree_peak = 0
        while proc.poll() is None:
            try:
                procs = [proc, *proc.children(recursive=True)]
                tree_peak = max(tree_peak, sum(_rss(p) for p in procs[1:]))  # without `time`
            except psutil.Error:
                pass
            time.sleep(0.02)
        out = proc.stdout.read()
        err.seek(0)
        err_text = err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark step failed ({proc.returncode}):\n{err_text[-3000:]}")
    maxrss = [ln for ln in err_text.splitlines() if ln.startswith("MAXRSS_KB=")][-1]
    result = json.loads(out.strip().splitlines()[-1])
    result["rss_mib"] = int(maxrss.split("=")[1]) / 1024
    result["tree_rss_mib"] = tree_peak / 2**20
    return result


def run_cli(tree: Path, lake: Path, engine: str) -> dict:
    """One whole ``cld-lake score`` process importing cld_lake from ``tree``: wall seconds of
    the process, its CPU seconds (user + system, its reaped children included: on a shared
    machine they depend on the load much less) and its peak RSS (MiB). It scores a copy of
    ``lake`` made of hard links (committed files are never changed in place), so every run
    stores into a lake without scores, whatever layout the tree writes."""
    run_lake = lake.with_name(lake.name + "-run")
    shutil.rmtree(run_lake, ignore_errors=True)
    shutil.copytree(lake, run_lake, copy_function=os.link)
    cld_lake = Path(sys.executable).with_name("cld-lake")
    args = ["score", str(run_lake), "--engine", engine, "--name", f"bench_{engine}"]
    cmd = ["/usr/bin/time", "-f", "MAXRSS_KB=%M CPU_S=%U %S", str(cld_lake), *args]
    env = dict(os.environ, PYTHONPATH=str(tree))
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree)
    seconds = time.perf_counter() - started
    shutil.rmtree(run_lake, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"cld-lake score --engine {engine} ({tree}) failed:\n{proc.stderr[-3000:]}"
        )
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("MAXRSS_KB=")][-1]
    rss, user, system = line.replace("MAXRSS_KB=", "").replace("CPU_S=", "").split()
    return {"seconds": seconds, "cpu_s": float(user) + float(system), "rss_mib": int(rss) / 1024}


def bench_cli(
    config: SynthConfig, work: Path, engines: list[str], repeats: int, trees: list[list[str]]
) -> list[dict]:
    """Whole-process ``cld-lake score`` per engine and source tree, runs interleaved."""
    lake = work / f"lake-{config.train}"
    synth_lake(lake, config)
    warm(lake)
    rows = []
    for engine in engines:
        runs: dict[str, list[dict]] = {label: [] for label, _ in trees}
        for _ in range(repeats):
            for label, tree in trees:
                runs[label].append(run_cli(Path(tree).resolve(), lake, engine))
        for label, _ in trees:
            mine = runs[label]
            row = {
                "step": f"cld-lake score --engine {engine} [{label}]",
                "engine": engine,
                "tree": label,
                "seconds": statistics.median(r["seconds"] for r in mine),
                "cpu_s": statistics.median(r["cpu_s"] for r in mine),
                "rss_mib": statistics.median(r["rss_mib"] for r in mine),
                "runs": [round(r["seconds"], 3) for r in mine],
            }
            print(
                f"  {row['step']:<42} {row['seconds']:8.2f} s  {row['cpu_s']:6.2f} CPU s  "
                f"{row['rss_mib']:6.0f} MiB  (runs {row['runs']})",
                flush=True,
            )
            rows.append(row)
    shutil.rmtree(lake)
    return rows


def print_cli_table(title: str, rows: list[dict], labels: list[str]) -> None:
    print(f"\n{title}")
    columns = [("seconds", "s", ".2f"), ("cpu_s", "CPU s", ".2f"), ("rss_mib", "MiB", ".0f")]
    names = [f"{label} {unit}" for _, unit, _ in columns for label in labels]
    if len(labels) > 1:
        names += [f"{unit} {labels[-1]}/{labels[0]}" for _, unit, _ in columns[:2]]
    header = f"| {'engine':<6} | " + " | ".join(f"{n:>12}" for n in names) + " |"
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    for engine in dict.fromkeys(r["engine"] for r in rows):
        by = {r["tree"]: r for r in rows if r["engine"] == engine}
        cells = [f"{by[t][key]:12{fmt}}" for key, _, fmt in columns for t in labels]
        if len(labels) > 1:
            cells += [f"{by[labels[-1]][k] / by[labels[0]][k]:12.2f}" for k, _, _ in columns[:2]]
        print(f"| {engine:<6} | " + " | ".join(cells) + " |")


def _rss(p) -> int:
    try:
        return p.memory_info().rss
    except Exception:
        return 0


def export_npy(lake_path: Path, out: Path) -> None:
    """Write the train/val losses and labels as .npy for the in-memory reference (streamed)."""
    from cld_lake.lake import open_lake

    lake = open_lake(lake_path)
    for name in ("train", "val"):
        split = lake.split(name)
        arr = np.lib.format.open_memmap(
            out / f"{name}_loss.npy", "w+", np.float32, (split.num_samples, split.num_checkpoints)
        )
        for block in split.blocks():
            arr[block.start : block.start + len(block)] = block.loss
        arr.flush()
        del arr
        np.save(out / f"{name}_labels.npy", split.labels)


def warm(path: Path) -> None:
    """Read every file once so all runs see the same (page-cache) state."""
    for root, _, files in os.walk(path):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                while fh.read(16 << 20):
                    pass


def measure(name: str, code: str, args: list[str], repeats: int) -> dict:
    runs = [run_child(code, *args) for _ in range(repeats)]
    row = {
        "step": name,
        "seconds": statistics.median(r["seconds"] for r in runs),
        "rss_mib": statistics.median(r["rss_mib"] for r in runs),
        "tree_rss_mib": statistics.median(r["tree_rss_mib"] for r in runs),
        "runs": [round(r["seconds"], 3) for r in runs],
    }
    print(
        f"  {name:<28} {row['seconds']:8.2f} s  {row['rss_mib']:8.0f} MiB  "
        f"(tree {row['tree_rss_mib']:.0f} MiB; runs {row['runs']})",
        flush=True,
    )
    return row


def bench(
    config: SynthConfig, work: Path, engines: list[str], repeats: int, reference: bool
) -> list[dict]:
    lake = work / f"lake-{config.train}"
    started = time.perf_counter()
    synth_lake(lake, config)
    print(
        f"generated {config.train:,} x {config.checkpoints} lake in {time.perf_counter() - started:.1f} s"
    )
    rows = []
    warm(lake)
    train_segments = lake / "splits" / "train" / "segments"
    rows.append(measure("page-cache read (floor)", READ_FLOOR, [str(train_segments)], repeats))
    if reference:
        npy = work / "npy"
        npy.mkdir(exist_ok=True)
        export_npy(lake, npy)
        warm(npy)
        rows.append(measure("in-memory reference", IN_MEMORY_REFERENCE, [str(npy)], repeats))
        shutil.rmtree(npy)
    for engine in engines:
        rows.append(measure(f"engine {engine}", ENGINE, [str(lake), engine], repeats))
    shutil.rmtree(lake)
    return rows


def print_table(title: str, rows: list[dict], base: dict[str, dict] | None = None) -> None:
    by = {r["step"]: r for r in rows}
    floor = by.get("page-cache read (floor)", {}).get("seconds")
    ref = by.get("in-memory reference", {}).get("seconds")
    print(f"\n{title}")
    header = f"| {'step':<26} | {'median s':>8} | {'x floor':>7} | {'ref / step':>10} | {'peak RSS MiB':>12} | {'tree RSS MiB':>12} |"
    if base:
        header += f" {'RSS vs 1x':>9} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for r in rows:
        line = (
            f"| {r['step']:<26} | {r['seconds']:8.2f} | "
            f"{r['seconds'] / floor if floor else float('nan'):7.1f} | "
            f"{ref / r['seconds'] if ref else float('nan'):10.1f} | "
            f"{r['rss_mib']:12.0f} | {r['tree_rss_mib']:12.0f} |"
        )
        if base:
            b = base.get(r["step"])
            line += f" {r['rss_mib'] / b['rss_mib'] if b else float('nan'):9.2f} |"
        print(line)


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description="CLD scoring benchmark (see module docstring).")
    parser.add_argument("--rows", type=int, default=SynthConfig.train)
    parser.add_argument("--val", type=int, default=SynthConfig.val)
    parser.add_argument("--checkpoints", type=int, default=SynthConfig.checkpoints)
    parser.add_argument("--classes", type=int, default=SynthConfig.classes)
    parser.add_argument(
        "--engines",
        nargs="+",
        default=list(ENGINES),
        help="Engines to run (space or comma separated); the read floor and the in-memory "
        "reference are always measured at 1x ('reference' is accepted and ignored).",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--scale", type=int, default=0, help="Also run at SCALE x samples (RSS check)."
    )
    parser.add_argument(
        "--workdir",
        type=existing_dir,
        default=None,
        help="An existing directory for the lakes (default: a temp dir).",
    )
    parser.add_argument(
        "--json", type=output_file, default=None, help="Also write the rows as JSON here."
    )
    parser.add_argument(
        "--cli",
        action="store_true",
        help="Measure the whole `cld-lake score` process per engine instead (see docstring).",
    )
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        type=labelled_dir,
        metavar="LABEL=PATH",
        help="--cli: a source tree to import cld_lake from (repeat; default: this one).",
    )
    args = parser.parse_args(argv)
    engines = [e for arg in args.engines for e in arg.split(",") if e and e != "reference"]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        parser.error(f"--engines: unknown {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    work = Path(tempfile.mkdtemp(prefix="cld-bench-", dir=args.workdir))
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; work dir {work}"
    )
    try:
        config = SynthConfig(args.rows, args.val, args.checkpoints, args.classes)
        if args.cli:
            trees = [t.split("=", 1) for t in args.tree] or [
                ["this", str(Path(__file__).parents[1])]
            ]
            rows = bench_cli(config, work, engines, args.repeats, trees)
            title = f"whole `cld-lake score` process, {config.train:,} train x {config.checkpoints}"
            print_cli_table(title, rows, [label for label, _ in trees])
            if args.json:
                Path(args.json).write_text(json.dumps({"cli": rows}, indent=2))
            return
        rows = bench(config, work, engines, args.repeats, reference=True)
        print_table(
            f"{config.train:,} train x {config.checkpoints} checkpoints, {config.classes} classes, {config.val:,} val",
            rows,
        )
        result = {"1x": rows}
        if args.scale:
            big = SynthConfig(args.rows * args.scale, args.val, args.checkpoints, args.classes)
            big_rows = bench(big, work, engines, args.repeats, reference=False)
            print_table(
                f"{big.train:,} train ({args.scale}x samples)",
                big_rows,
                {r["step"]: r for r in rows},
            )
            result[f"{args.scale}x"] = big_rows
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
