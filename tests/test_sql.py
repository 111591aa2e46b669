"""SQL over the lake: views, filter pushdown into the losses scan, output, write guard."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cld_lake import sql as lake_sql
from cld_lake.lake import Lake
from cld_lake.lake.importer import import_npy
from cld_lake.lake.writer import SplitWriter
from cld_lake.sql import query as lake_query
from tests.conftest import import_arrays, lake_hash, make_arrays, write_scores_table

N, T, C = 2000, 6, 5
CHUNK = 256


def write_scores(
    lake_path: Path, ids, labels, columns: dict, provenance: dict | None = None
) -> None:
    """LAKE/scores.parquet in the scoring stage's format (sample_id, label, <scores>, b"cld_lake")."""
    table = pa.table(
        {"sample_id": pa.array(ids, pa.int64()), "label": pa.array(labels, pa.int64())}
    )
    for name, values in columns.items():
        table = table.append_column(name, pa.array(np.asarray(values, np.float64)))
    prov = provenance or {name: {"method": name, "checkpoints": "0..5 (6)"} for name in columns}
    table = table.replace_schema_metadata({b"cld_lake": json.dumps({"scores": prov}).encode()})
    write_scores_table(lake_path / "scores.parquet", table)


@pytest.fixture(scope="module")
def lake_data(tmp_path_factory):
    """A lake with train (3 channels, small chunks, custom ids) and val (one NaN sample)."""
    d = tmp_path_factory.mktemp("sql")
    loss, labels, ids = make_arrays(N, T, C, seed=3, nan_rows=4)
    rng = np.random.default_rng(4)
    correct = rng.random((N, T)) > 0.5
    margin = rng.normal(size=(N, T)).astype(np.float32)
    vloss, vlabels, _ = make_arrays(100, T, C, seed=5)
    vloss[7, 2] = np.nan
    arrays = {
        "loss": loss,
        "labels": labels,
        "ids": ids,
        "correct": correct,
        "margin": margin,
        "vloss": vloss,
        "vlabels": vlabels,
    }
    for k, v in arrays.items():
        np.save(d / f"{k}.npy", v)
    lake = d / "lake"
    import_npy(
        lake,
        "train",
        d / "loss.npy",
        d / "labels.npy",
        sample_ids=d / "ids.npy",
        correct=d / "correct.npy",
        margin=d / "margin.npy",
        row_chunk=CHUNK,
    )
    import_npy(lake, "val", d / "vloss.npy", d / "vlabels.npy", row_chunk=CHUNK)
    return Lake(lake), arrays


def test_losses_view_equals_imported_arrays(lake_data):
    lake, a = lake_data
    df = lake_query(
        lake,
        "SELECT sample_id, label, checkpoint, loss, correct, margin FROM losses "
        "WHERE split = 'train' ORDER BY sample_id, checkpoint",
    )
    order = np.argsort(a["ids"])
    assert df.height == N * T
    np.testing.assert_array_equal(df["sample_id"].to_numpy(), np.repeat(a["ids"][order], T))
    np.testing.assert_array_equal(df["label"].to_numpy(), np.repeat(a["labels"][order], T))
    np.testing.assert_array_equal(df["checkpoint"].to_numpy(), np.tile(np.arange(T), N))
    np.testing.assert_array_equal(df["loss"].to_numpy(), a["loss"][order].reshape(-1))
    np.testing.assert_array_equal(df["correct"].to_numpy(), a["correct"][order].reshape(-1))
    np.testing.assert_array_equal(df["margin"].to_numpy(), a["margin"][order].reshape(-1))
    val = lake_query(
        lake, "SELECT loss FROM losses WHERE split = 'val' ORDER BY sample_id, checkpoint"
    )["loss"].to_numpy()
    np.testing.assert_array_equal(val, a["vloss"].reshape(-1))


def test_views_samples_checkpoints_and_scores(lake_data, tmp_path):
    lake, a = lake_data
    counts = dict(
        lake_query(lake, "SELECT split, count(*) AS n FROM samples GROUP BY split").iter_rows()
    )
    assert counts == {"train": N, "val": 100}
    ck = lake_query(lake, "SELECT split, checkpoint FROM checkpoints ORDER BY split, checkpoint")
    assert ck.height == 2 * T and ck["checkpoint"].to_list()[:T] == list(range(T))
    empty = lake_query(lake, "SELECT * FROM scores")
    assert empty.height == 0 and empty.columns == ["sample_id", "label"]


def test_scores_view_reads_scores_parquet(tmp_path):
    loss, labels, ids = make_arrays(50, 4, 3, seed=9)
    import_arrays(tmp_path, tmp_path / "lk", loss=loss, labels=labels, sample_ids=ids)
    write_scores(
        tmp_path / "lk", ids, labels, {"cld": np.linspace(-1, 1, 50), "other": np.arange(50.0)}
    )
    df = lake_query(Lake(tmp_path / "lk"), "SELECT * FROM scores ORDER BY cld DESC LIMIT 3")
    assert df.columns == ["sample_id", "label", "cld", "other"]
    assert df["other"].to_list() == [49.0, 48.0, 47.0]


def test_val_reference_leaves_out_nonfinite_samples(lake_data):
    lake, a = lake_data
    ref = lake_query(
        lake,
        "SELECT label, checkpoint, mean_loss, n_samples FROM val_reference ORDER BY label, checkpoint",
    )
    vloss, vlabels = a["vloss"].astype(np.float64), a["vlabels"]
    ok = np.isfinite(vloss).all(axis=1)
    for label, ck, mean, n in ref.iter_rows():
        rows = (vlabels == label) & ok
        assert n == rows.sum()
        assert mean == pytest.approx(vloss[rows, ck].mean(), rel=1e-12)
    assert ref.height == C * T


PREDICATES = [
    "sample_id = {sid}",
    "sample_id IN ({sid}, 1001, 1500)",
    "sample_id BETWEEN 1100 AND 1200 AND checkpoint >= 4",
    "label = 2",
    "label <> 2 AND checkpoint IN (0, 5)",
    "checkpoint = 3 OR sample_id = {sid}",
    "NOT (checkpoint < 2) AND label >= 3",
    "sample_id = {sid} AND loss > 0.5",
    "split = 'val' AND sample_id < 10",
    "sample_id > 100000",
    "sample_id IS NOT NULL AND checkpoint != 1",
]


@pytest.mark.parametrize("where", PREDICATES)
@pytest.mark.parametrize("block_rows", [None, 77, 10**6])
def test_pushdown_gives_the_same_rows_as_a_full_scan(lake_data, where, block_rows):
    lake, a = lake_data
    where = where.format(sid=int(a["ids"][1234]))
    con = lake_sql.connect(lake, block_rows=block_rows)
    try:
        con.execute("CREATE TABLE full_copy AS SELECT * FROM losses")  # no filter: a full scan
        cols = "split, sample_id, label, checkpoint, loss, correct, margin"
        got = con.sql(f"SELECT {cols} FROM losses WHERE {where} ORDER BY ALL").fetchall()
        want = con.sql(f"SELECT {cols} FROM full_copy WHERE {where} ORDER BY ALL").fetchall()
    finally:
        con.close()
    assert len(got) == len(want) and repr(got) == repr(want)  # repr: NaN equals NaN


@pytest.mark.parametrize("where", [PREDICATES[1], PREDICATES[5]])
def test_pushdown_tiny_blocks(lake_data, where):
    test_pushdown_gives_the_same_rows_as_a_full_scan(lake_data, where, 3)


def _rchar() -> int | None:
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _measure(lake, query: str) -> tuple[lake_sql.ScanStats, int | None, list]:
    stats = lake_sql.ScanStats()
    con = lake_sql.connect(lake, stats=stats)
    try:
        before = _rchar()
        rows = con.sql(query).fetchall()
        after = _rchar()
    finally:
        con.close()
    return stats, (after - before) if before is not None else None, rows


def _net_bytes(lake, query: str, baseline: str) -> tuple[lake_sql.ScanStats, int | None, list]:
    """Bytes read by ``query`` beyond those of ``baseline`` (same tables, no trajectory values)."""
    stats, got, rows = _measure(lake, query)
    _, base, _ = _measure(lake, baseline)
    return stats, (got - base) if got is not None else None, rows


def test_one_sample_query_reads_one_block(tmp_path):
    n, t, chunk = 20000, 6, 1024
    loss, labels, ids = make_arrays(n, t, 4, seed=12)
    import_arrays(
        tmp_path, tmp_path / "lk", loss=loss, labels=labels, sample_ids=ids, row_chunk=chunk
    )
    lake = Lake(tmp_path / "lk")
    sid = int(ids[12345])
    base = f"SELECT count(*) FROM losses WHERE sample_id = {sid}"
    full, full_bytes, _ = _net_bytes(lake, "SELECT sum(loss) FROM losses", base)
    one, one_bytes, rows = _net_bytes(
        lake, f"SELECT checkpoint, loss FROM losses WHERE sample_id = {sid} ORDER BY 1", base
    )
    assert [r[1] for r in rows] == pytest.approx(loss[12345].tolist())
    assert full.row_blocks == -(-n // chunk) and one.row_blocks == 1
    assert one.values <= chunk * t and full.values == n * t
    if full_bytes is not None:  # bytes the process read from files (Linux /proc/self/io)
        assert one_bytes * 10 < full_bytes


def test_one_checkpoint_query_reads_only_its_segment(tmp_path):
    """A lake recorded checkpoint by checkpoint (one segment each): one checkpoint = 1/T of bytes."""
    t = 8
    loss, labels, ids = make_arrays(20000, t, 4, seed=11)
    lake = Lake.create(tmp_path / "lk")
    with SplitWriter(lake, "train", row_chunk=4096, auto_compact=False) as w:
        w.declare_samples(ids, labels)
        for k in range(t):
            ck = w.checkpoint(k)
            ck.add(ids, loss[:, k], labels=labels)
            ck.commit()
    lake = Lake(lake.path)
    base = "SELECT count(*) FROM losses WHERE checkpoint = 5"
    full, full_bytes, _ = _net_bytes(lake, "SELECT sum(loss) FROM losses", base)
    one, one_bytes, rows = _net_bytes(
        lake, "SELECT sum(loss::DOUBLE) FROM losses WHERE checkpoint = 5", base
    )
    assert rows[0][0] == pytest.approx(loss[:, 5].astype(np.float64).sum())
    assert one.bytes * t == full.bytes
    if full_bytes is not None:
        assert one_bytes * (t // 2) < full_bytes


def test_count_reads_no_trajectory_values(lake_data):
    lake, _ = lake_data
    stats, _, rows = _measure(lake, "SELECT count(*) FROM losses WHERE checkpoint = 2")
    assert rows == [(N * 1 + 100,)]
    assert stats.values == 0  # no channel column asked for: nothing read from the segments


def test_lazy_relation_and_errors(lake_data):
    lake, _ = lake_data
    rel = lake_query(lake, "SELECT label, count(*) AS n FROM samples GROUP BY label", lazy=True)
    assert sum(r[1] for r in rel.fetchall()) == N + 100
    with pytest.raises(lake_sql.SqlError, match="Parser Error"):
        lake_query(lake, "SELEC 1")
    with pytest.raises(lake_sql.SqlError, match="nope"):
        lake_query(lake, "SELECT nope FROM samples")


def test_cli_outputs(cli, lake_data, tmp_path):
    lake, _ = lake_data
    r = cli("sql", lake.path, "SELECT * FROM losses", "--out", tmp_path / "l.parquet")
    assert r.code == 0, r.err
    assert pq.read_table(tmp_path / "l.parquet").num_rows == (N + 100) * T
    r = cli(
        "sql", lake.path, "SELECT * FROM samples WHERE split = 'val'", "--out", tmp_path / "s.csv"
    )
    assert r.code == 0 and len((tmp_path / "s.csv").read_text().splitlines()) == 101
    r = cli(
        "sql",
        lake.path,
        "SELECT sample_id, label FROM samples LIMIT 5",
        "--out",
        tmp_path / "s.json",
    )
    assert r.code == 0 and len(json.loads((tmp_path / "s.json").read_text())) == 5
    r = cli("sql", lake.path, "SELECT * FROM losses", "--max-rows", "6")
    lines = r.out.splitlines()
    assert r.code == 0 and lines[-1] == f"({(N + 100) * T:,} rows, 6 shown)"
    assert set(lines[0].split()) == {
        "split",
        "sample_id",
        "label",
        "checkpoint",
        "loss",
        "correct",
        "margin",
    }
    assert len(lines) == 3 + 6 + 1 + 1
    r = cli("sql", lake.path, "SELECT count(*) AS n FROM samples")
    assert r.out.splitlines()[3].strip() == str(N + 100) and r.out.splitlines()[-1] == "(1 row)"
    target = tmp_path / "copied.csv"
    r = cli("sql", lake.path, f"COPY (SELECT * FROM samples) TO '{target}' (FORMAT CSV)")
    assert r.code == 0 and target.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["SELEC nothing"],
        ["SELECT nope FROM samples"],
        ["SELECT * FROM no_such_view"],
        ["COPY (SELECT 1) TO '{lake}/splits/x.csv'"],
        ["COPY (SELECT 1) TO '{lake}/../{lakename}/y.parquet' (FORMAT PARQUET)"],
        ["ATTACH '{lake}/db.duckdb'"],
        ["SELECT 1", "--out", "{lake}/out.parquet"],
        ["SELECT 1", "--out", "{tmp}/missing/out.parquet"],
        ["SELECT 1", "--out", "{tmp}/out.xlsx"],
    ],
)
def test_cli_bad_input_exit_2_lake_unchanged(cli, lake_data, tmp_path, args):
    lake, _ = lake_data
    args = [s.format(lake=lake.path, lakename=lake.path.name, tmp=tmp_path) for s in args]
    before = lake_hash(lake.path)
    r = cli("sql", lake.path, *args)
    assert r.code == 2
    assert r.err.startswith("cld-lake: error: ") and len(r.err.strip().splitlines()) == 1
    assert "Traceback" not in r.err
    assert lake_hash(lake.path) == before
    assert not (tmp_path / "missing").exists()


def test_interrupted_out_leaves_no_file(lake_data, tmp_path):
    lake, _ = lake_data
    out = tmp_path / "r.parquet"
    with pytest.raises(lake_sql.SqlError):  # fails while writing (error raised mid-query)
        lake_sql.write_query(
            lake, "SELECT CASE WHEN sample_id > 1500 THEN error('boom') END FROM samples", out
        )
    assert not out.exists() and os.listdir(tmp_path) == []


def test_class_diagnostics_view_equals_the_diagnostics_function(tmp_path):
    from cld_lake.diagnostics import class_nonpositive_share

    loss, labels, ids = make_arrays(60, 4, 3, seed=5)
    import_arrays(tmp_path, tmp_path / "lk", loss=loss, labels=labels, sample_ids=ids)
    lake = Lake(tmp_path / "lk")
    with pytest.raises(Exception, match="class_diagnostics"):  # no cld score: no view
        lake_query(lake, "SELECT * FROM class_diagnostics")
    cld = np.linspace(-1, 1, 60)
    cld[labels == 2] = np.nan  # a class without a scored sample: NULL share (NaN in Python)
    cld[np.flatnonzero(labels == 0)[:3]] = np.nan
    write_scores(tmp_path / "lk", ids, labels, {"cld": cld})
    df = lake_query(lake, "SELECT * FROM class_diagnostics")
    assert df.columns == ["label", "samples", "null", "nonpositive", "share"]
    expected = class_nonpositive_share(lake, "cld")
    got = df.to_dicts()
    assert [r["label"] for r in got] == [r["label"] for r in expected] == [0, 1, 2]
    for g, e in zip(got, expected, strict=True):
        assert {k: g[k] for k in ("samples", "null", "nonpositive")} == {
            k: e[k] for k in ("samples", "null", "nonpositive")
        }
        assert (g["share"] is None and np.isnan(e["share"])) or g["share"] == pytest.approx(
            e["share"]
        )
    mine = (labels == 0) & ~np.isnan(cld)  # by hand, for one class
    assert got[0]["nonpositive"] == int((cld[mine] <= 0).sum()) and got[0]["null"] == 3
