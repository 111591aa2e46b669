"""The writer tests' only hooks into lake internals, kept in one place so a refactor of
``cld_lake.lake`` updates one file: the default GC grace period, a clock run ahead, fault injection
at exact points of writing the commit record, a recorder of ``fsync`` / ``replace`` calls, and
a child writer process to kill.

Run as a script, it is that child: ``python -m tests._writer_hooks LAKE SPLIT CKPT SEED
[FAULT_POINT]`` commits checkpoint ``CKPT`` of an existing split with :func:`child_values`,
printing ``commit-start`` / ``commit-end``, then waits to be killed (or dies at the fault point).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cld_lake.lake import open_lake
from cld_lake.lake.writer import SplitWriter

COMMIT_RECORD = "checkpoints.parquet"  # the file whose rename is a split's commit point
SEGMENTS_DIR = "segments"
FAULT_POINTS = ("temp-write", "before-replace", "after-replace")
FAULT_EXIT_CODE = 17


def default_grace_seconds() -> float:
    """The grace period ``SplitWriter.gc()`` (and every writer's automatic gc) uses."""
    return float(inspect.signature(SplitWriter.gc).parameters["grace_seconds"].default)


@contextlib.contextmanager
def clock_ahead(seconds: float) -> Iterator[None]:
    """Run ``time.time`` ``seconds`` ahead while the block runs: what the writer stamps and
    what gc compares then happen that much later than the writes before the block."""
    real = time.time
    time.time = lambda: real() + seconds
    try:
        yield
    finally:
        time.time = real


def child_values(n: int, checkpoint: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (loss float32 with some NaN, correct bool) for rows 0..n-1."""
    rng = np.random.default_rng([seed, checkpoint])
    loss = rng.normal(1.0, 2.0, n).astype(np.float32)
    loss[rng.random(n) < 0.1] = np.nan
    return loss, rng.random(n) < 0.5


class InjectedFault(RuntimeError):
    """Raised at a fault point in ``mode="raise"``."""


def _die(mode: str) -> None:
    if mode == "exit":
        os._exit(FAULT_EXIT_CODE)  # like a kill: no finally blocks, no cleanup
    raise InjectedFault("injected fault")


@contextlib.contextmanager
def fault_at(point: str, mode: str = "raise") -> Iterator[None]:
    """Fail the next write of a commit record at ``point``.

    ``temp-write``: the temp file holds half the record; ``before-replace``: the temp file is
    complete and fsynced, not yet renamed; ``after-replace``: renamed, the directory not yet
    fsynced. ``mode``: ``raise`` an :class:`InjectedFault` or ``exit`` the process at once.
    """
    import pyarrow.parquet as pq

    if point not in FAULT_POINTS:
        raise ValueError(f"fault point {point!r}: one of {FAULT_POINTS}")
    real_write, real_replace = pq.write_table, os.replace

    def write_table(table, where, *args, **kwargs):
        real_write(table, where, *args, **kwargs)
        if point == "temp-write" and Path(where).name.startswith(f".{COMMIT_RECORD}.tmp"):
            os.truncate(where, os.path.getsize(where) // 2)
            _die(mode)

    def replace(src, dst, *args, **kwargs):
        is_record = Path(dst).name == COMMIT_RECORD
        if is_record and point == "before-replace":
            _die(mode)
        real_replace(src, dst, *args, **kwargs)
        if is_record and point == "after-replace":
            _die(mode)

    pq.write_table, os.replace = write_table, replace
    try:
        yield
    finally:
        pq.write_table, os.replace = real_write, real_replace


@dataclass(frozen=True)
class FsEvent:
    kind: str  # "fsync" or "replace"
    path: str  # fsync: the file or directory synced; replace: the destination
    src: str = ""  # replace: the source
    inode: int = 0  # fsync: inode of the synced file
    size: int = 0  # fsync: its size then


@contextlib.contextmanager
def record_fs_calls() -> Iterator[list[FsEvent]]:
    """Record every ``os.fsync`` and ``os.replace`` (in call order) while the block runs."""
    events: list[FsEvent] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(
            FsEvent("fsync", os.readlink(f"/proc/self/fd/{fd}"), "", st.st_ino, st.st_size)
        )
        return real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        events.append(FsEvent("replace", os.path.realpath(dst), os.path.realpath(src)))
        return real_replace(src, dst, *args, **kwargs)

    os.fsync, os.replace = fsync, replace
    try:
        yield events
    finally:
        os.fsync, os.replace = real_fsync, real_replace


def main(lake_path: str, split: str, checkpoint: str, seed: str, point: str = "") -> None:
    lake = open_lake(lake_path)
    with SplitWriter(lake, split) as w:
        n = w.split.num_samples
        loss, correct = child_values(n, int(checkpoint), int(seed))
        ck = w.checkpoint(int(checkpoint))
        ids = w.split.sample_ids
        for part in np.array_split(np.random.default_rng(int(seed)).permutation(n), 3):
            extra = {"correct": correct[part]} if "correct" in w.split.channels else {}
            ck.add(ids[part], loss[part], **extra)
        import zarr  # noqa: F401  (imported on first use: load it now, so the kill window is the commit)

        print("commit-start", flush=True)
        with fault_at(point, "exit") if point else contextlib.nullcontext():
            ck.commit()
        print("commit-end", flush=True)
        time.sleep(120)  # hold still: the parent kills us


if __name__ == "__main__":
    main(*sys.argv[1:])
