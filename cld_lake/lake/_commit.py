"""The commit protocol of a split: its commit record, the checksums it holds, the root listing.

A commit is crash-safe at every step:

1. the checkpoint's values go into a *new* segment directory (nothing references it yet);
2. on a split's first commit, ``samples.parquet`` and ``classes.parquet`` are written (temp
   file + rename), each with its checksum;
3. ``checkpoints.parquet`` is replaced atomically with a version that references the new
   segment and holds the checksums of everything the split depends on. This rename (on an
   object store: a conditional PUT) is the commit point: before it the checkpoint does not
   exist, after it the checkpoint is complete;
4. on a split's first commit only, the split is added to the list in ``cld_lake.json``: that
   is its commit point (an unlisted split directory is a first write that did not finish).

A crash before the commit point leaves debris that the next writer of the split deletes at
once (it holds the split's lock, so nobody can be using it); a failed commit removes its own
debris before it raises (:meth:`CommitRecord.guard`). The lake stays readable with the
previous checkpoints intact.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cld_lake._meta import now_iso, with_checksum
from cld_lake.errors import BadInputError, CldLakeError, LakeChangedError
from cld_lake.lake import _format as fmt
from cld_lake.lake._groups import new_names, stray_parts, too_many_groups, write_part
from cld_lake.lake._segments import delete_segment, segment_checksums, sync_segment
from cld_lake.lake._validate import MAX_CLASSES, check_labels, check_num_classes
from cld_lake.lake.store import Lake, Split, lock_root
from cld_lake.storage import Lock, StorePath, VersionConflict, is_temp_name

if TYPE_CHECKING:
    import pyarrow as pa

# Committed tables carry no Parquet statistics: a reader that prunes row groups by them (a
# filtered dataset scan) would otherwise depend on bytes the checksums do not cover.
TABLE_OPTIONS: dict[str, Any] = {"write_statistics": False}

_CHECKPOINT_SCHEMA_FIELDS = (
    ("checkpoint", "int64"),
    ("epoch", "int64"),
    ("step", "int64"),
    ("wall_time", "float64"),
    ("committed_at", "string"),
    ("segment", "string"),
    ("column", "int32"),
    ("nonfinite", "int64"),
)


def _checkpoint_schema() -> pa.Schema:
    import pyarrow as pa

    fields = [
        pa.field(name, getattr(pa, typ)() if typ != "string" else pa.string())
        for name, typ in _CHECKPOINT_SCHEMA_FIELDS
    ]
    return pa.schema(fields)


def checkpoint_row(
    ckpt: int,
    epoch: int | None,
    step: int | None,
    wall_time: float | None,
    segment: str,
    column: int,
    nonfinite: int,
    now: float,
) -> dict[str, Any]:
    """One row of the commit record: checkpoint ``ckpt`` is column ``column`` of ``segment``."""
    return {
        "checkpoint": int(ckpt),
        "epoch": None if epoch is None else int(epoch),
        "step": None if step is None else int(step),
        "wall_time": float(wall_time) if wall_time is not None else now,
        "committed_at": now_iso(),
        "segment": segment,
        "column": int(column),
        "nonfinite": int(nonfinite),
    }


@dataclass(frozen=True)
class SampleTables:
    """What a new split's first commit record says of its samples and classes tables."""

    num_samples: int
    ids_sha1: str  # sample ids never change after creation: readers need not recompute it
    row_groups: list[list[Any]]  # [rows, crc] of each row group of samples.parquet
    classes: str  # the checksum of classes.parquet
    groups: dict[str, Any] | None = None  # named groups: the names it was written with


def remove_unlisted(root: StorePath) -> None:
    """Delete what a first write of the (unlisted) split at ``root`` left: it never committed,
    and its writer holds the split's lock, so nothing else can be using it."""
    for name in (fmt.CHECKPOINTS_FILE, fmt.SAMPLES_FILE, fmt.CLASSES_FILE):
        (root / name).delete()
    delete_segment(root / fmt.SEGMENTS_DIR)  # the whole folder: none is committed
    for name in root.list():
        if is_temp_name(name):
            (root / name).delete()


def fix_class_count(
    lake: Lake, split: str, wanted: int | None, labels: np.ndarray, named: bool = False
) -> int:
    """Before a new split's first commit: the lake's class count, set in ``cld_lake.json`` from
    ``wanted`` (else the labels) if the lake has none yet; ``labels`` must fit it. ``named``:
    the labels are ids of group names (:func:`add_group_names` has set the count); integer
    labels are refused by a lake that names its groups."""
    inferred = int(labels.max()) + 1 if labels.size else 0
    with lock_root(lake.root):
        current_lake = Lake(lake.root)
        if not named and fmt.GROUPS_KEY in current_lake.meta:
            raise BadInputError(
                f"split {split!r}: integer labels, but the lake at {lake.root} names its groups "
                f"({current_lake.num_classes:,} names); give the group names (strings), or "
                "use a new lake"
            )
        current = current_lake.num_classes
        if current is None:
            value = wanted if wanted is not None else inferred
            check_num_classes(max(value, 1), f"split {split!r}: class count")
            meta = fmt.write_root_metadata(lake.root, dict(current_lake.meta, num_classes=value))
            current = value
        else:
            meta = current_lake.meta
        check_labels(labels, current, f"split {split!r}")
        lake.meta = meta
    return current


def add_group_names(lake: Lake, names: Collection[str], what: str) -> tuple[str, ...]:
    """Before a new split of named groups is written: the lake's table of group names with
    ``names`` in it, by id. Names new to the lake are sorted and appended (a new part file,
    then the root record replaced under the root lock: their commit point), so every name
    keeps its id; the lake's class count becomes the number of names. A lake whose groups
    are plain integers refuses names (:class:`BadInputError`)."""
    with lock_root(lake.root):
        version = (lake.root / fmt.ROOT_FILE).version()
        current_lake = Lake(lake.root)
        meta = current_lake.meta
        current = current_lake.group_names()
        if current is None and current_lake.num_classes is not None:
            raise BadInputError(
                f"{what}: group names (strings), but the lake at {lake.root} holds plain integer "
                f"groups (classes 0..{current_lake.num_classes - 1}); give integer groups, or "
                "import into a new lake"
            )
        current = current or ()
        new = new_names(current, names)
        if new:
            if len(current) + len(new) > MAX_CLASSES:
                raise too_many_groups(len(current) + len(new), what)
            for stray in stray_parts(lake.root, meta):  # a failed write's (we hold the lock)
                stray.delete()
            record = write_part(lake.root, meta.get(fmt.GROUPS_KEY), current, new)
            meta = {**meta, fmt.GROUPS_KEY: record, "num_classes": record["count"]}
            meta = fmt.write_root_metadata(lake.root, meta, if_version=version)
        lake.meta = meta
    return (*current, *new)


def put_record(record: StorePath, table: pa.Table, version: str | None) -> None:
    """Replace the commit record with ``table``: the commit point of a checkpoint.

    Accepted only while the record is still at ``version``, the one the writer's snapshot
    read (None: a split's first record, only if none exists), in one atomic write (a local
    disk: temp file, fsync, rename, fsync of the folder; an object store: one conditional
    PUT). The split's lock keeps other writers out; the condition keeps out a writer that was
    paused past its lease and did not notice.
    """
    import pyarrow.parquet as pq

    try:
        with record.put_file(if_version=version, if_absent=version is None) as tmp:
            pq.write_table(table, tmp, **TABLE_OPTIONS)
    except VersionConflict:
        raise LakeChangedError(
            f"{record}: the commit record changed since this writer read it (another "
            f"writer committed); nothing was committed by this one: open the lake again"
        ) from None


class CommitRecord:
    """The commit record of one split and the protocol that replaces it, run by the split's
    writer (which holds ``lock``). ``split`` is the snapshot the last commit wrote (None while
    the split is not listed)."""

    def __init__(self, lake: Lake, name: str, run: str, root: StorePath, lock: Lock) -> None:
        self.lake = lake
        self.name = name
        self.run = run
        self.root = root
        self._lock = lock
        self.split: Split | None = None

    def reload(self) -> Split | None:
        """The snapshot on disk, when the split is listed (this writer's own record)."""
        if self.lake.has_split(self.name):
            self.split = Split(self.lake, self.name)
        return self.split

    def commit(
        self,
        rows: list[dict[str, Any]],
        segment: str | None,
        *,
        channels: dict[str, str],
        row_chunk: int,
        new_samples: SampleTables | None = None,
    ) -> Split:
        """Add ``rows`` (columns of the new ``segment``) to the record; a new split's first
        commit also needs its ``new_samples`` tables, already written."""
        first = self.split is None
        if self.split is None:
            if new_samples is None:
                raise BadInputError(
                    f"split {self.name!r} is new: its sample ids and labels are needed"
                )
            meta = {
                "channels": channels,
                "num_samples": new_samples.num_samples,
                "row_chunk": row_chunk,
                "ids_sha1": new_samples.ids_sha1,
                "samples": {"row_groups": new_samples.row_groups},
                "classes": new_samples.classes,
                "segments": {},
                "retired": {},
            }
            if new_samples.groups is not None:
                meta["groups"] = new_samples.groups
            old_rows: list[dict[str, Any]] = []
        else:
            meta = self.split.meta
            old_rows = self.split.checkpoint_table.to_pylist()
        self._write_checkpoints(old_rows + rows, meta, segment)  # a later commit's point
        if first:
            self._list_split()  # a first commit's point
        self.split = Split(self.lake, self.name)
        return self.split

    def replace(
        self, rows: list[dict[str, Any]], new_segment: str, retired: Sequence[str]
    ) -> Split:
        """Commit ``rows`` as the whole commit record (compaction: ``new_segment`` replaces
        the ``retired`` ones); return the new snapshot."""
        if self.split is None:
            raise BadInputError(f"split {self.name!r} does not exist yet in {self.lake.root}")
        meta = dict(self.split.meta)
        now = time.time()
        meta["retired"] = {**meta.get("retired", {}), **{name: now for name in retired}}
        self._write_checkpoints(rows, meta, new_segment)
        self.split = Split(self.lake, self.name)
        return self.split

    @contextlib.contextmanager
    def guard(self, name: str | None) -> Iterator[None]:
        """Around a commit that writes segment ``name``: if it fails before its commit point,
        remove the segment (and a new split's files) at once; if it failed after it (the
        record was renamed, a later fsync raised), keep it and take the new snapshot."""
        try:
            yield
        except BaseException:
            try:
                on_disk = Split(self.lake, self.name) if self.lake.has_split(self.name) else None
            except CldLakeError:
                on_disk = None
            if on_disk is not None and (name is None or name in on_disk.segment_names()):
                self.split = on_disk
            elif on_disk is None and self.split is None and self._lock.held:
                # (a writer whose lease was taken over leaves the unlisted split alone: it is
                # the new holder's first write in progress; only its own segment goes)
                remove_unlisted(self.root)
            elif name is not None:
                delete_segment(self.root / fmt.SEGMENTS_DIR / name)
            raise

    def _write_checkpoints(
        self, rows: list[dict[str, Any]], meta: dict[str, Any], new_segment: str | None
    ) -> None:
        """Write the commit record: ``rows``, and in its metadata the checksums of every file
        the split depends on (``new_segment``'s computed now, the others carried over)."""
        import pyarrow as pa

        rows = sorted(rows, key=lambda r: r["checkpoint"])
        known = dict(meta.get("segments", {}))
        if new_segment is not None:
            sync_segment(self.root / fmt.SEGMENTS_DIR / new_segment)
            known[new_segment] = segment_checksums(self.root / fmt.SEGMENTS_DIR / new_segment)
        seg_dir = self.root / fmt.SEGMENTS_DIR
        meta = {
            **meta,
            "segments": {r["segment"]: known[r["segment"]] for r in rows},
            # retired segments gc has deleted need no entry any more
            "retired": {n: t for n, t in meta.get("retired", {}).items() if (seg_dir / n).exists()},
        }
        table = pa.Table.from_pylist(rows, schema=_checkpoint_schema())
        self._lock.check()  # a writer whose lease was taken over must not commit
        version = self.split.record_version if self.split is not None else None
        put_record(self.root / fmt.CHECKPOINTS_FILE, with_checksum(table, meta), version)

    def _list_split(self) -> None:
        """Add this split to the committed splits of its run in ``cld_lake.json``."""
        with lock_root(self.lake.root):
            meta = fmt.read_root_metadata(self.lake.root)
            splits = fmt.listed_runs(meta).get(self.run, [])
            if self.name not in splits:
                listed = [*splits, self.name]
                if self.run == fmt.DEFAULT_RUN:
                    meta = {**meta, "splits": listed}
                else:
                    meta = {**meta, "runs": {**(meta.get("runs") or {}), self.run: listed}}
                meta = fmt.write_root_metadata(self.lake.root, meta)
            self.lake.meta = meta
