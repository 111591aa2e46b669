"""Compaction and garbage collection of a split's segments.

Compaction merges segments into a new, wider one and then swaps the commit record, so a scan
reads few, large chunks; committed bytes are never rewritten in place. The new record lists
the merged-away segments as retired, with the time; :func:`collect_garbage` keeps them for
the grace period, so a reader that opened the previous commit record finishes its scan. Any
other segment no commit references is debris of a failed or killed write: the writer (who
holds the split's lock) deletes it at once.

The split's writer owns the commit record: these functions get a ``commit`` callback that
replaces it with the given rows and returns the new snapshot, and a ``guard`` that removes a
new segment whose commit fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np

from cld_lake.lake import _format as fmt
from cld_lake.lake._segments import create_segment, delete_segment, new_segment_name
from cld_lake.lake.store import Split
from cld_lake.storage import StorePath, is_temp_name

GC_GRACE_SECONDS = 600.0  # readers of a retired segment get this long to finish their scan
COMPACT_FANOUT = 8

# commit(rows, new segment, retired segments) -> the new snapshot
Commit = Callable[[list[dict[str, Any]], str, Sequence[str]], Split]
Guard = Callable[[str], AbstractContextManager[None]]


def compact_split(split: Split, commit: Commit, guard: Guard, *, full: bool) -> int:
    """Merge segments until the policy is met; return the number of merges.

    ``full=True`` merges everything into one segment; ``full=False`` applies the tiered
    policy used after each commit (merge runs of ``COMPACT_FANOUT`` equal-level segments).
    """
    merges = 0
    while True:
        widths = segment_widths(split)
        if full:
            run = list(widths) if len(widths) > 1 else []
        else:
            run = tail_run_to_merge(widths)
        if not run:
            return merges
        split = merge_segments(split, run, commit, guard)
        merges += 1


def segment_widths(split: Split) -> dict[str, int]:
    """Committed columns per segment, segments in the order of the commit record."""
    widths: dict[str, int] = {}
    for name in split.checkpoint_table.column("segment").to_pylist():
        widths[name] = widths.get(name, 0) + 1
    return widths


def tail_run_to_merge(widths: Mapping[str, int]) -> list[str]:
    """Tiered policy: merge the last ``COMPACT_FANOUT`` segments when they share a level
    (level = floor(log_F(width))): widths 1x8 -> 8, 8x8 -> 64... Each value is rewritten
    about log_F(T) times and a split holds at most (F-1) segments per level."""
    names = list(widths)
    if len(names) < COMPACT_FANOUT:
        return []
    tail = names[-COMPACT_FANOUT:]
    levels = {
        int(np.floor(np.log(max(widths[n], 1)) / np.log(COMPACT_FANOUT) + 1e-9)) for n in tail
    }
    return tail if len(levels) == 1 else []


def merge_segments(split: Split, segments: Sequence[str], commit: Commit, guard: Guard) -> Split:
    """Copy ``segments`` into one new segment (columns in checkpoint order) and commit the
    record that points to it and lists the old ones as retired; return the new snapshot."""
    new_name = new_segment_name()
    with guard(new_name):
        return _merge_into(split, segments, new_name, commit)


def _merge_into(split: Split, segments: Sequence[str], new_name: str, commit: Commit) -> Split:
    table = split.checkpoint_table
    seg_col = np.asarray(table.column("segment").to_pylist(), dtype=object)
    ckpts = np.sort(table.column("checkpoint").to_numpy()[np.isin(seg_col, list(segments))])
    arrays = create_segment(
        split.root / fmt.SEGMENTS_DIR / new_name,
        split.num_samples,
        len(ckpts),
        split.channels,
        split.row_chunk,
    )
    for block in split.blocks(checkpoints=ckpts, channels=list(split.channels)):
        for channel, arr in arrays.items():
            arr.write(block.start, block.start + len(block), block.values[channel])
    position = {int(c): i for i, c in enumerate(ckpts)}
    rows = table.to_pylist()
    for row in rows:
        if row["segment"] in segments:
            row["column"] = position[int(row["checkpoint"])]
            row["segment"] = new_name
    return commit(rows, new_name, list(segments))


def collect_garbage(
    root: StorePath,
    referenced: set[str],
    retired: Mapping[str, float],
    grace_seconds: float = GC_GRACE_SECONDS,
) -> list[str]:
    """Delete what no commit references: ``retired`` segments (name -> time of retirement)
    once ``grace_seconds`` have passed, every other unreferenced segment and stray temp file
    at once. Only the split's writer calls this. Returns the names deleted."""
    deleted = []
    seg_dir = root / fmt.SEGMENTS_DIR
    now = time.time()
    for name in seg_dir.list():
        if name in referenced:
            continue
        if name in retired and now - float(retired[name]) < grace_seconds:
            continue  # readers of an older snapshot may still be scanning it
        delete_segment(seg_dir / name)
        deleted.append(name)
    for name in root.list():
        if is_temp_name(name):
            (root / name).delete()
            deleted.append(name)
    return deleted
