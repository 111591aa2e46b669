"""Writing a split: one writer per split, checkpoints committed atomically, then compacted.

:class:`SplitWriter` is the one public entry; it composes the rooms of the writer:

- :mod:`~cld_lake.lake._write_checks`: what a write checks before anything is written;
- :mod:`~cld_lake.lake._segment_writes`: a new segment's values, written in row blocks;
- :mod:`~cld_lake.lake._tables`: a new split's samples and classes tables (whole arrays or
  :class:`SampleBlocks`);
- :mod:`~cld_lake.lake._commit`: the commit protocol (the commit record, its checksums, the
  root listing) that makes a checkpoint visible or leaves nothing;
- :mod:`~cld_lake.lake._compact`: compaction and garbage collection of segments;
- :mod:`~cld_lake.lake._checkpoint_buffer`: :class:`CheckpointBuffer`, one checkpoint's
  values gathered batch by batch.

Concurrency: the writer holds an ``flock`` on ``splits/<split>/.writer.lock`` for its
lifetime, so one process records train while another records val, and an unrelated second
writer of the same split gets :class:`LakeLockedError`. The kernel drops the lock if the
process dies. Ranks of a distributed job send their values to one writing rank (see
``cld_lake.torch``), so each sample is written exactly once.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any, TypeAlias

import numpy as np

from cld_lake._types import Duplicates
from cld_lake.errors import BadInputError, CorruptLakeError, LakeLockedError
from cld_lake.lake import _format as fmt
from cld_lake.lake._checkpoint_buffer import CheckpointBuffer
from cld_lake.lake._commit import (
    CommitRecord,
    SampleTables,
    add_group_names,
    checkpoint_row,
    fix_class_count,
    remove_unlisted,
)
from cld_lake.lake._compact import GC_GRACE_SECONDS, collect_garbage, compact_split
from cld_lake.lake._groups import GroupEncoder, distinct_names, is_named, split_record
from cld_lake.lake._sample_blocks import SampleBlocks, block_group_names, encoded_blocks
from cld_lake.lake._segment_writes import (
    RowBlock,
    RowReader,
    checked_blocks,
    reader_blocks,
    write_blocks,
)
from cld_lake.lake._segments import create_segment, new_segment_name
from cld_lake.lake._tables import write_new_samples, write_sample_blocks, write_samples_table
from cld_lake.lake._validate import (
    check_channels,
    check_new_split,
    check_run_name,
    check_split_name,
    default_channels,
)
from cld_lake.lake._write_checks import (
    check_metadata_column,
    check_new_checkpoints,
    check_new_samples,
    check_writer_options,
)
from cld_lake.lake.store import Lake, Split

# A new split's samples: whole arrays (checked) or blocks (checked as they are written).
NewSamples: TypeAlias = (
    "tuple[np.ndarray, np.ndarray, Mapping[str, np.ndarray] | None] | SampleBlocks"
)
# What the commit record says of one column of a new segment: checkpoint, epoch, step, wall time.
Column: TypeAlias = "tuple[int, int | None, int | None, float | None]"


class SplitWriter:
    """The single writer of one split. Use as a context manager.

    Parameters
    ----------
    lake : Lake
    split : str
        Split name: ``train``, ``val``, ``test`` or any name the lake's rules allow
        (:func:`~cld_lake.lake.check_split_name`), e.g. ``target``.
    channels : mapping of channel name to dtype, optional
        For a new split: stored channels (``loss`` required; ``correct``, ``margin``
        optional), e.g. ``{"loss": "float16"}``. Default: inferred from the first commit.
        For an existing split it must match what is stored.
    row_chunk : int
        Rows per chunk (power of two) for a new split.
    num_classes : int, optional
        Number of classes (1 to ``MAX_CLASSES``); fixed for the whole lake once set.
    auto_compact : bool
        Compact (tiered policy) and collect garbage after each commit of a new segment.
    run : str, optional
        The run whose split this is (default: the lake's).
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
        check_writer_options(lake, row_chunk, num_classes)
        check_new_split(fmt.listed_runs(fmt.read_root_metadata(lake.root)), self.run, self.name)
        self.num_classes = num_classes if num_classes is not None else lake.num_classes
        #: where the split lives
        self.root = fmt.split_dir(self.lake.root, split, self.run)
        self.root.make_folder()
        self._lock = (self.root / fmt.WRITER_LOCK).lock(fmt.lock_holder())
        held_by = self._lock.try_acquire()
        if held_by is not None:
            raise LakeLockedError(
                f"{lake.root}: split {split!r}{self._of_run} is being written by another job "
                f"({held_by}); "
                "wait for it to finish, or write to another lake or split"
            )
        self.auto_compact = auto_compact
        self._row_chunk = row_chunk
        self._record = CommitRecord(self.lake, self.name, self.run, self.root, self._lock)
        try:
            self._requested_channels = check_channels(channels) if channels is not None else None
            if self.lake.has_split(split):
                self._record.split = Split(self.lake, split)
            else:
                remove_unlisted(self.root)
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
    def split(self) -> Split | None:
        """The split as this writer last committed or read it (None while it is new)."""
        return self._record.split

    @property
    def channels(self) -> dict[str, str] | None:
        return self.split.channels if self.split is not None else self._requested_channels

    @property
    def committed_checkpoints(self) -> np.ndarray:
        return self.split.checkpoint_ids if self.split is not None else np.zeros(0, np.int64)

    @property
    def row_chunk(self) -> int:
        """Rows per chunk: the split's, or for a new split the one it will be created with."""
        return self.split.row_chunk if self.split is not None else self._row_chunk

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
        sample_ids: np.ndarray | SampleBlocks,
        labels: np.ndarray | None = None,
        metadata: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Create the split with its sample set (and metadata columns) and no checkpoints yet.

        ``sample_ids`` and ``labels`` are whole arrays in row order, or ``sample_ids`` is a
        :class:`SampleBlocks` (then ``labels`` and ``metadata`` come with its blocks).
        ``labels`` are class indices, or group names (a NumPy string array): names new to
        the lake get the next ids, in sorted order (:meth:`Lake.group_names`)."""
        if self.split is not None:
            raise BadInputError(f"split {self.name!r} already exists in {self.lake.root}")
        if isinstance(sample_ids, SampleBlocks):
            if labels is not None or metadata is not None:
                raise BadInputError(
                    "declare_samples(SampleBlocks): labels and metadata come with the blocks"
                )
            samples: NewSamples = sample_ids
        else:
            if labels is None:
                raise BadInputError("declare_samples: the labels of the sample ids are needed")
            samples = (*check_new_samples(sample_ids, labels, self.num_classes), metadata)
        channels = self._requested_channels or default_channels(["loss"])
        with self._record.guard(None):
            self._commit([], None, channels, self._write_samples(samples))

    def annotate_samples(self, columns: Mapping[str, np.ndarray]) -> None:
        """Add or replace metadata columns of the samples table (arrays in row order)."""
        import pyarrow as pa

        split = self._require_split()
        table = split.samples_table
        for name, values in columns.items():
            values = np.asarray(values)
            check_metadata_column(name, values, split.num_samples)
            arr = pa.array(values)
            if name in table.column_names:
                table = table.set_column(table.column_names.index(name), name, arr)
            else:
                table = table.append_column(name, arr)
        # sample ids and labels are unchanged: so are the row group checksums the record holds
        groups = write_samples_table(self.root, table, split.row_chunk)
        if groups != [list(g) for g in split.meta["samples"]["row_groups"]]:
            raise CorruptLakeError(
                f"{self.root / fmt.SAMPLES_FILE}: rewritten with other row groups than the "
                f"commit record names; {self.lake.fix}"
            )
        self._record.split = Split(self.lake, self.name)

    def append_columns(
        self,
        checkpoints: Sequence[int],
        read_rows: RowReader,
        *,
        num_rows: int,
        channels: Mapping[str, str],
        new_samples: tuple[np.ndarray, np.ndarray] | SampleBlocks | None = None,
        epochs: Sequence[int | None] | None = None,
    ) -> None:
        """Commit several checkpoints at once as one segment (bulk import).

        ``read_rows(a, b)`` returns ``{channel: values[a:b]}`` (shape ``(b - a, T)``) in the
        split's row order. Values are streamed block by block; memory is one block. A new
        split needs ``new_samples``: ``(sample_ids, labels)`` in row order, or
        :class:`SampleBlocks`, written while the values stream in.
        """
        ckpts = [int(c) for c in checkpoints]
        self._check_new_checkpoints(ckpts)
        channels = check_channels(channels)
        if self.split is not None and channels != self.split.channels:
            raise BadInputError(
                f"split {self.name!r} stores channels {self.split.channels}; the import has {channels}"
            )
        samples = self._new_samples(new_samples) if new_samples is not None else None
        order = np.argsort(np.asarray(ckpts), kind="stable")
        in_order = bool(np.array_equal(order, np.arange(len(ckpts))))
        columns = [(ckpts[j], epochs[j] if epochs else None, None, None) for j in order]
        blocks = reader_blocks(
            read_rows, num_rows, self.row_chunk, channels, None if in_order else order
        )
        self._commit_segment(columns, blocks, num_rows, channels, samples, samples_alongside=True)

    def commit_row_blocks(
        self,
        checkpoint: int,
        blocks: Iterator[RowBlock],
        *,
        epoch: int | None = None,
        step: int | None = None,
        wall_time: float | None = None,
        new_samples: tuple[np.ndarray, np.ndarray] | SampleBlocks | None = None,
    ) -> None:
        """Commit one checkpoint whose values arrive as row blocks, each written to its chunk
        files as it comes: memory is a few blocks, never a whole column (the writing rank of
        a distributed recorder assembles the blocks from every rank's values).

        ``blocks`` yields ``(start, {channel: values})`` in row order, covering rows
        ``0..N-1`` without gaps, every ``start`` a multiple of :attr:`row_chunk`; rows
        without a value already hold the fill (NaN, False). A new split needs
        ``new_samples`` (``(sample_ids, labels)`` in row order, or :class:`SampleBlocks`) and
        the writer's ``channels``. The iterator may raise to abandon the checkpoint: its new
        segment is removed, nothing is committed. Blocks are written in background threads:
        do not reuse their arrays.
        """
        checkpoint = int(checkpoint)
        self._check_new_checkpoints([checkpoint])
        if self.split is None:
            if new_samples is None or self._requested_channels is None:
                raise BadInputError(
                    f"split {self.name!r} is new: its sample ids, labels and channels are needed"
                )
            samples: NewSamples | None = self._new_samples(new_samples)
            channels = self._requested_channels
            num_rows = samples.num_rows if isinstance(samples, SampleBlocks) else len(samples[0])
        else:
            samples, channels, num_rows = None, self.split.channels, self.split.num_samples
        cast = checked_blocks(blocks, channels, num_rows, self.row_chunk, checkpoint)
        column = (checkpoint, epoch, step, wall_time)
        self._commit_segment([column], cast, num_rows, channels, samples)

    def compact(self, full: bool = True) -> int:
        """Merge segments so scans read few, wide chunks. Returns the number of merges.

        ``full=True`` merges everything into one segment; ``full=False`` applies the tiered
        policy used after each commit (see :mod:`cld_lake.lake._compact`).
        """
        return compact_split(
            self._require_split(), self._record.replace, self._record.guard, full=full
        )

    def gc(self, grace_seconds: float = GC_GRACE_SECONDS) -> list[str]:
        """Delete what no commit references: segments retired by compaction once
        ``grace_seconds`` have passed since (readers of an older snapshot may still scan
        them), and at once the debris of failed or killed writes (segments never committed,
        temp files). Returns the names deleted."""
        split = self._record.reload()
        referenced = set(split.segment_names()) if split is not None else set()
        retired = split.meta.get("retired", {}) if split is not None else {}
        return collect_garbage(self.root, referenced, retired, grace_seconds)

    # --- internals -----------------------------------------------------------------------
    @property
    def _of_run(self) -> str:
        """`` of run 'x'`` for a split of a named run (for messages), else nothing."""
        return "" if self.run == fmt.DEFAULT_RUN else f" of run {self.run!r}"

    def _require_split(self) -> Split:
        if self.split is None:
            raise BadInputError(f"split {self.name!r} does not exist yet in {self.lake.root}")
        return self.split

    def _check_new_checkpoints(self, ckpts: Sequence[int]) -> None:
        check_new_checkpoints(ckpts, self.committed_checkpoints, self.name, self.lake.root)

    def _new_samples(self, given: tuple[np.ndarray, np.ndarray] | SampleBlocks) -> NewSamples:
        """A new split's samples as given: blocks as they are, arrays checked now."""
        if self.split is not None:
            raise BadInputError(f"split {self.name!r} already has its samples")
        if isinstance(given, SampleBlocks):
            return given
        return (*check_new_samples(*given, self.num_classes), None)

    def _commit_segment(
        self,
        columns: Sequence[Column],
        blocks: Iterable[RowBlock],
        num_rows: int,
        channels: dict[str, str],
        new_samples: NewSamples | None,
        *,
        samples_alongside: bool = False,
    ) -> None:
        """Write ``blocks`` as a new segment of ``columns`` and commit it; a new split's
        tables are written after the values (or, ``samples_alongside``, while they stream)."""
        name = new_segment_name()
        with self._record.guard(name):
            path = self.root / fmt.SEGMENTS_DIR / name
            arrays = create_segment(path, num_rows, len(columns), channels, self.row_chunk)
            alongside = None
            if new_samples is not None and samples_alongside:
                alongside = partial(self._write_samples, new_samples)
            nonfinite, tables = write_blocks(arrays, blocks, len(columns), alongside)
            now = time.time()
            rows = [
                checkpoint_row(ckpt, epoch, step, wall, name, col, int(nonfinite[col]), now)
                for col, (ckpt, epoch, step, wall) in enumerate(columns)
            ]
            if new_samples is not None and tables is None:
                tables = self._write_samples(new_samples)
            self._commit(rows, name, channels, tables)

    def _write_samples(self, samples: NewSamples) -> SampleTables:
        """Before a new split's first commit: fix the lake's class count (group names: add
        the new ones to the lake's table and encode them), write samples.parquet and
        classes.parquet (not yet visible: the split exists once cld_lake.json lists it).
        Returns what the commit record says of them."""
        names: tuple[str, ...] | None = None
        if isinstance(samples, SampleBlocks):
            found = block_group_names(samples)
            if found is not None:
                names = self._add_group_names(found)
                samples = encoded_blocks(samples, GroupEncoder(names))
            fix = partial(self._fix_class_count, names is not None)
            tables = write_sample_blocks(self.root, samples, self.row_chunk, self.num_classes, fix)
        else:
            ids, labels, metadata = samples
            if is_named(labels):
                names = self._add_group_names(distinct_names(labels, "labels"))
                labels = GroupEncoder(names).encode_all(labels, "labels")
            fix = partial(self._fix_class_count, names is not None)
            tables = write_new_samples(self.root, ids, labels, metadata, self.row_chunk, fix)
        if names is None:
            return tables
        return dataclasses.replace(tables, groups=split_record(names))

    def _add_group_names(self, names: Iterable[str]) -> tuple[str, ...]:
        table = add_group_names(self.lake, set(names), f"split {self.name!r}: labels")
        self.num_classes = len(table)
        return table

    def _fix_class_count(self, named: bool, labels: np.ndarray) -> int:
        self.num_classes = fix_class_count(self.lake, self.name, self.num_classes, labels, named)
        return self.num_classes

    def _commit(
        self,
        rows: list[dict[str, Any]],
        segment: str | None,
        channels: dict[str, str],
        tables: SampleTables | None,
    ) -> None:
        """Commit ``rows`` (columns of the new ``segment``), then compact and collect garbage
        when ``auto_compact``."""
        self._record.commit(
            rows, segment, channels=channels, row_chunk=self._row_chunk, new_samples=tables
        )
        if self.auto_compact and segment is not None:
            self.compact(full=False)
            self.gc()
