"""Import trajectories from files: ``.npy`` N x T arrays (memory-mapped, streamed in row
blocks) and long Parquet (``sample_id, checkpoint, loss[, correct, margin]``, re-ordered by
DuckDB's out-of-core sort). Every input is validated before anything is written, so a bad
input leaves the lake exactly as it was.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cld_lake.errors import BadInputError, InputFileNotFoundError
from cld_lake.lake import _format as fmt
from cld_lake.lake._validate import check_labels, count_duplicates
from cld_lake.lake.store import Lake
from cld_lake.lake.writer import SplitWriter

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class ImportResult:
    split: str
    num_samples: int
    checkpoints: list[int]
    channels: dict[str, str]
    nonfinite: int


def load_npy(path: PathLike, what: str) -> np.ndarray:
    """Memory-map a ``.npy`` file (no copy into RAM) with a clear error when it is unusable."""
    p = Path(path)
    if not p.exists():
        raise InputFileNotFoundError(f"{what} {p}: no such file")
    if p.suffix != ".npy":
        raise BadInputError(f"{what} {p}: expected a .npy file (or a long .parquet for --loss)")
    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BadInputError(
            f"{what} {p}: not a readable .npy file ({str(exc).splitlines()[0]}); is it truncated?"
        ) from exc
    return arr


class NpyRows:
    """Row-range reads of a C-ordered ``.npy`` file with plain ``pread`` into a fresh buffer.

    Unlike a memory map, nothing stays mapped into the process after a block is consumed, so
    the peak RSS of a streaming import is one block, not the whole file.
    """

    def __init__(self, path: PathLike, mm: np.ndarray) -> None:
        self.path = Path(path)
        self.dtype = mm.dtype
        self.shape = mm.shape
        self.offset = mm.offset
        self.row_bytes = int(np.prod(mm.shape[1:], dtype=np.int64)) * mm.dtype.itemsize

    def read(self, a: int, b: int) -> np.ndarray:
        out = np.empty((b - a, *self.shape[1:]), dtype=self.dtype)
        view = memoryview(out.reshape(-1).view(np.uint8))
        pos, done = self.offset + a * self.row_bytes, 0
        fd = os.open(self.path, os.O_RDONLY)
        try:
            while done < len(view):
                got = os.preadv(fd, [view[done:]], pos + done)
                if got <= 0:
                    raise BadInputError(f"{self.path}: file ended early; it is truncated")
                done += got
        finally:
            os.close(fd)
        return out


def _rows_reader(path: PathLike, mm: np.ndarray):
    """``f(a, b) -> rows a..b`` of a .npy: pread for C order, the memory map otherwise."""
    if mm.flags.c_contiguous and isinstance(mm, np.memmap):
        return NpyRows(path, mm).read
    return lambda a, b: np.asarray(mm[a:b])


def _numeric(arr: np.ndarray, what: str, path: PathLike, kinds: str) -> None:
    if arr.dtype.kind not in kinds:
        names = {"f": "float", "i": "int", "u": "unsigned int", "b": "bool"}
        allowed = "/".join(names[k] for k in kinds)
        raise BadInputError(f"{what} {path}: dtype {arr.dtype} is not {allowed}")


def _channel_dtype(channel: str, arr: np.ndarray, requested: Mapping[str, str] | None) -> str:
    if requested and channel in requested:
        return requested[channel]
    if channel == "loss" and arr.dtype in (np.float16, np.float64):
        return str(arr.dtype)
    if channel == "margin" and arr.dtype == np.float16:
        return "float16"
    return fmt.CHANNEL_DTYPES[channel][0]


def import_npy(
    lake_path: PathLike,
    split: str,
    loss: PathLike,
    labels: PathLike,
    *,
    sample_ids: PathLike | None = None,
    correct: PathLike | None = None,
    margin: PathLike | None = None,
    checkpoint_ids: PathLike | None = None,
    num_classes: int | None = None,
    dtypes: Mapping[str, str] | None = None,
    row_chunk: int = fmt.DEFAULT_ROW_CHUNK,
) -> ImportResult:
    """Import N x T ``.npy`` arrays into ``split`` (created if missing, with the lake)."""
    loss_arr = load_npy(loss, "--loss")
    if loss_arr.ndim != 2:
        raise BadInputError(
            f"--loss {loss}: expected a 2-D N x T array, got shape {loss_arr.shape}"
        )
    _numeric(loss_arr, "--loss", loss, "fiu")
    n, t = loss_arr.shape
    label_arr = load_npy(labels, "--labels")
    _numeric(label_arr, "--labels", labels, "iu")
    if label_arr.shape != (n,):
        raise BadInputError(
            f"--labels {labels}: shape {label_arr.shape} does not match --loss {loss} with {n} rows; expected ({n},)"
        )
    channels_src: dict[str, np.ndarray] = {"loss": loss_arr}
    paths_src: dict[str, PathLike] = {"loss": loss}
    for name, path, kinds in (("correct", correct, "bi"), ("margin", margin, "fiu")):
        if path is None:
            continue
        arr = load_npy(path, f"--{name}")
        _numeric(arr, f"--{name}", path, kinds)
        if arr.shape != (n, t):
            raise BadInputError(
                f"--{name} {path}: shape {arr.shape} does not match --loss shape {(n, t)}"
            )
        channels_src[name] = arr
        paths_src[name] = path
    ids = _load_ids(sample_ids, n, "--sample-ids")
    ckpts = _load_ids(checkpoint_ids, t, "--checkpoint-ids")
    if (ckpts < 0).any():
        raise BadInputError(f"--checkpoint-ids {checkpoint_ids}: checkpoint ids must be >= 0")
    channels = {c: _channel_dtype(c, a, dtypes) for c, a in channels_src.items()}

    def source(rows: np.ndarray | None):
        readers = {c: _rows_reader(paths_src[c], arr) for c, arr in channels_src.items()}

        def read_rows(a: int, b: int) -> dict[str, np.ndarray]:
            if rows is None:
                return {c: read(a, b) for c, read in readers.items()}
            sel = np.sort(rows[a:b])
            out = {c: np.asarray(arr[sel]) for c, arr in channels_src.items()}
            if rows is not None:  # rows[a:b] were sorted for a sequential read: undo that order
                back = np.argsort(np.argsort(rows[a:b], kind="stable"), kind="stable")
                out = {c: v[back] for c, v in out.items()}
            return out

        return read_rows

    return _import(
        lake_path,
        split,
        ids,
        np.asarray(label_arr),
        ckpts,
        channels,
        source,
        num_classes,
        row_chunk,
    )


def _load_ids(path: PathLike | None, n: int, what: str) -> np.ndarray:
    if path is None:
        return np.arange(n, dtype=np.int64)
    arr = load_npy(path, what)
    _numeric(arr, what, path, "iu")
    if arr.shape != (n,):
        raise BadInputError(f"{what} {path}: shape {arr.shape}, expected ({n},) to match --loss")
    arr = np.asarray(arr, dtype=np.int64)
    dups = count_duplicates(arr)
    if dups:
        raise BadInputError(f"{what} {path}: {dups} duplicate ids; every id must be unique")
    return arr


def _import(
    lake_path, split, ids, labels, ckpts, channels, make_source, num_classes, row_chunk
) -> ImportResult:
    """Validate against the lake (without changing it), then write and commit."""
    labels = np.asarray(labels, dtype=np.int64)
    lake_exists = (Path(lake_path) / fmt.ROOT_FILE).exists()
    if lake_exists:
        lake = Lake(lake_path)
        if (
            num_classes is not None
            and lake.num_classes is not None
            and num_classes != lake.num_classes
        ):
            raise BadInputError(
                f"--num-classes {num_classes}: the lake at {lake_path} has {lake.num_classes} classes; use the same number or a new lake"
            )
        check_labels(
            labels,
            lake.num_classes if lake.num_classes is not None else num_classes,
            f"--labels for {lake_path}",
        )
        if lake.has_split(split):
            rows = _rows_in_existing_split(lake, split, ids, labels, ckpts, channels)
        else:
            rows = None
    else:
        check_labels(labels, num_classes, "--labels")
        if num_classes is None and len(labels) == 0:
            raise BadInputError("no samples to import")
        rows = None
        lake = Lake.create(lake_path, num_classes)
    with SplitWriter(lake, split, num_classes=num_classes, row_chunk=row_chunk) as writer:
        new_samples = (ids, labels) if writer.split is None else None
        if writer.split is not None and rows is None:
            rows = _rows_in_existing_split(lake, split, ids, labels, ckpts, channels)
        writer.append_columns(
            ckpts.tolist(),
            make_source(rows),
            num_rows=len(ids),
            channels=channels,
            new_samples=new_samples,
        )
        result_split = writer.split
    assert result_split is not None
    return ImportResult(
        split,
        len(ids),
        sorted(int(c) for c in ckpts),
        dict(channels),
        _nonfinite_of(result_split, ckpts),
    )


def _nonfinite_of(split, ckpts) -> int:
    """NaN/inf losses recorded at commit for these checkpoints."""
    table = split.checkpoint_table
    chosen = np.isin(table.column("checkpoint").to_numpy(), np.asarray(ckpts, np.int64))
    return int(table.column("nonfinite").to_numpy()[chosen].sum())


def _rows_in_existing_split(
    lake: Lake, split_name: str, ids, labels, ckpts, channels
) -> np.ndarray | None:
    """Map import rows onto the split's rows; None when they are already in the split's order."""
    split = lake.split(split_name)
    if len(ids) != split.num_samples:
        raise BadInputError(
            f"split {split_name!r} of {lake.path} has {split.num_samples} samples; the import has {len(ids)}. "
            "An import adds checkpoints for the same samples"
        )
    if channels != split.channels:
        raise BadInputError(
            f"split {split_name!r} stores channels {split.channels}; the import gives {channels}"
        )
    dup = np.intersect1d(ckpts, split.checkpoint_ids)
    if len(dup):
        raise BadInputError(
            f"checkpoints {dup[:5].tolist()} are already committed in split {split_name!r}; use --checkpoint-ids with new ids"
        )
    if np.array_equal(ids, split.sample_ids):
        if not np.array_equal(labels, split.labels):
            raise BadInputError(f"--labels differ from the labels stored for split {split_name!r}")
        return None
    pos = split.rows_of(ids)
    if (pos < 0).any():
        raise BadInputError(
            f"sample ids {ids[pos < 0][:5].tolist()} are not in split {split_name!r}"
        )
    if not np.array_equal(split.labels[pos], labels):
        raise BadInputError(f"--labels differ from the labels stored for split {split_name!r}")
    # import row i holds split row pos[i]; the writer wants split order: source row for split row r
    source_rows = np.empty_like(pos)
    source_rows[pos] = np.arange(len(pos))
    return source_rows


def import_long_parquet(
    lake_path: PathLike,
    split: str,
    loss: PathLike,
    labels: PathLike,
    *,
    sample_ids: PathLike | None = None,
    num_classes: int | None = None,
    dtypes: Mapping[str, str] | None = None,
    row_chunk: int = fmt.DEFAULT_ROW_CHUNK,
    memory_limit: str = "1GB",
) -> ImportResult:
    """Import a long Parquet file (``sample_id, checkpoint, loss[, correct, margin]``).

    Labels come from ``labels``: a ``.parquet`` with ``sample_id, label`` or a ``.npy`` aligned
    with ``sample_ids`` (default: the file's distinct sample ids, ascending). DuckDB sorts the
    rows by (sample, checkpoint) out of core, and row blocks stream into the split.
    """
    import duckdb

    loss_path = Path(loss)
    if not loss_path.exists():
        raise InputFileNotFoundError(f"--loss {loss_path}: no such file")
    con = duckdb.connect(
        config={"memory_limit": memory_limit, "temp_directory": tempfile.gettempdir()}
    )
    try:
        src = f"read_parquet({_sql_str(loss_path)})"
        try:
            cols = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
        except duckdb.Error as exc:
            raise BadInputError(
                f"--loss {loss_path}: not a readable Parquet file ({_first_line(exc)})"
            ) from exc
        for need in ("sample_id", "checkpoint", "loss"):
            if need not in cols:
                raise BadInputError(
                    f"--loss {loss_path}: missing column {need!r}; a long file has sample_id, checkpoint, loss"
                )
        present = [c for c in ("loss", "correct", "margin") if c in cols]
        for c in ("sample_id", "checkpoint"):
            if not any(k in cols[c] for k in ("INT",)):
                raise BadInputError(
                    f"--loss {loss_path}: column {c} is {cols[c]}, expected an integer type"
                )
        for c in present:
            if not any(k in cols[c] for k in ("FLOAT", "DOUBLE", "INT", "BOOLEAN", "DECIMAL")):
                raise BadInputError(
                    f"--loss {loss_path}: column {c} is {cols[c]}, expected a number"
                )
        ckpts = np.array(
            [
                r[0]
                for r in con.execute(f"SELECT DISTINCT checkpoint FROM {src} ORDER BY 1").fetchall()
            ],
            np.int64,
        )
        if len(ckpts) == 0:
            raise BadInputError(f"--loss {loss_path}: no rows")
        if sample_ids is not None:
            ids = load_npy(sample_ids, "--sample-ids")
            ids = _load_ids(sample_ids, len(ids), "--sample-ids")
        else:
            ids = (
                con.execute(f"SELECT DISTINCT sample_id FROM {src} ORDER BY 1")
                .fetchnumpy()["sample_id"]
                .astype(np.int64)
            )
        labels_arr = _load_long_labels(con, labels, ids)
        n, t = len(ids), len(ckpts)
        total, distinct_pairs = con.execute(
            f"SELECT count(*), count(DISTINCT (sample_id, checkpoint)) FROM {src}"
        ).fetchall()[0]
        if total != distinct_pairs:
            raise BadInputError(
                f"--loss {loss_path}: {total - distinct_pairs} duplicate (sample_id, checkpoint) rows"
            )
        if total != n * t:
            raise BadInputError(
                f"--loss {loss_path}: {total} rows, expected {n} samples x {t} checkpoints = {n * t}; every sample needs a value at every checkpoint"
            )
        import pyarrow as pa

        con.register("_ids", pa.table({"sample_id": ids, "row": np.arange(n, dtype=np.int64)}))
        con.register("_ck", pa.table({"checkpoint": ckpts, "col": np.arange(t, dtype=np.int64)}))
        unknown = con.execute(
            f"SELECT count(*) FROM {src} l ANTI JOIN _ids USING (sample_id)"
        ).fetchall()[0][0]
        if unknown:
            raise BadInputError(
                f"--loss {loss_path}: {unknown} rows have sample ids not in --sample-ids"
            )
        channels = {c: (dtypes or {}).get(c, fmt.CHANNEL_DTYPES[c][0]) for c in present}
        select_cols = ", ".join(f"l.{c}" for c in present)

        def make_source(rows: np.ndarray | None):
            # the writer asks for split rows [a, b) in order; stream the sorted result once
            order_sql = "i.row" if rows is None else "r.split_row"
            if rows is not None:
                con.register(
                    "_rows", pa.table({"row": rows, "split_row": np.arange(n, dtype=np.int64)})
                )
            join_rows = "" if rows is None else " JOIN _rows r ON r.row = i.row"
            reader = con.sql(
                f"SELECT {order_sql} AS r, c.col, {select_cols} FROM {src} l JOIN _ids i USING (sample_id) "
                f"JOIN _ck c USING (checkpoint){join_rows} ORDER BY 1, 2"
            ).to_arrow_reader(batch_size=1 << 20)
            return _LongRowReader(reader, t, present)

        return _import(
            lake_path, split, ids, labels_arr, ckpts, channels, make_source, num_classes, row_chunk
        )
    finally:
        con.close()


class _LongRowReader:
    """Turns a (row, col)-sorted long stream into dense row blocks on demand."""

    def __init__(self, reader, t: int, channels: list[str]) -> None:
        self._reader = reader
        self._t = t
        self._channels = channels
        self._pending: dict[str, np.ndarray] | None = None

    def __call__(self, a: int, b: int) -> dict[str, np.ndarray]:
        t = self._t
        need = (b - a) * t
        parts: dict[str, list[np.ndarray]] = {c: [] for c in self._channels}
        have = 0
        while have < need:
            if self._pending is None:
                batch = self._reader.read_next_batch()
                self._pending = {
                    c: batch.column(c).to_numpy(zero_copy_only=False) for c in self._channels
                }
            take = min(need - have, len(self._pending["loss"]))
            for c in self._channels:
                parts[c].append(self._pending[c][:take])
            rest = {c: v[take:] for c, v in self._pending.items()}
            self._pending = rest if len(rest["loss"]) else None
            have += take
        return {c: np.concatenate(v).reshape(b - a, t) for c, v in parts.items()}


def _load_long_labels(con, labels: PathLike, ids: np.ndarray) -> np.ndarray:
    p = Path(labels)
    if p.suffix == ".parquet":
        if not p.exists():
            raise InputFileNotFoundError(f"--labels {p}: no such file")
        import pyarrow as pa

        con.register("_want", pa.table({"sample_id": ids, "pos": np.arange(len(ids))}))
        try:
            got = con.execute(
                f"SELECT w.pos, l.label FROM _want w LEFT JOIN read_parquet({_sql_str(p)}) l USING (sample_id) ORDER BY w.pos"
            ).fetchnumpy()
        except Exception as exc:
            raise BadInputError(
                f"--labels {p}: needs columns sample_id, label ({_first_line(exc)})"
            ) from exc
        lab = got["label"]
        if hasattr(lab, "mask") and np.ma.is_masked(lab):
            raise BadInputError(
                f"--labels {p}: no label for {int(np.ma.getmaskarray(lab).sum())} sample ids"
            )
        if len(lab) != len(ids):
            raise BadInputError(f"--labels {p}: sample ids appear more than once")
        return np.asarray(lab).astype(np.int64)
    arr = load_npy(p, "--labels")
    _numeric(arr, "--labels", p, "iu")
    if arr.shape != ids.shape:
        raise BadInputError(
            f"--labels {p}: shape {arr.shape} does not match the {len(ids)} sample ids of the long file"
        )
    return np.asarray(arr, np.int64)


def _sql_str(path: PathLike) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
