"""Output targets (issue 16.2): no command writes into the lake through a link.

Every file a command writes outside the lake (``sql --out``, ``COPY ... TO`` inside SQL,
``select --out``, ``export --out``, ``report --out``) is a new temp file renamed over the
target, so a hard link at the target is replaced, never written through; a target that is the
same file as a lake file (a hard link, a symlink) is refused up front, and so are FIFOs and
devices. Each case runs through the CLI and leaves every byte of the lake as it was.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cld_lake._io import atomic_output, check_output_path, lake_file_like
from cld_lake.errors import BadInputError
from cld_lake.storage import local
from tests.conftest import CLI_BIN, import_arrays, lake_hash, make_arrays

CLASSES = Path("splits") / "train" / "classes.parquet"


@pytest.fixture
def lake(tmp_path) -> Path:
    """A scored lake (train + val) in ``tmp_path/lake``; outputs go to ``tmp_path/out``."""
    path = tmp_path / "lake"
    loss, labels, ids = make_arrays(200, 4, 3, seed=11)
    vloss, vlabels, _ = make_arrays(40, 4, 3, seed=12)
    import_arrays(tmp_path, path, "train", loss=loss, labels=labels, sample_ids=ids)
    import_arrays(tmp_path, path, "val", loss=vloss, labels=vlabels)
    import cld_lake

    cld_lake.score(path)
    (tmp_path / "out").mkdir()
    return path


def _commands(lake: Path, target: Path) -> dict[str, list[object]]:
    """Every writer of a local output, pointed at ``target`` (with --force where it has one)."""
    return {
        "sql --out": ["sql", lake, "SELECT 1 AS a", "--out", target, "--force"],
        "COPY ... TO": ["sql", lake, f"COPY (SELECT 1 AS a) TO '{target}' (USE_TMP_FILE false)"],
        "select --out": [
            "select",
            lake,
            "--score",
            "cld",
            "--count",
            "5",
            "--out",
            target,
            "--force",
        ],  # fmt: skip
        "export --out": ["export", lake, "--out", target, "--force"],
        "report --out": ["report", lake, "--out", target, "--force"],
    }


def _suffix(writer: str) -> str:
    return {"sql --out": ".csv", "COPY ... TO": ".csv", "report --out": ".html"}.get(
        writer, ".parquet"
    )


def _run(*args: object, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real executable in a child process, so a write that blocks (a FIFO) fails the
    test by its timeout instead of hanging it."""
    return subprocess.run(
        [str(CLI_BIN), *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def _one_line_exit_2(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


WRITERS = list(_commands(Path("L"), Path("T")))


@pytest.mark.parametrize("writer", WRITERS)
def test_a_hard_link_to_a_lake_file_is_refused_and_the_lake_is_unchanged(
    cli, lake, tmp_path, writer
):
    """Regression (16.2): ``COPY ... TO`` a hard link of ``classes.parquet`` truncated it."""
    target = tmp_path / "out" / f"h{_suffix(writer)}"
    os.link(lake / CLASSES, target)
    before = lake_hash(lake)

    r = cli(*_commands(lake, target)[writer])

    assert r.code == 2, (r.out, r.err)
    assert "same file as the lake's" in r.err and "hard link" in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1
    assert lake_hash(lake) == before
    assert cli("verify", lake).code == 0


@pytest.mark.parametrize("writer", WRITERS)
def test_a_symlink_to_a_lake_file_is_refused(cli, lake, tmp_path, writer):
    target = tmp_path / "out" / f"s{_suffix(writer)}"
    target.symlink_to(lake / CLASSES)
    before = lake_hash(lake)
    r = cli(*_commands(lake, target)[writer])
    assert r.code == 2 and "inside the lake" in r.err, (r.out, r.err)
    assert lake_hash(lake) == before


@pytest.mark.parametrize("writer", WRITERS)
def test_a_fifo_is_refused_without_blocking(lake, tmp_path, writer):
    """Regression: ``COPY ... TO`` a FIFO blocked until a reader came (forever)."""
    target = tmp_path / "out" / f"f{_suffix(writer)}"
    os.mkfifo(target)
    proc = _run(*_commands(lake, target)[writer], timeout=60)
    _one_line_exit_2(proc)
    assert "FIFO" in proc.stderr, proc.stderr
    assert target.exists() and not target.is_file()  # left as it was


@pytest.mark.parametrize("writer", WRITERS)
def test_a_hard_link_outside_the_lake_is_replaced_not_written_through(cli, lake, tmp_path, writer):
    """The output is a new file renamed into place: the other name of a hard-linked target
    keeps its bytes (DuckDB's own ``COPY`` with ``USE_TMP_FILE false`` wrote through it)."""
    keep = tmp_path / "keep.bin"
    keep.write_bytes(b"precious bytes\n")
    target = tmp_path / "out" / f"k{_suffix(writer)}"
    os.link(keep, target)

    r = cli(*_commands(lake, target)[writer])

    assert r.code == 0, (r.out, r.err)
    assert keep.read_bytes() == b"precious bytes\n"
    assert target.stat().st_ino != keep.stat().st_ino and target.stat().st_size > 0
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no temp left


def test_copy_to_a_device_is_refused(cli, lake):
    r = cli("sql", lake, "COPY (SELECT 1 AS a) TO '/dev/null'")
    assert r.code == 2 and "device" in r.err, r.err


def test_a_failing_copy_leaves_the_target_as_it_was_and_no_temp_file(cli, lake, tmp_path):
    target = tmp_path / "out" / "t.csv"
    target.write_text("old\n")
    sql = (
        f"COPY (SELECT CASE WHEN i > 50000 THEN error('boom') END FROM range(100000) t(i)) "
        f"TO '{target}'"
    )
    r = cli("sql", lake, sql)
    assert r.code == 2 and "boom" in r.err, r.err
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["t.csv"]


def test_copy_keeps_the_format_its_name_implies(cli, lake, tmp_path):
    """The temp file DuckDB writes ends like the target, so the format is inferred as before."""
    import pyarrow.parquet as pq

    out = tmp_path / "out"
    r = cli("sql", lake, f"COPY (SELECT sample_id FROM scores) TO '{out / 'a.parquet'}'")
    assert r.code == 0, r.err
    assert pq.read_table(out / "a.parquet").num_rows == 200
    r = cli("sql", lake, f"COPY (SELECT 7 AS x) TO '{out / 'b.csv.gz'}'")
    assert r.code == 0, r.err
    assert (out / "b.csv.gz").read_bytes()[:2] == b"\x1f\x8b"  # gzip


def test_copy_that_writes_a_directory_is_refused_in_one_line(cli, lake, tmp_path):
    target = tmp_path / "out" / "parts"
    r = cli("sql", lake, f"COPY (SELECT 1 AS a) TO '{target}' (FORMAT PARQUET, PARTITION_BY (a))")
    assert r.code == 2 and "PARTITION_BY" in r.err and "directory" in r.err, r.err
    assert not target.exists()


def test_the_guard_itself(lake, tmp_path):
    root = local(lake)
    link = tmp_path / "out" / "x.parquet"
    os.link(lake / CLASSES, link)
    assert lake_file_like(link, root) == lake / CLASSES
    with pytest.raises(BadInputError, match="same file as the lake's"):
        check_output_path(link, root)
    other = tmp_path / "out" / "y.parquet"
    other.write_bytes(b"x")
    assert lake_file_like(other, root) is None
    assert check_output_path(other, root) == other
    with pytest.raises(BadInputError, match="device"):
        check_output_path("/dev/null", root)


def test_atomic_output_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer died")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["t.txt"]
    with atomic_output(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["t.txt"]
