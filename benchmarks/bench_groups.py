"""Benchmark: a corpus of documents with named groups, imported, scored and selected (issue 17).

Plain script (not part of the test suite). The input a language-model team has after recording
a proxy elsewhere: a train split of ``--docs`` documents (default 100M) x ``--checkpoints`` mean
token losses (a ``.npy``), each document's source as a string (``group`` column of a Parquet,
``--groups`` distinct names, default 1,000), a held-out split of the same sources (``val``) and a
target task's held-out set (``target``). Every step runs in its own process the way a user
types it (``cld-lake import ... --groups``, ``score --reference group``, ``score --reference
split:target``, ``select``, ``sql ... GROUP BY group_name``), under the wrapper of
``benchmarks.bench_scale`` (wall time of the whole process, peak RSS of the process, CPU seconds).

    python -m benchmarks.bench_groups --dir DIR                      # 100M documents
    python -m benchmarks.bench_groups --docs 1000000 --dir DIR       # quicker

Target (issue 17): every step under 1 GB of peak RSS at 100M documents and 1,000 groups.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks._args import ArgumentParser, work_dir
from benchmarks.bench_scale import RSS_TARGET_MB, machine_line, run_wrapped

BLOCK = 1 << 18  # rows generated (and written) at a time: memory stays at one block
STEPS = (
    "import-train",
    "import-val",
    "import-target",
    "info",
    "score-group",
    "score-target",
    "select-group",
    "select-target",
    "sql-by-name",
)
WRITE_INPUTS = """
import json
from pathlib import Path
from benchmarks.bench_groups import group_names, write_split
folder, sizes, checkpoints, groups, seed = ARGS
names = group_names(int(groups))
for split, docs in json.loads(sizes).items():
    write_split(Path(folder), split, docs, int(checkpoints), names, int(seed))
"""
BY_NAME_SQL = (
    "SELECT group_name, count(*) AS docs, avg(cld) AS cld, avg(cld_target) AS cld_target "
    "FROM scores GROUP BY group_name ORDER BY group_name"
)


def group_names(count: int) -> np.ndarray:
    """Source names as a corpus has them (``web/00017`` ...), not already in sorted order."""
    kinds = np.array(["web", "code", "books", "papers", "forums"])
    return np.array([f"{kinds[i % len(kinds)]}/{(i * 7919) % count:05d}" for i in range(count)])


SPLIT_CODES = {"train": 0, "val": 1, "target": 2}  # seeds: the data do not depend on the process


def write_split(
    folder: Path, split: str, docs: int, checkpoints: int, names: np.ndarray, seed: int
) -> None:
    """``<split>-loss.npy`` (docs x checkpoints float32) and ``<split>-groups.parquet``,
    generated block by block. A document's loss decays from about ln(256) towards a floor set by
    its source's difficulty and its own, at its own rate, with noise; a target split's sources are
    the first tenth of the names."""
    pool = len(names) if split != "target" else max(1, len(names) // 10)
    difficulty = np.random.default_rng([seed, 0]).uniform(0.5, 2.0, len(names))
    t = np.arange(checkpoints, dtype=np.float32)
    schema = pa.schema([("group", pa.string())])
    header = {"descr": "<f4", "fortran_order": False, "shape": (docs, checkpoints)}
    # plain writes, not a memmap: mapped pages would count as this step's RSS
    with (
        open(folder / f"{split}-loss.npy", "wb") as loss,
        pq.ParquetWriter(folder / f"{split}-groups.parquet", schema) as out,
    ):
        np.lib.format.write_array_header_1_0(loss, header)
        for block, start in enumerate(range(0, docs, BLOCK)):
            n = min(BLOCK, docs - start)
            rng = np.random.default_rng([seed, SPLIT_CODES[split], block])
            g = rng.integers(0, pool, n)
            floor = difficulty[g] * rng.uniform(0.5, 1.5, n)
            rate = rng.uniform(0.1, 0.8, n)
            curve = floor[:, None] + (5.5 - floor[:, None]) * np.exp(-rate[:, None] * t[None, :])
            noise = rng.normal(1.0, 0.05, (n, checkpoints))
            loss.write((curve * noise).astype("<f4").tobytes())
            out.write_table(pa.table({"group": pa.array(names[g])}))


def step_arguments(step: str, lake: Path, inputs: Path, work: Path) -> list[str]:
    lake_s = str(lake)
    if step.startswith("import-"):
        split = step.removeprefix("import-")
        return [
            "cli",
            "import",
            lake_s,
            "--split",
            split,
            "--loss",
            str(inputs / f"{split}-loss.npy"),
            "--groups",
            str(inputs / f"{split}-groups.parquet"),
        ]
    cli = {
        "info": ["info", lake_s],
        "score-group": ["score", lake_s, "--reference", "group", "--force"],
        "score-target": ["score", lake_s, "--reference", "split:target", "--name", "cld_target"]
        + ["--force"],
        "select-group": ["select", lake_s, "--score", "cld", "--fraction", "0.1"]
        + ["--out", str(work / "coreset.parquet"), "--force"],
        "select-target": ["select", lake_s, "--score", "cld_target", "--fraction", "0.1"]
        + ["--out", str(work / "coreset-target.parquet"), "--force"],
        "sql-by-name": ["sql", lake_s, BY_NAME_SQL, "--out", str(work / "by-name.csv"), "--force"],
    }
    return ["cli", *cli[step]]


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=100_000_000, help="training documents")
    parser.add_argument("--val", type=int, default=100_000, help="held-out documents")
    parser.add_argument("--target", type=int, default=20_000, help="target-task documents")
    parser.add_argument("--groups", type=int, default=1000, help="distinct named sources")
    parser.add_argument("--checkpoints", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=work_dir, required=True, help="where inputs and lake go")
    parser.add_argument("--keep", action="store_true", help="keep the inputs and the lake")
    args = parser.parse_args(argv)
    work: Path = args.dir
    inputs, lake = work / "inputs", work / "corpus.lake"
    shutil.rmtree(lake, ignore_errors=True)
    inputs.mkdir(parents=True, exist_ok=True)
    print(f"# {args.docs:,} documents x {args.checkpoints} checkpoints, {args.groups} named groups")
    print(f"# val {args.val:,}, target {args.target:,}; {machine_line()}")
    print("| step | wall s | CPU s | peak RSS MB | under 1 GB |")
    print("|---|---:|---:|---:|---|")
    failed = False
    # the inputs are written in a process of their own too: a child inherits its parent's peak
    # RSS on Linux, so this process stays small and each step's peak is its own
    sizes = {"train": args.docs, "val": args.val, "target": args.target}
    write = ["code", WRITE_INPUTS, str(inputs), json.dumps(sizes), str(args.checkpoints)]
    write += [str(args.groups), str(args.seed)]
    for step in ("write-inputs", *STEPS):
        arguments = write if step == "write-inputs" else step_arguments(step, lake, inputs, work)
        done = run_wrapped(arguments, work)
        ok = "yes" if done.self_mb < RSS_TARGET_MB else "NO"
        if done.code:
            ok, failed = f"FAILED (exit {done.code}): {done.out.strip().splitlines()[-1:]}", True
        print(f"| {step} | {done.wall_s:.1f} | {done.cpu_s:.1f} | {done.self_mb:.0f} | {ok} |")
    if not args.keep:
        shutil.rmtree(inputs, ignore_errors=True)
        shutil.rmtree(lake, ignore_errors=True)
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
