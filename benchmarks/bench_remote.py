"""Benchmark: the same lake on local disk and on an S3-compatible server (moto, on 127.0.0.1).

Plain script (not part of the test suite). Writes one N x T float32 ``.npy`` (bounded memory,
block by block), then for each place (a local directory, ``s3://lakes/...`` on a moto server
this script starts and stops) times, each in its own process: ``cld-lake import`` (train and
val), ``score --engine numpy``, ``select --fraction 0.1`` and a SQL aggregate over the scores.
Wall time is the whole process; peak RSS is the CLI process's (the moto server is another
process and holds the objects in its memory: its size is reported too). Medians of
``--repeat`` runs; the remote/local ratio is from the same invocation.

    python -m benchmarks.bench_remote                       # 1.28M x 90 (ImageNet-1k size)
    python -m benchmarks.bench_remote --rows 200000 --repeat 1
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np

from benchmarks.bench_scale import run_wrapped

STEPS = ("import", "score", "select", "sql")
SQL = "SELECT label, avg(cld) AS m FROM scores GROUP BY label ORDER BY label"


def write_inputs(folder: Path, rows: int, val_rows: int, checkpoints: int, classes: int) -> None:
    """train/val loss .npy (float32) and labels, written block by block."""
    rng = np.random.default_rng(0)
    for split, n in (("train", rows), ("val", val_rows)):
        out = np.lib.format.open_memmap(
            folder / f"{split}_loss.npy", mode="w+", dtype=np.float32, shape=(n, checkpoints)
        )
        decay = np.exp(-np.arange(checkpoints) / (checkpoints / 4))
        for a in range(0, n, 1 << 18):
            b = min(a + (1 << 18), n)
            scale = rng.uniform(0.5, 3.0, (b - a, 1))
            out[a:b] = scale * decay + 0.05 * rng.random((b - a, checkpoints))
        out.flush()
        del out
        np.save(folder / f"{split}_labels.npy", rng.integers(0, classes, n))


def steps_for(lake: str, inputs: Path, out: Path, classes: int) -> dict[str, list[list[str]]]:
    def imp(split: str) -> list[str]:
        args = ["cli", "import", lake, "--split", split, "--loss", str(inputs / f"{split}_loss.npy"),
                "--labels", str(inputs / f"{split}_labels.npy")]  # fmt: skip
        return args + (["--num-classes", str(classes)] if split == "train" else [])

    return {
        "import": [imp("train"), imp("val")],
        "score": [["cli", "score", lake, "--engine", "numpy"]],
        "select": [
            [
                "cli",
                "select",
                lake,
                "--score",
                "cld",
                "--fraction",
                "0.1",
                "--out",
                str(out),
                "--force",
            ]
        ],  # fmt: skip
        "sql": [["cli", "sql", lake, SQL]],
    }


def run(commands: list[list[str]], work: Path) -> tuple[float, float]:
    """Wall seconds (summed over the commands) and the largest peak RSS (MB)."""
    wall, rss = 0.0, 0.0
    for command in commands:
        done = run_wrapped(command, work)
        if done.code != 0:
            sys.exit(f"{' '.join(command[:3])} failed:\n{done.out[-2000:]}")
        wall += done.wall_s
        rss = max(rss, done.self_mb)
    return wall, rss


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_281_167)
    parser.add_argument("--val-rows", type=int, default=50_000)
    parser.add_argument("--checkpoints", type=int, default=90)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests._s3server import BUCKET, s3_server

    work = Path(tempfile.mkdtemp(prefix="bench-remote-", dir=args.dir))
    try:
        # in a child: a forked step inherits this process's peak RSS as its own starting
        # ru_maxrss, so this process must stay small
        subprocess.run(
            [sys.executable, "-c", "import sys; from benchmarks.bench_remote import write_inputs; "
             "write_inputs(__import__('pathlib').Path(sys.argv[1]), *map(int, sys.argv[2:]))",
             str(work), str(args.rows), str(args.val_rows), str(args.checkpoints),
             str(args.classes)],
            check=True, cwd=Path(__file__).resolve().parents[1],
        )  # fmt: skip
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        with s3_server() as env:
            import psutil

            server = next(p for p in psutil.Process().children() if "moto" in " ".join(p.cmdline()))
            server_peak = 0.0
            for r in range(args.repeat):
                places = {
                    "local": str(work / f"lake-{r}"),
                    "s3": f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}/lake",
                }
                for place, lake in places.items():
                    commands = steps_for(lake, work, work / "m.parquet", args.classes)
                    for step in STEPS:
                        results.setdefault((place, step), []).append(run(commands[step], work))
                    server_peak = max(server_peak, server.memory_info().rss / 2**20)
                shutil.rmtree(work / f"lake-{r}", ignore_errors=True)
        size = args.rows * args.checkpoints * 4 / 1e9
        print(
            f"\n{args.rows:,} x {args.checkpoints} float32 ({size:.2f} GB of train losses), "
            f"medians of {args.repeat}; moto server peak RSS {server_peak:,.0f} MB "
            f"(endpoint {env['AWS_ENDPOINT_URL']})\n"
        )
        print("| step | local wall s | local RSS MB | s3 (moto) wall s | s3 RSS MB | s3 / local |")
        print("|---|---:|---:|---:|---:|---:|")
        for step in STEPS:
            lw, lr = (statistics.median(x) for x in zip(*results[("local", step)], strict=True))
            sw, sr = (statistics.median(x) for x in zip(*results[("s3", step)], strict=True))
            print(f"| {step} | {lw:.2f} | {lr:,.0f} | {sw:.2f} | {sr:,.0f} | {sw / lw:.2f}x |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
