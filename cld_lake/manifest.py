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
identity, creation time and package version.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cld_lake.errors import BadInputError, InputFileNotFoundError

COLUMNS = ("sample_id", "label", "score", "rank")
METADATA_KEY = b"cld_lake"
MANIFEST_KIND = "cld_lake.manifest"
MANIFEST_VERSION = 1


def manifest_schema() -> Any:
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

    table: Any
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

    def to_polars(self) -> Any:
        import polars as pl

        return pl.from_arrow(self.table)

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
) -> Any:
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


def write_manifest(path: str | os.PathLike[str], table: Any, metadata: dict[str, Any]) -> Path:
    """Write ``table`` with ``metadata`` under key ``cld_lake``, atomically."""
    import pyarrow.parquet as pq

    from cld_lake._io import atomic_path

    path = Path(path)
    table = table.replace_schema_metadata(
        {METADATA_KEY: json.dumps(metadata, sort_keys=True, default=str)}
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def load_manifest(path: str | os.PathLike[str] | Manifest) -> Manifest:
    """Read a manifest written by ``cld-lake select`` (or by :func:`write_manifest`).

    Checks the columns and their types and that no sample id repeats; raises
    :class:`~cld_lake.errors.BadInputError` naming the problem otherwise.

    Examples
    --------
    >>> m = cld_lake.load_manifest("coreset.parquet")  # doctest: +SKIP
    >>> m.sample_ids[:3], m.metadata["score"]  # doctest: +SKIP
    """
    if isinstance(path, Manifest):
        return path
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.exists():
        raise InputFileNotFoundError(
            f"manifest {p}: no such file; write one with `cld-lake select`"
        )
    try:
        table = pq.ParquetFile(p).read()
    except (pa.ArrowException, OSError) as exc:
        raise BadInputError(
            f"manifest {p}: not a readable Parquet file ({str(exc).splitlines()[0]})"
        ) from exc
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise BadInputError(
            f"manifest {p}: missing column(s) {', '.join(missing)}; a manifest has {', '.join(COLUMNS)}"
        )
    for name in COLUMNS:
        kind = table.schema.field(name).type
        want_float = name == "score"
        ok = pa.types.is_floating(kind) if want_float else pa.types.is_integer(kind)
        if not ok:
            raise BadInputError(
                f"manifest {p}: column {name} is {kind}, expected {'float64' if want_float else 'int64'}"
            )
    raw = (table.schema.metadata or {}).get(METADATA_KEY, b"{}")
    try:
        metadata = json.loads(raw)
    except ValueError as exc:
        raise BadInputError(
            f"manifest {p}: the {METADATA_KEY.decode()} metadata is not JSON"
        ) from exc
    table = table.select(list(COLUMNS)).cast(manifest_schema().remove_metadata(), safe=True)
    manifest = Manifest(table, metadata if isinstance(metadata, dict) else {}, p)
    ids = manifest.sample_ids
    if len(np.unique(ids)) != len(ids):
        raise BadInputError(
            f"manifest {p}: {len(ids) - len(np.unique(ids))} sample id(s) appear more than once"
        )
    return manifest
