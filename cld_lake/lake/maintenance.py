"""Keeping a lake tidy: compaction of every split, and the deletion of what it replaced.

:func:`compact` is what ``cld-lake compact`` runs; recording pipelines call it when they finish
so the lake they leave has one segment per split and nothing in its grace period.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from cld_lake.lake._validate import check_split_name
from cld_lake.lake.store import Lake, Split, open_lake
from cld_lake.lake.writer import SplitWriter
from cld_lake.storage import StorePath


def compact(
    lake: Lake | str | os.PathLike[str] | StorePath,
    *,
    splits: Sequence[str] = (),
    runs: Sequence[str] = (),
    prune: bool = False,
) -> dict[str, int]:
    """Merge each split's segments into one; return the merges per split (``run/split`` for a
    named run).

    Parameters
    ----------
    lake : the lake (or its path or URL)
    splits : the splits to compact (default: every split of each run)
    runs : the runs whose splits to compact (default: every run)
    prune : delete the segments compaction replaced now, instead of after the grace period
        that lets readers which opened the lake earlier finish their scans. Only when nobody
        else reads the lake.
    """
    lk = lake if isinstance(lake, Lake) else open_lake(lake)
    done: dict[str, int] = {}
    for run in [lk.pick_run(r) for r in runs] or lk.runs():
        for name in splits or lk.splits(run):
            Split(lk, check_split_name(name), run)  # a split not in the lake: refused, not made
            with SplitWriter(lk, name, run=run) as writer:
                merges = writer.compact(full=True)
                if prune:
                    writer.gc(grace_seconds=0)
            done[name if run == "default" else f"{run}/{name}"] = merges
    return done
