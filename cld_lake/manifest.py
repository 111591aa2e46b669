"""Coreset manifests: the Parquet file a selection writes and training code reads.

Schema (one row per selected sample, sorted by ``label`` then ``rank``):

========== ======= ==========================================================
sample_id  int64   the sample's id in the lake
label      int64   its class
score      float64 the score it was ranked by (NaN for an unscored random pick)
rank       int64   1 = best within its class (by the selection's order)
========== ======= ==========================================================

A selection from a lake of named groups adds a fifth column, ``group_name`` (string): the
name of the sample's group (``label`` is its id); the schema is otherwise the same.

The Parquet key-value metadata ``cld_lake`` holds JSON provenance: score name, method and
its parameters (checkpoints used), selection rule, fraction or count, shortfall, lake
identity, creation time and package version, and ``checksum``: a SHA-256 of the columns
and of that JSON (see :func:`content_digest`). The digest is repeated under the footer key
``cld_lake.checksum``, pages carry Parquet CRC32 checksums, and the columns carry Parquet
field ids 1-4; :func:`load_manifest` verifies all of them. The field ids sit in the footer's
schema, apart from its key-value list, so they still mark the file as checksummed when a
damaged byte hides that whole list.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cld_lake._meta import META_KEY, meta_bytes, read_meta
from cld_lake.errors import BadInputError, CorruptFileError, InputFileNotFoundError, one_line

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa
    import pyarrow.parquet as pq

COLUMNS = ("sample_id", "label", "score", "rank")
GROUP_NAME = "group_name"  # the fifth column of a selection from a lake of named groups
MANIFEST_KIND = "cld_lake.manifest"
MANIFEST_VERSION = 1
CHECKSUM_FIELD = "checksum"  # in the cld_lake JSON: {"algorithm": "sha256", "digest": hex}
CHECKSUM_KEY = b"cld_lake.checksum"  # the same hex digest, a second footer entry
FIELD_ID = b"PARQUET:field_id"
_DTYPES = {"sample_id": "<i8", "label": "<i8", "score": "<f8", "rank": "<i8"}
ROW_GROUP_ROWS = 1 << 20  # rows per row group written (pyarrow's default)


def manifest_schema(named: bool = False) -> pa.Schema:
    """The manifest's schema; ``named``: with the ``group_name`` column."""
    import pyarrow as pa

    fields = [
        pa.field("sample_id", pa.int64(), nullable=False),
        pa.field("label", pa.int64(), nullable=False),
        pa.field("score", pa.float64()),
        pa.field("rank", pa.int64(), nullable=False),
    ]
    if named:
        fields.append(pa.field(GROUP_NAME, pa.string(), nullable=False))
    return pa.schema(fields)


def with_group_names(table: pa.Table, names: Any) -> pa.Table:
    """``table`` (a manifest's) with the ``group_name`` of each row's label from ``names``
    (a lake's group names by id; None: unchanged)."""
    import pyarrow as pa

    if names is None:
        return table
    column = pa.array(list(names), pa.string()).take(table.column("label"))
    return table.append_column(manifest_schema(True).field(GROUP_NAME), column)


@dataclass(frozen=True)
class Manifest:
    """A loaded (or freshly selected) coreset manifest.

    Attributes
    ----------
    table : pyarrow.Table
        ``sample_id, label, score, rank``, sorted by label then rank.
    metadata : dict
        The provenance JSON.
    path : Path or None
        Where it was read from or written to.
    """

    table: pa.Table
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def sample_ids(self) -> np.ndarray:
        """Selected sample ids (int64), in manifest order (label, then rank)."""
        return self.table.column("sample_id").to_numpy().astype(np.int64, copy=False)

    @property
    def labels(self) -> np.ndarray:
        return self.table.column("label").to_numpy().astype(np.int64, copy=False)

    @property
    def scores(self) -> np.ndarray:
        return (
            self.table.column("score").to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        )

    @property
    def ranks(self) -> np.ndarray:
        return self.table.column("rank").to_numpy().astype(np.int64, copy=False)

    @property
    def group_names(self) -> list[str] | None:
        """Each row's group name (a selection from a lake of named groups), else None."""
        if GROUP_NAME not in self.table.column_names:
            return None
        return [str(v) for v in self.table.column(GROUP_NAME).to_pylist()]

    def class_counts(self) -> dict[int, int]:
        """Selected samples per class."""
        labels, counts = np.unique(self.labels, return_counts=True)
        return {int(k): int(v) for k, v in zip(labels, counts, strict=True)}

    def to_polars(self) -> pl.DataFrame:
        import polars as pl

        frame = pl.from_arrow(self.table)
        assert isinstance(frame, pl.DataFrame)  # a Table converts to a DataFrame
        return frame

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically to ``path`` (a temp file renamed into place)."""
        return write_manifest(path, self.table, self.metadata)

    def __len__(self) -> int:
        return self.table.num_rows

    def __repr__(self) -> str:
        score = self.metadata.get("score")
        return f"Manifest({len(self)} samples, {len(self.class_counts())} classes, score={score!r})"


def manifest_table(
    sample_ids: np.ndarray, labels: np.ndarray, scores: np.ndarray, ranks: np.ndarray
) -> pa.Table:
    """The manifest table with the contract's schema, sorted by label then rank.

    Columns already in that order (and of the contract's dtypes) are wrapped, not copied.
    """
    import pyarrow as pa

    ids = np.asarray(sample_ids, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    ranks = np.asarray(ranks, dtype=np.int64)
    columns = [ids, labels, scores, ranks]
    if not _in_manifest_order(labels, ranks):
        order = np.lexsort((ranks, labels))
        columns = [column[order] for column in columns]
    return pa.Table.from_arrays([pa.array(c) for c in columns], schema=manifest_schema())


def _in_manifest_order(labels: np.ndarray, ranks: np.ndarray, block: int = 1 << 20) -> bool:
    """Whether rows are sorted by label, then rank (checked a block at a time: no N-row temps)."""
    for start in range(0, max(len(labels) - 1, 0), block):
        stop = min(start + block + 1, len(labels))
        lab, rnk = labels[start:stop], ranks[start:stop]
        step = np.diff(lab)
        if not np.all((step > 0) | ((step == 0) & (np.diff(rnk) > 0))):
            return False
    return True


# --- checksums ---------------------------------------------------------------------------
def content_digest(table: pa.Table, metadata: dict[str, Any]) -> str:
    """SHA-256 (hex) of a manifest's content.

    Covers the row count, each column's values as little-endian int64 / float64 in row
    order, ``group_name`` (when present) as the UTF-8 lengths and bytes of its values, and
    the ``cld_lake`` JSON as :func:`cld_lake._meta.meta_bytes` encodes it, without its
    ``checksum`` field. Hashed a chunk at a time (no copy of a whole column).
    """
    digest = _ContentDigest(table.num_rows)
    for name in _DTYPES:
        digest.start_column(name)
        for chunk in table.column(name).chunks:
            digest.update(chunk.to_numpy(zero_copy_only=False))
    if GROUP_NAME in table.column_names:
        digest.start_column(GROUP_NAME)
        for chunk in table.column(GROUP_NAME).chunks:
            digest.update_text(chunk)
    return digest.finish(metadata)


class _ContentDigest:
    """:func:`content_digest` fed column by column, each column in row-order pieces."""

    def __init__(self, num_rows: int) -> None:
        self._sha = hashlib.sha256(b"cld_lake.manifest\n")
        self._sha.update(num_rows.to_bytes(8, "little"))
        self._dtype = np.dtype("<i8")
        self._text: tuple[Any, Any] | None = None  # a text column's lengths, bytes

    def start_column(self, name: str) -> None:
        self._fold_text()
        self._sha.update(name.encode() + b"\n")
        if name == GROUP_NAME:
            self._text = (hashlib.sha256(), hashlib.sha256())
        else:
            self._dtype = np.dtype(_DTYPES[name])

    def update(self, values: np.ndarray) -> None:
        """The next values of the current column (hashed through the buffer, not copied)."""
        self._sha.update(np.ascontiguousarray(values, dtype=self._dtype))

    def update_text(self, chunk: Any) -> None:
        """The next values of the current (string, no nulls) column: their byte lengths and
        their bytes, each hashed on its own so any chunking gives the same digest."""
        assert self._text is not None
        chunk = chunk.cast("large_string")
        offsets = np.frombuffer(chunk.buffers()[1], np.int64)[
            chunk.offset : chunk.offset + len(chunk) + 1
        ]
        data = chunk.buffers()[2]
        self._text[0].update(np.diff(offsets).astype("<i8"))
        if data is not None and len(offsets):
            self._text[1].update(memoryview(data)[int(offsets[0]) : int(offsets[-1])])

    def _fold_text(self) -> None:
        if self._text is not None:
            self._sha.update(self._text[0].digest() + self._text[1].digest())
            self._text = None

    def finish(self, metadata: dict[str, Any]) -> str:
        self._fold_text()
        body = {k: v for k, v in metadata.items() if k != CHECKSUM_FIELD}
        self._sha.update(meta_bytes(body)[META_KEY])
        return self._sha.hexdigest()


def seal(table: pa.Table, metadata: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` as it is stored (a JSON round trip) with its ``checksum`` field for ``table``."""
    body = json.loads(
        meta_bytes({k: v for k, v in metadata.items() if k != CHECKSUM_FIELD})[META_KEY]
    )
    return {**body, CHECKSUM_FIELD: {"algorithm": "sha256", "digest": content_digest(table, body)}}


def write_manifest(path: str | os.PathLike[str], table: pa.Table, metadata: dict[str, Any]) -> Path:
    """Write ``table`` with ``metadata`` (sealed by :func:`seal`) under key ``cld_lake``,
    atomically and with Parquet page checksums.

    Temp files that killed writers of ``path`` left behind are deleted first.
    """
    import pyarrow.parquet as pq

    from cld_lake._io import atomic_output

    path = Path(path)
    named = GROUP_NAME in table.column_names
    schema = manifest_schema(named)
    table = table.select(schema.names).cast(schema)
    sealed = seal(table, metadata)
    footer = {**meta_bytes(sealed), CHECKSUM_KEY: sealed[CHECKSUM_FIELD]["digest"].encode()}
    stored = table.cast(_with_field_ids(schema)).replace_schema_metadata(footer)
    with atomic_output(path) as tmp:  # pyarrow writes and flushes one row group at a time
        pq.write_table(stored, tmp, row_group_size=ROW_GROUP_ROWS, write_page_checksum=True)
    return path


# --- reading -----------------------------------------------------------------------------
def load_manifest(path: str | os.PathLike[str] | Manifest) -> Manifest:
    """Read a manifest written by ``cld-lake select`` (or by :func:`write_manifest`).

    Verifies the Parquet page checksums and the content checksum (columns and metadata), then
    checks the columns, their types, nulls and that no sample id repeats. A damaged file
    raises :class:`~cld_lake.errors.CorruptFileError`; any other problem
    :class:`~cld_lake.errors.BadInputError`. Manifests written before checksums existed (no
    ``checksum`` in the metadata, no ``cld_lake.checksum`` footer key, no field ids), or by
    other tools, have nothing to verify: they load as before, with the other checks.

    Examples
    --------
    >>> m = cld_lake.load_manifest("coreset.parquet")  # doctest: +SKIP
    >>> m.sample_ids[:3], m.metadata["score"]  # doctest: +SKIP
    """
    if isinstance(path, Manifest):
        return path
    p = _manifest_path(path)
    pf = _open_parquet(p)
    schema = pf.schema_arrow
    footer = schema.metadata or {}
    metadata = read_meta(schema)
    expected = _recorded_digest(p, schema, metadata)
    refuse = BadInputError if expected is None else CorruptFileError
    if META_KEY in footer and not metadata and footer[META_KEY].strip() != b"{}":
        raise refuse(f"manifest {p}: the {META_KEY.decode()} metadata is not a JSON object")
    _check_columns(p, schema, refuse)
    digest = _ContentDigest(_row_count(pf))
    columns = [_read_column(pf, p, name, digest, refuse) for name in COLUMNS]
    named = GROUP_NAME in schema.names
    if named:
        columns.append(_read_text_column(pf, p, GROUP_NAME, digest, refuse))
    if expected is not None and digest.finish(metadata) != expected:
        raise CorruptFileError(
            f"manifest {p}: checksum mismatch, its content changed after it was written; "
            "write it again with `cld-lake select`"
        )
    import pyarrow as pa

    manifest = Manifest(pa.Table.from_arrays(columns, schema=manifest_schema(named)), metadata, p)
    repeated = _repeated_ids(manifest.sample_ids)
    if repeated:
        raise refuse(f"manifest {p}: {repeated} sample id(s) appear more than once")
    return manifest


def _check_columns(p: Path, schema: pa.Schema, refuse: type[Exception]) -> None:
    """The four columns are there, integer (``score``: floating), by the footer alone."""
    import pyarrow as pa

    missing = [c for c in COLUMNS if c not in schema.names]
    if missing:
        raise refuse(
            f"manifest {p}: missing column(s) {', '.join(missing)}; a manifest has {', '.join(COLUMNS)}"
        )
    for name in COLUMNS:
        kind = schema.field(name).type
        want_float = name == "score"
        ok = pa.types.is_floating(kind) if want_float else pa.types.is_integer(kind)
        if not ok:
            raise refuse(
                f"manifest {p}: column {name} is {kind}, expected {'float64' if want_float else 'int64'}"
            )


def _read_column(
    pf: pq.ParquetFile, p: Path, name: str, digest: _ContentDigest, refuse: type[Exception]
) -> pa.Array:
    """Column ``name`` as one contiguous int64 / float64 array, read a row group at a time
    (page checksums verified) into the array it ends in, and fed to ``digest`` on the way.

    Integer columns may hold no nulls; a null score stays null (NaN in the digest).
    """
    import pyarrow as pa

    kind = manifest_schema().field(name).type
    values = np.empty(_row_count(pf), dtype=_DTYPES[name])
    null_mask: np.ndarray | None = None
    nulls, at = 0, 0
    digest.start_column(name)
    for group in range(pf.metadata.num_row_groups):
        for chunk in _read_row_group(pf, p, group, name).chunks:
            nulls += chunk.null_count
            if nulls and name != "score":
                continue  # counted for the message, nothing more to convert
            try:
                chunk = chunk.cast(kind, safe=True)
            except (pa.ArrowInvalid, OverflowError) as exc:
                raise refuse(f"manifest {p}: values out of int64 range ({one_line(exc)})") from exc
            if at + len(chunk) > len(values):
                raise CorruptFileError(_row_count_damaged(p))
            piece = values[at : at + len(chunk)]
            piece[:] = chunk.to_numpy(zero_copy_only=False)
            if chunk.null_count:
                if null_mask is None:
                    null_mask = np.zeros(len(values), dtype=bool)
                null_mask[at : at + len(chunk)] = chunk.is_null().to_numpy(zero_copy_only=False)
            digest.update(piece)
            at += len(chunk)
    if nulls and name != "score":
        raise refuse(f"manifest {p}: column {name} has {nulls} null value(s)")
    if at != len(values):
        raise CorruptFileError(_row_count_damaged(p))
    return pa.array(values, type=kind, mask=null_mask)  # wraps ``values`` when there is no mask


def _read_text_column(
    pf: pq.ParquetFile, p: Path, name: str, digest: _ContentDigest, refuse: type[Exception]
) -> pa.Array:
    """String column ``name`` (no nulls), read a row group at a time and fed to ``digest``."""
    import pyarrow as pa

    kind = pf.schema_arrow.field(name).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise refuse(f"manifest {p}: column {name} is {kind}, expected string")
    digest.start_column(name)
    parts = []
    for group in range(pf.metadata.num_row_groups):
        for chunk in _read_row_group(pf, p, group, name).chunks:
            if chunk.null_count:
                raise refuse(f"manifest {p}: column {name} has {chunk.null_count} null value(s)")
            chunk = chunk.cast(pa.string())
            digest.update_text(chunk)
            parts.append(chunk)
    column = pa.concat_arrays(parts) if parts else pa.array([], pa.string())
    if len(column) != _row_count(pf):
        raise CorruptFileError(_row_count_damaged(p))
    return column


def _row_count(pf: pq.ParquetFile) -> int:
    """Rows by the row groups' own counts (what a whole-file read returns)."""
    return sum(pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups))


def _row_count_damaged(p: Path) -> str:
    return (
        f"manifest {p}: damaged Parquet file (row counts disagree with the pages); write it again"
    )


def _repeated_ids(ids: np.ndarray) -> int:
    """How many ids repeat an earlier one (one sorted copy of the ids, no unique array)."""
    ordered = np.sort(ids)
    return int(np.count_nonzero(ordered[1:] == ordered[:-1]))


def _manifest_path(path: object) -> Path:
    """``path`` as an existing file's Path, or a one-line error."""
    if not isinstance(path, str | os.PathLike) or isinstance(path, bytes):
        raise BadInputError(
            f"manifest: expected a path (str or os.PathLike) or a Manifest, got {type(path).__name__}"
        )
    if isinstance(path, str) and not path.strip():
        raise BadInputError("manifest: empty path; give the .parquet file `cld-lake select` wrote")
    p = Path(path)
    if not p.exists():
        raise InputFileNotFoundError(
            f"manifest {p}: no such file; write one with `cld-lake select`"
        )
    if p.is_dir():
        raise BadInputError(f"manifest {p}: is a directory; give the manifest's .parquet file")
    return p


def _open_parquet(p: Path) -> pq.ParquetFile:
    """The file's footer, opened to read with page checksums verified.

    A file that starts as Parquet does (its magic bytes) but whose footer cannot be read is
    damaged (:class:`CorruptFileError`): truncated (the footer, at the end, is the first thing
    lost), or a byte of the footer or its closing magic changed. A file that does not start as
    Parquet is not a manifest (:class:`BadInputError`), nor is a readable Parquet file without
    a manifest's columns (refused by the checks after this one).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(p, page_checksum_verification=True)
        pf.schema_arrow  # noqa: B018  (a footer whose schema fails to convert is damaged too)
    except (pa.ArrowException, OSError, ValueError, MemoryError) as exc:
        if _starts_as_parquet(p):
            raise CorruptFileError(
                f"manifest {p}: damaged or truncated Parquet file ({one_line(exc)}); write it "
                "again with `cld-lake select`"
            ) from exc
        raise BadInputError(f"manifest {p}: not a readable Parquet file ({one_line(exc)})") from exc
    return pf


def _read_row_group(pf: pq.ParquetFile, p: Path, group: int, name: str) -> pa.ChunkedArray:
    """One column of one row group; a page that fails to decode or its CRC is damage."""
    import pyarrow as pa

    try:
        return pf.read_row_group(group, columns=[name]).column(0)
    except (pa.ArrowException, OSError, ValueError, MemoryError) as exc:
        raise CorruptFileError(
            f"manifest {p}: damaged Parquet file ({one_line(exc)}); write it again"
        ) from exc


def _with_field_ids(schema: pa.Schema) -> pa.Schema:
    """``schema`` with Parquet field ids 1, 2, ... (the mark of a checksummed manifest)."""
    import pyarrow as pa

    return pa.schema(
        [f.with_metadata({FIELD_ID: str(i).encode()}) for i, f in enumerate(schema, start=1)]
    )


def _recorded_digest(p: Path, schema: pa.Schema, metadata: dict[str, Any]) -> str | None:
    """The recorded content digest; None for a manifest from before checksums.

    A checksummed file holds three marks (the JSON field, the footer key, the field ids); a
    file holding some but not all of them was damaged.
    """
    in_json = metadata.get(CHECKSUM_FIELD)
    in_footer = (schema.metadata or {}).get(CHECKSUM_KEY)
    field_ids = any(FIELD_ID in (f.metadata or {}) for f in schema)
    if in_json is None and in_footer is None and not field_ids:
        return None
    digest = in_json.get("digest") if isinstance(in_json, dict) else None
    algorithm = in_json.get("algorithm") if isinstance(in_json, dict) else None
    if in_footer is None or algorithm != "sha256" or digest != in_footer.decode(errors="replace"):
        raise CorruptFileError(
            f"manifest {p}: its checksum record is damaged; write it again with `cld-lake select`"
        )
    return str(digest)


def _starts_as_parquet(p: Path) -> bool:
    """Does ``p`` begin with Parquet's magic bytes (whatever became of its end)?"""
    with open(p, "rb") as fh:
        return fh.read(4) == b"PAR1"
