"""Integrity beyond single flips (issue 9): deleted files, the list of committed splits, the
class limit, format 1 lakes, checksums that must be present, recomputed fingerprints and
class counts, and the debris of failed, killed and compacting writers."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cld_lake._meta import read_meta, with_checksum, with_meta
from cld_lake.errors import (
    BadInputError,
    CorruptLakeError,
    LakeChangedError,
    LakeVersionError,
)
from cld_lake.lake import Lake, open_lake
from cld_lake.lake import _format as fmt
from cld_lake.lake._commit import CommitRecord
from cld_lake.lake._segments import create_segment
from cld_lake.lake._validate import MAX_CLASSES
from cld_lake.lake.check import lake_info, verify_lake
from cld_lake.lake.store import lock_root
from cld_lake.lake.writer import SplitWriter
from tests.conftest import lake_hash
from tests.test_integrity import build_lake, committed_files, snapshot

LOSSES_QUERY = (
    "SELECT split, count(*) AS n, sum(loss) AS s, sum(correct::INT) AS c FROM losses GROUP BY split"
)


@pytest.fixture
def lake(tmp_path) -> Path:
    return build_lake(tmp_path / "lake")


def one_line_refusal(result, code: int = 1) -> None:
    assert result.code == code, (result.code, result.err)
    assert result.err.strip() and "\n" not in result.err.strip(), result.err


def rewrite_record(split_dir: Path, change, checksum: bool = True) -> None:
    """Rewrite a commit record with ``change(meta)`` applied (as a buggy writer would)."""
    record = split_dir / fmt.CHECKPOINTS_FILE
    table = pq.ParquetFile(record).read()
    meta = read_meta(table.schema)
    change(meta)
    table = with_checksum(table, meta) if checksum else with_meta(table, meta)
    pq.write_table(table, record)


# --- (b) a deleted committed file -------------------------------------------------------------


def test_deleting_any_committed_file_fails_verify_and_the_commands_that_read_it(lake, cli):
    for file in committed_files(lake):
        held = file.read_bytes()
        file.unlink()
        where = file.relative_to(lake)
        assert cli("verify", lake).code == 1, where
        if file.name != fmt.CLASSES_FILE:  # the SQL views read every other file
            one_line_refusal(cli("sql", lake, LOSSES_QUERY))
        if "segments" not in where.parts:  # info reads all but the segments
            one_line_refusal(cli("info", lake))
        file.write_bytes(held)
    assert cli("verify", lake).code == 0


def test_a_listed_split_without_its_commit_record_is_corrupt_everywhere(lake, cli):
    (lake / "splits" / "train" / fmt.CHECKPOINTS_FILE).unlink()
    for command in (
        ("verify", lake),
        ("info", lake),
        ("sql", lake, "SELECT count(*) FROM samples"),
    ):
        r = cli(*command)
        one_line_refusal(r)
        assert "checkpoints.parquet is missing" in r.err and "lists split 'train'" in r.err
    with pytest.raises(CorruptLakeError):
        SplitWriter(open_lake(lake), "train")


def test_a_readers_flip_message_names_the_file_and_the_fix(lake, cli):
    record = lake / "splits" / "val" / fmt.CHECKPOINTS_FILE
    table = pq.ParquetFile(record).read()
    flipped = table.set_column(6, "column", pa.array(table.column("column").to_numpy()[::-1]))
    pq.write_table(flipped.replace_schema_metadata(table.schema.metadata), record)
    r = cli("info", lake)
    one_line_refusal(r)
    assert f"{record} fails its checksum" in r.err
    assert f"run `cld-lake verify {lake}` and restore it from a backup" in r.err


# --- (2) the root lists the committed splits --------------------------------------------------


def test_an_unlisted_split_is_an_unfinished_first_write_that_the_next_writer_removes(lake, cli):
    with SplitWriter(open_lake(lake), "test") as w:
        ck = w.checkpoint(0)
        ck.add(np.arange(4), np.ones(4, np.float32), labels=np.arange(4) % 3)
        ck.commit()
    with lock_root(lake):
        meta = fmt.read_root_metadata(lake)
        fmt.write_root_metadata(lake, {**meta, "splits": ["train", "val"]})  # as if killed
    assert open_lake(lake).splits() == ["train", "val"]
    assert "test" not in json.loads(cli("info", lake, "--json").out)["splits"]
    r = cli("verify", lake)
    assert r.code == 0 and "split 'test': an unfinished first write" in r.err
    with SplitWriter(open_lake(lake), "test") as w:  # removes the debris at once
        assert w.split is None
        assert sorted(p.name for p in w.root.local_path.iterdir()) == [fmt.WRITER_LOCK]
        ck = w.checkpoint(5)
        ck.add(np.arange(3), np.zeros(3, np.float32), labels=np.zeros(3, np.int64))
        ck.commit()
    assert open_lake(lake).split("test").checkpoint_ids.tolist() == [5]
    report = verify_lake(open_lake(lake))
    assert report.ok and not [w for w in report.warnings if "test" in w], report


def test_a_failed_first_commit_leaves_no_split(tmp_path, monkeypatch):
    lake = Lake.create(tmp_path / "lake")
    before = lake_hash(lake.path)

    def disk_full(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(CommitRecord, "_list_split", disk_full)
    with SplitWriter(lake, "train") as w, pytest.raises(OSError):
        ck = w.checkpoint(0)
        ck.add(np.arange(5), np.ones(5, np.float32), labels=np.arange(5) % 2)
        ck.commit()
    assert sorted(p.name for p in (lake.path / "splits" / "train").iterdir()) == [fmt.WRITER_LOCK]
    assert open_lake(lake.path).splits() == []
    # the class count was fixed on the way (as before this change); no data is left
    assert {p.name for p in committed_files(lake.path)} == {fmt.ROOT_FILE}
    assert before != "absent"


# --- (1) checksums that must be there, and what verify recomputes ------------------------------


def test_a_format_2_file_without_its_checksum_is_corrupt(lake, cli):
    root = lake / fmt.ROOT_FILE
    meta = json.loads(root.read_text())
    root.write_text(json.dumps({k: v for k, v in meta.items() if k != "checksum"}))
    one_line_refusal(cli("verify", lake))
    root.write_text(json.dumps(meta))
    assert cli("verify", lake).code == 0
    rewrite_record(lake / "splits" / "train", lambda m: m.pop("checksum"), checksum=False)
    r = cli("verify", lake)
    assert r.code == 1 and "no checksum recorded" in r.err
    one_line_refusal(cli("sql", lake, LOSSES_QUERY))


def test_verify_recomputes_the_ids_fingerprint_and_the_class_counts(lake):
    train = lake / "splits" / "train"
    rewrite_record(train, lambda m: m.update(ids_sha1="0" * 40))
    report = verify_lake(open_lake(lake))
    assert any("fingerprint differs" in e for e in report.errors), report
    shutil.rmtree(lake)
    build_lake(lake)
    classes = pq.ParquetFile(train / fmt.CLASSES_FILE).read()
    wrong = with_checksum(
        classes.set_column(1, "count", pa.array(classes.column("count").to_numpy() + [1, 0, -1])),
        {"table": "classes"},
    )
    pq.write_table(wrong, train / fmt.CLASSES_FILE)
    rewrite_record(train, lambda m: m.update(classes=read_meta(wrong.schema)["checksum"]))
    report = verify_lake(open_lake(lake))
    assert any("class counts differ" in e for e in report.errors), report


def test_a_valid_file_swapped_for_another_is_refused(lake):
    """classes.parquet of val is a valid file, but not the one train's record names."""
    train, val = lake / "splits" / "train", lake / "splits" / "val"
    shutil.copy(val / fmt.CLASSES_FILE, train / fmt.CLASSES_FILE)
    shutil.copy(val / "samples.parquet", train / "samples.parquet")
    with pytest.raises(CorruptLakeError, match="not the file the commit record names"):
        open_lake(lake).split("train").label_counts()
    with pytest.raises(CorruptLakeError, match="has 6 rows, the commit record 12"):
        open_lake(lake).split("train").samples_table  # noqa: B018
    assert not verify_lake(open_lake(lake)).ok


# --- (3) the class limit ----------------------------------------------------------------------


def test_the_class_limit_is_enforced_before_anything_is_written(tmp_path, lake, cli):
    before = lake_hash(lake)
    with pytest.raises(BadInputError, match="1,048,576 classes"):
        SplitWriter(open_lake(lake), "test", num_classes=40_000_000)
    with pytest.raises(BadInputError, match="1,048,576 classes"):
        Lake.create(tmp_path / "new", num_classes=40_000_000)
    assert not (tmp_path / "new").exists()
    fresh = Lake.create(tmp_path / "fresh")  # no class count fixed yet
    fresh_before = lake_hash(fresh.path)
    big = np.array([0, 1, 50_000_000])
    with SplitWriter(fresh, "train") as w:
        with pytest.raises(BadInputError, match="label 50000000 .*1,048,576 classes"):
            ck = w.checkpoint(0)
            ck.add(np.arange(3), np.ones(3, np.float32), labels=big)
            ck.commit()
        with pytest.raises(BadInputError, match="label 50000000 .*1,048,576 classes"):
            w.append_columns(
                [0],
                lambda a, b: {"loss": np.ones((b - a, 1), np.float32)},
                num_rows=3,
                channels={"loss": "float32"},
                new_samples=(np.arange(3), big),
            )
    assert lake_hash(fresh.path) == fresh_before and open_lake(fresh.path).num_classes is None
    np.save(tmp_path / "l.npy", np.ones((3, 2), np.float32))
    np.save(tmp_path / "y.npy", np.array([0, 1, 2]))
    np.save(tmp_path / "big.npy", big)
    r = cli("import", lake, "--split", "test", "--loss", tmp_path / "l.npy", "--labels",
            tmp_path / "y.npy", "--num-classes", 40_000_000)  # fmt: skip
    one_line_refusal(r, 2)
    r = cli("import", fresh.path, "--split", "train", "--loss", tmp_path / "l.npy", "--labels",
            tmp_path / "big.npy")  # fmt: skip
    one_line_refusal(r, 2)
    assert lake_hash(lake) == before and lake_hash(fresh.path) == fresh_before
    assert MAX_CLASSES == 1 << 20


def test_class_counts_live_in_a_small_table(lake):
    train = open_lake(lake).split("train")
    assert "label_counts" not in train.meta
    table = pq.ParquetFile(lake / "splits" / "train" / fmt.CLASSES_FILE).read()
    assert table.column_names == ["label", "count"]
    labels = train.labels
    np.testing.assert_array_equal(train.label_counts(5), np.bincount(labels, minlength=5))


# --- (4) format 1 lakes -----------------------------------------------------------------------


def to_format_1(path: Path) -> None:
    """Rewrite a lake in format 1's layout: no checksums, no split list, class counts in the
    commit record's metadata, no classes.parquet."""
    root = path / fmt.ROOT_FILE
    meta = json.loads(root.read_text())
    for key in ("checksum", "splits"):
        meta.pop(key)
    root.write_text(json.dumps({**meta, "format_version": 1}, indent=2))
    for split_dir in (path / "splits").iterdir():
        labels = pq.ParquetFile(split_dir / "samples.parquet").read().column("label").to_numpy()
        record = split_dir / fmt.CHECKPOINTS_FILE
        table = pq.ParquetFile(record).read()
        old = read_meta(table.schema)
        keep = ("channels", "num_samples", "row_chunk", "ids_sha1")
        v1 = {k: old[k] for k in keep} | {"label_counts": np.bincount(labels).tolist()}
        pq.write_table(with_meta(table, v1), record)
        samples = pq.ParquetFile(split_dir / "samples.parquet").read()
        pq.write_table(samples.replace_schema_metadata({}), split_dir / "samples.parquet")
        (split_dir / fmt.CLASSES_FILE).unlink()


def test_a_format_1_lake_opens_reads_and_verifies_with_a_warning(lake, cli):
    expected = snapshot(lake)
    to_format_1(lake)
    got = snapshot(lake)
    assert json.loads(got.pop("info"))["format_version"] == 1
    expected.pop("info")
    assert got == expected
    r = cli("verify", lake)
    assert r.code == 0 and "format 1: no checksums to check" in r.err
    r = cli("sql", lake, LOSSES_QUERY)
    assert r.code == 0, r.err
    with pytest.raises(LakeVersionError, match="read-only"):
        SplitWriter(open_lake(lake), "train")


def test_a_format_1_lake_scores_and_selects(tmp_path, cli):
    pytest.importorskip("cld_lake.score")
    from tests.conftest import import_arrays, make_arrays

    loss, labels, ids = make_arrays(200, 6, 3, seed=5)
    vloss, vlabels, _ = make_arrays(40, 6, 3, seed=6)
    path = tmp_path / "lake"
    import_arrays(tmp_path, path, "train", loss=loss, labels=labels, sample_ids=ids)
    import_arrays(tmp_path, path, "val", loss=vloss, labels=vlabels)
    two = tmp_path / "two"
    shutil.copytree(path, two)
    to_format_1(path)
    for lk in (two, path):
        assert cli("score", lk).code == 0
        r = cli(
            "select",
            lk,
            "--score",
            "cld",
            "--fraction",
            "0.2",
            "--out",
            tmp_path / f"{lk.name}.parquet",
        )
        assert r.code == 0, r.err
    a = pq.read_table(tmp_path / "two.parquet").select(["sample_id", "label", "score", "rank"])
    b = pq.read_table(tmp_path / "lake.parquet").select(["sample_id", "label", "score", "rank"])
    assert a.equals(b)


# --- (5) debris -------------------------------------------------------------------------------


def test_a_never_committed_segment_is_removed_by_the_next_writer_at_once(lake, cli):
    seg = lake / "splits" / "train" / "segments" / "seg-0123456789abcdef.zarr"
    create_segment(seg, 12, 1, {"loss": "float32"}, 8)
    r = cli("verify", lake)
    assert r.code == 0 and "left by a failed or killed write" in r.err
    with SplitWriter(open_lake(lake), "train"):
        assert not seg.exists()


def test_retired_segments_are_kept_for_the_grace_period_and_said_so(lake, cli):
    with SplitWriter(open_lake(lake), "train") as w:
        old = set(w.split.segment_names())
        w.compact(full=True)
    r = cli("verify", lake)
    assert r.code == 0
    # one line for all of them (count, bytes, when they go), not one per segment
    lines = [line for line in r.err.splitlines() if "retired by compaction" in line]
    assert len(lines) == 1 and f"split 'train': {len(old)} segments (" in lines[0]
    assert "kept for the grace period (10 min)" in lines[0] and "deletes them (all by " in lines[0]
    assert "removed by the next writer" not in r.err
    with SplitWriter(open_lake(lake), "train") as w:  # within the grace period: kept
        assert old <= {p.name for p in (w.root.local_path / "segments").iterdir()}
        assert sorted(w.gc(grace_seconds=0)) == sorted(old)
    assert cli("verify", lake).err == ""


def test_temp_files_anywhere_are_listed_by_verify(lake, cli):
    temps = [
        lake / ".cld_lake.json.tmp-host-1-abc",
        lake / ".scores.parquet.tmp-host-1-abc",
        lake / "splits" / "val" / ".samples.parquet.tmp-host-1-abc",
    ]
    for t in temps:
        t.write_bytes(b"partial")
    r = cli("verify", lake)
    assert r.code == 0
    for t in temps:
        assert f"{t}: temp file of an interrupted write" in r.err


@pytest.mark.parametrize("first", [False, True])
def test_a_commit_that_fails_on_a_full_disk_removes_its_new_segment(tmp_path, monkeypatch, first):
    import cld_lake.lake._commit as commit_module

    path = build_lake(tmp_path / "lake")
    split = "test" if first else "train"
    before = {p for p in (path / "splits").rglob("seg-*")}
    real = commit_module.put_record

    def disk_full(target, table, version):
        if target.name == fmt.CHECKPOINTS_FILE:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(target, table, version)

    monkeypatch.setattr(commit_module, "put_record", disk_full)
    with SplitWriter(open_lake(path), split) as w, pytest.raises(OSError, match="No space"):
        ck = w.checkpoint(9)
        ids = w.split.sample_ids if w.split is not None else np.arange(4)
        ck.add(ids, np.ones(len(ids), np.float32), labels=None if w.split else ids % 3,
               correct=ids % 2 == 0)  # fmt: skip
        ck.commit()
    assert {p for p in (path / "splits").rglob("seg-*")} == before
    report = verify_lake(open_lake(path))
    assert report.ok and not report.warnings, report
    assert open_lake(path).splits() == ["train", "val"]


def test_a_reader_whose_segment_was_retired_and_deleted_is_told_to_run_again(lake):
    reader = open_lake(lake).split("train")
    scanning = reader.blocks(block_rows=4, channels=["loss"], prefetch=False)
    next(scanning)
    with SplitWriter(open_lake(lake), "train") as w:
        w.compact(full=True)
        w.gc(grace_seconds=0)
    for blocks in (scanning, reader.blocks(channels=["loss"])):
        with pytest.raises(
            LakeChangedError, match="retired by compaction while this command ran; run it again"
        ):
            list(blocks)
    assert verify_lake(open_lake(lake)).ok


def test_info_reads_class_counts_from_the_table(lake):
    info = lake_info(open_lake(lake))
    assert info["format_version"] == fmt.FORMAT_VERSION == 2
    assert info["splits"]["train"]["classes_present"] == 3
