"""The SQL sandbox: no statement can write into the lake, load extensions or change settings.

Each hostile statement runs through ``cld-lake sql``; it must fail with one line on stderr
(exit 2, no traceback) and leave every file and directory of the lake as it was. Reading the
lake, ``--out`` and ``COPY ... TO`` outside the lake keep working.
"""

from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cld_lake import _duckdb
from cld_lake import sql as lake_sql
from cld_lake.errors import CldLakeError
from cld_lake.lake import Lake
from tests.conftest import import_arrays, lake_hash, make_arrays

BIG_SORT = "SELECT count(*) FROM (SELECT i, md5(i::VARCHAR) m FROM range(4000000) t(i) ORDER BY m)"
HOSTILE = [
    # settings that write files
    "SET log_query_path = '{ck}'; SELECT 1",
    "PRAGMA log_query_path = '{lake}/queries.log'",
    "PRAGMA enable_profiling = 'json'; SET profiling_output = '{lake}/profile.json'; SELECT 1",
    "SET profile_output = '{ck}'",
    "SET enable_profiling = 'json'",
    "SET temp_directory = '{lake}/spill'; SET memory_limit = '20MB'; " + BIG_SORT,
    "CALL enable_logging(storage = 'file', storage_path = '{lake}/logs')",
    # files written by statements
    "ATTACH '{lake}/db.duckdb' AS d; CREATE TABLE d.t AS SELECT 1",
    "ATTACH ':memory:' AS m",
    "EXPORT DATABASE '{lake}/export'",
    "COPY (SELECT 1) TO '{ck}' (FORMAT PARQUET)",
    "COPY (SELECT 1) TO '{lake}/x.csv'",
    "COPY (SELECT 1) TO '{lake}/../{lakename}/y.csv'",
    "COPY (SELECT 1) TO '{lake}/splits/../x.csv'",
    "COPY (SELECT 1) TO '{tmp}/link_to_lake/z.csv'",
    "COPY (SELECT 1) TO '{tmp}/link_to_ck.parquet' (FORMAT PARQUET)",
    "CREATE TABLE t AS SELECT 1 AS a; COPY t TO '{lake}/splits/train/samples.parquet'",
    "COPY (SELECT 1) TO '{lake}/part' (FORMAT PARQUET, PARTITION_BY (a))",
    # extensions and secrets
    "INSTALL httpfs",
    "LOAD httpfs",
    "LOAD '{tmp}/evil.duckdb_extension'",
    "FORCE INSTALL json",
    "CREATE SECRET (TYPE s3, KEY_ID 'a', SECRET 'b')",
    "CREATE PERSISTENT SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')",
    # undoing the sandbox
    "SET enable_external_access = true",
    "RESET enable_external_access",
    "SET lock_configuration = false",
    "RESET lock_configuration",
    "SET GLOBAL lock_configuration = false",
    "SET allowed_directories = ['/']",
    "SET allowed_paths = ['{ck}']",
    "SET autoinstall_known_extensions = true",
    "SET autoload_known_extensions = true",
    "SET allow_community_extensions = true",
    "SET allow_unsigned_extensions = true",
    # reading files the query does not name literally, or the lake's files directly
    "SELECT * FROM read_text('/etc/' || 'hostname')",
    "SELECT * FROM read_blob('{lake}/cld_lake.json')",
    "SELECT * FROM read_parquet('{ck}')",
    "SELECT * FROM read_parquet('{tmp}/link_to_ck.parquet')",
    "SELECT * FROM glob('{lake}/*')",
    "SELECT * FROM read_csv('{tmp}/*.csv')",
]


def _tree(path: Path) -> list[tuple[str, str]]:
    """Every directory and file under ``path`` (relative) with the files' sizes."""
    out = []
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = Path(root) / name
            out.append((str(p.relative_to(path)), "dir" if p.is_dir() else str(p.stat().st_size)))
    return sorted(out)


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Lake:
    d = tmp_path_factory.mktemp("sandbox")
    loss, labels, ids = make_arrays(300, 4, 3, seed=31)
    import_arrays(d, d / "lake", loss=loss, labels=labels, sample_ids=ids)
    return Lake(d / "lake")


def _hostile(statement: str, lake: Lake, tmp_path: Path) -> str:
    """``statement`` with its paths filled in, and the files it points at created."""
    (tmp_path / "link_to_lake").symlink_to(lake.path, target_is_directory=True)
    checkpoints = lake.path / "splits" / "train" / "checkpoints.parquet"
    (tmp_path / "link_to_ck.parquet").symlink_to(checkpoints)
    (tmp_path / "evil.duckdb_extension").write_bytes(b"\0" * 64)
    (tmp_path / "a.csv").write_text("a\n1\n")
    return statement.format(lake=lake.path, ck=checkpoints, tmp=tmp_path, lakename=lake.path.name)


def _duckdb_home() -> list[str]:
    return sorted(glob.glob(os.path.expanduser("~/.duckdb/**"), recursive=True))


@pytest.mark.parametrize("statement", HOSTILE)
def test_hostile_statement_fails_in_one_line_and_leaves_the_lake_alone(
    cli, lake, tmp_path, statement
):
    sql = _hostile(statement, lake, tmp_path)
    before, tree, home = lake_hash(lake.path), _tree(lake.path), _duckdb_home()

    r = cli("sql", lake.path, sql)

    assert r.code == 2, (r.out, r.err)
    assert r.err.startswith("cld-lake: error: ") and len(r.err.strip().splitlines()) == 1
    assert "Traceback" not in r.err
    assert lake_hash(lake.path) == before and _tree(lake.path) == tree
    assert _duckdb_home() == home


@pytest.mark.parametrize("statement", [s for s in HOSTILE if ":memory:" not in s])
def test_the_sandbox_alone_stops_them(lake, tmp_path, statement):
    """On a bare ``connect()`` connection (no statement parsing) DuckDB itself refuses."""
    sql = _hostile(statement, lake, tmp_path)
    before, tree, home = lake_hash(lake.path), _tree(lake.path), _duckdb_home()
    con = lake_sql.connect(lake, memory_limit="64MB")
    try:
        with pytest.raises(_duckdb.Error):
            con.execute(sql)
    finally:
        con.close()
    assert lake_hash(lake.path) == before and _tree(lake.path) == tree
    assert _duckdb_home() == home


def test_the_python_api_is_sandboxed_too(lake):
    con = lake_sql.connect(lake)
    try:
        with pytest.raises(Exception, match="locked"):
            con.execute("SET enable_external_access = true")
        with pytest.raises(Exception, match="Permission"):
            con.execute(f"COPY (SELECT 1) TO '{lake.path}/x.csv'")
    finally:
        con.close()
    with pytest.raises(CldLakeError, match="Permission Error.*outside the lake"):
        lake_sql.query(lake, f"SELECT * FROM read_text('{lake.path}' || '/cld_lake.json')")


def test_reading_the_lake_and_writing_outside_it_still_work(cli, lake, tmp_path):
    other = tmp_path / "ids.parquet"
    r = cli("sql", lake.path, "SELECT sample_id FROM samples WHERE label = 1", "--out", other)
    assert r.code == 0, r.err
    joined = (
        f"SELECT count(*) AS n FROM read_parquet('{other}') m JOIN losses USING (sample_id) "
        "WHERE checkpoint = 0"
    )
    assert lake_sql.query(lake, joined)["n"][0] == pq.read_table(other).num_rows > 0
    target = tmp_path / "copy.csv"
    for _ in range(2):  # the second COPY replaces the file (DuckDB writes tmp_copy.csv first)
        r = cli("sql", lake.path, f"COPY (SELECT * FROM losses) TO '{target}' (HEADER)")
        assert r.code == 0, r.err
    assert len(target.read_text().splitlines()) == 300 * 4 + 1
    r = cli("sql", lake.path, BIG_SORT.replace("4000000", "300000"))  # may spill: private dir
    assert r.code == 0, r.err


def test_out_refuses_an_existing_file_unless_forced(cli, lake, tmp_path):
    out = tmp_path / "n.csv"
    out.write_text("keep me\n")
    r = cli("sql", lake.path, "SELECT count(*) AS n FROM samples", "--out", out)
    assert r.code == 2 and "--force" in r.err and len(r.err.strip().splitlines()) == 1
    assert out.read_text() == "keep me\n"
    r = cli("sql", lake.path, "SELECT count(*) AS n FROM samples", "--out", out, "--force")
    assert r.code == 0, r.err
    assert out.read_text().splitlines() == ["n", "300"]
    assert sorted(os.listdir(tmp_path)) == ["n.csv"]


def test_a_missing_segment_is_one_clean_line_naming_verify(cli, lake, tmp_path):
    copy = tmp_path / "lake"
    shutil.copytree(lake.path, copy)
    for segment in (copy / "splits" / "train" / "segments").iterdir():
        shutil.rmtree(segment)
    r = cli("sql", copy, "SELECT sum(loss) FROM losses")
    err = r.err.strip()
    assert r.code != 0 and len(err.splitlines()) == 1, err
    assert "Traceback" not in err and "Python exception" not in err
    assert f"cld-lake verify {copy}" in err and "train" in err
    assert "does not exist" in err or "missing" in err
