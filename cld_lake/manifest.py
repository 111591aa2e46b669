"""Coreset manifests: the Parquet file a selection writes and training code reads.

Schema (one row per selected sample, sorted by ``label`` then ``rank``):

========== ======= ==========================================================
sample_id  int64   the sample's id in the lake
label      int64   its class
score      float64 the score it was ranked by (NaN for an unscored random pick)
rank       int64   1 = best within its class (by the selection's order)
========== ======= ==========================================================

The Parquet key-value metadata ``cld_lake`` holds JSON provenance: score name, method and
its parameters (checkpoints used), selection rule, fraction or count, shortfall, lake
identity, creation time and package version, and ``checksum``: a SHA-256 of the four columns
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
from cld_lake.errors import BadInputError, CorruptFileError, InputFileNotFoundError

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

COLUMNS = ("sample_id", "label", "score", "rank")
MANIFEST_KIND = "cld_lake.manifest"
MANIFEST_VERSION = 1
CHECKSUM_FIELD = "checksum"  # in the cld_lake JSON: {"algorithm": "sha256", "digest": hex}
CHECKSUM_KEY = b"cld_lake.checksum"  # the same hex digest, a second footer entry
FIELD_ID = b"PARQUET:field_id"
_DTYPES = {"sample_id": "<i8", "label": "<i8", "score": "<f8", "rank": "<i8"}


def manifest_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("sample_id", pa.int64(), nullable=False),
            pa.field("label", pa.int64(), nullable=False),
            pa.field("score", pa.float64()),
            pa.field("rank", pa.int64(), nullable=False),
        ]
    )


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
    """The manifest table with the contract's schema, sorted by label then rank."""
    import pyarrow as pa

    ids = np.asarray(sample_ids, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    ranks = np.asarray(ranks, dtype=np.int64)
    order = np.lexsort((ranks, labels))
    return pa.Table.from_arrays(
        [
            pa.array(ids[order]),
            pa.array(labels[order]),
            pa.array(np.asarray(scores, dtype=np.float64)[order]),
            pa.array(ranks[order]),
        ],
        schema=manifest_schema(),
    )


# --- checksums ---------------------------------------------------------------------------
def content_digest(table: pa.Table, metadata: dict[str, Any]) -> str:
    """SHA-256 (hex) of a manifest's content.

    Covers the row count, each column's values as little-endian int64 / float64 in row
    order, and the ``cld_lake`` JSON as :func:`cld_lake._meta.meta_bytes` encodes it, without
    its ``checksum`` field.
    """
    digest = hashlib.sha256(b"cld_lake.manifest\n")
    digest.update(table.num_rows.to_bytes(8, "little"))
    for name, dtype in _DTYPES.items():
        values = table.column(name).to_numpy(zero_copy_only=False)
        digest.update(name.encode() + b"\n")
        digest.update(np.ascontiguousarray(values, dtype=dtype).tobytes())
    body = {k: v for k, v in metadata.items() if k != CHECKSUM_FIELD}
    digest.update(meta_bytes(body)[META_KEY])
    return digest.hexdigest()


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

    from cld_lake._io import atomic_path, remove_dead_temps

    path = Path(path)
    table = table.select(list(COLUMNS)).cast(manifest_schema())
    sealed = seal(table, metadata)
    footer = {**meta_bytes(sealed), CHECKSUM_KEY: sealed[CHECKSUM_FIELD]["digest"].encode()}
    remove_dead_temps(path)
    with atomic_path(path) as tmp:
        stored = table.cast(_with_field_ids(manifest_schema())).replace_schema_metadata(footer)
        pq.write_table(stored, tmp, write_page_checksum=True)
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
    import pyarrow as pa

    p = _manifest_path(path)
    table = _read_table(p)
    footer = table.schema.metadata or {}
    metadata = read_meta(table.schema)
    expected = _recorded_digest(p, table.schema, metadata)
    refuse = BadInputError if expected is None else CorruptFileError
    if META_KEY in footer and not metadata and footer[META_KEY].strip() != b"{}":
        raise refuse(f"manifest {p}: the {META_KEY.decode()} metadata is not a JSON object")
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise refuse(
            f"manifest {p}: missing column(s) {', '.join(missing)}; a manifest has {', '.join(COLUMNS)}"
        )
    for name in COLUMNS:
        kind = table.schema.field(name).type
        want_float = name == "score"
        ok = pa.types.is_floating(kind) if want_float else pa.types.is_integer(kind)
        if not ok:
            raise refuse(
                f"manifest {p}: column {name} is {kind}, expected {'float64' if want_float else 'int64'}"
            )
        if not want_float and table.column(name).null_count:
            raise refuse(
                f"manifest {p}: column {name} has {table.column(name).null_count} null value(s)"
            )
    try:
        table = table.select(list(COLUMNS)).cast(manifest_schema().remove_metadata(), safe=True)
    except (pa.ArrowInvalid, OverflowError) as exc:
        raise refuse(f"manifest {p}: values out of int64 range ({_first_line(exc)})") from exc
    if expected is not None and content_digest(table, metadata) != expected:
        raise CorruptFileError(
            f"manifest {p}: checksum mismatch, its content changed after it was written; "
            "write it again with `cld-lake select`"
        )
    manifest = Manifest(table, metadata, p)
    ids = manifest.sample_ids
    if len(np.unique(ids)) != len(ids):
        raise refuse(
            f"manifest {p}: {len(ids) - len(np.unique(ids))} sample id(s) appear more than once"
        )
    return manifest


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


def _read_table(p: Path) -> pa.Table:
    """The whole file, page checksums verified.

    A file that is Parquet by its magic bytes but fails to decode is damaged
    (:class:`CorruptFileError`); anything else is not a manifest (:class:`BadInputError`).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(p, page_checksum_verification=True)
    except (pa.ArrowException, OSError, ValueError, MemoryError) as exc:
        if _has_parquet_magic(p):
            raise CorruptFileError(
                f"manifest {p}: damaged Parquet file ({_first_line(exc)}); write it again"
            ) from exc
        raise BadInputError(
            f"manifest {p}: not a readable Parquet file ({_first_line(exc)})"
        ) from exc
    try:
        return pf.read()
    except (pa.ArrowException, OSError, ValueError, MemoryError) as exc:
        raise CorruptFileError(
            f"manifest {p}: damaged Parquet file ({_first_line(exc)}); write it again"
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


def _has_parquet_magic(p: Path) -> bool:
    size = p.stat().st_size
    if size < 8:
        return False
    with open(p, "rb") as fh:
        head = fh.read(4)
        fh.seek(size - 4)
        return head == b"PAR1" and fh.read(4) == b"PAR1"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
