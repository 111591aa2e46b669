"""Streaming selection (bounded memory) equals the in-memory ``select_rows``, tie rule included.

The streaming path reads a real Parquet scores table span by span; the property tests shrink
its span, histogram and prune sizes so that every branch (many spans, one bucket, cuts of
the kept rows at every row) runs on small tables. The CLI tests run the real ``cld-lake
select`` on a lake made by ``benchmarks.synth`` and scored by ``cld-lake score``, once on
each path (``CLD_LAKE_SELECT_STREAM_ROWS``), and compare the manifests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cld_lake
from cld_lake.errors import BadInputError, CorruptLakeError
from cld_lake.lake.scores import CHECKSUMS_KEY
from cld_lake.manifest import manifest_table
from cld_lake.select import (
    STREAM_ROWS_ENV,
    rank_keys,
    select_rows,
    sorted_order,
    stream_select,
)
from cld_lake.select._select import _table_in_order
from cld_lake.select._stream import _ScoresStream
from tests.conftest import scores_file

REPO = Path(__file__).resolve().parents[1]
SPECIAL = [np.nan, -0.0, 0.0, np.inf, -np.inf, 5e-324, -5e-324, 1e308, -1e308]


def write_table(path: Path, ids, labels, scores, row_group_size: int) -> pq.ParquetFile:
    table = pa.table(
        {
            "sample_id": pa.array(np.asarray(ids, np.int64)),
            "label": pa.array(np.asarray(labels, np.int64)),
            # NaN stored as null, as the scores table stores an undefined score
            "s": pa.array(np.asarray(scores, np.float64), mask=np.isnan(scores)),
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)
    return pq.ParquetFile(path)


def in_memory(ids, labels, scores, **kw):
    p = select_rows(ids, labels, scores, **kw)
    return ids[p.rows], labels[p.rows], scores[p.rows], p.ranks, p.requested, p.shortfall


def assert_same(streamed, expected) -> None:
    ids, labels, scores, ranks, requested, shortfall = expected
    assert streamed.sample_ids.tolist() == ids.tolist()
    assert streamed.labels.tolist() == labels.tolist()
    # bit for bit: -0.0 stays -0.0, NaN is never selected
    assert streamed.scores.view(np.int64).tolist() == scores.view(np.int64).tolist()
    assert streamed.ranks.tolist() == ranks.tolist()
    assert streamed.requested == requested
    assert streamed.shortfall == shortfall


def test_rank_keys_order_is_the_float_order_with_equal_zeros():
    values = np.array([-np.inf, -1e308, -1.0, -5e-324, -0.0, 0.0, 5e-324, 1.0, 1e308, np.inf])
    for lowest in (True, False):
        keys = rank_keys(values, lowest)
        expected = values if lowest else values[::-1]
        assert values[np.argsort(keys, kind="stable")].tolist() == sorted(
            expected.tolist(), key=lambda v: v if lowest else -v
        )
        assert np.count_nonzero(np.diff(np.sort(keys)) == 0) == 1  # only -0.0 and 0.0 tie
        assert keys[4] == keys[5]


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(0, 3), st.sampled_from(SPECIAL + [1.0, 2.0]), st.integers(-3, 3)),
        max_size=60,
    ),
    lowest=st.booleans(),
    single=st.booleans(),
    block=st.sampled_from([1, 2, 1 << 20]),
)
def test_sorted_order_is_lexsort_of_group_key_id(rows, lowest, single, block, monkeypatch_block):
    group = np.array([r[0] for r in rows], dtype=np.int32)
    values = np.array([r[1] for r in rows], dtype=float)
    ids = np.array([r[2] for r in rows], dtype=np.int64)  # repeated ids: row order decides
    keys = rank_keys(values, lowest)
    monkeypatch_block(block)
    if single:
        got = sorted_order(None, values, lowest, ids, 1)
        assert got.tolist() == np.lexsort((ids, keys)).tolist()
    else:
        got = sorted_order(group, values, lowest, ids, 4)
        assert got.tolist() == np.lexsort((ids, keys, group)).tolist()


@pytest.fixture(scope="module")
def monkeypatch_block():
    """Set ``TIE_BLOCK`` (the tied rows ordered at a time) for one example; restored after."""
    import importlib

    module = importlib.import_module("cld_lake.select._stream")
    saved = module.TIE_BLOCK

    def set_block(value: int) -> None:
        module.TIE_BLOCK = value

    yield set_block
    module.TIE_BLOCK = saved


# --- property: streaming == in memory ----------------------------------------------------
@st.composite
def tables(draw):
    n = draw(st.integers(1, 120))
    n_classes = draw(st.integers(1, 6))
    # labels 0..C-1 (lookup table) or spread far apart, negative too (searchsorted path)
    if draw(st.booleans()):
        values = np.arange(n_classes)
    else:
        values = np.array(
            draw(st.lists(st.integers(-(2**40), 2**40), min_size=n_classes, max_size=n_classes))
        )
    labels = np.asarray(draw(st.lists(st.sampled_from(values.tolist()), min_size=n, max_size=n)))
    pool = draw(
        st.lists(
            st.one_of(st.sampled_from(SPECIAL), st.floats(-2, 2, allow_nan=False, width=16)).map(
                float
            ),
            min_size=1,
            max_size=8,
        )
    )  # few distinct values: many ties
    scores = np.asarray(draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n)), float)
    if draw(st.booleans()):  # a class with only NaN scores
        scores[labels == labels[0]] = np.nan
    ids = draw(st.permutations(list(range(n)))) if draw(st.booleans()) else list(range(n))[::-1]
    ids = np.asarray(ids, np.int64) * draw(st.sampled_from([1, 7, -3]))
    return ids, labels.astype(np.int64), scores


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=tables(),
    balance=st.sampled_from(["proportional", "equal", "none"]),
    lowest=st.booleans(),
    size=st.one_of(
        st.tuples(st.just("fraction"), st.sampled_from([0.01, 0.1, 0.29, 0.5, 0.77, 1.0])),
        st.tuples(st.just("count"), st.integers(1, 130)),
    ),
    row_group_size=st.sampled_from([1, 3, 17, 1000]),
    span_rows=st.sampled_from([1, 5, 1 << 20]),
    buckets=st.sampled_from([1, 2, 4, 256]),
    slack=st.sampled_from([1, 2, 9, 1 << 21]),
)
def test_streaming_equals_select_rows(
    tmp_path_factory, data, balance, lowest, size, row_group_size, span_rows, buckets, slack
):
    ids, labels, scores = data
    kw = {size[0]: size[1], "balance": balance, "lowest": lowest}
    try:
        expected = in_memory(ids, labels, scores, **kw)
    except BadInputError as exc:  # e.g. a count beyond the rows, a fraction selecting 0
        expected = exc
    path = tmp_path_factory.mktemp("stream") / "scores.parquet"
    stream = _ScoresStream(
        write_table(path, ids, labels, scores, row_group_size), span_rows=span_rows
    )
    if isinstance(expected, BadInputError):
        with pytest.raises(BadInputError) as err:
            stream_select(stream, "s", buckets=buckets, slack=slack, **kw)
        assert str(err.value) == str(expected)
        return
    got = stream_select(stream, "s", buckets=buckets, slack=slack, **kw)
    assert_same(got, expected)
    # the table built from rows in order is the one manifest_table sorts into that order
    assert _table_in_order(got).equals(manifest_table(*expected[:4]))
    assert got.candidates == len(ids)
    assert got.nan_scores == int(np.isnan(scores).sum())
    assert got.classes == len(np.unique(labels))


def test_adversarial_order_all_ties_descending_ids_cuts_often_and_stays_exact(tmp_path):
    # every score equal, ids falling along the file: each new row beats the kept ones, so the
    # kept rows are cut back again and again (slack 3) and still hold the smallest ids
    n = 2000
    ids = np.arange(n, 0, -1, dtype=np.int64)
    labels = np.arange(n, dtype=np.int64) % 3
    scores = np.full(n, 0.5)
    scores[::97] = np.nan
    pf = write_table(tmp_path / "s.parquet", ids, labels, scores, 64)
    for balance in ("proportional", "equal", "none"):
        got = stream_select(
            _ScoresStream(pf, span_rows=100), "s", fraction=0.1, balance=balance, slack=3
        )
        assert_same(got, in_memory(ids, labels, scores, fraction=0.1, balance=balance))


def test_sorted_scores_along_the_file_stay_exact(tmp_path):
    # scores rising along the file: the sample of row groups places the edges, not file order
    n = 5000
    ids = np.arange(n, dtype=np.int64)
    labels = (np.arange(n) // 7) % 5
    scores = np.linspace(-1, 1, n)
    pf = write_table(tmp_path / "s.parquet", ids, labels, scores, 100)
    for lowest in (False, True):
        got = stream_select(_ScoresStream(pf, span_rows=300), "s", count=321, lowest=lowest)
        assert_same(got, in_memory(ids, labels, scores, count=321, lowest=lowest))


# --- through the CLI on a synth lake -----------------------------------------------------
def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        args,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def synth_lake(tmp_path_factory) -> Path:
    lake = tmp_path_factory.mktemp("synth") / "lake"
    made = run(
        [sys.executable, "-m", "benchmarks.synth", str(lake), "--train", "6000", "--val", "300",
         "--checkpoints", "6", "--classes", "7", "--seed", "3"]
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    cli = str(Path(sys.executable).with_name("cld-lake"))
    scored = run([cli, "score", str(lake)])
    assert scored.returncode == 0, scored.stderr
    return lake


def select_both_ways(lake: Path, out: Path, *args: str) -> tuple:
    cli = str(Path(sys.executable).with_name("cld-lake"))
    manifests = []
    for name, rows in (("stream", "0"), ("memory", str(10**12))):
        path = out / f"{name}.parquet"
        done = run(
            [cli, "select", str(lake), "--score", "cld", *args, "--out", str(path)],
            env={STREAM_ROWS_ENV: rows},
        )
        assert done.returncode == 0, done.stderr
        manifests.append((cld_lake.load_manifest(path), done.stdout, done.stderr))
    return tuple(manifests)


def without_time(metadata: dict) -> dict:
    return {k: v for k, v in metadata.items() if k not in ("created_at", "checksum")}


@pytest.mark.parametrize(
    "args",
    [
        ["--fraction", "0.1"],
        ["--fraction", "0.3", "--balance", "equal", "--lowest"],
        ["--count", "777", "--balance", "none"],
        ["--count", "5990", "--balance", "equal"],  # classes fall short: shortfall reported
    ],
)
def test_cli_select_streaming_equals_in_memory(synth_lake, tmp_path, args):
    (streamed, s_out, s_err), (memory, m_out, m_err) = select_both_ways(synth_lake, tmp_path, *args)
    assert streamed.table.equals(memory.table)
    assert without_time(streamed.metadata) == without_time(memory.metadata)
    same_path = s_out.replace("stream.parquet", "memory.parquet")
    assert (same_path, s_err) == (m_out, m_err)
    assert len(streamed) == streamed.metadata["selected"] > 0


def test_cli_select_shortfall_is_reported_when_streaming(synth_lake, tmp_path):
    (streamed, out, err), _ = select_both_ways(
        synth_lake, tmp_path, "--count", "5990", "--balance", "equal"
    )
    assert streamed.metadata["shortfall"]["total"] > 0
    assert "short" in (out + err).lower()


def test_bad_stream_rows_setting_is_a_one_line_error(synth_lake, tmp_path):
    cli = str(Path(sys.executable).with_name("cld-lake"))
    done = run(
        [cli, "select", str(synth_lake), "--score", "cld", "--fraction", "0.1",
         "--out", str(tmp_path / "m.parquet")],
        env={STREAM_ROWS_ENV: "lots"},
    )  # fmt: skip
    assert done.returncode == 2
    assert STREAM_ROWS_ENV in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m.parquet").exists()


@pytest.mark.parametrize("column", ["sample_id", "label", "cld"])
def test_streaming_refuses_a_tampered_column_and_writes_nothing(
    synth_lake, tmp_path, monkeypatch, column
):
    import shutil

    lake = tmp_path / "lake"
    shutil.copytree(synth_lake, lake)
    path = scores_file(lake)
    table = pq.ParquetFile(path).read()
    footer = pq.ParquetFile(path).metadata.metadata
    values = table.column(column).to_numpy(zero_copy_only=False).copy()
    values[[0, 1]] = values[[1, 0]] if column == "sample_id" else values[[0, 0]] + 1
    at = table.schema.get_field_index(column)
    tampered = table.set_column(at, column, pa.array(values, table.schema.field(column).type))
    with pq.ParquetWriter(path, tampered.schema) as writer:  # the old checksums copied along
        writer.write_table(tampered, row_group_size=1000)
        writer.add_key_value_metadata({CHECKSUMS_KEY: footer[CHECKSUMS_KEY]})
    monkeypatch.setenv(STREAM_ROWS_ENV, "0")
    out = tmp_path / "m.parquet"
    with pytest.raises(CorruptLakeError, match=f"fails its checksum \\(column '{column}'\\)"):
        cld_lake.select(lake, "cld", fraction=0.5, out=out)
    assert not out.exists()


@pytest.mark.parametrize("rows", ["0", str(10**12)])
def test_an_unreadable_page_is_a_one_line_corrupt_lake_error(
    synth_lake, tmp_path, monkeypatch, rows
):
    # regression: the streaming reader's error path called scores._first_line after it had
    # become errors.one_line, so a damaged page raised AttributeError instead of this line
    import shutil

    lake = tmp_path / "lake"
    shutil.copytree(synth_lake, lake)
    path = scores_file(lake)
    column = pq.ParquetFile(path).metadata.row_group(0).column(2)
    assert column.path_in_schema == "cld"
    with open(path, "r+b") as f:  # the page header: the reader cannot decode the page
        f.seek(column.data_page_offset)
        f.write(b"\xff" * 16)
    monkeypatch.setenv(STREAM_ROWS_ENV, rows)
    out = tmp_path / "m.parquet"
    with pytest.raises(
        CorruptLakeError, match=r"scores-\d+-\w+\.parquet: unreadable .*cld-lake verify"
    ):
        cld_lake.select(lake, "cld", fraction=0.1, out=out)
    assert not out.exists()


# --- on a dask cluster -------------------------------------------------------------------
@pytest.fixture(scope="module")
def many_span_lake(synth_lake, tmp_path_factory) -> Path:
    """The synth lake with its scores table rewritten in row groups of 500 rows (same
    columns, same recorded checksums), so that a run has several spans."""
    import shutil

    lake = tmp_path_factory.mktemp("spans") / "lake"
    shutil.copytree(synth_lake, lake)
    path = scores_file(lake)
    table = pq.ParquetFile(path).read()
    footer = pq.ParquetFile(path).metadata.metadata
    with pq.ParquetWriter(path, table.schema) as writer:
        writer.write_table(table, row_group_size=500)
        writer.add_key_value_metadata({CHECKSUMS_KEY: footer[CHECKSUMS_KEY]})
    assert pq.ParquetFile(path).metadata.num_row_groups == 12
    return lake


@pytest.mark.parametrize(
    "kw",
    [
        {"fraction": 0.1},
        {"fraction": 0.3, "balance": "equal", "lowest": True},
        {"count": 777, "balance": "none"},
        {"count": 5990, "balance": "equal"},
    ],
)
def test_dask_selection_equals_in_memory(dask_client, many_span_lake, monkeypatch, kw):
    import importlib

    monkeypatch.setattr(importlib.import_module("cld_lake.select._stream"), "SPAN_ROWS", 1000)
    monkeypatch.setenv(STREAM_ROWS_ENV, str(10**12))
    memory = cld_lake.select(many_span_lake, "cld", **kw)
    on_cluster = cld_lake.select(many_span_lake, "cld", dask=True, **kw)  # the active client
    assert on_cluster.table.equals(memory.table)
    assert without_time(on_cluster.metadata) == without_time(memory.metadata)


def test_dask_refuses_a_tampered_score_column(dask_client, many_span_lake, tmp_path):
    import shutil

    lake = tmp_path / "lake"
    shutil.copytree(many_span_lake, lake)
    path = scores_file(lake)
    table = pq.ParquetFile(path).read()
    footer = pq.ParquetFile(path).metadata.metadata
    values = table.column("cld").to_numpy(zero_copy_only=False).copy()
    values[4321] = 0.987
    at = table.schema.get_field_index("cld")
    tampered = table.set_column(at, "cld", pa.array(values))
    with pq.ParquetWriter(path, tampered.schema) as writer:
        writer.write_table(tampered, row_group_size=500)
        writer.add_key_value_metadata({CHECKSUMS_KEY: footer[CHECKSUMS_KEY]})
    out = tmp_path / "m.parquet"
    with pytest.raises(CorruptLakeError, match="fails its checksum"):
        cld_lake.select(lake, "cld", fraction=0.1, dask=True, out=out)
    assert not out.exists()


@pytest.mark.slow  # starts a LocalCluster of worker processes
def test_cli_select_dask_on_its_own_local_cluster(many_span_lake, tmp_path):
    cli = str(Path(sys.executable).with_name("cld-lake"))
    out = tmp_path / "dask.parquet"
    done = run(
        [cli, "select", str(many_span_lake), "--score", "cld", "--fraction", "0.2", "--dask",
         "--out", str(out)]
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    memory = cld_lake.select(many_span_lake, "cld", fraction=0.2)
    assert cld_lake.load_manifest(out).table.equals(memory.table)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fraction", "0.1", "--scheduler", "tcp://127.0.0.1:1"], "--scheduler is used with"),
        (["--fraction", "0.1", "--random", "--dask"], "--dask runs the top-k"),
        (["--fraction", "0.1", "--strategy", "ccs", "--dask"], "--dask runs the top-k"),
    ],
)
def test_dask_bad_input_is_a_one_line_error(cli, synth_lake, tmp_path, args, message):
    out = tmp_path / "m.parquet"
    score = [] if "--random" in args else ["--score", "cld"]
    r = cli("select", synth_lake, *score, *args, "--out", out)
    assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1
    assert not out.exists()
