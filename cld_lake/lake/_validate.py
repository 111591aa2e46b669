"""Input checks shared by the writer, the importers and ``verify``.

One place for the rules a split's inputs obey (split names, channels and their dtypes, labels,
unique ids) and for the small counts taken on the way in (duplicates, NaN/inf, the ids
fingerprint). Messages name what was found and how to fix it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence

import numpy as np

from cld_lake.errors import BadInputError
from cld_lake.lake import _format as fmt


# The most classes a lake holds. Scoring keeps a (classes x checkpoints) float64 reference in
# memory and the class counts are a table of this many rows: 2**20 classes x 90 checkpoints is
# 755 MB, the most one scoring process should hold. Larger label spaces are refused up front.
MAX_CLASSES = 1 << 20


def check_num_classes(num_classes: int, what: str = "--num-classes") -> int:
    """``num_classes`` when 1 <= it <= :data:`MAX_CLASSES`, else :class:`BadInputError`."""
    if not 1 <= int(num_classes) <= MAX_CLASSES:
        raise BadInputError(
            f"{what} {num_classes}: a lake holds 1 to {MAX_CLASSES:,} classes; labels must be "
            f"class indices 0..C-1 (remap sparse labels to dense indices first)"
        )
    return int(num_classes)


def check_split_name(split: str) -> str:
    """``split`` when it is a usable directory name, else :class:`BadInputError`."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", split or ""):
        raise BadInputError(
            f"split name {split!r}: use letters, digits, '_', '-' or '.' (e.g. train, val, test)"
        )
    return split


def check_channels(channels: Mapping[str, str]) -> dict[str, str]:
    """Channel -> stored dtype, checked against :data:`_format.CHANNEL_DTYPES`, in channel order."""
    if "loss" not in channels:
        raise BadInputError("every split stores a 'loss' channel; none was given")
    out = {}
    for name, dtype in channels.items():
        if name not in fmt.CHANNEL_DTYPES:
            raise BadInputError(f"unknown channel {name!r}; channels are {', '.join(fmt.CHANNELS)}")
        dtype = str(np.dtype(dtype))
        if dtype not in fmt.CHANNEL_DTYPES[name]:
            raise BadInputError(
                f"channel {name!r} cannot be stored as {dtype}; choose one of {', '.join(fmt.CHANNEL_DTYPES[name])}"
            )
        out[name] = dtype
    return {c: out[c] for c in fmt.CHANNELS if c in out}


def default_channels(names: Sequence[str]) -> dict[str, str]:
    """The default stored dtype of each channel in ``names``, in channel order."""
    return {c: fmt.CHANNEL_DTYPES[c][0] for c in fmt.CHANNELS if c in names}


def check_labels(labels: np.ndarray, num_classes: int | None, what: str) -> None:
    """Labels must be class indices ``0..num_classes-1`` (any non-negative when unknown)."""
    if labels.size == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0:
        raise BadInputError(f"{what}: label {lo} is negative; labels must be class indices 0..C-1")
    if num_classes is not None and hi >= num_classes:
        raise BadInputError(
            f"{what}: label {hi} is outside the lake's {num_classes} classes (0..{num_classes - 1}); "
            "fix the labels or use a new lake with more classes"
        )


def count_duplicates(values: np.ndarray) -> int:
    """How many entries repeat an earlier one (a sort, not a hash set: fast for int64)."""
    values = np.asarray(values)
    if len(values) < 2:
        return 0
    if values[0] == 0 and values[-1] == len(values) - 1 and (np.diff(values) == 1).all():
        return 0  # the common 0..N-1
    s = np.sort(values)
    return int((s[1:] == s[:-1]).sum())


def count_nonfinite(block: np.ndarray) -> np.ndarray:
    """NaN/inf count per column (one vectorised pass when, as usual, all values are finite)."""
    if block.ndim == 1:
        block = block[:, None]
    finite = np.isfinite(block)
    if finite.all():
        return np.zeros(block.shape[1], np.int64)
    return (~finite).sum(axis=0).astype(np.int64)


def ids_digest(ids: np.ndarray) -> str:
    """Fingerprint of a split's sample ids in row order (int64 little endian, SHA-1)."""
    return hashlib.sha1(np.ascontiguousarray(ids, dtype="<i8").tobytes()).hexdigest()
