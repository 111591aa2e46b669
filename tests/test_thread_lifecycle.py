"""The threads cld_lake starts end with their owner, closed or garbage-collected: a lease's
renewal (the lease released, or dropped while held: then the lease is given up too), the
read-ahead of ``Split.blocks`` (the generator exhausted, closed, left by a ``break`` or dropped
half-read), a commit's writer threads (the commit done or abandoned), a writer's lock (the
writer closed, or dropped unclosed). Every such thread is named ``cld-lake-...``; the score
kernels' pool (``cld-kernel``) is process-wide, like a BLAS pool, and not owned by an object."""

from __future__ import annotations

import gc
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import numpy as np
import pytest

import cld_lake
from cld_lake.errors import LakeLockedError
from cld_lake.lake import Lake, SplitWriter, open_lake
from cld_lake.storage import Lease, location

# A thread that outlives its owner is found within seconds; a renewal loop that never ends
# fails here instead of hanging.
pytestmark = pytest.mark.timeout(30)

N, C = 600, 3
PREFIX = "cld-lake"


def _ours() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith(PREFIX)}


@pytest.fixture
def left_over() -> Iterator[Callable[[], list[str]]]:
    """``left_over()``: the names of cld-lake threads started during this test that are still
    alive once the garbage is collected and each had a few seconds to end."""
    before = _ours()

    def check(wait: float = 3.0) -> list[str]:
        gc.collect()
        deadline = time.monotonic() + wait
        for thread in _ours() - before:
            thread.join(max(0.0, deadline - time.monotonic()))
        return sorted(t.name for t in _ours() - before if t.is_alive())

    yield check


def _lake(url: str, num_checkpoints: int = 2) -> str:
    Lake.create(url, num_classes=C)
    ids = np.arange(N)
    with SplitWriter(open_lake(url), "train", row_chunk=64) as w:
        for t in range(num_checkpoints):
            ck = w.checkpoint(t)
            ck.add(ids, (ids * 0.01 + t).astype(np.float32), labels=ids % C)
            ck.commit()
    return url


def _memory_url() -> str:
    return f"memory://{uuid.uuid4().hex[:8]}/lake"


def _renewing(lease: Lease) -> threading.Thread:
    thread = lease._thread
    assert thread is not None and thread.is_alive() and thread.name.startswith(PREFIX)
    return thread


# --- leases ------------------------------------------------------------------------------------
def test_a_released_lease_ends_its_renewal(left_over):
    path = location(_memory_url()) / ".lock"
    lease = Lease(path, "writer A", seconds=0.6)
    assert lease.try_acquire() is None
    _renewing(lease)
    lease.release()
    assert left_over() == []
    assert not path.exists()


def test_a_lease_dropped_while_held_ends_its_renewal_and_is_given_up(left_over):
    """Regression: the renewal thread held its lease, so a lease dropped unreleased was never
    collected and renewed itself for the life of the process: nobody else could write."""
    path = location(_memory_url()) / ".lock"
    lease = Lease(path, "writer A", seconds=0.6)
    assert lease.try_acquire() is None
    _renewing(lease)
    del lease
    assert left_over() == []
    assert not path.exists()  # given up: the next writer need not wait for it to expire
    other = Lease(path, "writer B")
    assert other.try_acquire() is None
    other.release()


# --- writers -------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["memory", "local"])
@pytest.mark.parametrize("end", ["closed", "dropped"])
def test_a_writer_closed_or_dropped_leaves_no_thread_and_frees_its_split(
    left_over, tmp_path, where, end
):
    url = _memory_url() if where == "memory" else str(tmp_path / "lake")
    _lake(url, num_checkpoints=1)
    writer = SplitWriter(open_lake(url), "train")
    if where == "memory":
        _renewing(writer._lock)
    with pytest.raises(LakeLockedError):
        SplitWriter(open_lake(url), "train")
    if end == "closed":
        writer.close()
    del writer
    assert left_over() == []
    with SplitWriter(open_lake(url), "train") as again:  # at once: no lease left to expire
        ck = again.checkpoint(1)
        ck.add(np.arange(N), np.ones(N, np.float32))
        ck.commit()
    assert left_over() == []


def test_an_abandoned_commit_leaves_no_writer_thread(left_over):
    url = _lake(_memory_url(), num_checkpoints=1)
    started = []

    def blocks():
        for start in range(0, N, 64):
            started.append(_ours())
            if start == 256:
                raise KeyboardInterrupt  # the caller gives up half-way
            yield start, {"loss": np.ones((min(64, N - start), 1), np.float32)}

    with SplitWriter(open_lake(url), "train") as w, pytest.raises(KeyboardInterrupt):
        w.commit_row_blocks(1, blocks())
    assert any(t.name.startswith("cld-lake-write") for t in started[-1])
    assert left_over() == []
    assert open_lake(url).split("train").checkpoint_ids.tolist() == [0]


# --- the read-ahead of Split.blocks ----------------------------------------------------------
def _consume(split, how: str) -> None:
    blocks = split.blocks(block_rows=50, checkpoints=None, prefetch=True)
    first = next(blocks)
    assert first.loss.shape == (50, 2)
    assert any(t.name.startswith("cld-lake-prefetch") for t in _ours())
    if how == "exhausted":
        assert sum(len(b.sample_ids) for b in blocks) == N - 50
    elif how == "closed":
        blocks.close()
    elif how == "break":
        for block in blocks:
            if block.start >= 200:
                break
    # "dropped": the half-read generator goes out of scope here


@pytest.mark.parametrize("where", ["memory", "local"])
@pytest.mark.parametrize("how", ["exhausted", "closed", "break", "dropped"])
def test_the_read_ahead_ends_with_its_generator(left_over, tmp_path, where, how):
    url = _memory_url() if where == "memory" else str(tmp_path / "lake")
    split = open_lake(_lake(url)).split("train")
    _consume(split, how)
    assert left_over() == []
    assert split.num_samples == N  # the split itself lives on


def test_scoring_selecting_and_querying_a_lake_leave_no_thread(left_over, tmp_path):
    url = _memory_url()
    _lake(url, num_checkpoints=4)
    ids = np.arange(90)
    with SplitWriter(open_lake(url), "val", row_chunk=64) as w:
        for t in range(4):
            ck = w.checkpoint(t)
            ck.add(ids, (ids * 0.02 + t).astype(np.float32), labels=ids % C)
            ck.commit()
    cld_lake.score(url)
    cld_lake.select(url, score="cld", fraction=0.2, out=tmp_path / "m.parquet")
    assert len(cld_lake.query(url, "SELECT * FROM scores")) == N
    assert left_over() == []
