"""The scores table is committed like everything else (issue 16, items 1 and 8).

Every score writes a new, immutable version of the table and then replaces the record in
``cld_lake.json`` that names it (file, checksum of its footer checksums, rows, ids
fingerprint, sequence number): so a table that is missing, swapped for another valid file or
rolled back to an older version is refused by ``verify`` and every reader (one line, exit 1);
a ``kill -9`` between writing the new file and the commit leaves the previous table current
and debris the next score removes; a score of a run whose training samples are not the
table's is refused before anything is written (exit 2, the lake unchanged); and lakes of the
old layout (``LAKE/scores.parquet``, no record) are read as before and moved to the new
layout by their next score. On disk and on an S3 server (moto).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import cld_lake
from cld_lake.errors import CorruptLakeError, LakeChangedError, ScoringError
from cld_lake.lake import _format as fmt
from cld_lake.lake import open_lake, scores_path
from cld_lake.lake.check import lake_info, verify_lake
from cld_lake.lake.scores import iter_scores, read_scores, store_score, stored_scores
from cld_lake.storage import StorePath, location
from tests._s3server import BUCKET
from tests.conftest import REPO, make_arrays, plant_legacy_scores

N, T, C = 240, 6, 3
PLACES = ["disk", "s3"]


# --- lakes on disk or on the S3 server ---------------------------------------------------------
def _new_lake(place: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if place == "s3":
        request.getfixturevalue("s3_env")
        return f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}/lake"
    return str(tmp_path / "lake")


def _import(cli, lake: str, folder: Path, *, run: str | None = None, offset: int = 0,
            labels_seed: int = 1) -> None:  # fmt: skip
    """Train and val of one run; train ids shifted by ``offset``."""
    loss, labels, ids = make_arrays(N, T, C, seed=1, nan_rows=2)
    labels = (labels + labels_seed - 1) % C  # the same samples, relabelled
    vloss, vlabels, _ = make_arrays(60, T, C, seed=7)
    tag = f"{run or 'default'}-{offset}-{labels_seed}"
    arrays = {"loss": loss, "labels": labels, "ids": ids + offset, "vloss": vloss,
              "vlabels": vlabels}  # fmt: skip
    paths = {}
    for name, values in arrays.items():
        paths[name] = folder / f"{tag}-{name}.npy"
        np.save(paths[name], values)
    extra = ["--run", run] if run else []
    r = cli("import", lake, "--split", "train", "--loss", paths["loss"], "--labels",
            paths["labels"], "--sample-ids", paths["ids"], "--num-classes", C, *extra)  # fmt: skip
    assert r.code == 0, r.err
    r = cli("import", lake, "--split", "val", "--loss", paths["vloss"], "--labels",
            paths["vlabels"], *extra)  # fmt: skip
    assert r.code == 0, r.err


def _scored(cli, lake: str, folder: Path) -> str:
    """A lake scored twice: ``cld`` (version 1), then ``mean_loss`` (version 2)."""
    _import(cli, lake, folder)
    assert cli("score", lake).code == 0
    assert cli("score", lake, "--method", "mean_loss").code == 0
    return lake


def _record(lake: str) -> dict:
    return json.loads((location(lake) / fmt.ROOT_FILE).read())[fmt.SCORES_KEY]


def _hash(lake: str) -> str:
    """Every object of the lake but its locks and leases."""
    h = hashlib.md5()
    root = location(lake)
    for path in sorted(root.walk(), key=lambda p: p.key):
        if path.name.endswith(".lock"):
            continue
        h.update(path.key.encode())
        h.update(path.read())
    return h.hexdigest()


def _one_line(r) -> None:
    assert len(r.err.strip().splitlines()) == 1, r.err
    assert "Traceback" not in r.err


def _readers_refuse(cli, lake: str, tmp_path: Path, match: str) -> None:
    """verify, info, select, sql, report and score: one line, exit 1, naming the damage."""
    out = tmp_path / f"m-{uuid.uuid4().hex[:6]}.parquet"
    commands = [
        ("verify", lake),
        ("info", lake),
        ("select", lake, "--score", "cld", "--fraction", "0.5", "--out", out),
        ("sql", lake, "SELECT count(*) AS n FROM scores"),
        ("report", lake, "--out", tmp_path / f"r-{uuid.uuid4().hex[:6]}.html"),
        ("score", lake, "--method", "confidence", "--name", "later"),
    ]
    for args in commands:
        r = cli(*args)
        assert r.code == 1, (args, r.code, r.err)
        assert match in r.err, (args, r.err)
        if args[0] != "verify":
            _one_line(r)
    assert not out.exists()


# --- the record ------------------------------------------------------------------------------
@pytest.mark.parametrize("place", PLACES)
def test_each_score_commits_a_new_version_named_by_the_root(place, tmp_path, request, cli):
    lake = _scored(cli, _new_lake(place, tmp_path, request), tmp_path)
    record = _record(lake)
    root = location(lake)
    assert record["seq"] == 2 and record["rows"] == N
    assert record["file"].startswith("scores/scores-000002-")
    assert record["ids_sha1"] == open_lake(lake).split("train").ids_digest
    assert list(record["retired"]) == [next(iter(record["retired"]))]  # version 1
    first = next(iter(record["retired"]))
    assert first.startswith("scores/scores-000001-") and (root / first).exists()
    assert scores_path(open_lake(lake)) == root / record["file"]
    assert not (root / fmt.SCORES_FILE).exists()
    assert list(stored_scores(open_lake(lake))) == ["cld", "mean_loss"]
    report = verify_lake(open_lake(lake))
    assert report.ok, report.errors
    retired = [w for w in report.warnings if "retired by newer scores" in w]
    assert len(retired) == 1 and "1 older scores table (" in retired[0]
    info = lake_info(open_lake(lake))
    assert info["bytes_retired"] == len((root / first).read()) > 0


# --- a swapped, rolled-back or deleted table -------------------------------------------------
@pytest.mark.parametrize("place", PLACES)
def test_a_table_swapped_for_another_valid_one_is_refused(place, tmp_path, request, cli):
    lake = _scored(cli, _new_lake(place, tmp_path, request), tmp_path)
    other = _scored(cli, _new_lake(place, tmp_path / "o", request), tmp_path)  # same data
    current = location(lake) / _record(lake)["file"]
    current.put((location(other) / _record(other)["file"]).read())  # a valid table, checksums too
    _readers_refuse(cli, lake, tmp_path, "is not the scores table cld_lake.json names (checksum")
    with pytest.raises(CorruptLakeError, match="is not the scores table"):
        read_scores(open_lake(lake))


@pytest.mark.parametrize("place", PLACES)
def test_a_table_rolled_back_to_its_older_version_is_refused(place, tmp_path, request, cli):
    lake = _scored(cli, _new_lake(place, tmp_path, request), tmp_path)
    record = _record(lake)
    older = location(lake) / next(iter(record["retired"]))
    (location(lake) / record["file"]).put(older.read())  # version 1, valid and of this lake
    _readers_refuse(
        cli, lake, tmp_path, "rolled back: it holds version 1, cld_lake.json names version 2"
    )


@pytest.mark.parametrize("place", PLACES)
def test_a_deleted_table_is_refused(place, tmp_path, request, cli):
    lake = _scored(cli, _new_lake(place, tmp_path, request), tmp_path)
    (location(lake) / _record(lake)["file"]).delete()
    _readers_refuse(cli, lake, tmp_path, "the scores table cld_lake.json names is missing")
    with pytest.raises(CorruptLakeError, match="is missing"):
        stored_scores(open_lake(lake))


def test_a_reader_keeps_the_table_it_found_while_a_newer_one_is_committed(tmp_path, cli):
    lake = _scored(cli, str(tmp_path / "lake"), tmp_path)
    parts = iter_scores(open_lake(lake), ["cld"])
    first = next(parts)
    assert cli("score", lake, "--method", "confidence").code == 0  # version 3 committed
    rows = first.num_rows + sum(p.num_rows for p in parts)  # its checksums checked at the end
    assert rows == N and "confidence" in stored_scores(open_lake(lake))


def test_retired_tables_are_deleted_by_a_later_writer_after_the_grace_period(
    tmp_path, cli, monkeypatch
):
    lake = _scored(cli, str(tmp_path / "lake"), tmp_path)
    first = location(lake) / next(iter(_record(lake)["retired"]))
    assert cli("score", lake, "--method", "confidence").code == 0  # within the grace period
    assert first.exists() and len(_record(lake)["retired"]) == 2
    from cld_lake.lake import _scores_record

    monkeypatch.setattr(_scores_record, "GC_GRACE_SECONDS", 0.0)
    assert cli("score", lake, "--method", "variability").code == 0
    record = _record(lake)
    assert not first.exists() and len(record["retired"]) == 1  # only the one just replaced
    assert set((location(lake) / "scores").list()) == _known(lake)
    assert verify_lake(open_lake(lake)).ok


def test_a_commit_whose_root_changed_meanwhile_commits_nothing(tmp_path, cli, monkeypatch):
    """The commit is conditional on the root as the writer read it (on an object store a
    conditional PUT): a writer that lost its lock while writing changes nothing."""
    lake = _scored(cli, str(tmp_path / "lake"), tmp_path)
    before = (location(lake) / fmt.ROOT_FILE).read()
    from cld_lake.lake import _scores_write

    real = _scores_write.write_table

    def meanwhile(*args, **kwargs):
        checks = real(*args, **kwargs)
        meta = fmt.read_root_metadata(location(lake))
        fmt.write_root_metadata(location(lake), {**meta, "note": "another writer"})
        return checks

    monkeypatch.setattr("cld_lake.lake.scores.write_table", meanwhile)
    with pytest.raises(LakeChangedError, match="run the command again"):
        cld_lake.score(lake, method="confidence")
    assert json.loads((location(lake) / fmt.ROOT_FILE).read())["note"] == "another writer"
    assert json.loads(before)[fmt.SCORES_KEY] == _record(lake)  # the record untouched
    names = (location(lake) / "scores").list()
    assert len(names) == 2  # versions 1 and 2: the new file was removed
    assert "confidence" not in stored_scores(open_lake(lake))


# --- kill -9 between writing the new file and the commit ---------------------------------------
KILLED_SCORE = """
import os, signal, sys
from cld_lake.lake import _scores_record

def killed(*args, **kwargs):  # the new table is written; the commit never happens
    print("written", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

_scores_record.commit = killed
import cld_lake
cld_lake.score(sys.argv[1], method="confidence")
"""


@pytest.mark.parametrize("place", PLACES)
def test_kill_9_between_the_new_table_and_the_commit(place, tmp_path, request, cli):
    lake = _scored(cli, _new_lake(place, tmp_path, request), tmp_path)
    root_before = (location(lake) / fmt.ROOT_FILE).read()
    env = {**os.environ, "CLD_LAKE_LEASE_SECONDS": "2", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", KILLED_SCORE, lake], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL and proc.stdout.strip() == "written", proc.stderr
    assert (location(lake) / fmt.ROOT_FILE).read() == root_before  # the previous table current
    assert list(stored_scores(open_lake(lake))) == ["cld", "mean_loss"]
    debris = sorted(set((location(lake) / "scores").list()) - _known(lake))
    assert len(debris) == 1 and debris[0].startswith("scores-000003-")
    r = cli("verify", lake)
    assert r.code == 0, r.err
    assert f"{debris[0]}: a scores table never committed (a failed or killed score)" in r.err
    if place == "s3":
        time.sleep(2.5)  # the killed writer's lease on the root runs out
    assert cli("score", lake, "--method", "confidence").code == 0
    assert debris[0] not in (location(lake) / "scores").list()
    assert set((location(lake) / "scores").list()) == _known(lake)
    assert list(stored_scores(open_lake(lake))) == ["cld", "mean_loss", "confidence"]
    assert verify_lake(open_lake(lake)).ok


def _known(lake: str) -> set[str]:
    record = _record(lake)
    return {Path(k).name for k in [record["file"], *record["retired"]]}


# --- a run of other samples ------------------------------------------------------------------
@pytest.mark.parametrize("place", PLACES)
def test_scoring_a_run_of_other_samples_is_refused_and_changes_nothing(
    place, tmp_path, request, cli
):
    lake = _scored(cli, _new_lake(place, tmp_path, request), tmp_path)
    _import(cli, lake, tmp_path, run="ids", offset=100_000)
    before = _hash(lake)
    r = cli("score", lake, "--run", "ids", "--name", "c_ids")
    assert r.code == 2, r.err
    _one_line(r)
    first, last = 1000 + 100_000, 1000 + 100_000 + N - 1
    assert f"run 'ids' trains on other samples ({N} samples, ids {first}..{last})" in r.err
    assert f"than the lake's scores table ({N} samples, ids 1000..{999 + N}" in r.err
    assert "score run 'ids' in a lake of its own" in r.err
    assert _hash(lake) == before
    table = read_scores(open_lake(lake))
    assert table.column("cld").null_count == 2  # the NaN rows only: nothing turned into NULL


def test_a_run_of_the_same_ids_with_other_labels_is_refused(tmp_path, cli):
    lake = _scored(cli, str(tmp_path / "lake"), tmp_path)
    _import(cli, lake, tmp_path, run="relabelled", labels_seed=2)  # same ids, other labels
    a, b = (open_lake(lake).split("train", r) for r in ("default", "relabelled"))
    assert a.ids_digest == b.ids_digest and not np.array_equal(a.labels, b.labels)
    before = _hash(lake)
    r = cli("score", lake, "--run", "relabelled", "--name", "c2")
    assert r.code == 2 and "the same sample ids with other labels" in r.err, r.err
    assert _hash(lake) == before


def test_the_lake_level_writer_refuses_other_samples_too(tmp_path, cli):
    """The check runs again under the root lock (a run imported meanwhile): ScoringError."""
    lake = _scored(cli, str(tmp_path / "lake"), tmp_path)
    _import(cli, lake, tmp_path, run="ids", offset=100_000)
    before = _hash(lake)
    opened = open_lake(lake)
    train = opened.split("train", "ids")
    with pytest.raises(ScoringError, match="trains on other samples"):
        store_score(opened, train, "x", np.zeros(N), {"method": "x"})
    assert _hash(lake) == before


def test_a_run_of_the_same_samples_in_another_order_is_realigned(tmp_path, cli):
    lake = str(tmp_path / "lake")
    loss, labels, ids = make_arrays(N, T, C, seed=1, nan_rows=2)
    vloss, vlabels, _ = make_arrays(60, T, C, seed=7)
    for run, order in (("a", np.arange(N)), ("b", np.arange(N)[::-1])):
        for split, arrays in (("train", (loss[order], labels[order], ids[order])),
                              ("val", (vloss, vlabels, None))):  # fmt: skip
            paths = []
            for i, values in enumerate(arrays):
                if values is not None:
                    paths.append(tmp_path / f"{run}{split}{i}.npy")
                    np.save(paths[-1], values)
            args = ["import", lake, "--split", split, "--loss", paths[0], "--labels", paths[1]]
            args += ["--sample-ids", paths[2]] if len(paths) == 3 else []
            assert cli(*args, "--run", run).code == 0
    assert cli("score", lake, "--run", "a", "--name", "cld_a").code == 0
    assert cli("score", lake, "--run", "b", "--name", "cld_b").code == 0
    table = read_scores(open_lake(lake))
    np.testing.assert_array_equal(table.column("sample_id").to_numpy(), ids[::-1])
    np.testing.assert_array_equal(
        table.column("cld_a").to_numpy(), table.column("cld_b").to_numpy()
    )  # the same losses, so the same scores, matched by sample id


# --- lakes of the old layout -------------------------------------------------------------------
@pytest.mark.parametrize("place", PLACES)
def test_an_old_layout_lake_is_read_as_before_and_moved_by_its_next_score(
    place, tmp_path, request, cli
):
    lake = _scored(cli, _new_lake(place, tmp_path, request), tmp_path)
    table = read_scores(open_lake(lake))
    root = location(lake)
    _plant_legacy(root, table, tmp_path)
    assert fmt.SCORES_KEY not in json.loads((root / fmt.ROOT_FILE).read())
    assert scores_path(open_lake(lake)) == root / fmt.SCORES_FILE
    assert read_scores(open_lake(lake)).equals(table)
    for args in (("verify", lake), ("info", lake), ("sql", lake, "SELECT avg(cld) FROM scores"),
                 ("select", lake, "--score", "cld", "--fraction", "0.5",
                  "--out", tmp_path / "old.parquet")):  # fmt: skip
        r = cli(*args)
        assert r.code == 0 and "error" not in r.err and "warning" not in r.err, (args, r.err)
    assert cli("score", lake, "--method", "confidence").code == 0  # moved to the new layout
    record = _record(lake)
    assert record["seq"] == 1 and list(record["retired"]) == [fmt.SCORES_FILE]
    assert (root / fmt.SCORES_FILE).exists()  # retired: kept for the grace period
    moved = read_scores(open_lake(lake))
    assert moved.column_names == ["sample_id", "label", "cld", "mean_loss", "confidence"]
    assert moved.select(table.column_names).equals(table.select(table.column_names))
    r = cli("verify", lake)
    assert r.code == 0 and "1 older scores table (" in r.err, r.err


def _plant_legacy(root: StorePath, table, tmp_path: Path) -> None:
    """``root`` as a version before versioned tables left it (on disk or on S3)."""
    local = root.local_path
    if local is not None:
        plant_legacy_scores(local, table)
        return
    staged = tmp_path / "staged"
    staged.mkdir(exist_ok=True)
    (staged / fmt.ROOT_FILE).write_bytes((root / fmt.ROOT_FILE).read())
    plant_legacy_scores(staged, table)
    (root / fmt.SCORES_DIR).delete_tree()
    (root / fmt.SCORES_FILE).put((staged / fmt.SCORES_FILE).read_bytes())
    (root / fmt.ROOT_FILE).put((staged / fmt.ROOT_FILE).read_bytes())


def test_a_stray_old_layout_table_is_not_read_and_is_removed_by_the_next_score(tmp_path, cli):
    """A migrated lake with a (valid, older) ``scores.parquet`` put back: readers keep the
    recorded table, verify names the stray, the next score deletes it."""
    lake = _scored(cli, str(tmp_path / "lake"), tmp_path)
    older = location(lake) / next(iter(_record(lake)["retired"]))
    stray = Path(lake) / fmt.SCORES_FILE
    stray.write_bytes(older.read())
    assert list(stored_scores(open_lake(lake))) == ["cld", "mean_loss"]
    r = cli("verify", lake)
    assert r.code == 0 and f"{stray}: a scores table of the old layout" in r.err, r.err
    assert cli("score", lake, "--method", "confidence").code == 0
    assert not stray.exists()


def test_a_format_1_lake_keeps_its_table_in_place(tmp_path, cli):
    from tests.test_integrity_faults import to_format_1

    lake = tmp_path / "lake"
    _import(cli, str(lake), tmp_path)
    to_format_1(lake)
    assert cli("score", lake).code == 0
    assert (lake / fmt.SCORES_FILE).exists() and not (lake / fmt.SCORES_DIR).exists()
    assert fmt.SCORES_KEY not in json.loads((lake / fmt.ROOT_FILE).read_text())
    assert pq.read_table(lake / fmt.SCORES_FILE).column_names == ["sample_id", "label", "cld"]
