"""Writing a split: one writer per split, checkpoints committed atomically, then compacted.

Commit protocol (crash-safe at every step):
1. the checkpoint's values go into a *new* segment directory (nothing references it yet);
2. on a split's first commit, ``samples.parquet`` and ``classes.parquet`` are written (temp
   file + rename), each with its checksum;
3. ``checkpoints.parquet`` is replaced atomically with a version that references the new
   segment and holds the checksums of everything the split depends on. This rename is the
   commit point: before it the checkpoint does not exist, after it the checkpoint is complete;
4. on a split's first commit only, the split is added to the list in ``cld_lake.json``: that
   is its commit point (an unlisted split directory is a first write that did not finish).
A crash before the commit point leaves debris that the next writer of the split deletes at
once (it holds the split's lock, so nobody can be using it); a failed commit removes its own
debris before it raises. The lake stays readable with the previous checkpoints intact.

Concurrency: the writer holds an ``flock`` on ``splits/<split>/.writer.lock`` for its
lifetime, so one process records train while another records val, and an unrelated second
writer of the same split gets :class:`LakeLockedError`. The kernel drops the lock if the
process dies. Ranks of a distributed job send their values to one writing rank (see
``cld_lake.torch``), so each sample is written exactly once.

Memory: a checkpoint buffer holds O(N) values per channel; never the N x T matrix.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from cld_lake._io import atomic_path, atomic_write_parquet, writer_lock
from cld_lake._meta import CHECKSUM_KEY, read_meta, with_checksum
from cld_lake._storage import ObjectPath
from cld_lake._types import Duplicates, choices
from cld_lake.errors import (
    BadInputError,
    CheckpointExistsError,
    CldLakeError,
    CorruptLakeError,
    LakeChangedError,
    LakeLockedError,
    LakeVersionError,
)
from cld_lake.lake import _format as fmt
from cld_lake.lake._compact import GC_GRACE_SECONDS, collect_garbage, compact_split
from cld_lake.lake._segments import (
    ChunkWriter,
    create_segment,
    delete_segment,
    new_segment_name,
    segment_checksums,
    sync_segment,
)
from cld_lake.lake._validate import (
    MAX_CLASSES,
    check_channels,
    check_labels,
    check_num_classes,
    check_run_name,
    check_split_name,
    count_duplicates,
    count_nonfinite,
    default_channels,
    ids_digest,
)
from cld_lake.lake.store import Lake, Split, root_lock, rows_checksum

if TYPE_CHECKING:
    import pyarrow as pa
    from numpy.typing import ArrayLike

RowReader = Callable[[int, int], Mapping[str, np.ndarray]]

WRITES_IN_FLIGHT = 2  # blocks being checksummed and written while the next one is read
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


def _check_and_write_rows(
    arrays: Mapping[str, ChunkWriter], blocks: Mapping[str, np.ndarray], a: int, b: int
) -> np.ndarray:
    """Write rows ``[a, b)`` of every channel; return the NaN/inf count per loss column."""
    for channel, arr in arrays.items():
        arr.write(a, b, blocks[channel])
    return count_nonfinite(blocks["loss"])


class SplitWriter:
    """The single writer of one split. Use as a context manager.

    Parameters
    ----------
    lake : Lake
    split : str
        Split name (``train``, ``val``, ``test``).
    channels : mapping of channel name to dtype, optional
        For a new split: stored channels (``loss`` required; ``correct``, ``margin``
        optional), e.g. ``{"loss": "float16"}``. Default: inferred from the first commit.
        For an existing split it must match what is stored.
    row_chunk : int
        Rows per chunk (power of two) for a new split.
    num_classes : int, optional
        Number of classes (1 to ``MAX_CLASSES``); fixed for the whole lake once set.
    """

    def __init__(
        self,
        lake: Lake,
        split: str,
        *,
        channels: Mapping[str, str] | None = None,
        row_chunk: int = fmt.DEFAULT_ROW_CHUNK,
        num_classes: int | None = None,
        auto_compact: bool = True,
        run: str | None = None,
    ) -> None:
        self.name = check_split_name(split)
        self.run = lake.run if run is None else check_run_name(run)
        self.lake = lake if lake.run == self.run else lake.with_run(self.run)
        if row_chunk < 1 or row_chunk & (row_chunk - 1):
            raise BadInputError(f"row_chunk must be a power of two, got {row_chunk}")
        if num_classes is not None:
            check_num_classes(num_classes)
        if not lake.checksummed:
            raise LakeVersionError(
                f"{lake.path}: lake format {lake.format_version} (no checksums) is read-only for "
                f"this cld_lake (format {fmt.FORMAT_VERSION}); export its splits with `cld-lake "
                "export` and import them into a new lake to keep recording"
            )
        if (
            num_classes is not None
            and lake.num_classes is not None
            and num_classes != lake.num_classes
        ):
            raise BadInputError(
                f"--num-classes {num_classes}: the lake at {lake.path} has {lake.num_classes} classes; "
                "use the same number or a new lake"
            )
        self.num_classes = num_classes if num_classes is not None else lake.num_classes
        self.path = fmt.split_dir(lake.path, split, self.run)
        self.path.mkdir(parents=True, exist_ok=True)
        holder = f"pid {os.getpid()} on {socket.gethostname()} since {fmt.now_iso()}"
        self._lock = writer_lock(self.path / fmt.WRITER_LOCK, holder)
        held_by = self._lock.try_acquire()
        if held_by is not None:
            raise LakeLockedError(
                f"{lake.path}: split {split!r}{self._of_run} is being written by another job "
                f"({held_by}); "
                "wait for it to finish, or write to another lake or split"
            )
        self.auto_compact = auto_compact
        self._row_chunk = row_chunk
        try:
            self._requested_channels = check_channels(channels) if channels is not None else None
            listed = self.lake.has_split(split)
            if not listed:
                self._remove_unlisted()
            self.split: Split | None = Split(self.lake, split) if listed else None
        except BaseException:
            self.close()
            raise
        if self.split is not None and self._requested_channels is not None:
            if self._requested_channels != self.split.channels:
                self.close()
                raise BadInputError(
                    f"split {split!r} stores channels {self.split.channels}; cannot write {self._requested_channels}"
                )
        self.gc()

    # --- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        self._lock.release()

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _of_run(self) -> str:
        """`` of run 'x'`` for a split of a named run (for messages), else nothing."""
        return "" if self.run == fmt.DEFAULT_RUN else f" of run {self.run!r}"

    @property
    def channels(self) -> dict[str, str] | None:
        return self.split.channels if self.split is not None else self._requested_channels

    @property
    def committed_checkpoints(self) -> np.ndarray:
        return self.split.checkpoint_ids if self.split is not None else np.zeros(0, np.int64)

    # --- the public write API ------------------------------------------------------------
    def checkpoint(
        self,
        checkpoint: int,
        *,
        epoch: int | None = None,
        step: int | None = None,
        wall_time: float | None = None,
        duplicates: Duplicates = "error",
    ) -> CheckpointBuffer:
        """Start a checkpoint; add values in batches (any order), then ``commit()``."""
        self._check_new_checkpoints([checkpoint])
        return CheckpointBuffer(self, int(checkpoint), epoch, step, wall_time, duplicates)

    def declare_samples(
        self,
        sample_ids: np.ndarray,
        labels: np.ndarray,
        metadata: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Create the split with its sample set (and metadata columns) and no checkpoints yet."""
        if self.split is not None:
            raise BadInputError(f"split {self.name!r} already exists in {self.lake.path}")
        ids, labels = self._check_new_samples(sample_ids, labels)
        channels = self._requested_channels or default_channels(["loss"])
        with self._segment_guard(None):
            self._commit(
                ids_labels=(ids, labels, metadata), channels=channels, new_rows=[], segment=None
            )

    def annotate_samples(self, columns: Mapping[str, np.ndarray]) -> None:
        """Add or replace metadata columns of the samples table (arrays in row order)."""
        import pyarrow as pa

        split = self._require_split()
        table = split.samples_table
        for name, values in columns.items():
            if name in ("sample_id", "label"):
                raise BadInputError(f"metadata column {name!r} is reserved")
            values = np.asarray(values)
            if values.shape != (split.num_samples,):
                raise BadInputError(
                    f"metadata column {name!r}: expected {split.num_samples} values, got {values.shape}"
                )
            arr = pa.array(values)
            if name in table.column_names:
                table = table.set_column(table.column_names.index(name), name, arr)
            else:
                table = table.append_column(name, arr)
        # sample ids and labels are unchanged: so are the row group checksums the record holds
        groups = self._write_samples_table(table, split.row_chunk)
        if groups != [list(g) for g in split.meta["samples"]["row_groups"]]:
            raise CorruptLakeError(
                f"{self.path / fmt.SAMPLES_FILE}: rewritten with other row groups than the "
                f"commit record names; {self.lake.fix}"
            )
        self.split = Split(self.lake, self.name)

    def append_columns(
        self,
        checkpoints: Sequence[int],
        read_rows: RowReader,
        *,
        num_rows: int,
        channels: Mapping[str, str],
        new_samples: tuple[np.ndarray, np.ndarray] | None = None,
        epochs: Sequence[int | None] | None = None,
    ) -> None:
        """Commit several checkpoints at once as one segment (bulk import).

        ``read_rows(a, b)`` returns ``{channel: values[a:b]}`` (shape ``(b - a, T)``) in the
        split's row order. Values are streamed block by block; memory is one block.
        """
        ckpts = [int(c) for c in checkpoints]
        self._check_new_checkpoints(ckpts)
        channels = check_channels(channels)
        if self.split is not None and channels != self.split.channels:
            raise BadInputError(
                f"split {self.name!r} stores channels {self.split.channels}; the import has {channels}"
            )
        if new_samples is not None:
            ids_labels = (*self._check_new_samples(*new_samples), None)
        else:
            ids_labels = None
        order = np.argsort(np.asarray(ckpts), kind="stable")
        in_order = bool(np.array_equal(order, np.arange(len(ckpts))))
        seg_name = new_segment_name()
        with self._segment_guard(seg_name):
            self._append_columns(
                seg_name, ckpts, order, in_order, read_rows, num_rows, channels, ids_labels, epochs
            )

    def _append_columns(
        self,
        seg_name: str,
        ckpts: list[int],
        order: np.ndarray,
        in_order: bool,
        read_rows: RowReader,
        num_rows: int,
        channels: dict[str, str],
        ids_labels: tuple[np.ndarray, np.ndarray, None] | None,
        epochs: Sequence[int | None] | None,
    ) -> None:
        width = len(ckpts)
        arrays = create_segment(
            self.path / fmt.SEGMENTS_DIR / seg_name, num_rows, width, channels, self._chunk()
        )
        nonfinite = np.zeros(width, np.int64)
        step = self._chunk()
        # Background threads check and write earlier blocks (each to its own chunk files)
        # while this thread reads the next one; at most WRITES_IN_FLIGHT + 1 blocks in memory.
        with ThreadPoolExecutor(
            max_workers=WRITES_IN_FLIGHT + 1, thread_name_prefix="cld-lake-write"
        ) as pool:
            # a new split's samples table is written while the values stream in
            samples_done = pool.submit(self._prepare_new_split, ids_labels) if ids_labels else None
            prepared: dict[str, Any] | None = None
            pending: list[Future[np.ndarray]] = []
            for a in range(0, num_rows, step):
                b = min(a + step, num_rows)
                values = read_rows(a, b)
                blocks = {}
                for channel in arrays:
                    block = np.asarray(values[channel])
                    blocks[channel] = (block if in_order else block[:, order]).astype(
                        channels[channel], copy=False
                    )
                if len(pending) >= WRITES_IN_FLIGHT:
                    nonfinite += pending.pop(0).result()
                pending.append(pool.submit(_check_and_write_rows, arrays, blocks, a, b))
            for future in pending:
                nonfinite += future.result()
            if samples_done is not None:
                prepared = samples_done.result()
        now = time.time()
        rows = [
            self._checkpoint_row(
                ckpts[j],
                epochs[j] if epochs else None,
                None,
                None,
                seg_name,
                col,
                int(nonfinite[col]),
                now,
            )
            for col, j in enumerate(order)
        ]
        self._commit(
            ids_labels=ids_labels,
            channels=channels,
            new_rows=rows,
            segment=seg_name,
            prepared=prepared,
        )

    def compact(self, full: bool = True) -> int:
        """Merge segments so scans read few, wide chunks. Returns the number of merges.

        ``full=True`` merges everything into one segment; ``full=False`` applies the tiered
        policy used after each commit (see :mod:`cld_lake.lake._compact`).
        """
        return compact_split(
            self._require_split(), self._replace_record, self._segment_guard, full=full
        )

    def gc(self, grace_seconds: float = GC_GRACE_SECONDS) -> list[str]:
        """Delete what no commit references: segments retired by compaction once
        ``grace_seconds`` have passed since (readers of an older snapshot may still scan
        them), and at once the debris of failed or killed writes (segments never committed,
        temp files). Returns the names deleted."""
        if self.lake.has_split(self.name):
            self.split = Split(self.lake, self.name)  # the record on disk: this writer's own
        referenced = set(self.split.segment_names()) if self.split is not None else set()
        retired = self.split.meta.get("retired", {}) if self.split is not None else {}
        return collect_garbage(self.path, referenced, retired, grace_seconds)

    # --- internals -----------------------------------------------------------------------
    def _require_split(self) -> Split:
        if self.split is None:
            raise BadInputError(f"split {self.name!r} does not exist yet in {self.lake.path}")
        return self.split

    def _chunk(self) -> int:
        return self.split.row_chunk if self.split is not None else self._row_chunk

    def _check_new_checkpoints(self, ckpts: Sequence[int]) -> None:
        arr = np.asarray(ckpts, dtype=np.int64)
        if len(np.unique(arr)) != len(arr):
            raise BadInputError(f"checkpoint ids must be unique; got {arr.tolist()[:20]}")
        if (arr < 0).any():
            raise BadInputError(f"checkpoint ids must be >= 0; got {int(arr.min())}")
        dup = np.intersect1d(arr, self.committed_checkpoints)
        if len(dup):
            raise CheckpointExistsError(
                f"checkpoint {dup[:5].tolist()} already committed in split {self.name!r} of {self.lake.path}; "
                "committed checkpoints are never overwritten: use new checkpoint ids"
            )

    def _check_new_samples(
        self, sample_ids: np.ndarray, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(sample_ids)
        labels = np.asarray(labels)
        if self.split is not None:
            raise BadInputError(f"split {self.name!r} already has its samples")
        if ids.ndim != 1 or labels.shape != ids.shape:
            raise BadInputError(
                f"sample ids {ids.shape} and labels {labels.shape} must be 1-D of the same length"
            )
        dups = count_duplicates(ids)
        if dups:
            raise BadInputError(
                f"sample ids contain {dups} duplicates; each sample id must be unique"
            )
        check_labels(labels, self.num_classes, "labels")
        self._check_class_limit(labels)
        return ids.astype(np.int64, copy=False), labels.astype(np.int64, copy=False)

    def _check_class_limit(self, labels: np.ndarray) -> None:
        """Labels of a new split must fit the class limit (before anything is written)."""
        if self.num_classes is None and labels.size and int(labels.max()) >= MAX_CLASSES:
            top = int(labels.max())
            check_num_classes(top + 1, f"labels: label {top} implies a class count of")

    def _replace_record(
        self, rows: list[dict[str, Any]], new_segment: str, retired: Sequence[str]
    ) -> Split:
        """Commit ``rows`` as the whole commit record (compaction: ``new_segment`` replaces
        the ``retired`` ones); return the new snapshot."""
        meta = dict(self._require_split().meta)
        now = time.time()
        meta["retired"] = {**meta.get("retired", {}), **{name: now for name in retired}}
        self._write_checkpoints(rows, meta, new_segment)
        self.split = Split(self.lake, self.name)
        return self.split

    @contextlib.contextmanager
    def _segment_guard(self, name: str | None) -> Iterator[None]:
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
            elif on_disk is None and self.split is None:
                self._remove_unlisted()
            elif name is not None:
                delete_segment(self.path / fmt.SEGMENTS_DIR / name)
            raise

    def _remove_unlisted(self) -> None:
        """Delete what a first write of this (unlisted) split left: it never committed, and
        this writer holds the split's lock, so nothing else can be using it."""
        for name in (fmt.CHECKPOINTS_FILE, fmt.SAMPLES_FILE, fmt.CLASSES_FILE):
            (self.path / name).unlink(missing_ok=True)
        delete_segment(self.path / fmt.SEGMENTS_DIR)  # the whole folder: none is committed
        for entry in self.path.glob(".*.tmp-*"):
            entry.unlink(missing_ok=True)

    def _checkpoint_row(
        self,
        ckpt: int,
        epoch: int | None,
        step: int | None,
        wall_time: float | None,
        segment: str,
        column: int,
        nonfinite: int,
        now: float,
    ) -> dict[str, Any]:
        return {
            "checkpoint": int(ckpt),
            "epoch": None if epoch is None else int(epoch),
            "step": None if step is None else int(step),
            "wall_time": float(wall_time) if wall_time is not None else now,
            "committed_at": fmt.now_iso(),
            "segment": segment,
            "column": int(column),
            "nonfinite": int(nonfinite),
        }

    def _write_checkpoints(
        self, rows: list[dict[str, Any]], meta: dict[str, Any], new_segment: str | None
    ) -> None:
        """Write the commit record: ``rows``, and in its metadata the checksums of every file
        the split depends on (``new_segment``'s computed now, the others carried over)."""
        import pyarrow as pa

        rows = sorted(rows, key=lambda r: r["checkpoint"])
        known = dict(meta.get("segments", {}))
        if new_segment is not None:
            sync_segment(self.path / fmt.SEGMENTS_DIR / new_segment)
            known[new_segment] = segment_checksums(self.path / fmt.SEGMENTS_DIR / new_segment)
        seg_dir = self.path / fmt.SEGMENTS_DIR
        meta = {
            **meta,
            "segments": {r["segment"]: known[r["segment"]] for r in rows},
            # retired segments gc has deleted need no entry any more
            "retired": {n: t for n, t in meta.get("retired", {}).items() if (seg_dir / n).exists()},
        }
        table = pa.Table.from_pylist(rows, schema=_checkpoint_schema())
        self._lock.check()  # a writer whose lease was taken over must not commit
        record = self.path / fmt.CHECKPOINTS_FILE
        if isinstance(record, ObjectPath):
            self._put_record(record, with_checksum(table, meta))
            return
        atomic_write_parquet(record, with_checksum(table, meta), **TABLE_OPTIONS)

    def _put_record(self, record: ObjectPath, table: pa.Table) -> None:
        """The commit point on an object store: one conditional PUT of the whole record,
        accepted only while the record is the one this writer's snapshot read (If-Match; a
        first record: only if none exists). The lease keeps other writers out; this keeps out
        a writer that was paused past its lease and did not notice."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, **TABLE_OPTIONS)
        data = sink.getvalue().to_pybytes()
        version = self.split.record_version if self.split is not None else None
        done = record.replace_if(data, version) if version else record.create(data)
        if not done:
            raise LakeChangedError(
                f"{record}: the commit record changed since this writer read it (another "
                f"writer committed); nothing was committed by this one: open the lake again"
            )

    def _commit(
        self,
        *,
        ids_labels: tuple[np.ndarray, np.ndarray, Mapping[str, np.ndarray] | None] | None,
        channels: dict[str, str],
        new_rows: list[dict[str, Any]],
        segment: str | None,
        prepared: dict[str, Any] | None = None,
    ) -> None:
        first = self.split is None
        if self.split is None:
            if ids_labels is None:
                raise BadInputError(
                    f"split {self.name!r} is new: its sample ids and labels are needed"
                )
            ids = ids_labels[0]
            if prepared is None:
                prepared = self._prepare_new_split(ids_labels)
            meta = {
                "channels": channels,
                "num_samples": int(len(ids)),
                "row_chunk": self._row_chunk,
                # sample ids and labels never change after creation: record what readers of a
                # big split would otherwise recompute with a full pass
                "ids_sha1": ids_digest(ids),
                **prepared,
                "segments": {},
                "retired": {},
            }
            old_rows: list[dict[str, Any]] = []
        else:
            meta = self.split.meta
            old_rows = self.split.checkpoint_table.to_pylist()
        self._write_checkpoints(old_rows + new_rows, meta, segment)  # a later commit's point
        if first:
            self._list_split()  # a first commit's point
        self.split = Split(self.lake, self.name)
        if self.auto_compact and segment is not None:
            self.compact(full=False)
            self.gc()

    def _list_split(self) -> None:
        """Add this split to the committed splits of its run in ``cld_lake.json``."""
        with root_lock(self.lake.path):
            meta = fmt.read_root_metadata(self.lake.path)
            splits = fmt.listed_runs(meta).get(self.run, [])
            if self.name not in splits:
                listed = [*splits, self.name]
                if self.run == fmt.DEFAULT_RUN:
                    meta = {**meta, "splits": listed}
                else:
                    meta = {**meta, "runs": {**(meta.get("runs") or {}), self.run: listed}}
                meta = fmt.write_root_metadata(self.lake.path, meta)
            self.lake.meta = meta

    def _prepare_new_split(
        self, ids_labels: tuple[np.ndarray, np.ndarray, Mapping[str, np.ndarray] | None]
    ) -> dict[str, Any]:
        """Before a new split's first commit: fix the lake's class count, write samples.parquet
        and classes.parquet (not yet visible: the split exists once cld_lake.json lists it).
        Returns their checksums for the commit record."""
        ids, labels, metadata = ids_labels
        self._ensure_num_classes(labels)
        return {
            "samples": {"row_groups": self._write_samples(ids, labels, metadata)},
            "classes": self._write_classes(labels),
        }

    def _ensure_num_classes(self, labels: np.ndarray) -> None:
        inferred = int(labels.max()) + 1 if labels.size else 0
        with root_lock(self.lake.path):
            lake = Lake(self.lake.path)
            current = lake.num_classes
            if current is None:
                value = self.num_classes if self.num_classes is not None else inferred
                check_num_classes(max(value, 1), f"split {self.name!r}: class count")
                meta = fmt.write_root_metadata(self.lake.path, dict(lake.meta, num_classes=value))
                current = value
            else:
                meta = lake.meta
            check_labels(labels, current, f"split {self.name!r}")
            self.num_classes = current
            self.lake.meta = meta

    def _write_samples(
        self, ids: np.ndarray, labels: np.ndarray, metadata: Mapping[str, np.ndarray] | None
    ) -> list[list[Any]]:
        """Write samples.parquet; return ``[rows, crc]`` of each of its row groups."""
        import pyarrow as pa

        columns = {"sample_id": pa.array(ids, pa.int64()), "label": pa.array(labels, pa.int64())}
        for name, values in (metadata or {}).items():
            columns[name] = pa.array(np.asarray(values))
        # row groups of one chunk: a block scan reads its ids and labels without the whole table
        return self._write_samples_table(pa.table(columns), self._chunk())

    def _write_samples_table(self, table: pa.Table, row_group_size: int) -> list[list[Any]]:
        import pyarrow.parquet as pq

        table = with_checksum(table, {"table": "samples"})
        with atomic_path(self.path / fmt.SAMPLES_FILE) as tmp:
            pq.write_table(table, tmp, row_group_size=row_group_size, **TABLE_OPTIONS)
            written = pq.ParquetFile(tmp).metadata
            groups, start = [], 0
            for g in range(written.num_row_groups):
                rows = written.row_group(g).num_rows
                groups.append([rows, rows_checksum(table.slice(start, rows))])
                start += rows
        return groups

    def _write_classes(self, labels: np.ndarray) -> str:
        """Write classes.parquet (samples per class present); return its checksum."""
        import pyarrow as pa

        counts = np.bincount(labels) if labels.size else np.zeros(0, np.int64)
        present = np.flatnonzero(counts)
        table = with_checksum(
            pa.table(
                {
                    "label": pa.array(present, pa.int64()),
                    "count": pa.array(counts[present], pa.int64()),
                }
            ),
            {"table": "classes"},
        )
        atomic_write_parquet(self.path / fmt.CLASSES_FILE, table, **TABLE_OPTIONS)
        return str(read_meta(table.schema)[CHECKSUM_KEY])

    # --- appended for the distributed recorder (cld_lake.torch.record) ------------------
    def commit_row_blocks(
        self,
        checkpoint: int,
        blocks: Iterator[tuple[int, Mapping[str, np.ndarray]]],
        *,
        epoch: int | None = None,
        step: int | None = None,
        wall_time: float | None = None,
        new_samples: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Commit one checkpoint whose values arrive as row blocks, each written to its chunk
        files as it comes: memory is a few blocks, never a whole column (the writing rank of
        a distributed recorder assembles the blocks from every rank's values).

        ``blocks`` yields ``(start, {channel: values})`` in row order, covering rows
        ``0..N-1`` without gaps, every ``start`` a multiple of the split's row chunk; rows
        without a value already hold the fill (NaN, False). A new split needs
        ``new_samples=(sample_ids, labels)`` in row order and the writer's ``channels``. The
        iterator may raise to abandon the checkpoint: its new segment is removed, nothing is
        committed. Blocks are written in background threads: do not reuse their arrays.
        """
        checkpoint = int(checkpoint)
        self._check_new_checkpoints([checkpoint])
        if self.split is None:
            if new_samples is None or self._requested_channels is None:
                raise BadInputError(
                    f"split {self.name!r} is new: its sample ids, labels and channels are needed"
                )
            ids_labels = (*self._check_new_samples(*new_samples), None)
            channels, num_rows = self._requested_channels, len(ids_labels[0])
        else:
            ids_labels, channels, num_rows = None, self.split.channels, self.split.num_samples
        chunk = self._chunk()
        seg_name = new_segment_name()
        with self._segment_guard(seg_name):
            arrays = create_segment(
                self.path / fmt.SEGMENTS_DIR / seg_name, num_rows, 1, channels, chunk
            )
            nonfinite, expected = 0, 0
            with ThreadPoolExecutor(
                max_workers=WRITES_IN_FLIGHT, thread_name_prefix="cld-lake-write"
            ) as pool:
                pending: list[Future[np.ndarray]] = []
                for start, values in blocks:
                    n = len(values["loss"])
                    if start != expected or start % chunk or start + n > num_rows:
                        raise BadInputError(
                            f"row block at {start} of {n} rows: blocks must follow each other from "
                            f"row 0 to {num_rows}, each starting on a multiple of {chunk}"
                        )
                    cast = {
                        c: np.asarray(values[c]).astype(d, copy=False).reshape(n, 1)
                        for c, d in channels.items()
                    }
                    if len(pending) >= WRITES_IN_FLIGHT:
                        nonfinite += int(pending.pop(0).result()[0])
                    pending.append(
                        pool.submit(_check_and_write_rows, arrays, cast, start, start + n)
                    )
                    expected = start + n
                for future in pending:
                    nonfinite += int(future.result()[0])
            if expected != num_rows:
                raise BadInputError(
                    f"checkpoint {checkpoint}: row blocks covered {expected} of {num_rows} rows"
                )
            row = self._checkpoint_row(
                checkpoint, epoch, step, wall_time, seg_name, 0, nonfinite, time.time()
            )
            self._commit(ids_labels=ids_labels, channels=channels, new_rows=[row], segment=seg_name)


class CheckpointBuffer:
    """Values of one checkpoint being recorded; nothing is visible until :meth:`commit`."""

    def __init__(
        self,
        writer: SplitWriter,
        checkpoint: int,
        epoch: int | None,
        step: int | None,
        wall_time: float | None,
        duplicates: Duplicates,
    ) -> None:
        if duplicates not in choices(Duplicates):
            allowed = " or ".join(repr(c) for c in choices(Duplicates))
            raise BadInputError(f"duplicates={duplicates!r}: use {allowed}")
        self.writer = writer
        self.checkpoint = checkpoint
        self.epoch, self.step, self.wall_time = epoch, step, wall_time
        self.duplicates = duplicates
        self.committed = False
        split = writer.split
        self._channels = split.channels if split is not None else writer._requested_channels
        if split is not None:
            n = split.num_samples
            self._values = {c: np.full(n, _fill(d), dtype=d) for c, d in split.channels.items()}
            self._seen = np.zeros(n, dtype=bool)
        else:  # first checkpoint of a new split: it defines the sample set
            self._parts: list[dict[str, np.ndarray]] = []

    def add(
        self,
        sample_ids: ArrayLike,
        loss: ArrayLike,
        labels: ArrayLike | None = None,
        correct: ArrayLike | None = None,
        margin: ArrayLike | None = None,
        el2n: ArrayLike | None = None,
    ) -> None:
        """Add values for a batch of samples (numpy arrays or anything array-like)."""
        ids = np.asarray(sample_ids).astype(np.int64, copy=False).reshape(-1)
        given = {"loss": loss, "correct": correct, "margin": margin, "el2n": el2n}
        batch = {c: np.asarray(v).reshape(-1) for c, v in given.items() if v is not None}
        for channel, values in batch.items():
            if values.shape != ids.shape:
                raise BadInputError(
                    f"{channel}: {values.shape[0]} values for {ids.shape[0]} sample ids"
                )
        lab = (
            None if labels is None else np.asarray(labels).astype(np.int64, copy=False).reshape(-1)
        )
        if lab is not None and lab.shape != ids.shape:
            raise BadInputError(f"labels: {lab.shape[0]} values for {ids.shape[0]} sample ids")
        if self._channels is not None:
            missing = set(self._channels) - set(batch)
            extra = set(batch) - set(self._channels)
            if missing or extra:
                raise BadInputError(
                    f"split {self.writer.name!r} stores channels {sorted(self._channels)}; this batch has {sorted(batch)}"
                )
        split = self.writer.split
        if split is None:
            if lab is None:
                raise BadInputError("labels are needed for the first checkpoint of a new split")
            check_labels(lab, self.writer.num_classes, f"split {self.writer.name!r}")
            self._parts.append({"sample_id": ids, "label": lab, **batch})
            return
        rows = split.rows_of(ids)
        if (rows < 0).any():
            bad = ids[rows < 0][:5].tolist()
            raise BadInputError(
                f"sample ids {bad} are not in split {self.writer.name!r} of {self.writer.lake.path}"
            )
        if lab is not None and not np.array_equal(split.labels[rows], lab):
            i = int(np.flatnonzero(split.labels[rows] != lab)[0])
            raise BadInputError(
                f"sample {int(ids[i])}: label {int(lab[i])} differs from its stored label {int(split.labels[rows][i])}"
            )
        rows, keep = self._dedupe(rows)
        self._seen[rows] = True
        for channel, values in batch.items():
            self._values[channel][rows] = values[keep]

    def _dedupe(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, first = np.unique(rows, return_index=True)
        fresh = np.zeros(len(rows), dtype=bool)
        fresh[first] = True
        fresh &= ~self._seen[rows]
        if not fresh.all() and self.duplicates == "error":
            raise BadInputError(
                f"checkpoint {self.checkpoint}: {int((~fresh).sum())} sample ids given twice; "
                "pass duplicates='first' when a sampler repeats samples (e.g. DistributedSampler padding)"
            )
        keep = np.flatnonzero(fresh)
        return rows[keep], keep

    def commit(self, allow_missing: bool = False) -> None:
        """Make the checkpoint visible. Every sample must have a value unless ``allow_missing``
        (then missing values are stored as NaN / False)."""
        if self.committed:
            raise BadInputError(f"checkpoint {self.checkpoint} is already committed")
        w = self.writer
        w._check_new_checkpoints([self.checkpoint])
        if w.split is None:
            ids_labels, values = self._gather_new_split()
            channels = self._channels or default_channels(list(values))
        else:
            missing = int((~self._seen).sum())
            if missing and not allow_missing:
                example = w.split.sample_ids[~self._seen][:5].tolist()
                raise BadInputError(
                    f"checkpoint {self.checkpoint} of split {w.name!r}: no values for {missing} of "
                    f"{len(self._seen)} samples (e.g. ids {example}); add them or commit(allow_missing=True)"
                )
            ids_labels, values, channels = None, self._values, w.split.channels
        if ids_labels is not None:
            w._check_class_limit(ids_labels[1])
        seg_name = new_segment_name()
        with w._segment_guard(seg_name):
            self._write_and_commit(seg_name, ids_labels, values, channels)
        self.committed = True

    def _write_and_commit(
        self,
        seg_name: str,
        ids_labels: tuple[np.ndarray, np.ndarray, None] | None,
        values: dict[str, np.ndarray],
        channels: dict[str, str],
    ) -> None:
        w = self.writer
        n = len(values["loss"])
        arrays = create_segment(w.path / fmt.SEGMENTS_DIR / seg_name, n, 1, channels, w._chunk())
        for channel, arr in arrays.items():
            arr.write(0, n, values[channel].astype(channels[channel], copy=False).reshape(n, 1))
        nonfinite = int(count_nonfinite(values["loss"].astype(channels["loss"], copy=False))[0])
        row = w._checkpoint_row(
            self.checkpoint,
            self.epoch,
            self.step,
            self.wall_time,
            seg_name,
            0,
            nonfinite,
            time.time(),
        )
        w._commit(ids_labels=ids_labels, channels=channels, new_rows=[row], segment=seg_name)

    def _gather_new_split(
        self,
    ) -> tuple[tuple[np.ndarray, np.ndarray, None], dict[str, np.ndarray]]:
        if not self._parts:
            raise BadInputError(f"checkpoint {self.checkpoint}: no values were added")
        keys = self._parts[0].keys()
        cat = {k: np.concatenate([p[k] for p in self._parts]) for k in keys}
        ids = cat.pop("sample_id")
        labels = cat.pop("label")
        uniq, first = np.unique(ids, return_index=True)
        if len(uniq) != len(ids):
            if self.duplicates == "error":
                raise BadInputError(
                    f"checkpoint {self.checkpoint}: {len(ids) - len(uniq)} sample ids given twice; "
                    "pass duplicates='first' when a sampler repeats samples"
                )
        labels_u = labels[first]
        dup_labels = labels != labels_u[np.searchsorted(uniq, ids)]
        if dup_labels.any():
            raise BadInputError(
                f"sample {int(ids[dup_labels][0])} was given with two different labels"
            )
        self._parts = []
        return (uniq, labels_u, None), {k: v[first] for k, v in cat.items()}


def _fill(dtype: str) -> bool | float:
    return False if dtype == "bool" else np.nan
