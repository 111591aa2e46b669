"""The ``cld_lake`` JSON that every Parquet file this package writes carries in its metadata.

One owner for the key, the encoding and the error: the commit record, the scores table,
manifests and exports all read and write their provenance through these functions.
"""

from __future__ import annotations

import json
from typing import Any

META_KEY = b"cld_lake"


def meta_bytes(meta: dict[str, Any]) -> dict[bytes, bytes]:
    """The Parquet key-value metadata holding ``meta`` (sorted keys: byte-stable)."""
    return {META_KEY: json.dumps(meta, sort_keys=True, default=str).encode()}


def read_meta(schema: Any) -> dict[str, Any]:
    """The ``cld_lake`` JSON of a pyarrow schema; ``{}`` when absent or not a JSON object."""
    raw = (getattr(schema, "metadata", None) or {}).get(META_KEY)
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def with_meta(table_or_schema: Any, meta: dict[str, Any]) -> Any:
    """``table_or_schema`` with its ``cld_lake`` metadata replaced by ``meta``."""
    if hasattr(table_or_schema, "replace_schema_metadata"):
        return table_or_schema.replace_schema_metadata(meta_bytes(meta))
    return table_or_schema.with_metadata(meta_bytes(meta))
