"""How a query runs (issues 16 and 22): several statements, a timeout, Ctrl-C, a query that
starts with ``-``, a full disk under ``--out``, a file that does not exist, manifests in
``LAKE/manifests/``."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import cld_lake
from cld_lake import sql as lake_sql
from tests.conftest import CLI_BIN, import_arrays, lake_hash, make_arrays
from tests.test_disk_full import assert_disk_full_line, cli_run, fill, tmpfs  # noqa: F401

ENDLESS = "SELECT sum(i) FROM range(1000000000000) t(i)"  # hours of work, constant memory


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("statements")
    loss, labels, ids = make_arrays(300, 4, 3, seed=21)
    vloss, vlabels, _ = make_arrays(30, 4, 3, seed=22)
    import_arrays(d, d / "lake", "train", loss=loss, labels=labels, sample_ids=ids)
    import_arrays(d, d / "lake", "val", loss=vloss, labels=vlabels)
    cld_lake.score(d / "lake")
    return d / "lake"


# --- several statements (16.5) -----------------------------------------------------------
def test_two_selects_print_the_last_result(cli, lake):
    """Regression: "Resource In Use Error: connection has an unfinished result"."""
    r = cli("sql", lake, "SELECT 1 AS first; SELECT 2 AS second")
    assert r.code == 0, r.err
    assert r.out.split()[0] == "second" and r.out.splitlines()[3].strip() == "2"


def test_several_statements_in_the_python_api_return_the_last(lake):
    df = cld_lake.query(lake, "SELECT 1 AS a; SELECT count(*) AS n FROM samples")
    assert df.columns == ["n"] and df["n"][0] == 330
    made = "CREATE TABLE t AS SELECT label, count(*) AS n FROM train_samples GROUP BY 1; "
    assert lake_sql.query(lake, made + "SELECT sum(n) AS n FROM t")["n"][0] == 300
    batches = list(lake_sql.iter_result(lake, "SELECT 1 AS a; SELECT 2 AS b; SELECT 3 AS c"))
    assert batches[0].names == ["c"] and batches[1].column(0).to_pylist() == [3]


def test_several_statements_with_out_write_the_last(cli, lake, tmp_path):
    out = tmp_path / "n.csv"
    r = cli("sql", lake, "SELECT 1 AS a; SELECT 2 AS b", "--out", out)
    assert r.code == 0, r.err
    assert out.read_text().splitlines() == ["b", "2"]


def test_each_copy_of_several_statements_is_in_place_once_it_ran(cli, lake, tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.parquet"
    sql = f"COPY (SELECT 1 AS x) TO '{a}'; COPY (SELECT 2 AS y) TO '{b}'; SELECT 3 AS z"
    r = cli("sql", lake, sql)
    assert r.code == 0, r.err
    assert a.read_text().splitlines() == ["x", "1"] and pq.read_table(b).num_rows == 1
    assert sorted(os.listdir(tmp_path)) == ["a.csv", "b.parquet"]


# --- a timeout and Ctrl-C (16.10) ----------------------------------------------------------
def test_timeout_stops_an_endless_query_with_one_line_and_exit_1(lake, tmp_path):
    start = time.monotonic()
    proc = subprocess.run(
        [str(CLI_BIN), "sql", str(lake), ENDLESS, "--timeout", "1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "timeout of 1 s" in proc.stderr and "Traceback" not in proc.stderr
    assert time.monotonic() - start < 60


def test_timeout_in_the_python_api_and_with_out(lake, tmp_path):
    with pytest.raises(lake_sql.QueryTimeoutError, match="timeout of 0.5 s"):
        lake_sql.query(lake, ENDLESS, timeout=0.5)
    out = tmp_path / "sum.csv"
    with pytest.raises(TimeoutError):
        lake_sql.write_query(lake, ENDLESS, out, timeout=0.5)
    assert os.listdir(tmp_path) == []
    assert lake_sql.query(lake, "SELECT 42 AS x", timeout=30)["x"][0] == 42
    with pytest.raises(lake_sql.SqlError, match="seconds > 0"):
        lake_sql.query(lake, "SELECT 1", timeout=0)


def test_a_bad_timeout_is_refused_by_the_cli(cli, lake):
    r = cli("sql", lake, "SELECT 1", "--timeout", "0")
    assert r.code == 2 and "--timeout" in r.err, r.err


@pytest.mark.parametrize(
    "sql", [ENDLESS, "SELECT sum(a.loss * d.loss) FROM losses a, losses b, losses c, losses d"]
)
@pytest.mark.parametrize("out", [False, True])
def test_ctrl_c_stops_a_query_with_one_line_and_exit_130(lake, tmp_path, sql, out):
    """Regression: SIGINT did not stop a query running inside DuckDB."""
    args = [str(CLI_BIN), "sql", str(lake), sql]
    if out:
        args += ["--out", str(tmp_path / "r.csv")]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a child of a non-interactive shell may inherit SIGINT ignored: restore the default
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(3)  # imports done, the query running
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the query did not stop on SIGINT")
    assert proc.returncode == 130, (proc.returncode, err)
    assert err.strip().splitlines() == ["cld-lake: interrupted; committed checkpoints are intact"]
    assert os.listdir(tmp_path) == []  # --out: nothing half written


# --- a query that starts with '-' (16.10) ---------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ["-- a note\nSELECT 1 AS one"],
        ["--", "-- a note\nSELECT 1 AS one"],
        ["-- a note\nSELECT 1 AS one", "--max-rows", "5"],
        ["--max-rows", "5", "-- a note\nSELECT 1 AS one"],
    ],
)
def test_a_query_starting_with_a_comment_is_the_query(cli, lake, args):
    """Regression: click read ``-- note ...`` as an unknown option."""
    r = cli("sql", lake, *args)
    assert r.code == 0, r.err
    assert r.out.split()[0] == "one"


def test_an_unknown_option_is_still_an_unknown_option(cli, lake):
    r = cli("sql", lake, "SELECT 1", "--nope")
    assert r.code == 2 and "No such option" in r.err, r.err


# --- disk full under --out (16.7) -----------------------------------------------------------
@pytest.mark.parametrize("how", ["--out", "COPY"])
def test_disk_full_during_sql_out_is_one_line_exit_1_and_leaves_nothing(tmpfs, lake, how):  # noqa: F811
    """Regression: exit 2 with DuckDB's raw "IO Error: Async write failed ..."."""
    before = lake_hash(lake)
    fill(tmpfs, leave=64 * 1024)
    big = "SELECT i, md5(i::VARCHAR) AS h FROM range(2000000) t(i)"
    target = tmpfs / "big.csv"
    if how == "--out":
        proc = cli_run("sql", lake, big, "--out", target)
    else:
        proc = cli_run("sql", lake, f"COPY ({big}) TO '{target}'")
    assert_disk_full_line(proc)
    assert "disk full" in proc.stderr and str(target) in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmpfs.iterdir()) == ["filler"]
    assert lake_hash(lake) == before


# --- what a refused file is (22) ------------------------------------------------------------
def test_a_missing_file_is_said_to_be_missing(cli, lake, tmp_path):
    """Regression: read as a sandbox refusal ("Permission Error ... disabled")."""
    missing = tmp_path / "nosuch.parquet"
    r = cli("sql", lake, f"SELECT * FROM read_parquet('{missing}')")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert f"{missing}: no such file" in r.err and "Permission" not in r.err, r.err


def test_a_lake_file_by_path_is_still_a_sandbox_refusal(cli, lake):
    r = cli("sql", lake, f"SELECT * FROM read_parquet('{lake}/splits/train/samples.parquet')")
    assert r.code == 2 and "Permission Error" in r.err and "views" in r.err, r.err


def test_manifests_in_the_lake_folder_are_readable(cli, lake):
    """``LAKE/manifests/`` is the one folder of the lake users write to: its Parquet
    manifests join with the views."""
    manifest = lake / "manifests" / "top.parquet"
    r = cli("select", lake, "--score", "cld", "--count", "30", "--out", manifest)
    assert r.code == 0, r.err
    before = lake_hash(lake)
    sql = (
        f"SELECT count(*) AS n, count(s.cld) AS scored FROM read_parquet('{manifest}') m "
        "JOIN scores s USING (sample_id)"
    )
    r = cli("sql", lake, sql)
    assert r.code == 0, r.err
    assert r.out.splitlines()[3].split() == ["30", "30"]
    r = cli("sql", lake, f"COPY (SELECT 1 AS a) TO '{lake / 'manifests' / 'x.csv'}'")
    assert r.code == 2 and "inside the lake" in r.err, r.err  # reading only
    assert lake_hash(lake) == before


def test_a_manifest_hard_linked_to_a_lake_file_is_refused(cli, lake):
    folder = lake / "manifests"
    folder.mkdir(exist_ok=True)
    link = folder / "linked.parquet"
    os.link(lake / "splits" / "train" / "samples.parquet", link)
    try:
        r = cli("sql", lake, f"SELECT count(*) FROM read_parquet('{link}')")
        assert r.code == 2 and "hard link" in r.err and "views" in r.err, r.err
    finally:
        link.unlink()
