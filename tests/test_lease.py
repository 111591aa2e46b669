"""The single-writer rule on object stores: leases (put-if-absent, renewal, expiry,
takeover, the read-back on a store that ignores conditions), the writer's lease check before
each commit, and the conditional PUT of the commit record, on ``memory://`` lakes and on the
S3 server."""

from __future__ import annotations

import json
import threading
import time
import uuid

import numpy as np
import pytest

from cld_lake.errors import LakeChangedError, LakeLockedError
from cld_lake.lake import Lake, SplitWriter, open_lake
from cld_lake.lake.check import verify_lake
from cld_lake.storage import FsspecStore, Lease, StorePath, location
from tests._s3server import BUCKET

N = 500
# Every test here waits on leases of a second or less: a renewal loop that never ends, or a
# lease never given up, ends the run in seconds instead of stalling it.
pytestmark = pytest.mark.timeout(30)


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


# --- the read-back: a store that accepts conditional PUTs it should refuse ----------------------
class ConditionBlindStore(FsspecStore):
    """fsspec's memory store, but blind to some conditions of a conditional PUT: ``"absent"``
    (If-None-Match: a create over an object that is there) and ``"version"`` (If-Match: a
    replace of a version that is not current) are accepted as plain PUTs, as S3 did before it
    enforced them. ``rival_after(key, body)``: right after this process's next accepted
    conditional PUT to ``key``, another writer's PUT of ``body`` lands there too (its own
    conditional PUT, which this store accepts as well)."""

    def __init__(self, blind_to: set[str]) -> None:
        super().__init__("memory")
        self.blind_to = blind_to
        self._rival: tuple[str, bytes] | None = None

    def rival_after(self, key: str, body: bytes) -> None:
        self._rival = (key, body)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        if "absent" in self.blind_to:
            self.put(key, data)
            done = True
        else:
            done = super().put_if_absent(key, data)
        return self._then_the_rival(key, done)

    def replace_if(self, key: str, data: bytes, version: str) -> bool:
        if "version" in self.blind_to:
            self.put(key, data)
            done = True
        else:
            done = super().replace_if(key, data, version)
        return self._then_the_rival(key, done)

    def _then_the_rival(self, key: str, done: bool) -> bool:
        if done and self._rival is not None and self._rival[0] == key:
            body = self._rival[1]
            self._rival = None
            self.put(key, body)
        return done


def _lease_body(holder: str, expires_in: float) -> bytes:
    """A lease object as another writer's :class:`Lease` writes it."""
    now = time.time()
    return json.dumps(
        {"holder": holder, "token": uuid.uuid4().hex, "host": "elsewhere", "pid": 1,
         "renewed_at": now, "expires_at": now + expires_in}, sort_keys=True,
    ).encode()  # fmt: skip


# create: nothing there, a store blind to If-None-Match; takeover: an expired lease there, a
# store that honours If-None-Match but not If-Match (S3 between the two, in 2024)
RACES = {"create": ({"absent", "version"}, None), "takeover": ({"version"}, -5.0)}


def _blind_lake(race: str) -> tuple[ConditionBlindStore, StorePath]:
    blind_to, dead_lease_expired = RACES[race]
    store = ConditionBlindStore(blind_to)
    root = StorePath(store, f"{uuid.uuid4().hex[:8]}/lake")
    Lake.create(root, num_classes=5)
    with SplitWriter(Lake(root), "train") as w:
        _commit(w, 0)
    lock = root / "splits" / "train" / ".writer.lock"
    assert not lock.exists()
    if dead_lease_expired is not None:  # a writer that died: its lease stands, expired
        lock.put(_lease_body("dead writer Z", expires_in=dead_lease_expired))
    return store, root


@pytest.mark.parametrize("race", sorted(RACES))
def test_a_lease_is_read_back_so_a_rival_landing_right_after_ours_keeps_it(race):
    """Regression: ``Lease.try_acquire`` without its read-back took the lease on a store that
    accepted both writers' conditional PUTs: two writers of one split."""
    store, root = _blind_lake(race)
    lock = root / "splits" / "train" / ".writer.lock"
    rival = _lease_body("writer B", expires_in=60)
    store.rival_after(lock.key, rival)
    with pytest.raises(LakeLockedError, match="being written by another job .writer B"):
        SplitWriter(Lake(root), "train")
    assert lock.read() == rival  # writer B's lease stands: ours neither kept it nor removed it
    assert not [t for t in threading.enumerate() if t.name == f"cld-lake-lease {lock}"]
    lock.delete()  # writer B finishes
    with SplitWriter(Lake(root), "train") as w:  # the same store, no rival: the lease is taken
        _commit(w, 1)
    assert open_lake(root).split("train").checkpoint_ids.tolist() == [0, 1]


@pytest.mark.parametrize("race", sorted(RACES))
def test_without_a_rival_a_condition_blind_store_still_gives_the_lease(race):
    _, root = _blind_lake(race)
    with SplitWriter(Lake(root), "train") as w:
        assert w._lock.held
        _commit(w, 1)
    assert not (root / "splits" / "train" / ".writer.lock").exists()


# --- the writer's lease check before it commits -----------------------------------------------
def _stop_renewing(writer: SplitWriter) -> None:
    """The writer's renewal stops (its process paused, a stalled host): its lease runs out
    while the writer itself goes on, unaware."""
    lease = writer._lock
    assert isinstance(lease, Lease)
    lease._stop.set()
    lease._thread.join(timeout=5)


def _lease_taken_over_then_stale_commit(url: str, first_commit: bool) -> None:
    """Writer A's lease expires; writer B takes it over and commits nothing; then A commits a
    checkpoint while B holds the lease: the lease check refuses it, and nothing of A's stays."""
    if not first_commit:
        with SplitWriter(open_lake(url), "train") as w:
            _commit(w, 0)
    before = open_lake(url).split("train").checkpoint_ids.tolist() if not first_commit else None
    a = SplitWriter(open_lake(url), "train")
    _stop_renewing(a)
    time.sleep(a._lock.seconds + 0.3)
    b = SplitWriter(open_lake(url), "train")  # takes the expired lease over
    try:
        with pytest.raises(LakeChangedError, match="lost its lease to pid"):
            _commit(a, 1)
        lake = open_lake(url)
        if first_commit:
            assert not lake.has_split("train")
        else:
            assert lake.split("train").checkpoint_ids.tolist() == before
            segments = location(url) / "splits" / "train" / "segments"
            assert len(list(segments.iterdir())) == 1  # A's new segment was removed
        assert b._lock.held
        _commit(b, 2)  # the holder goes on
    finally:
        b.close()
        a.close()
    split = open_lake(url).split("train")
    assert split.checkpoint_ids.tolist() == ([2] if first_commit else [0, 2])
    report = verify_lake(open_lake(url))
    assert report.ok and not report.warnings, report


@pytest.mark.parametrize("first_commit", [False, True], ids=["later-commit", "first-commit"])
def test_a_writer_whose_lease_was_taken_over_cannot_commit(monkeypatch, first_commit):
    """Regression: without the lease check, A's commit was accepted: B had committed nothing,
    so the commit record's version A read was still current."""
    monkeypatch.setenv("CLD_LAKE_LEASE_SECONDS", "0.5")
    _lease_taken_over_then_stale_commit(_lake(), first_commit)


@pytest.mark.timeout(90)  # the first test here to start the S3 server
@pytest.mark.parametrize("client", ["obstore", "fsspec"])
def test_a_writer_whose_lease_was_taken_over_cannot_commit_on_s3(s3_env, monkeypatch, client):
    monkeypatch.setenv("CLD_LAKE_S3_CLIENT", client)
    monkeypatch.setenv("CLD_LAKE_LEASE_SECONDS", "1")
    url = f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}/lake"
    Lake.create(url, num_classes=5)
    _lease_taken_over_then_stale_commit(url, first_commit=False)


def test_a_writer_that_lost_its_lease_leaves_the_new_holders_writes_alone(monkeypatch):
    """Writer A's failed first commit (its lease taken over) must not clean up the unlisted
    split as its own debris: writer B, the holder, is writing it."""
    monkeypatch.setenv("CLD_LAKE_LEASE_SECONDS", "0.5")
    url = _lake()
    a = SplitWriter(open_lake(url), "train")
    _stop_renewing(a)
    time.sleep(a._lock.seconds + 0.3)
    ids = np.arange(N)
    with SplitWriter(open_lake(url), "train", channels={"loss": "float32"}, row_chunk=128) as b:

        def blocks():  # B's first checkpoint, row block by row block; A commits meanwhile
            rows = b.row_chunk
            for start in range(0, N, rows):
                yield start, {"loss": (ids[start : start + rows] * 0.01).astype(np.float32)}
                if start == 0:
                    with pytest.raises(LakeChangedError, match="lost its lease"):
                        _commit(a, 1)

        b.commit_row_blocks(0, blocks(), new_samples=(ids, ids % 5))
    a.close()
    assert open_lake(url).split("train").checkpoint_ids.tolist() == [0]
    report = verify_lake(open_lake(url))
    assert report.ok and not report.warnings, report
