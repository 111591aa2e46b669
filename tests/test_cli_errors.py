"""Every failure a user can hit at the CLI is one line on stderr, never a traceback (issue 9 §5).

Exit codes: 2 for bad input (a wrong path or argument), 1 for the environment (permission
denied, disk full, out of memory), a damaged lake file, or a bug of the tool ("internal
error"). The messages are asserted by shape (one line, exit code, no traceback, the lake
unchanged), not by wording.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import pytest

from tests.conftest import (
    CLI_BIN,
    REPO,
    import_arrays,
    lake_hash,
    make_arrays,
    run_cli_subprocess,
    scores_file,
)


def assert_one_line(r, codes=(1, 2)):
    """A failure: exit code in ``codes``, one line on stderr, no traceback anywhere."""
    assert r.code in codes, (r.code, r.err)
    assert len(r.err.strip().splitlines()) == 1, r.err
    assert r.err.startswith("cld-lake: "), r.err
    assert "Traceback" not in r.err + r.out


@pytest.fixture
def lake(tmp_path, npy_files, cli):
    """A lake with train and val splits and a stored ``cld`` score."""
    path = tmp_path / "lake"
    f = npy_files
    for split, loss, labels in (("train", "loss", "labels"), ("val", "vloss", "vlabels")):
        r = cli("import", path, "--split", split, "--loss", f[loss], "--labels", f[labels])
        assert r.code == 0, r.err
    assert cli("score", path).code == 0
    return path


# --- a lake path under a regular file ---------------------------------------------------


def test_lake_path_under_a_regular_file_is_one_line(tmp_path, npy_files, cli):
    afile = tmp_path / "afile"
    afile.write_text("not a directory\n")
    lake = afile / "lake"
    r = run_cli_subprocess(
        "import",
        lake,
        "--split",
        "train",
        "--loss",
        npy_files["loss"],
        "--labels",
        npy_files["labels"],
    )
    assert_one_line(r)
    for args in (("info", lake), ("score", lake), ("verify", lake), ("sql", lake, "SELECT 1")):
        assert_one_line(cli(*args))
    assert afile.read_text() == "not a directory\n"


# --- a directory the user cannot write --------------------------------------------------


def _as_unprivileged_user() -> list[str] | None:
    """The command prefix that runs the CLI as a user for whom permissions are enforced."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def shared_dir():
    """A directory every user can read (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="cld-lake-perm-"))
    path.chmod(0o755)
    yield path
    for sub in path.rglob("*"):
        if sub.is_dir():
            sub.chmod(0o755)
    shutil.rmtree(path)


def test_unwritable_directory_is_one_line_with_exit_1(shared_dir, npy_files):
    prefix = _as_unprivileged_user()
    if prefix is None:
        pytest.skip("running as root without setpriv: no user for whom permissions are enforced")
    for name in ("loss", "labels", "vloss", "vlabels"):
        shutil.copy(npy_files[name], shared_dir / f"{name}.npy")
    lake = shared_dir / "lake"
    for split, loss, labels in (("train", "loss", "labels"), ("val", "vloss", "vlabels")):
        r = run_cli_subprocess(
            "import", lake, "--split", split, "--loss", shared_dir / f"{loss}.npy",
            "--labels", shared_dir / f"{labels}.npy",
        )  # fmt: skip
        assert r.code == 0, r.err
    assert run_cli_subprocess("score", lake).code == 0
    readonly = shared_dir / "readonly"
    readonly.mkdir()
    for path in (shared_dir, *shared_dir.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    readonly.chmod(0o555)

    def run(*args):
        proc = subprocess.run(
            [*prefix, str(CLI_BIN), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=shared_dir,
            env={**os.environ, "HOME": str(shared_dir)},
        )
        return proc

    probe = run("--version")
    if probe.returncode != 0:
        pytest.skip(f"the unprivileged user cannot run the CLI here: {probe.stderr.strip()[-200:]}")
    before = lake_hash(lake)
    cases = [
        ("import", readonly / "lake", "--split", "train", "--loss", shared_dir / "loss.npy",
         "--labels", shared_dir / "labels.npy"),
        ("score", lake, "--name", "cld2"),
        ("select", lake, "--score", "cld", "--fraction", "0.5", "--out", readonly / "m.parquet"),
        ("compact", lake),
    ]  # fmt: skip
    for args in cases:
        proc = run(*args)
        assert proc.returncode == 1, (args, proc.returncode, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "Traceback" not in proc.stderr
        assert "permission" in proc.stderr.lower(), proc.stderr
    assert lake_hash(lake) == before
    assert list(readonly.iterdir()) == []


# --- damaged lake files -----------------------------------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _one(lake: Path, pattern: str) -> Path:
    found = sorted(p for p in lake.glob(pattern) if p.is_file())
    assert found, pattern
    return found[0]


DAMAGE = {
    "truncated samples.parquet": lambda lk: _truncate(lk / "splits/train/samples.parquet"),
    "truncated checkpoints.parquet": lambda lk: _truncate(lk / "splits/train/checkpoints.parquet"),
    "truncated segment zarr.json": lambda lk: _truncate(
        _one(lk, "splits/train/segments/*/zarr.json")
    ),
    "truncated array zarr.json": lambda lk: _truncate(
        _one(lk, "splits/train/segments/*/loss/zarr.json")
    ),
    "truncated chunk": lambda lk: _truncate(_one(lk, "splits/train/segments/*/loss/c/*/*")),
    "truncated scores.parquet": lambda lk: _truncate(scores_file(lk)),
    "garbage cld_lake.json": lambda lk: (lk / "cld_lake.json").write_bytes(b"\x00garbage{["),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_lake_file_is_one_line_and_changes_nothing(lake, tmp_path, cli, damage):
    DAMAGE[damage](lake)
    before = lake_hash(lake)
    out = tmp_path / "m.parquet"
    # score reads every file of the lake (scores.parquet too, to keep its other columns)
    r = run_cli_subprocess("score", lake, "--name", "cld2")
    assert_one_line(r)
    assert "internal error" not in r.err, r.err
    assert lake_hash(lake) == before
    commands = [
        ("info", lake),
        ("score", lake),
        ("select", lake, "--score", "cld", "--fraction", "0.5", "--out", out),
        ("sql", lake, "SELECT sum(loss) FROM losses"),
        ("sql", lake, "SELECT * FROM scores"),
        ("report", lake, "--out", tmp_path / "r.html"),
    ]
    for args in commands:
        r = cli(*args)
        if r.code != 0:  # a command that does not read the damaged file may succeed
            assert_one_line(r)
            assert "internal error" not in r.err, (args, r.err)
        assert lake_hash(lake) == before, args


def test_damaged_file_through_duckdb_is_cut_to_one_line(lake, cli):
    _truncate(_one(lake, "splits/train/segments/*/loss/zarr.json"))
    r = run_cli_subprocess("sql", lake, "SELECT sum(loss) FROM losses")
    assert_one_line(r)
    assert "Python exception" not in r.err and "File " not in r.err, r.err


# --- the last resort: bugs and nested messages ------------------------------------------


def _group(exc: BaseException) -> click.Group:
    @click.group()
    def app() -> None:
        pass

    @app.command("boom")
    @click.argument("lake", required=False)
    def boom(lake: str | None) -> None:
        raise exc

    return app


def _run_main(capsys, app: click.Group, *args: str):
    from cld_lake._cli._common import run_main

    code = run_main(app, list(args))
    captured = capsys.readouterr()
    return code, captured.err


def test_unexpected_exception_is_an_internal_error_line(capsys, monkeypatch):
    monkeypatch.delenv("CLD_LAKE_DEBUG", raising=False)
    code, err = _run_main(capsys, _group(ZeroDivisionError("division by zero\nmore")), "boom")
    assert code == 1
    assert err.strip().splitlines() == [
        "cld-lake: internal error: ZeroDivisionError: division by zero "
        "(please report it with `cld-lake env`)"
    ]


def test_debug_env_prints_the_traceback_then_the_line(capsys, monkeypatch):
    monkeypatch.setenv("CLD_LAKE_DEBUG", "1")
    code, err = _run_main(capsys, _group(KeyError("gone")), "boom")
    assert code == 1
    assert err.startswith("Traceback (most recent call last):")
    assert err.strip().splitlines()[-1].startswith("cld-lake: internal error: KeyError: 'gone'")


def test_duckdb_nested_traceback_is_cut_to_its_first_meaningful_line(capsys):
    import duckdb
    import pyarrow as pa

    schema = pa.schema([("x", pa.int64())])

    def batches():
        yield pa.record_batch([pa.array([1, 2])], schema=schema)
        raise ValueError("chunk file damaged")

    reader = pa.RecordBatchReader.from_batches(schema, batches())  # noqa: F841 (scanned by name)
    with pytest.raises(duckdb.Error) as raised:
        duckdb.connect().execute("SELECT sum(x) FROM reader").fetchall()
    assert "Traceback (most recent call last):" in str(raised.value)  # DuckDB nests it
    code, err = _run_main(capsys, _group(raised.value), "boom")
    assert code == 1
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and "File " not in err, err
    assert err.rstrip().endswith(
        "ValueError: chunk file damaged (please report it with `cld-lake env`)"
    )


def test_memory_error_is_out_of_memory_line(capsys):
    code, err = _run_main(capsys, _group(MemoryError("Unable to allocate 8 TiB")), "boom")
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "out of memory while running cld-lake boom" in err


def test_disk_full_without_a_filename_names_the_lake_argument(capsys, tmp_path):
    import errno

    (tmp_path / "lake").mkdir()
    exc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    code, err = _run_main(capsys, _group(exc), "boom", str(tmp_path / "lake"))
    assert code == 1
    assert err.strip() == (
        f"cld-lake: error: {tmp_path / 'lake'}: disk full (No space left on device); "
        "free space and run again; nothing committed was lost"
    )


def test_temp_file_names_are_shown_as_the_file_they_replace(capsys, tmp_path):
    import errno

    exc = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / ".m.parquet.tmp-h-1-a"))
    code, err = _run_main(capsys, _group(exc), "boom")
    assert code == 1
    assert f"{tmp_path / 'm.parquet'}: permission denied" in err and ".tmp-" not in err


def test_help_does_not_import_pyarrow():
    code = (
        "import sys; from cld_lake._cli import cli; from cld_lake._cli._common import run_main;"
        "run_main(cli, ['--help']); print(sorted(m for m in ('pyarrow', 'duckdb', 'zarr') "
        "if m in sys.modules))"
    )
    proc = subprocess.run(
        [str(CLI_BIN.with_name("python")), "-c", code], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


# --- a scorer killed mid-write ----------------------------------------------------------


def test_killed_score_leaves_no_temp_file_after_the_next_score(tmp_path, cli):
    """Regression: a ``score`` killed while writing left ``.scores.parquet.tmp-*`` in the lake
    root, and nothing ever removed it (now a temp file of a versioned table in ``scores/``)."""
    n, t = 1_000_000, 3
    loss, labels, ids = make_arrays(n, t, 4, seed=3)
    vloss, vlabels, _ = make_arrays(2_000, t, 4, seed=4)
    lake = tmp_path / "lake"
    import_arrays(tmp_path, lake, "train", loss=loss, labels=labels, sample_ids=ids)
    import_arrays(tmp_path, lake, "val", loss=vloss, labels=vlabels)
    assert cli("score", lake).code == 0
    temps = lambda: sorted(p.name for p in lake.rglob(".scores*.parquet.tmp-*"))  # noqa: E731

    for _attempt in range(3):  # the write phase is short: try again if the kill came late
        proc = subprocess.Popen(
            [str(CLI_BIN), "score", str(lake), "--name", "cld2"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while not temps() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        if proc.returncode == -signal.SIGKILL and temps():
            break
    else:
        pytest.fail("could not kill score while it wrote scores.parquet")
    assert cli("verify", lake).code == 0

    r = cli("score", lake, "--name", "cld2")
    assert r.code == 0, r.err
    assert temps() == []
    from cld_lake.lake import open_lake
    from cld_lake.lake.scores import read_scores

    table = read_scores(open_lake(lake))
    np.testing.assert_array_equal(table.column("sample_id").to_numpy(), ids)
    np.testing.assert_array_equal(table.column("cld2").to_numpy(), table.column("cld").to_numpy())
