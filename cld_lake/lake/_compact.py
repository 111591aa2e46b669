"""Compaction and garbage collection of a split's segments.

Compaction merges segments into a new, wider one and then swaps the commit record, so a scan
reads few, large chunks; committed bytes are never rewritten in place. The merged-away
segments stay on disk until :func:`collect_garbage` finds them older than the grace period,
so a reader that opened the previous commit record finishes its scan.

The split's writer owns the commit record: these functions get a ``commit`` callback that
replaces it with the given rows and returns the new snapshot.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cld_lake.lake import _format as fmt
from cld_lake.lake._segments import create_segment, delete_segment, new_segment_name
from cld_lake.lake.store import Split

GC_GRACE_SECONDS = 600.0  # readers of a retired segment get this long to finish their scan
COMPACT_FANOUT = 8

Commit = Callable[[list[dict[str, Any]]], Split]


def compact_split(split: Split, commit: Commit, *, full: bool) -> int:
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
        split = merge_segments(split, run, commit)
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


def merge_segments(split: Split, segments: Sequence[str], commit: Commit) -> Split:
    """Copy ``segments`` into one new segment (columns in checkpoint order), commit the
    record that points to it, and mark the old segments retired; return the new snapshot."""
    table = split.checkpoint_table
    seg_col = np.asarray(table.column("segment").to_pylist(), dtype=object)
    ckpts = np.sort(table.column("checkpoint").to_numpy()[np.isin(seg_col, list(segments))])
    new_name = new_segment_name()
    arrays = create_segment(
        split.path / fmt.SEGMENTS_DIR / new_name,
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
    merged = commit(rows)
    now = time.time()
    for name in segments:  # retired now: collect_garbage() deletes them after the grace period
        path = split.path / fmt.SEGMENTS_DIR / name
        if path.exists():
            os.utime(path, (now, now))
    return merged


def collect_garbage(
    split_dir: Path, referenced: set[str], grace_seconds: float = GC_GRACE_SECONDS
) -> list[str]:
    """Delete unreferenced segments (crashed writes, compacted-away segments) older than
    ``grace_seconds``, and stray temp files. Returns the names deleted."""
    deleted = []
    seg_dir = split_dir / fmt.SEGMENTS_DIR
    now = time.time()
    if seg_dir.exists():
        for entry in seg_dir.iterdir():
            if entry.name in referenced:
                continue
            if now - entry.stat().st_mtime >= grace_seconds or not entry.name.startswith("seg-"):
                delete_segment(entry)
                deleted.append(entry.name)
    for entry in split_dir.glob(".*.tmp-*"):
        entry.unlink(missing_ok=True)
        deleted.append(entry.name)
    return deleted
