"""The writer under faults and concurrent readers: snapshots that survive compaction and GC,
`cld-lake compact`, faults at exact points of writing the commit record, the fsync/rename
order of that write, and ``duplicates="first"`` keeping the first value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cld_lake.errors import CldLakeError
from cld_lake.lake import Lake, open_lake
from cld_lake.lake.check import verify_lake
from cld_lake.lake.writer import SplitWriter
from tests._writer_hooks import (
    COMMIT_RECORD,
    FAULT_EXIT_CODE,
    FAULT_POINTS,
    SEGMENTS_DIR,
    InjectedFault,
    child_values,
    clock_ahead,
    default_grace_seconds,
    fault_at,
    record_fs_calls,
)
from tests.conftest import REPO

N = 100
ROW_CHUNK = 16
SEED = 0
CHANNELS = ["loss", "correct"]


def sample_ids(n: int = N) -> np.ndarray:
    return np.random.default_rng(1).permutation(n).astype(np.int64) + 1000


def commit(w: SplitWriter, checkpoint: int, seed: int = SEED) -> None:
    """Commit ``child_values`` of ``checkpoint`` (row i gets value i), in shuffled batches."""
    n = w.split.num_samples
    loss, correct = child_values(n, checkpoint, seed)
    ck = w.checkpoint(checkpoint)
    for part in np.array_split(np.random.default_rng(checkpoint).permutation(n), 3):
        ck.add(w.split.sample_ids[part], loss[part], correct=correct[part])
    ck.commit()


def new_split(path: Path, checkpoints: range, split: str = "train", **writer) -> Path:
    lake = Lake.create(path, num_classes=3)
    ids = sample_ids()
    with SplitWriter(lake, split, channels={"loss": "float32", "correct": "bool"},
                     row_chunk=ROW_CHUNK, **writer) as w:  # fmt: skip
        w.declare_samples(ids, ids % 3)
        for t in checkpoints:
            commit(w, t)
    return path


def expected(checkpoints) -> dict[str, np.ndarray]:
    cols = [child_values(N, int(t), SEED) for t in checkpoints]
    return {
        "loss": np.stack([c[0] for c in cols], axis=1).reshape(N, len(cols)),
        "correct": np.stack([c[1] for c in cols], axis=1).reshape(N, len(cols)),
    }


def read_all(blocks) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Concatenate the blocks of a scan: (sample ids, values per channel)."""
    blocks = list(blocks)
    ids = np.concatenate([b.sample_ids for b in blocks])
    return ids, {c: np.concatenate([b.values[c] for b in blocks]) for c in CHANNELS}


def assert_split_holds(lake_path: Path, checkpoints, split: str = "train") -> None:
    """What a new reader sees is exactly ``checkpoints`` with their values (NaN-aware)."""
    s = open_lake(lake_path).split(split)
    assert s.checkpoint_ids.tolist() == list(checkpoints)
    ids, values = read_all(s.blocks(block_rows=7, channels=CHANNELS))
    np.testing.assert_array_equal(ids, sample_ids())
    for c, want in expected(checkpoints).items():
        np.testing.assert_array_equal(values[c], want)


def segment_dirs(lake_path: Path, split: str = "train") -> set[str]:
    return {p.name for p in (lake_path / "splits" / split / SEGMENTS_DIR).iterdir()}


# --- readers during compaction and GC -------------------------------------------------------


@pytest.mark.parametrize("merge", ["merging-commit", "compact"])
def test_a_reader_opened_before_a_merge_reads_its_snapshot_after_merge_and_default_gc(
    tmp_path, merge
):
    path = new_split(tmp_path / "lake", range(7))
    with SplitWriter(open_lake(path), "train") as w:  # auto_compact: the 8th commit merges
        reader = open_lake(path).split("train")
        waiting = reader.blocks(block_rows=16, channels=CHANNELS)  # opened, not started
        scanning = reader.blocks(block_rows=16, channels=CHANNELS)
        first = next(scanning)
        before = segment_dirs(path)
        # long after the segments were written (a long run): the grace counts from the merge
        with clock_ahead(2 * default_grace_seconds()):
            if merge == "merging-commit":
                commit(w, 7)
            else:
                w.compact(full=True)
            w.gc()  # the default grace period: retired segments stay for readers
        assert len(open_lake(path).split("train").segment_names()) == 1  # the merge happened
        assert before <= segment_dirs(path)
    ids, values = read_all([first, *scanning])
    np.testing.assert_array_equal(ids, sample_ids())
    for scan in (values, read_all(waiting)[1], read_all(reader.blocks(channels=CHANNELS))[1]):
        for c, want in expected(range(7)).items():
            np.testing.assert_array_equal(scan[c], want)
    assert_split_holds(path, range(8) if merge == "merging-commit" else range(7))


def test_gc_deletes_retired_segments_once_the_grace_period_has_passed(tmp_path):
    path = new_split(tmp_path / "lake", range(5), auto_compact=False)
    with SplitWriter(open_lake(path), "train") as w:
        w.compact(full=True)
        assert w.gc() == []  # too young
        with clock_ahead(default_grace_seconds() + 1):
            deleted = w.gc()
    current = open_lake(path).split("train").segment_names()
    assert len(deleted) == 5 and segment_dirs(path) == set(current)
    report = verify_lake(open_lake(path))
    assert report.ok and not report.warnings, report
    assert_split_holds(path, range(5))


def _stale_reader(path: Path):
    """A reader opened before a full compaction whose old segments gc(grace 0) then deleted,
    plus a scan of it that had started before."""
    reader = open_lake(path).split("train")
    scanning = reader.blocks(block_rows=16, channels=CHANNELS, prefetch=False)
    next(scanning)
    with SplitWriter(open_lake(path), "train") as w:
        w.compact(full=True)
        w.gc(grace_seconds=0)
    return reader, scanning


def test_a_scan_whose_segments_gc_deleted_fails_with_a_one_line_lake_error(tmp_path):
    path = new_split(tmp_path / "lake", range(4), auto_compact=False)
    _, scanning = _stale_reader(path)
    with pytest.raises(CldLakeError) as err:
        list(scanning)
    assert "\n" not in str(err.value)
    assert_split_holds(path, range(4))  # the lake itself is fine


def test_a_new_scan_of_a_collected_snapshot_fails_with_a_one_line_lake_error(tmp_path):
    # regression: Split.blocks let zarr's raw FileNotFoundError out of open_segment
    path = new_split(tmp_path / "lake", range(4), auto_compact=False)
    reader, _ = _stale_reader(path)
    with pytest.raises(CldLakeError) as err:
        list(reader.blocks(channels=CHANNELS))
    assert "\n" not in str(err.value)


# --- cld-lake compact ------------------------------------------------------------------------


@pytest.mark.parametrize("prune", [False, True])
def test_cli_compact_leaves_one_segment_per_split_with_the_same_values(tmp_path, cli, prune):
    path = new_split(tmp_path / "lake", range(5), auto_compact=False)
    new_split(path, range(3), split="val", auto_compact=False)
    with SplitWriter(open_lake(path), "train", auto_compact=False) as w:
        more = expected(range(5, 8))  # three checkpoints in one more segment
        w.append_columns(
            [5, 6, 7],
            lambda a, b: {c: v[a:b] for c, v in more.items()},
            num_rows=N,
            channels={"loss": "float32", "correct": "bool"},
        )
    before = {s: segment_dirs(path, s) for s in ("train", "val")}
    assert len(before["train"]) == 6 and len(before["val"]) == 3
    r = cli("compact", path, *(["--prune"] if prune else []))
    assert r.code == 0, r.err
    for split, checkpoints in (("train", range(8)), ("val", range(3))):
        names = open_lake(path).split(split).segment_names()
        assert len(names) == 1 and names[0] not in before[split]
        on_disk = {names[0]} if prune else {names[0], *before[split]}
        assert segment_dirs(path, split) == on_disk
        assert_split_holds(path, checkpoints, split)
    assert verify_lake(open_lake(path)).ok


# --- faults at exact points of a commit -------------------------------------------------------


def _fault_in_child(path: Path, point: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tests._writer_hooks", str(path), "train", "3", str(SEED), point],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == FAULT_EXIT_CODE, proc.stderr
    assert proc.stdout.split() == ["commit-start"]


def _fault_in_process(path: Path, point: str) -> None:
    with SplitWriter(open_lake(path), "train") as w, fault_at(point, "raise"):
        with pytest.raises(InjectedFault):
            commit(w, 3)


@pytest.mark.parametrize("mode", ["exit", "raise"])
@pytest.mark.parametrize("point", FAULT_POINTS)
def test_a_fault_inside_the_commit_record_write_leaves_the_old_or_the_new_state(
    tmp_path, point, mode
):
    path = new_split(tmp_path / "lake", range(3))
    (_fault_in_child if mode == "exit" else _fault_in_process)(path, point)
    report = verify_lake(open_lake(path))
    assert report.ok, report.errors
    # before the rename nothing of checkpoint 3 is visible; after it, all of it
    assert_split_holds(path, range(4) if point == "after-replace" else range(3))
    with SplitWriter(open_lake(path), "train") as w:  # the next writer resumes and cleans up
        assert not list((path / "splits" / "train").glob(f".{COMMIT_RECORD}.tmp*"))
        if point != "after-replace":
            commit(w, 3)
        commit(w, 4)
        w.gc(grace_seconds=0)
    assert_split_holds(path, range(5))
    report = verify_lake(open_lake(path))
    assert report.ok and not report.warnings, report


def test_a_writer_whose_commit_failed_after_the_commit_point_keeps_that_checkpoint(tmp_path):
    # regression: the writer kept its stale snapshot (the record was renamed, then the directory
    # fsync raised) and its next commit rewrote the record without the committed checkpoint
    path = new_split(tmp_path / "lake", range(3))
    with SplitWriter(open_lake(path), "train") as w:
        with fault_at("after-replace", "raise"), pytest.raises(InjectedFault):
            commit(w, 3)
        commit(w, 4)
    assert_split_holds(path, range(5))


def _record_write(events, split_dir: Path, name: str) -> int:
    """Index of the one rename onto ``split_dir/name``, checked: a temp sibling fsynced whole
    before it (the same inode that ends up as ``name``), the directory fsynced after it."""
    final = (split_dir / name).resolve()
    renames = [i for i, e in enumerate(events) if e.kind == "replace" and e.path == str(final)]
    assert len(renames) == 1, f"{name} must be written once, as temp file + rename: {events}"
    i = renames[0]
    src = Path(events[i].src)
    assert src.parent == final.parent and src.name != name
    st = final.stat()
    synced = [e for e in events[:i] if e.kind == "fsync" and e.path == str(src)]
    assert synced and (synced[-1].inode, synced[-1].size) == (st.st_ino, st.st_size), (
        f"the temp file of {name} must be fsynced, complete, before the rename: {events}"
    )
    assert any(e.kind == "fsync" and e.path == str(final.parent) for e in events[i + 1 :]), (
        f"the directory must be fsynced after renaming {name}: {events}"
    )
    return i


def test_the_commit_record_is_written_fsync_temp_then_rename_then_fsync_directory(tmp_path):
    path = tmp_path / "lake"
    ids = sample_ids()
    split_dir = path / "splits" / "train"
    with SplitWriter(Lake.create(path), "train", channels={"loss": "float32", "correct": "bool"},
                     row_chunk=ROW_CHUNK, auto_compact=False) as w:  # fmt: skip
        with record_fs_calls() as events:
            w.declare_samples(ids, ids % 3)
        # a new split: its samples table is durable before the record that makes it visible
        assert _record_write(events, split_dir, "samples.parquet") < _record_write(
            events, split_dir, COMMIT_RECORD
        )
        for t in range(2):
            with record_fs_calls() as events:
                commit(w, t)
            _record_write(events, split_dir, COMMIT_RECORD)
        with record_fs_calls() as events:
            w.compact(full=True)
        _record_write(events, split_dir, COMMIT_RECORD)
    assert_split_holds(path, range(2))


def test_a_new_segment_is_fsynced_before_the_commit_record_names_it(tmp_path):
    # regression: the chunk files of a new segment were never fsynced (durability on power
    # loss), so a renamed commit record could reference data still in the page cache
    path = new_split(tmp_path / "lake", range(1), auto_compact=False)
    split_dir = path / "splits" / "train"
    with SplitWriter(open_lake(path), "train", auto_compact=False) as w:
        before = segment_dirs(path)
        with record_fs_calls() as events:
            commit(w, 1)
        i = _record_write(events, split_dir, COMMIT_RECORD)
        (new,) = segment_dirs(path) - before
    files = {str(p.resolve()) for p in (split_dir / SEGMENTS_DIR / new).rglob("*") if p.is_file()}
    synced = {e.path for e in events[:i] if e.kind == "fsync"}
    assert files and files <= synced, sorted(files - synced)


# --- duplicates="first" -----------------------------------------------------------------------


@pytest.mark.parametrize("existing", [False, True], ids=["new-split", "existing-split"])
def test_duplicates_first_keeps_the_first_value_given_for_a_sample(tmp_path, existing):
    lake = Lake.create(tmp_path / "lake", num_classes=3)
    ids = np.array([10, 11, 12, 13], dtype=np.int64)
    labels = ids % 3
    with SplitWriter(lake, "train", channels={"loss": "float32", "margin": "float32",
                                              "correct": "bool"}) as w:  # fmt: skip
        if existing:
            w.declare_samples(ids, labels)
        ck = w.checkpoint(0, duplicates="first")
        # within one batch: 12 twice (first 2.0), 10 twice (first 1.0)
        batch = np.array([12, 10, 12, 10])
        ck.add(batch, [2.0, 1.0, 9.0, 8.0], labels=batch % 3, margin=[0.2, 0.1, 0.9, 0.8],
               correct=[True, False, False, True])  # fmt: skip
        # across batches: 12 and 10 again (ignored), 11 and 13 for the first time, 13 twice
        batch = np.array([12, 11, 13, 10, 13])
        ck.add(batch, [7.0, 3.0, 4.0, 6.0, 5.0], labels=batch % 3,
               margin=[0.7, 0.3, 0.4, 0.6, 0.5], correct=[False, True, False, False, True])  # fmt: skip
        ck.commit()
    s = open_lake(lake.path).split("train")
    (block,) = s.blocks(channels=["loss", "margin", "correct"])
    np.testing.assert_array_equal(block.sample_ids, ids)
    np.testing.assert_array_equal(block.labels, labels)
    np.testing.assert_array_equal(block.values["loss"][:, 0], [1.0, 3.0, 2.0, 4.0])
    np.testing.assert_array_equal(block.values["margin"][:, 0], np.float32([0.1, 0.3, 0.2, 0.4]))
    np.testing.assert_array_equal(block.values["correct"][:, 0], [False, True, True, False])
