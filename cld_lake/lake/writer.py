"""Writing a split: one writer per split, checkpoints committed atomically, then compacted.

Commit protocol (crash-safe at every step):
1. the checkpoint's values go into a *new* segment directory (nothing references it yet);
2. on a split's first commit, ``samples.parquet`` is written (temp file + rename);
3. ``checkpoints.parquet`` is replaced atomically with a version that references the new
   segment. This rename is the commit point: before it the checkpoint does not exist, after
   it the checkpoint is complete.
A crash before 3 leaves an unreferenced segment that the next writer deletes; the lake stays
readable with the previous checkpoints intact.

Concurrency: the writer holds an ``flock`` on ``splits/<split>/.writer.lock`` for its
lifetime, so one process records train while another records val, and an unrelated second
writer of the same split gets :class:`LakeLockedError`. The kernel drops the lock if the
process dies. Ranks of a distributed job send their values to one writing rank (see
``cld_lake.torch``), so each sample is written exactly once.

Memory: a checkpoint buffer holds O(N) values per channel; never the N x T matrix.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from cld_lake._io import FileLock, atomic_write_json, atomic_write_parquet
from cld_lake._meta import meta_bytes
from cld_lake._types import Duplicates, choices
from cld_lake.errors import BadInputError, CheckpointExistsError, LakeLockedError
from cld_lake.lake import _format as fmt
from cld_lake.lake._compact import GC_GRACE_SECONDS, collect_garbage, compact_split
from cld_lake.lake._segments import ChunkWriter, create_segment, new_segment_name
from cld_lake.lake._validate import (
    check_channels,
    check_labels,
    check_split_name,
    count_duplicates,
    count_nonfinite,
    default_channels,
    ids_digest,
)
from cld_lake.lake.store import Lake, Split, root_lock

if TYPE_CHECKING:
    import pyarrow as pa
    from numpy.typing import ArrayLike

RowReader = Callable[[int, int], Mapping[str, np.ndarray]]

WRITES_IN_FLIGHT = 2  # blocks being checksummed and written while the next one is read

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


def _checkpoint_schema(meta: dict[str, Any]) -> pa.Schema:
    import pyarrow as pa

    fields = [
        pa.field(name, getattr(pa, typ)() if typ != "string" else pa.string())
        for name, typ in _CHECKPOINT_SCHEMA_FIELDS
    ]
    return pa.schema(fields, metadata=meta_bytes(meta))


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
        Number of classes; fixed for the whole lake once set.
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
    ) -> None:
        self.lake = lake
        self.name = check_split_name(split)
        if row_chunk < 1 or row_chunk & (row_chunk - 1):
            raise BadInputError(f"row_chunk must be a power of two, got {row_chunk}")
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
        self.path = lake.path / fmt.SPLITS_DIR / split
        self.path.mkdir(parents=True, exist_ok=True)
        holder = f"pid {os.getpid()} on {socket.gethostname()} since {fmt.now_iso()}"
        self._lock = FileLock(self.path / fmt.WRITER_LOCK, holder)
        held_by = self._lock.try_acquire()
        if held_by is not None:
            raise LakeLockedError(
                f"{lake.path}: split {split!r} is being written by another job ({held_by}); "
                "wait for it to finish, or write to another lake or split"
            )
        self.auto_compact = auto_compact
        self._row_chunk = row_chunk
        self._requested_channels = check_channels(channels) if channels is not None else None
        self.split: Split | None = Split(lake, split) if lake.has_split(split) else None
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
        atomic_write_parquet(self.path / fmt.SAMPLES_FILE, table, row_group_size=split.row_chunk)
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
        width = len(ckpts)
        seg_name = new_segment_name()
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
                samples_done.result()
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
            samples_written=True,
        )

    def compact(self, full: bool = True) -> int:
        """Merge segments so scans read few, wide chunks. Returns the number of merges.

        ``full=True`` merges everything into one segment; ``full=False`` applies the tiered
        policy used after each commit (see :mod:`cld_lake.lake._compact`).
        """
        return compact_split(self._require_split(), self._replace_record, full=full)

    def gc(self, grace_seconds: float = GC_GRACE_SECONDS) -> list[str]:
        """Delete unreferenced segments (crashed writes, compacted-away segments) older than
        ``grace_seconds``, and stray temp files. Returns what was deleted."""
        referenced = set(self.split.segment_names()) if self.split is not None else set()
        return collect_garbage(self.path, referenced, grace_seconds)

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
        return ids.astype(np.int64, copy=False), labels.astype(np.int64, copy=False)

    def _replace_record(self, rows: list[dict[str, Any]]) -> Split:
        """Commit ``rows`` as the whole commit record (compaction); return the new snapshot."""
        self._write_checkpoints(rows, self._require_split().meta)
        self.split = Split(self.lake, self.name)
        return self.split

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

    def _write_checkpoints(self, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
        import pyarrow as pa

        rows = sorted(rows, key=lambda r: r["checkpoint"])
        table = pa.Table.from_pylist(rows, schema=_checkpoint_schema(meta))
        atomic_write_parquet(self.path / fmt.CHECKPOINTS_FILE, table)

    def _commit(
        self,
        *,
        ids_labels: tuple[np.ndarray, np.ndarray, Mapping[str, np.ndarray] | None] | None,
        channels: dict[str, str],
        new_rows: list[dict[str, Any]],
        segment: str | None,
        samples_written: bool = False,
    ) -> None:
        if self.split is None:
            if ids_labels is None:
                raise BadInputError(
                    f"split {self.name!r} is new: its sample ids and labels are needed"
                )
            ids = ids_labels[0]
            if not samples_written:
                self._prepare_new_split(ids_labels)
            meta = {
                "channels": channels,
                "num_samples": int(len(ids)),
                "row_chunk": self._row_chunk,
                # sample ids and labels never change after creation: record what readers of a
                # big split would otherwise recompute with a full pass
                "ids_sha1": ids_digest(ids),
                "label_counts": np.bincount(
                    ids_labels[1], minlength=self.num_classes or 0
                ).tolist(),
            }
            old_rows: list[dict[str, Any]] = []
        else:
            meta = self.split.meta
            old_rows = self.split.checkpoint_table.to_pylist()
        self._write_checkpoints(old_rows + new_rows, meta)  # the commit point
        self.split = Split(self.lake, self.name)
        if self.auto_compact and segment is not None:
            self.compact(full=False)
            self.gc()

    def _prepare_new_split(
        self, ids_labels: tuple[np.ndarray, np.ndarray, Mapping[str, np.ndarray] | None]
    ) -> None:
        """Before a new split's first commit: fix the lake's class count, write samples.parquet
        (not yet visible: the split exists once checkpoints.parquet does)."""
        ids, labels, metadata = ids_labels
        self._ensure_num_classes(labels)
        self._write_samples(ids, labels, metadata)

    def _ensure_num_classes(self, labels: np.ndarray) -> None:
        inferred = int(labels.max()) + 1 if labels.size else 0
        with root_lock(self.lake.path):
            lake = Lake(self.lake.path)
            current = lake.num_classes
            if current is None:
                value = self.num_classes if self.num_classes is not None else inferred
                meta = dict(lake.meta, num_classes=value)
                atomic_write_json(self.lake.path / fmt.ROOT_FILE, meta)
                current = value
            check_labels(labels, current, f"split {self.name!r}")
            self.num_classes = current
            self.lake.meta = Lake(self.lake.path).meta

    def _write_samples(
        self, ids: np.ndarray, labels: np.ndarray, metadata: Mapping[str, np.ndarray] | None
    ) -> None:
        import pyarrow as pa

        columns = {"sample_id": pa.array(ids, pa.int64()), "label": pa.array(labels, pa.int64())}
        for name, values in (metadata or {}).items():
            columns[name] = pa.array(np.asarray(values))
        # row groups of one chunk: a block scan reads its ids and labels without the whole table
        atomic_write_parquet(
            self.path / fmt.SAMPLES_FILE, pa.table(columns), row_group_size=self._chunk()
        )


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
    ) -> None:
        """Add values for a batch of samples (numpy arrays or anything array-like)."""
        ids = np.asarray(sample_ids).astype(np.int64, copy=False).reshape(-1)
        given = {"loss": loss, "correct": correct, "margin": margin}
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
        n = len(values["loss"])
        seg_name = new_segment_name()
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
        self.committed = True

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
