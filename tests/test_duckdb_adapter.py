"""The DuckDB adapter's fallback: without ``duckdb._sources`` the answers stay the same.

``cld_lake._duckdb`` builds on DuckDB's private source protocol (filter pushdown, row counts)
and falls back to plain Arrow streams when that module is missing or changed. These tests run
the fallback on purpose, once by switching the adapter's flag in-process and once for real in
a subprocess where importing ``duckdb._sources`` fails, and compare with the pushdown path:
the ``losses`` queries and the DuckDB scoring engine (against the NumPy engine).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cld_lake import _duckdb
from cld_lake import sql as lake_sql
from cld_lake.lake import Lake
from cld_lake.score import compute_cld
from tests.conftest import import_arrays, make_arrays

N, T, C, CHUNK = 600, 6, 4, 64
QUERIES = [
    "SELECT split, sample_id, label, checkpoint, loss FROM losses ORDER BY ALL",
    "SELECT checkpoint, loss FROM losses WHERE sample_id = 1234 ORDER BY checkpoint",
    "SELECT count(*), sum(loss::DOUBLE) FROM losses WHERE label IN (1, 3) AND checkpoint >= 2",
    "SELECT * FROM losses WHERE NOT (sample_id < 1500 OR checkpoint <> 4) ORDER BY ALL",
    "SELECT * FROM val_reference",
    "SELECT a.sample_id, a.loss - b.loss FROM losses a JOIN losses b USING (sample_id) "
    "WHERE a.checkpoint = 0 AND b.checkpoint = 5 ORDER BY 1",
]


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Lake:
    d = tmp_path_factory.mktemp("adapter")
    loss, labels, ids = make_arrays(N, T, C, seed=21, nan_rows=3)
    import_arrays(d, d / "lake", loss=loss, labels=labels, sample_ids=ids, row_chunk=CHUNK)
    vloss, vlabels, _ = make_arrays(80, T, C, seed=22)
    import_arrays(d, d / "lake", split="val", loss=vloss, labels=vlabels, row_chunk=CHUNK)
    return Lake(d / "lake")


def _answers(lake: Lake) -> list[str]:
    return [repr(lake_sql.query(lake, q).rows()) for q in QUERIES]  # repr: NaN equals NaN


def test_the_fallback_flag_gives_the_same_rows_without_pushdown(lake, monkeypatch):
    assert _duckdb.SCAN_SOURCES  # the pinned DuckDB has the private module
    with_pushdown = _answers(lake)
    pushed = lake_sql.ScanStats()
    con = lake_sql.connect(lake, stats=pushed)
    con.sql("SELECT loss FROM losses WHERE sample_id = 1234").fetchall()
    con.close()

    monkeypatch.setattr(_duckdb, "SCAN_SOURCES", False)
    assert _answers(lake) == with_pushdown
    plain = lake_sql.ScanStats()
    con = lake_sql.connect(lake, stats=plain)
    con.sql("SELECT loss FROM losses WHERE sample_id = 1234").fetchall()
    con.close()
    blocks = -(-N // CHUNK) + -(-80 // CHUNK)
    assert (pushed.row_blocks, plain.row_blocks) == (1, blocks)  # the fallback really ran


def test_the_fallback_flag_keeps_the_duckdb_engine_equal_to_numpy(lake, monkeypatch):
    want = compute_cld(lake, engine="numpy", store=False).scores
    monkeypatch.setattr(_duckdb, "SCAN_SOURCES", False)
    got = compute_cld(lake, engine="duckdb", store=False).scores
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9, equal_nan=True)


FALLBACK_SCRIPT = """
import builtins, json, sys
import duckdb  # DuckDB itself loads fine; only cld_lake's import of the private module fails

real_import = builtins.__import__

def no_private_module(name, *args, **kwargs):
    if name.startswith("duckdb._sources"):
        raise ImportError("simulated: duckdb._sources is gone")
    return real_import(name, *args, **kwargs)

builtins.__import__ = no_private_module
import cld_lake._duckdb as adapter
builtins.__import__ = real_import

from cld_lake import sql as lake_sql
from cld_lake.lake import Lake
from cld_lake.score import compute_cld
from tests.test_duckdb_adapter import QUERIES

assert not adapter.SCAN_SOURCES and adapter.ScanSource.__mro__[1] is object
lake = Lake(sys.argv[1])
answers = [repr(lake_sql.query(lake, q).rows()) for q in QUERIES]
scores = compute_cld(lake, engine="duckdb", store=False).scores
print(json.dumps({"answers": answers, "scores": [None if s != s else s for s in scores.tolist()]}))
"""


def test_without_the_private_module_queries_and_scores_are_unchanged(lake):
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", FALLBACK_SCRIPT, str(lake.path)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["answers"] == _answers(lake)
    want = compute_cld(lake, engine="numpy", store=False).scores
    got = np.array([np.nan if s is None else s for s in result["scores"]])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9, equal_nan=True)
