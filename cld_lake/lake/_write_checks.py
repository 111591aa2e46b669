"""The checks a write makes before anything is written: the writer's options, new checkpoint
ids, a new split's samples, metadata columns. Each raises a one-line error that says what to
do; the rules shared with the importers and readers live in :mod:`cld_lake.lake._validate`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from cld_lake.errors import BadInputError, CheckpointExistsError, LakeVersionError
from cld_lake.lake import _format as fmt
from cld_lake.lake._groups import is_named
from cld_lake.lake._validate import check_labels, check_num_classes, count_duplicates

if TYPE_CHECKING:
    from cld_lake.lake.store import Lake
    from cld_lake.storage import StorePath


def check_writer_options(lake: Lake, row_chunk: int, num_classes: int | None) -> None:
    """A writer needs a checksummed lake, a power-of-two chunk and the lake's class count."""
    if row_chunk < 1 or row_chunk & (row_chunk - 1):
        raise BadInputError(f"row_chunk must be a power of two, got {row_chunk}")
    if num_classes is not None:
        check_num_classes(num_classes)
    if not lake.checksummed:
        raise LakeVersionError(
            f"{lake.root}: lake format {lake.format_version} (no checksums) is read-only for "
            f"this cld_lake (format {fmt.FORMAT_VERSION}); export its splits with `cld-lake "
            "export` and import them into a new lake to keep recording"
        )
    if num_classes is not None and lake.num_classes is not None and num_classes != lake.num_classes:
        raise BadInputError(
            f"--num-classes {num_classes}: the lake at {lake.root} has {lake.num_classes} classes; "
            "use the same number or a new lake"
        )


def check_new_checkpoints(
    ckpts: Sequence[int], committed: np.ndarray, split: str, lake_root: StorePath
) -> None:
    """Checkpoint ids to commit: unique, >= 0, none of the ``committed`` ones."""
    arr = np.asarray(ckpts, dtype=np.int64)
    if len(np.unique(arr)) != len(arr):
        raise BadInputError(f"checkpoint ids must be unique; got {arr.tolist()[:20]}")
    if (arr < 0).any():
        raise BadInputError(f"checkpoint ids must be >= 0; got {int(arr.min())}")
    dup = np.intersect1d(arr, committed)
    if len(dup):
        raise CheckpointExistsError(
            f"checkpoint {dup[:5].tolist()} already committed in split {split!r} of {lake_root}; "
            "committed checkpoints are never overwritten: use new checkpoint ids"
        )


def check_new_samples(
    sample_ids: np.ndarray, labels: np.ndarray, num_classes: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """A new split's sample ids (unique, int64) and labels: class indices (int64), or group
    names (a string array, returned as it is: the writer checks and encodes the names)."""
    ids = np.asarray(sample_ids)
    labels = np.asarray(labels)
    if ids.ndim != 1 or labels.shape != ids.shape:
        raise BadInputError(
            f"sample ids {ids.shape} and labels {labels.shape} must be 1-D of the same length"
        )
    dups = count_duplicates(ids)
    if dups:
        raise BadInputError(f"sample ids contain {dups} duplicates; each sample id must be unique")
    if is_named(labels):
        return ids.astype(np.int64, copy=False), labels
    check_labels(labels, num_classes, "labels")
    return ids.astype(np.int64, copy=False), labels.astype(np.int64, copy=False)


def check_metadata_column(name: str, values: np.ndarray, num_samples: int) -> None:
    """A metadata column to annotate: not a reserved name, one value per sample."""
    if name in ("sample_id", "label", "group_name"):
        raise BadInputError(
            f"metadata column {name!r} is reserved (a column of the SQL views); rename it"
        )
    if values.shape != (num_samples,):
        raise BadInputError(
            f"metadata column {name!r}: expected {num_samples} values, got {values.shape}"
        )
