"""What every importer shares: reading small ``.npy`` inputs with clear errors, the stored
dtype of a channel, labels from ``.npy`` or Parquet, and :func:`import_rows`, which checks
an import against the lake (changing nothing) before it writes and commits one segment.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cld_lake.errors import BadInputError, InputFileNotFoundError
from cld_lake.lake import _format as fmt
from cld_lake.lake._validate import check_labels, count_duplicates
from cld_lake.lake.store import Lake, Split
from cld_lake.lake.writer import RowReader, SplitWriter

if TYPE_CHECKING:
    import duckdb

PathLike = str | os.PathLike[str]
# Given the split's rows for each import row (None: same order), a reader of row blocks.
SourceFactory = Callable[[np.ndarray | None], RowReader]


@dataclass(frozen=True)
class ImportResult:
    """What an import committed: the split, its size, the new checkpoints and channels, and
    the number of NaN/inf losses among the imported values."""

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


def check_kind(arr: np.ndarray, what: str, path: PathLike, kinds: str) -> None:
    """``arr``'s dtype kind must be one of ``kinds`` (numpy kind letters ``f i u b``)."""
    if arr.dtype.kind not in kinds:
        names = {"f": "float", "i": "int", "u": "unsigned int", "b": "bool"}
        allowed = "/".join(names[k] for k in kinds)
        raise BadInputError(f"{what} {path}: dtype {arr.dtype} is not {allowed}")


def channel_dtype(channel: str, dtype: np.dtype, requested: Mapping[str, str] | None) -> str:
    """The stored dtype of ``channel``: as requested, else the input's when it is allowed and
    narrower or wider than the default on purpose (float16/float64 loss, float16 margin)."""
    if requested and channel in requested:
        return requested[channel]
    if channel == "loss" and dtype in (np.float16, np.float64):
        return str(dtype)
    if channel == "margin" and dtype == np.float16:
        return "float16"
    return fmt.CHANNEL_DTYPES[channel][0]


def load_ids(path: PathLike | None, n: int, what: str) -> np.ndarray:
    """Unique int64 ids from a 1-D ``.npy`` of length ``n``; ``0..n-1`` when ``path`` is None."""
    if path is None:
        return np.arange(n, dtype=np.int64)
    arr = load_npy(path, what)
    check_kind(arr, what, path, "iu")
    if arr.shape != (n,):
        raise BadInputError(f"{what} {path}: shape {arr.shape}, expected ({n},) to match --loss")
    arr = np.asarray(arr, dtype=np.int64)
    dups = count_duplicates(arr)
    if dups:
        raise BadInputError(f"{what} {path}: {dups} duplicate ids; every id must be unique")
    return arr


def load_labels(con: duckdb.DuckDBPyConnection, labels: PathLike, ids: np.ndarray) -> np.ndarray:
    """Labels for ``ids`` from a ``.parquet`` with ``sample_id, label`` (joined by DuckDB on
    ``con``) or from a ``.npy`` aligned with ``ids``."""
    p = Path(labels)
    if p.suffix == ".parquet":
        if not p.exists():
            raise InputFileNotFoundError(f"--labels {p}: no such file")
        import pyarrow as pa

        con.register("_want", pa.table({"sample_id": ids, "pos": np.arange(len(ids))}))
        try:
            got = con.execute(
                f"SELECT w.pos, l.label FROM _want w LEFT JOIN read_parquet({sql_str(p)}) l USING (sample_id) ORDER BY w.pos"
            ).fetchnumpy()
        except Exception as exc:
            raise BadInputError(
                f"--labels {p}: needs columns sample_id, label ({first_line(exc)})"
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
    check_kind(arr, "--labels", p, "iu")
    if arr.shape != ids.shape:
        raise BadInputError(
            f"--labels {p}: shape {arr.shape} does not match the {len(ids)} sample ids of the long file"
        )
    return np.asarray(arr, np.int64)


def sql_str(path: PathLike) -> str:
    """``path`` as a SQL string literal."""
    return "'" + str(path).replace("'", "''") + "'"


def first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def import_rows(
    lake_path: PathLike,
    split: str,
    ids: np.ndarray,
    labels: np.ndarray,
    ckpts: np.ndarray,
    channels: dict[str, str],
    make_source: SourceFactory,
    num_classes: int | None,
    row_chunk: int,
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


def _nonfinite_of(split: Split, ckpts: np.ndarray) -> int:
    """NaN/inf losses recorded at commit for these checkpoints."""
    table = split.checkpoint_table
    chosen = np.isin(table.column("checkpoint").to_numpy(), np.asarray(ckpts, np.int64))
    return int(table.column("nonfinite").to_numpy()[chosen].sum())


def _rows_in_existing_split(
    lake: Lake,
    split_name: str,
    ids: np.ndarray,
    labels: np.ndarray,
    ckpts: np.ndarray,
    channels: dict[str, str],
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
