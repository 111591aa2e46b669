"""The single-writer rule on object stores: leases (put-if-absent, renewal, expiry,
takeover) and the conditional PUT of the commit record, on ``memory://`` lakes."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

from cld_lake.errors import LakeChangedError, LakeLockedError
from cld_lake.lake import Lake, SplitWriter, open_lake
from cld_lake.lake.check import verify_lake
from cld_lake.storage import Lease, location

N = 500


def _lake() -> str:
    url = f"memory://{uuid.uuid4().hex[:8]}/lake"
    Lake.create(url, num_classes=5)
    return url


def _commit(writer: SplitWriter, t: int) -> None:
    ck = writer.checkpoint(t)
    ids = np.arange(N)
    ck.add(ids, (ids * 0.01 + t).astype(np.float32), labels=ids % 5)
    ck.commit()


def test_a_lease_is_exclusive_and_names_its_holder():
    path = location(f"memory://{uuid.uuid4().hex[:8]}/lock")
    first, second = Lease(path, "writer A"), Lease(path, "writer B")
    assert first.try_acquire() is None
    try:
        held_by = second.try_acquire()
        assert held_by is not None and "writer A" in held_by and str(path) in held_by
    finally:
        first.release()
    assert not path.exists()
    assert second.try_acquire() is None
    second.release()


def test_an_expired_lease_is_taken_over_and_its_old_holder_cannot_commit():
    path = location(f"memory://{uuid.uuid4().hex[:8]}/lock")
    dead = Lease(path, "writer A", seconds=0.6)
    assert dead.try_acquire() is None
    dead._stop.set()  # A stops renewing (a process stopped or killed)
    dead._thread.join()
    assert "writer A" in Lease(path, "writer B").try_acquire()
    time.sleep(0.7)
    taker = Lease(path, "writer B", seconds=30)
    assert taker.try_acquire() is None
    with pytest.raises(LakeChangedError, match="lost its lease to writer B"):
        dead.check()
    taker.release()


def test_a_renewed_lease_outlives_its_duration():
    path = location(f"memory://{uuid.uuid4().hex[:8]}/lock")
    live = Lease(path, "writer A", seconds=0.6)
    assert live.try_acquire() is None
    time.sleep(1.5)  # renewed in the background every 0.2 s
    assert "writer A" in Lease(path, "writer B").try_acquire()
    live.check()
    live.release()


def test_second_writer_of_a_split_is_refused_while_the_first_holds_its_lease():
    url = _lake()
    with SplitWriter(open_lake(url), "train") as first:
        _commit(first, 0)
        with pytest.raises(LakeLockedError, match="being written by another job"):
            SplitWriter(open_lake(url), "train")
    with SplitWriter(open_lake(url), "train") as again:
        _commit(again, 1)
    assert open_lake(url).split("train").checkpoint_ids.tolist() == [0, 1]


def test_a_writer_past_its_lease_cannot_overwrite_a_newer_commit_record():
    url = _lake()
    with SplitWriter(open_lake(url), "train") as w:
        _commit(w, 0)
    stale = SplitWriter(open_lake(url), "train")
    stale._lock.release()  # its lease expired while it was paused...
    stale._lock.check = lambda: None  # ...and it did not notice before its PUT
    with SplitWriter(open_lake(url), "train") as other:
        _commit(other, 1)
    with pytest.raises(LakeChangedError, match="commit record changed"):
        _commit(stale, 2)
    split = open_lake(url).split("train")
    assert split.checkpoint_ids.tolist() == [0, 1]
    assert verify_lake(open_lake(url)).ok


def test_compaction_retires_and_gc_deletes_segments_on_an_object_store():
    url = _lake()
    with SplitWriter(open_lake(url), "train", auto_compact=False) as w:
        for t in range(5):
            _commit(w, t)
    segments = location(url) / "splits" / "train" / "segments"
    assert len(list(segments.iterdir())) == 5
    with SplitWriter(open_lake(url), "train") as w:
        assert w.compact() == 1
        assert len(list(segments.iterdir())) == 6  # the retired five kept for readers
        assert len(w.gc(grace_seconds=0)) == 5
    assert len(list(segments.iterdir())) == 1
    report = verify_lake(open_lake(url))
    assert report.ok and not report.warnings
    values = np.concatenate([b.loss for b in open_lake(url).split("train").blocks()])
    expected = [(np.arange(N) * 0.01 + t).astype(np.float32) for t in range(5)]
    np.testing.assert_array_equal(values, np.stack(expected, axis=1))
