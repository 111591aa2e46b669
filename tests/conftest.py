"""Shared fixtures: tiny real lakes on disk and an in-process CLI runner."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CLI_BIN = Path(sys.executable).with_name("cld-lake")


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """Run ``cld-lake ARGS`` in-process (the real click app) and capture exit code and output."""
    from cld_lake._cli import cli as app
    from cld_lake._cli._common import run_main

    def run(*args: object) -> CliResult:
        capsys.readouterr()
        code = run_main(app, [str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def run_cli_subprocess(*args: object, timeout: float = 120) -> CliResult:
    """Run the installed ``cld-lake`` executable in a real subprocess."""
    proc = subprocess.run(
        [str(CLI_BIN), *map(str, args)], capture_output=True, text=True, timeout=timeout
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def lake_hash(path: Path) -> str:
    """Hash of every file in a lake except lock files (as the contract check does)."""
    h = hashlib.md5()
    if not path.exists():
        return "absent"
    for root, _, files in sorted(os.walk(path)):
        for name in sorted(files):
            if name.endswith(".lock"):
                continue
            p = Path(root) / name
            h.update(str(p.relative_to(path)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def make_arrays(n: int, t: int, c: int, seed: int = 0, nan_rows: int = 0):
    """Loss curves (float32 N x T), labels, shuffled sample ids."""
    rng = np.random.default_rng(seed)
    base = np.exp(-np.arange(t) / 3.0)
    loss = (base * rng.uniform(0.5, 2, (n, 1)) + 0.05 * rng.random((n, t))).astype(np.float32)
    if nan_rows:
        rows = rng.choice(n, nan_rows, replace=False)
        loss[rows, rng.integers(0, t, nan_rows)] = np.nan
    labels = rng.integers(0, c, n)
    labels[:c] = np.arange(c)  # every class present
    ids = rng.permutation(n).astype(np.int64) + 1000
    return loss, labels, ids


def write_npy_set(
    folder: Path, n: int, val: int, t: int, c: int, seeds: tuple[int, int], nan_rows: int = 0
) -> dict:
    """Write a train/val set of .npy files (``loss, labels, ids, vloss, vlabels``) into
    ``folder``; returns their paths, and the arrays under ``"arrays"``."""
    loss, labels, ids = make_arrays(n, t, c, seed=seeds[0], nan_rows=nan_rows)
    vloss, vlabels, _ = make_arrays(val, t, c, seed=seeds[1])
    arrays = {"loss": loss, "labels": labels, "ids": ids, "vloss": vloss, "vlabels": vlabels}
    files: dict = {}
    for name, arr in arrays.items():
        files[name] = folder / f"{name}.npy"
        np.save(files[name], arr)
    files["arrays"] = arrays
    return files


@pytest.fixture
def npy_files(tmp_path):
    """Write a small train/val set of .npy files; returns a dict of paths and arrays."""
    return write_npy_set(tmp_path, 300, 40, 7, 4, seeds=(1, 2), nan_rows=3)


def import_arrays(folder: Path, lake: Path, split: str = "train", **arrays: np.ndarray) -> Path:
    """Save ``loss``, ``labels`` and optional ``sample_ids`` / ``correct`` / ``margin`` arrays
    as .npy files in ``folder`` and import them into ``lake`` through the real importer.
    ``row_chunk`` may be passed as an int."""
    from cld_lake.lake.importer import import_npy

    row_chunk = int(arrays.pop("row_chunk", 65536))
    paths = {}
    for name, values in arrays.items():
        paths[name] = folder / f"{split}_{name}.npy"
        np.save(paths[name], values)
    loss, labels = paths.pop("loss"), paths.pop("labels")
    import_npy(lake, split, loss, labels, row_chunk=row_chunk, **paths)
    return lake


def scores_file(lake) -> Path:
    """The current scores table of ``lake`` (a path or a Lake) as a local path: the file
    ``cld_lake.json`` names (it moves with every score stored)."""
    from cld_lake.lake import Lake, open_lake, scores_path

    found = scores_path(lake if isinstance(lake, Lake) else open_lake(lake))
    assert found is not None, f"{lake}: nothing scored yet"
    return found.local_path


def has_scores(lake) -> bool:
    """Does ``lake`` (a path or a Lake) hold a scores table?"""
    from cld_lake.lake import Lake, open_lake, scores_path

    return scores_path(lake if isinstance(lake, Lake) else open_lake(lake)) is not None


def plant_legacy_scores(lake: Path, table) -> Path:
    """Make ``lake`` a lake of the old scores layout holding ``table``: ``LAKE/scores.parquet``
    (written as :func:`write_scores_table` does), no ``scores`` record in ``cld_lake.json`` and
    no ``scores/`` folder, as a version before versioned tables left it. Returns the path."""
    import json
    import shutil

    from cld_lake._meta import canonical_json, crc32c_hex
    from cld_lake.lake import _format as fmt

    root = lake / fmt.ROOT_FILE
    meta = json.loads(root.read_text())
    meta.pop(fmt.SCORES_KEY, None)
    meta["checksum"] = crc32c_hex(canonical_json(meta))
    root.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(lake / fmt.SCORES_DIR, ignore_errors=True)
    write_scores_table(lake / fmt.SCORES_FILE, table)
    return lake / fmt.SCORES_FILE


def write_scores_table(path: Path, table) -> None:
    """Write ``table`` as a scores table with the checksums the real writer records (for tests
    that plant a table another tool, or an older version, wrote)."""
    import pyarrow.parquet as pq

    from cld_lake.lake import scores as scores_table

    meta = dict(table.schema.metadata or {})
    meta.setdefault(b"cld_lake", b"{}")
    table = table.replace_schema_metadata(meta)
    sums = scores_table.ColumnChecksums(table.schema)
    sums.update(table)
    with pq.ParquetWriter(path, table.schema) as writer:
        writer.write_table(table)
        writer.add_key_value_metadata(scores_table.footer(meta, sums))


@pytest.fixture(scope="module")
def dask_client():
    """A real 2-worker dask LocalCluster (one per test module) and its client."""
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def s3_env():
    """A real S3-compatible server (moto, a subprocess on 127.0.0.1) with bucket ``lakes``;
    the environment pointing clients at it, also set in this process while it runs."""
    from tests._s3server import s3_server

    with s3_server() as env:
        yield env
