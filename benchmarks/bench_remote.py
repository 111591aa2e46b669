"""Benchmark: the same lake on local disk and on an S3-compatible server (moto, on 127.0.0.1),
through each S3 client (s3fs and obstore).

Plain script (not part of the test suite). Writes one N x T float32 ``.npy`` (bounded memory,
block by block), then for each place (a local directory, ``s3://lakes/...`` on a moto server
this script starts and stops, once per client: ``CLD_LAKE_S3_CLIENT``) times, each in its own
process: ``cld-lake import`` (train and val), opening the lake (process start-up, the
client's import, the root JSON), ``score --engine numpy``, ``select --fraction 0.1`` and a SQL
aggregate over the scores; and the import of each client module alone. Wall time is the
whole process; peak RSS is the CLI process's (the moto server is another process and holds
the objects in its memory: its size is reported too). Medians of ``--repeat`` runs, all
places in the same invocation.

    python -m benchmarks.bench_remote                       # 1.28M x 90 (ImageNet-1k size)
    python -m benchmarks.bench_remote --rows 200000 --repeat 1
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np

from benchmarks._args import ArgumentParser, existing_dir
from benchmarks.bench_scale import run_wrapped

STEPS = ("import", "open", "score", "select", "sql")
CLIENTS = ("fsspec", "obstore")  # CLD_LAKE_S3_CLIENT
CLIENT_MODULES = {"fsspec": "s3fs", "obstore": "obstore"}
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
        "open": [
            ["code", f"from cld_lake.lake import open_lake; open_lake({lake!r}).split('train')"]
        ],
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
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_281_167)
    parser.add_argument("--val-rows", type=int, default=50_000)
    parser.add_argument("--checkpoints", type=int, default=90)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=existing_dir, default=None)
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
            imports: dict[str, list[float]] = {}
            for r in range(args.repeat):
                places = {"local": (str(work / f"lake-{r}"), "fsspec")}
                for client in CLIENTS:
                    places[client] = (f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}/lake", client)
                for place, (lake, client) in places.items():
                    os.environ["CLD_LAKE_S3_CLIENT"] = client
                    commands = steps_for(lake, work, work / "m.parquet", args.classes)
                    for step in STEPS:
                        results.setdefault((place, step), []).append(run(commands[step], work))
                    server_peak = max(server_peak, server.memory_info().rss / 2**20)
                    if lake.startswith("s3://"):
                        run([["code", f"from cld_lake.storage import location; location({lake!r}).delete_tree()"]], work)  # fmt: skip
                for client, module in CLIENT_MODULES.items():
                    imports.setdefault(client, []).append(
                        run([["code", f"import {module}"]], work)[0]
                    )
                shutil.rmtree(work / f"lake-{r}", ignore_errors=True)
        size = args.rows * args.checkpoints * 4 / 1e9
        print(
            f"\n{args.rows:,} x {args.checkpoints} float32 ({size:.2f} GB of train losses), "
            f"medians of {args.repeat}; moto server peak RSS {server_peak:,.0f} MB "
            f"(endpoint {env['AWS_ENDPOINT_URL']})\n"
        )
        print(
            "| step | local wall s | local RSS MB | s3 via s3fs wall s | RSS MB | s3 / local "
            "| s3 via obstore wall s | RSS MB | s3 / local | obstore / s3fs |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for step in STEPS:
            (lw, lr), (fw, fr), (ow, orss) = (
                (statistics.median(x) for x in zip(*results[(place, step)], strict=True))
                for place in ("local", *CLIENTS)
            )
            print(
                f"| {step} | {lw:.2f} | {lr:,.0f} | {fw:.2f} | {fr:,.0f} | {fw / lw:.2f}x "
                f"| {ow:.2f} | {orss:,.0f} | {ow / lw:.2f}x | {ow / fw:.2f}x |"
            )
        for client, module in CLIENT_MODULES.items():
            print(f"process importing {module} alone: {statistics.median(imports[client]):.2f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
