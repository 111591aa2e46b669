"""The lake: open/create it, read its splits, and iterate row blocks of trajectories.

`Split.blocks` is the single read backbone: scoring engines, SQL views and exporters all
stream trajectories through it in bounded memory (one block of rows at a time).
"""

from __future__ import annotations

import os
import re
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cld_lake._io import parquet_file
from cld_lake._meta import read_meta, table_checksum, verify_checksum
from cld_lake.errors import (
    BadInputError,
    CldLakeError,
    CorruptLakeError,
    LakeChangedError,
    NotALakeError,
    SplitNotFoundError,
    one_line,
)
from cld_lake.lake import _format as fmt
from cld_lake.lake._groups import check_split_groups, read_names
from cld_lake.lake._segments import ChunkReader, open_segment
from cld_lake.lake._validate import check_num_classes, check_run_name, check_split_name
from cld_lake.storage import Lock, StorePath, location

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

CheckpointSelection = str | slice | Sequence[int] | np.ndarray | None


@dataclass(frozen=True)
class Block:
    """A block of consecutive rows of one split.

    ``values[channel]`` has shape ``(len(sample_ids), len(checkpoints))``, columns in
    ascending checkpoint order, in the channel's stored dtype.
    """

    start: int
    sample_ids: np.ndarray
    labels: np.ndarray
    checkpoints: np.ndarray
    values: dict[str, np.ndarray]

    @property
    def loss(self) -> np.ndarray:
        return self.values["loss"]

    def __len__(self) -> int:
        return len(self.sample_ids)


def parse_window(spec: str) -> slice:
    """Parse a checkpoint window ``START:STOP[:STEP]`` (Python slice over checkpoint positions)."""
    if not re.fullmatch(r"\s*-?\d*\s*(:\s*-?\d*\s*){1,2}", spec or ""):
        raise BadInputError(
            f"--checkpoints {spec!r}: expected START:STOP[:STEP] over checkpoint positions, e.g. 0:45 or ::2"
        )
    parts = [int(p) if p.strip() else None for p in spec.split(":")]
    if len(parts) == 3 and parts[2] is not None and parts[2] <= 0:
        raise BadInputError(f"--checkpoints {spec!r}: STEP must be a positive integer")
    return slice(*parts)


class Split:
    """A read-only snapshot of one split: its samples and committed checkpoints."""

    def __init__(self, lake: Lake, name: str, run: str | None = None) -> None:
        self.lake = lake
        self.name = check_split_name(name)
        self.run = lake.run if run is None else check_run_name(run)
        #: where the split lives
        self.root: StorePath = fmt.split_dir(lake.root, name, self.run)
        ck_path = self.root / fmt.CHECKPOINTS_FILE
        present = lake.splits(self.run)
        if name not in present:
            of_run = "" if self.run == fmt.DEFAULT_RUN else f" in run {self.run!r}"
            runs = lake.runs()
            hint = "" if runs == [self.run] else f"; the lake's runs: {', '.join(runs)}"
            raise SplitNotFoundError(
                f"{lake.root}: no split {name!r}{of_run} (splits present: {', '.join(present) or 'none'}{hint}); import or record it first"
            )
        #: the commit record's version as read (taken before the read): a writer replaces
        #: the record only while it is still this one
        self.record_version = ck_path.version()
        if self.record_version is None:  # listed in cld_lake.json, so committed once
            raise CorruptLakeError(
                f"{ck_path} is missing but {lake.root / fmt.ROOT_FILE} lists split {name!r}; {lake.fix}"
            )
        table = read_table(ck_path, lake.fix)
        if lake.checksummed:
            meta = verify_checksum(table, ck_path, fix=lake.fix)
            _check_record(meta, table, ck_path, lake.fix)
        else:
            meta = read_meta(table.schema)
        ids = table.column("checkpoint").to_numpy()
        # written sorted; sort_by only for a hand-made file (it imports pyarrow.compute, slow)
        self.checkpoint_table = table if np.all(ids[:-1] < ids[1:]) else table.sort_by("checkpoint")
        self.meta: dict[str, Any] = meta
        self.channels: dict[str, str] = dict(meta["channels"])
        self.num_samples: int = int(meta["num_samples"])
        self.row_chunk: int = int(meta["row_chunk"])

    @property
    def path(self) -> Path:
        """The split's directory on the local disk (see :attr:`Lake.path`)."""
        return local_dir(self.root)

    # --- samples -------------------------------------------------------------------------
    @cached_property
    def _samples(self) -> pa.Table:
        path = self.root / fmt.SAMPLES_FILE
        table = read_table(path, self.lake.fix)
        if self.lake.checksummed:
            verify_checksum(table, path, fix=self.lake.fix)

            groups = sample_groups(self.meta)
            if table.num_rows != sum(rows for rows, _ in groups):
                raise CorruptLakeError(
                    f"{path} has {table.num_rows} rows, the commit record {sum(r for r, _ in groups)}; {self.lake.fix}"
                )
            # the footer's row-group sizes drive streaming reads: they must match the record
            _check_group_sizes(self, parquet_file(path), path)
            start = 0
            for g, (rows, _) in enumerate(groups):
                check_sample_group(self, g, table.slice(start, rows))
                start += rows
        return table

    @property
    def samples_table(self) -> pa.Table:
        """The samples table (pyarrow): sample_id, label, and any metadata columns."""
        return self._samples

    @cached_property
    def sample_ids(self) -> np.ndarray:
        return self._samples.column("sample_id").to_numpy().astype(np.int64, copy=False)

    @cached_property
    def labels(self) -> np.ndarray:
        return self._samples.column("label").to_numpy().astype(np.int64, copy=False)

    @cached_property
    def _id_index(self) -> tuple[np.ndarray, np.ndarray] | None:
        ids = self.sample_ids
        if len(ids) and ids[0] == 0 and ids[-1] == len(ids) - 1 and np.all(np.diff(ids) == 1):
            return None  # ids are 0..N-1 in row order: row == id
        order = np.argsort(ids, kind="stable")
        return ids[order], order

    def rows_of(self, sample_ids: np.ndarray) -> np.ndarray:
        """Row positions of ``sample_ids``; -1 where an id is not in the split."""
        ids = np.asarray(sample_ids, dtype=np.int64)
        index = self._id_index
        if index is None:
            rows = ids.copy()
            rows[(ids < 0) | (ids >= self.num_samples)] = -1
            return rows
        sorted_ids, order = index
        pos = np.searchsorted(sorted_ids, ids)
        pos_clipped = np.minimum(pos, len(sorted_ids) - 1) if len(sorted_ids) else pos
        found = (
            (pos < len(sorted_ids)) & (sorted_ids[pos_clipped] == ids)
            if len(sorted_ids)
            else np.zeros(len(ids), bool)
        )
        rows = np.where(found, order[pos_clipped] if len(sorted_ids) else 0, -1)
        return rows.astype(np.int64)

    def label_counts(self, num_classes: int | None = None) -> np.ndarray:
        """Samples per class, at least ``num_classes`` long (recorded at the split's creation
        in ``classes.parquet``; format 1: in the commit record's metadata, or streamed over the
        samples table's row groups, in bounded memory)."""
        if self.lake.checksummed:
            table = self.classes_table
            labels = table.column("label").to_numpy()
            size = max(num_classes or 0, int(labels.max()) + 1 if len(labels) else 0)
            counts = np.zeros(size, np.int64)
            counts[labels] = table.column("count").to_numpy()
            return counts
        recorded = self.meta.get("label_counts")
        if recorded is not None:
            counts = np.asarray(recorded, dtype=np.int64)
            if num_classes is not None and len(counts) < num_classes:
                counts = np.concatenate([counts, np.zeros(num_classes - len(counts), np.int64)])
            return counts
        counts = np.zeros(num_classes or 0, dtype=np.int64)
        for _, labels in self.iter_samples():
            if len(labels):
                part = np.bincount(labels, minlength=len(counts))
                if len(part) > len(counts):
                    part[: len(counts)] += counts
                    counts = part
                else:
                    counts += part
        return counts

    @cached_property
    def classes_table(self) -> pa.Table:
        """``label, count``: samples per class present (format 2), checked against the
        checksum the commit record holds for it."""
        path = self.root / fmt.CLASSES_FILE
        table = read_table(path, self.lake.fix)
        meta = verify_checksum(table, path, fix=self.lake.fix)
        if meta.get("checksum") != self.meta["classes"]:
            raise CorruptLakeError(
                f"{path} is not the file the commit record names (checksum {meta.get('checksum')}, "
                f"recorded {self.meta['classes']}); {self.lake.fix}"
            )
        return table

    def iter_samples(
        self, batch_rows: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(sample_ids, labels)`` in row order, one row group (or ``batch_rows``) at a time."""
        step = int(batch_rows or self.row_chunk)
        for a in range(0, self.num_samples, step):
            yield self.sample_rows(a, min(a + step, self.num_samples))

    def sample_rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """``(sample_ids, labels)`` of rows ``[start, stop)`` without loading the whole table."""
        if "_row_reader" not in self.__dict__:
            self.__dict__["_row_reader"] = _SampleRows(self)
        return self.__dict__["_row_reader"].read(start, min(stop, self.num_samples))

    @property
    def ids_digest(self) -> str | None:
        """SHA-1 of the sample ids in row order, recorded at creation (None for older splits)."""
        return self.meta.get("ids_sha1")

    # --- checkpoints ---------------------------------------------------------------------
    @property
    def checkpoint_ids(self) -> np.ndarray:
        """Ids of the committed checkpoints, ascending."""
        return self.checkpoint_table.column("checkpoint").to_numpy().astype(np.int64)

    @property
    def num_checkpoints(self) -> int:
        return self.checkpoint_table.num_rows

    def select_checkpoints(self, selection: CheckpointSelection = None) -> np.ndarray:
        """Checkpoint ids chosen by a window string (``"0:45"``, ``"::2"``), a slice over
        positions, or an explicit list of ids. ``None`` selects all committed checkpoints."""
        ids = self.checkpoint_ids
        if selection is None:
            return ids
        if isinstance(selection, str):
            selection = parse_window(selection)
        if isinstance(selection, slice):
            return ids[selection]
        wanted = np.asarray(selection, dtype=np.int64)
        missing = np.setdiff1d(wanted, ids)
        if len(missing):
            raise BadInputError(
                f"checkpoints {missing[:5].tolist()} are not committed in split {self.name!r} "
                f"(committed: {ids[:10].tolist()}{'...' if len(ids) > 10 else ''})"
            )
        return np.unique(wanted)

    # --- reading -------------------------------------------------------------------------
    def _read_plan(self, checkpoints: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """Per segment: (segment name, source columns, destination columns)."""
        table = self.checkpoint_table
        ck = table.column("checkpoint").to_numpy()
        seg = np.asarray(table.column("segment").to_pylist(), dtype=object)
        col = table.column("column").to_numpy()
        position = {int(c): i for i, c in enumerate(ck)}
        rows = np.array([position[int(c)] for c in checkpoints], dtype=np.int64)
        plan = []
        for name in dict.fromkeys(seg[rows]):  # segment order of first use
            dst = np.flatnonzero(seg[rows] == name)
            plan.append((str(name), col[rows[dst]].astype(np.int64), dst))
        return plan

    def blocks(
        self,
        block_rows: int | None = None,
        checkpoints: CheckpointSelection = None,
        channels: Sequence[str] = ("loss",),
        start: int = 0,
        stop: int | None = None,
        prefetch: bool = True,
    ) -> Iterator[Block]:
        """Iterate rows ``[start, stop)`` in blocks of ``block_rows`` (default: one chunk).

        Memory is O(block_rows x checkpoints); the next block is read in a background thread
        while the caller works on the current one. Values may be read-only views of a chunk
        buffer: copy before changing them.
        """
        for channel in channels:
            if channel not in self.channels:
                raise BadInputError(
                    f"split {self.name!r} has no channel {channel!r} (stored: {', '.join(self.channels)})"
                )
        ckpts = self.select_checkpoints(checkpoints)
        stop = self.num_samples if stop is None else min(stop, self.num_samples)
        block_rows = int(block_rows or self.row_chunk)
        if block_rows < 1:
            raise BadInputError(f"block_rows must be >= 1, got {block_rows}")
        plan = []
        for name, src, dst in self._read_plan(ckpts):
            arrays = self.open_segment(name)
            seg_path = self.root / fmt.SEGMENTS_DIR / name

            def on_missing(path: StorePath, name: str = name) -> CldLakeError:
                return self._missing(name, path)

            readers = {
                c: ChunkReader(seg_path / c, arrays[c], fix=self.lake.fix, on_missing=on_missing)
                for c in channels
            }
            plan.append((readers, src, dst, {c: int(arrays[c].shape[1]) for c in channels}))
        width = len(ckpts)
        # Fast path: one segment read whole, in stored column order: no column shuffle.
        whole_segment = (
            len(plan) == 1
            and np.array_equal(plan[0][1], np.arange(width))
            and np.array_equal(plan[0][2], np.arange(width))
            and all(w == width for w in plan[0][3].values())
        )
        samples = _SampleRows(self)
        samples_lock = threading.Lock()

        def read(a: int) -> Block:
            b = min(a + block_rows, stop)
            values: dict[str, np.ndarray] = {}
            for channel in channels:
                dtype = np.dtype(self.channels[channel])
                if whole_segment:
                    values[channel] = plan[0][0][channel].read(a, b)
                    continue
                out = np.empty((b - a, width), dtype=dtype)
                for readers, src, dst, _ in plan:
                    out[:, dst] = readers[channel].read(a, b)[:, src]
                values[channel] = out
            with samples_lock:  # one Parquet reader, shared by the read-ahead threads
                ids, labels = samples.read(a, b)
            return Block(a, ids, labels, ckpts, values)

        starts = range(start, stop, block_rows)
        if not prefetch or len(starts) < 2:
            for a in starts:
                yield read(a)
            return
        # Blocks are read ahead by threads while the caller works on the current one: from
        # local disk one block ahead keeps up (a deeper queue costs memory, not time); an
        # object store gets a deeper queue to hide the latency of its GETs.
        depth = self.root.store.parallel_reads
        with ThreadPoolExecutor(max_workers=depth, thread_name_prefix="cld-lake-prefetch") as pool:
            pending = deque(pool.submit(read, a) for a in starts[:depth])
            later = iter(starts[depth:])
            while pending:
                block = pending.popleft().result()
                a_next = next(later, None)
                if a_next is not None:
                    pending.append(pool.submit(read, a_next))
                yield block

    def nonfinite_losses(self) -> int:
        """Number of stored NaN/inf loss values (counted at commit time)."""
        return int(np.asarray(self.checkpoint_table.column("nonfinite").to_numpy()).sum())

    def segment_names(self) -> list[str]:
        return list(dict.fromkeys(self.checkpoint_table.column("segment").to_pylist()))

    def open_segment(self, name: str) -> dict[str, Any]:
        """The arrays of committed segment ``name``, its metadata checked against the commit
        record (format 2)."""
        path = self.root / fmt.SEGMENTS_DIR / name
        checksums = self.meta["segments"][name] if self.lake.checksummed else None
        try:
            return open_segment(path, checksums, self.lake.fix)
        except FileNotFoundError as exc:
            raise self._missing(name, path) from exc
        except CldLakeError:
            raise
        except Exception as exc:  # zarr could not parse what it read
            raise CorruptLakeError(
                f"{path}: segment metadata cannot be decoded ({one_line(exc)}); {self.lake.fix}"
            ) from exc

    def _missing(self, segment: str, path: StorePath) -> CldLakeError:
        """The error for a file of ``segment`` that is gone: retired by a compaction since this
        snapshot was taken (run again), or a committed file lost (corrupt)."""
        try:
            retired = segment not in Split(self.lake, self.name, self.run).segment_names()
        except CldLakeError:
            retired = False
        if retired:
            return LakeChangedError(
                f"{path}: segment retired by compaction while this command ran; run it again"
            )
        return CorruptLakeError(f"{path}: committed file missing; {self.lake.fix}")

    def __repr__(self) -> str:
        return (
            f"Split({self.name!r}, samples={self.num_samples}, checkpoints={self.num_checkpoints})"
        )


class _SampleRows:
    """Sample ids and labels of a row range, read from ``samples.parquet`` one row group at a
    time, so a scan never holds the whole samples table (unless the split already has it).
    Each row group read is checked against the CRC the commit record holds for it."""

    def __init__(self, split: Split) -> None:
        self._split = split
        self._groups: list[tuple[int, int]] | None = None
        self._cache: tuple[int, np.ndarray, np.ndarray] | None = None
        self._file: Any = None  # the open samples file, kept across reads

    def read(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        cached = self._split.__dict__
        if "sample_ids" in cached and "labels" in cached:
            return cached["sample_ids"][a:b], cached["labels"][a:b]
        path = self._split.root / fmt.SAMPLES_FILE
        fix = self._split.lake.fix
        try:
            pf = self._file or parquet_file(path)
        except FileNotFoundError as exc:
            raise CorruptLakeError(f"{path}: committed file missing; {fix}") from exc
        except Exception as exc:
            raise CorruptLakeError(f"{path} cannot be decoded ({one_line(exc)}); {fix}") from exc
        sizes = _check_group_sizes(self._split, pf, path)
        self._file = pf
        if self._groups is None:
            self._groups, pos = [], 0
            for rows in sizes:
                self._groups.append((pos, pos + rows))
                pos += rows
        ids_parts, label_parts = [], []
        for g, (lo, hi) in enumerate(self._groups):
            if hi <= a or lo >= b:
                continue
            if self._cache is None or self._cache[0] != g:
                try:
                    table = pf.read_row_group(g, columns=["sample_id", "label"])
                except Exception as exc:
                    raise CorruptLakeError(
                        f"{path} cannot be decoded ({one_line(exc)}); {fix}"
                    ) from exc
                if self._split.lake.checksummed:
                    check_sample_group(self._split, g, table)
                self._cache = (
                    g,
                    table.column("sample_id").to_numpy().astype(np.int64, copy=False),
                    table.column("label").to_numpy().astype(np.int64, copy=False),
                )
            _, ids, labels = self._cache
            ids_parts.append(ids[max(a, lo) - lo : min(b, hi) - lo])
            label_parts.append(labels[max(a, lo) - lo : min(b, hi) - lo])
        if len(ids_parts) == 1:
            return ids_parts[0], label_parts[0]
        if not ids_parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(ids_parts), np.concatenate(label_parts)


# --- checks against the commit record (format 2) ---------------------------------------------

_RECORD_KEYS = ("channels", "num_samples", "row_chunk", "ids_sha1", "samples", "classes")


def _check_group_sizes(split: Split, pf: pq.ParquetFile, path: StorePath) -> list[int]:
    """The row-group sizes of ``samples.parquet``, checked against the commit record (format 2)."""
    fix = split.lake.fix
    try:
        sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
    except Exception as exc:
        raise CorruptLakeError(f"{path} cannot be decoded ({one_line(exc)}); {fix}") from exc
    if split.lake.checksummed:
        recorded = [rows for rows, _ in sample_groups(split.meta)]
        if sizes != recorded:
            raise CorruptLakeError(
                f"{path}: row groups of {sizes[:4]}... rows, the commit record says "
                f"{recorded[:4]}...; {fix}"
            )
    return sizes


def read_table(path: StorePath, fix: str) -> pa.Table:
    """A committed Parquet file, whole; :class:`CorruptLakeError` when it cannot be decoded."""
    try:
        # (pq.read_table would import pyarrow.dataset, which is slow to import)
        return parquet_file(path).read()
    except FileNotFoundError as exc:
        raise CorruptLakeError(f"{path}: committed file missing; {fix}") from exc
    except Exception as exc:
        raise CorruptLakeError(f"{path} cannot be decoded ({one_line(exc)}); {fix}") from exc


def _check_record(meta: dict[str, Any], table: pa.Table, path: StorePath, fix: str) -> None:
    """A format 2 commit record names everything the split depends on."""
    missing = [k for k in _RECORD_KEYS if k not in meta]
    if missing or not isinstance(meta.get("segments"), dict):
        raise CorruptLakeError(f"{path}: commit record lacks {missing or ['segments']}; {fix}")
    unnamed = set(table.column("segment").to_pylist()) - set(meta["segments"])
    if unnamed:
        raise CorruptLakeError(
            f"{path}: segments {sorted(unnamed)[:3]} have no checksums in the commit record; {fix}"
        )


def sample_groups(meta: dict[str, Any]) -> list[tuple[int, str]]:
    """``(rows, crc)`` of each row group of ``samples.parquet``, from the commit record."""
    return [(int(rows), str(crc)) for rows, crc in meta["samples"]["row_groups"]]


def rows_checksum(table: pa.Table) -> str:
    """CRC32C of the sample ids and labels of ``table`` (one row group of the samples)."""
    return table_checksum(table.select(["sample_id", "label"]), {})


def check_sample_group(split: Split, group: int, table: pa.Table) -> None:
    """Row group ``group`` of the samples (as read) against its CRC in the commit record."""
    stored = sample_groups(split.meta)[group][1]
    names = table.column_names
    computed = rows_checksum(table) if "sample_id" in names and "label" in names else "no ids"
    if computed != stored:
        raise CorruptLakeError(
            f"{split.root / fmt.SAMPLES_FILE} fails its checksum (row group {group}: stored "
            f"{stored}, computed {computed}); {split.lake.fix}"
        )


class Lake:
    """A trajectory lake in a local directory or on an object store. Open with :func:`open_lake` or :meth:`Lake.create`."""

    def __init__(
        self,
        path: str | os.PathLike[str] | StorePath,
        run: str | None = None,
        *,
        meta: dict[str, Any] | None = None,
    ) -> None:
        #: where the lake lives, on the local disk or an object store (what cld_lake reads
        #: and writes through)
        self.root: StorePath = location(path)
        #: the root metadata (``meta``: as just read by the caller, not read again)
        self.meta = fmt.read_root_metadata(self.root) if meta is None else meta
        #: the run whose splits ``split`` / ``splits`` read when given none
        self.run = check_run_name(run)
        #: was :attr:`run` named (a command on this lake then needs no ``--run``)?
        self.run_chosen = run is not None

    def with_run(self, run: str | None) -> Lake:
        """This lake with ``run`` (None: the default run) as the run its splits are read from,
        so any code that reads ``lake.split("train")`` reads that run's."""
        return Lake(self.root, run, meta=self.meta)

    def resolve_run(self) -> Lake:
        """This lake, or, when no run was chosen and the default run holds no split (a lake
        recorded only with ``run=NAME``), the same lake reading its first named run: what
        ``select``, ``export`` and ``report`` read the training samples from."""
        if self.run_chosen or self.splits(fmt.DEFAULT_RUN):
            return self
        runs = self.runs()
        return self if runs == [fmt.DEFAULT_RUN] else self.with_run(runs[0])

    def runs(self) -> list[str]:
        """The runs holding at least one committed split, the default run first; an empty
        lake has just the default run."""
        listed = fmt.listed_runs(fmt.read_root_metadata(self.root))
        default, others = listed.pop(fmt.DEFAULT_RUN), sorted(r for r, s in listed.items() if s)
        return [fmt.DEFAULT_RUN, *others] if default or not others else others

    def pick_run(self, run: str | None) -> str:
        """The run a command without ``--run`` means: ``run`` when given, else the lake's only
        run; :class:`BadInputError` naming the runs when there are several."""
        if run is not None:
            run = check_run_name(run)
            runs = self.runs()
            if run not in runs:
                raise BadInputError(
                    f"{self.root}: no run {run!r} (runs: {', '.join(runs)}); record or import it first"
                )
            return run
        runs = self.runs()
        if len(runs) > 1:
            raise BadInputError(
                f"{self.root} holds {len(runs)} runs ({', '.join(runs)}); name one or more with --run"
            )
        return runs[0]

    @classmethod
    def create(
        cls, path: str | os.PathLike[str] | StorePath, num_classes: int | None = None
    ) -> Lake:
        """Open the lake at ``path``, creating an empty one if the directory has none."""
        root = location(path)
        if num_classes is not None:
            check_num_classes(num_classes)
        root.check_reachable()
        if root.is_file():
            raise NotALakeError(f"{root}: is a file; choose a directory for the lake")
        names = root.list()
        if names and fmt.ROOT_FILE not in names and any(n != fmt.ROOT_LOCK for n in names):
            raise NotALakeError(
                f"{root}: directory exists, is not empty and is not a lake; choose a new or empty directory"
            )
        root.make_folder()
        with lock_root(root):
            if not (root / fmt.ROOT_FILE).exists():
                fmt.write_root_metadata(root, fmt.new_root_metadata(num_classes))
                (root / fmt.SPLITS_DIR).make_folder()
        return cls(root)

    @property
    def path(self) -> Path:
        """The lake's directory as a :class:`pathlib.Path`, for a lake on the local disk (to
        reach its files from your own code; the scores table, which moves with every score
        stored: ``cld_lake.lake.scores_path(lake)``). A lake on an object store has none
        (:class:`BadInputError`); :attr:`root` names a lake anywhere."""
        return local_dir(self.root)

    @property
    def lake_id(self) -> str:
        return str(self.meta["lake_id"])

    def group_names(self) -> tuple[str, ...] | None:
        """The lake's group names by id (``names[label]`` is a sample's group), or None when
        its groups are plain integers (classes). Checked before it is returned: every part
        of the table against its checksum, and against the names each split was written
        with (:class:`CorruptLakeError` when any differs)."""
        self.meta = fmt.read_root_metadata(self.root)
        key = self.meta.get("checksum")
        cached = self.__dict__.get("_group_names")
        if cached is not None and cached[0] == key:
            return cached[1]
        names = read_names(self.root, self.meta, self.fix)
        for run, splits in fmt.listed_runs(self.meta).items():
            for name in splits:
                recorded = Split(self, name, run).meta.get("groups")
                label = name if run == fmt.DEFAULT_RUN else f"{run}/{name}"
                check_split_groups(label, recorded, names, self.fix)
        self.__dict__["_group_names"] = (key, names)
        return names

    @property
    def num_classes(self) -> int | None:
        value = self.meta.get("num_classes")
        return None if value is None else int(value)

    @property
    def format_version(self) -> int:
        return int(self.meta["format_version"])

    @property
    def checksummed(self) -> bool:
        """Does every committed file carry a checksum (format 2 and later)?"""
        return fmt.has_checksums(self.meta)

    @property
    def fix(self) -> str:
        """What to do about a damaged file of this lake (the end of every corruption error)."""
        return f"run `cld-lake verify {self.root}` and restore it from a backup"

    def splits(self, run: str | None = None) -> list[str]:
        """The committed splits of ``run`` (default: :attr:`run`), those ``cld_lake.json``
        lists; read afresh: another process may have committed a new split since this lake
        was opened."""
        run = self.run if run is None else check_run_name(run)
        if self.checksummed:
            self.meta = fmt.read_root_metadata(self.root)
            names = fmt.listed_runs(self.meta).get(run, [])
        elif run != fmt.DEFAULT_RUN:
            names = []
        else:  # format 1: a split is a directory with a commit record
            root = self.root / fmt.SPLITS_DIR
            names = [p.name for p in root.iterdir() if (p / fmt.CHECKPOINTS_FILE).exists()]
        order = {n: i for i, n in enumerate(fmt.SPLIT_NAMES)}
        return sorted(names, key=lambda n: (order.get(n, len(order)), n))

    def split(self, name: str, run: str | None = None) -> Split:
        """Split ``name`` of ``run`` (default: :attr:`run`, the default run unless
        :meth:`with_run` chose another)."""
        return Split(self, name, run)

    def has_split(self, name: str, run: str | None = None) -> bool:
        return name in self.splits(run)

    def reload(self) -> Lake:
        return Lake(self.root, self.run)

    def __repr__(self) -> str:
        run = "" if self.run == fmt.DEFAULT_RUN else f", run={self.run!r}"
        return f"Lake({str(self.root)!r}{run}, splits={self.splits()})"


def lock_root(path: str | os.PathLike[str] | StorePath) -> Lock:
    """The lock around root-metadata changes (short critical sections only: ``with
    lock_root(lake.root): ...`` waits for it): an ``flock`` on local disk, a lease object on
    an object store."""
    return (location(path) / fmt.ROOT_LOCK).lock(fmt.lock_holder())


def local_dir(root: StorePath) -> Path:
    """``root`` as a local directory; :class:`BadInputError` when it is on an object store."""
    found = root.local_path
    if found is None:
        raise BadInputError(
            f"{root}: a lake on an object store has no local path; use its .root (a StorePath)"
        )
    return found


def open_lake(path: str | os.PathLike[str]) -> Lake:
    """Open an existing lake; raises :class:`NotALakeError` with the fix when it is not one."""
    return Lake(path)
