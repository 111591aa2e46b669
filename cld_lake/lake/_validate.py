"""Input checks shared by the writer, the importers and ``verify``.

One place for the rules a split's inputs obey (run, split and score names, channels and their
dtypes, labels, unique ids) and for the small counts taken on the way in (duplicates, NaN/inf,
the ids fingerprint). Messages name what was found and how to fix it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import NoReturn

import numpy as np

from cld_lake.errors import BadInputError, CldLakeError, ScoringError, argument
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


# --- names ---------------------------------------------------------------------------------
#: The longest run, split or score name. A run and a split name are each one component of the
#: path of every file of the split (``runs/<run>/splits/<split>/segments/...``) and a score
#: name is a SQL column: 64 characters keep every path well inside what each store holds
#: (255 bytes per file name on disk, 1,024 per object key) whatever the lake's own path.
MAX_NAME_LENGTH = 64
#: Columns of the scores table that are not scores.
RESERVED_SCORE_NAMES = ("sample_id", "label")
# Run and split names are directory names: no '/', and no leading '.' or '-' (so never '.',
# '..', a hidden or temporary file of the lake, or an option on a command line).
_PATH_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_PATH_RULE = "letters, digits, '_', '-' or '.', not starting with '.' or '-'"
# A score name is a SQL column of the ``scores`` view: a plain identifier.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_IDENTIFIER_RULE = "letters, digits and '_', not starting with a digit"
_SHOWN = 32  # characters of a refused name quoted in its error


def _refuse(kind: str, name: object, param: str, rule: str, error: type[CldLakeError]) -> NoReturn:
    if isinstance(name, str) and len(name) > _SHOWN:
        shown = f"{argument(param, name[:_SHOWN] + '...')} ({len(name)} characters)"
    else:
        shown = argument(param, name)
    raise error(f"{shown}: a {kind} name is {rule}")


def _check_name(
    kind: str,
    name: object,
    param: str,
    pattern: re.Pattern[str],
    rule: str,
    example: str,
    error: type[CldLakeError] = BadInputError,
) -> str:
    full = f"1 to {MAX_NAME_LENGTH} characters: {rule} (e.g. {example})"
    if not isinstance(name, str) or not pattern.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        _refuse(kind, name, param, full, error)
    return name


def check_split_name(split: str, param: str = "split") -> str:
    """``split`` when it is a usable split name, else :class:`BadInputError` naming ``param``
    (the Python parameter; the CLI spells its flag) and the rule."""
    return _check_name("split", split, param, _PATH_NAME, _PATH_RULE, "train, val, test")


def check_run_name(run: str | None, param: str = "run") -> str:
    """The run ``run`` names (None: the default run), checked as split names are."""
    if run is None:
        return fmt.DEFAULT_RUN
    return _check_name("run", run, param, _PATH_NAME, _PATH_RULE, "seed1, resnet18")


def check_score_name(name: str, param: str = "name") -> str:
    """``name`` when it may name a stored score (a plain identifier of at most
    :data:`MAX_NAME_LENGTH` characters, not a column of the table itself), else
    :class:`ScoringError`."""
    rule = f"{_IDENTIFIER_RULE}, not {' or '.join(RESERVED_SCORE_NAMES)}"
    _check_name("score", name, param, _IDENTIFIER, rule, "cld, cld_first45", ScoringError)
    if name.lower() in RESERVED_SCORE_NAMES:
        raise ScoringError(
            f"{argument(param, name)}: {' and '.join(RESERVED_SCORE_NAMES)} are columns of the "
            f"scores table, not scores; choose another name (e.g. cld, cld_first45)"
        )
    return name


def check_case_clash(kind: str, name: str, existing: Iterable[str], param: str) -> None:
    """A new ``name`` must not differ from an existing one only in case: two such runs or splits
    would share one directory on a case-insensitive file system (macOS, Windows), and two
    such scores one SQL column (DuckDB's names ignore case)."""
    for other in existing:
        if other != name and other.casefold() == name.casefold():
            raise BadInputError(
                f"{argument(param, name)}: the lake already has the {kind} {other!r}, a name "
                f"that differs only in case; use {other!r} or another name"
            )


def check_new_split(runs: Mapping[str, Sequence[str]], run: str, split: str) -> None:
    """The run and split a writer is about to create clash with no listed one (``runs``:
    :func:`~cld_lake.lake._format.listed_runs`) by case alone."""
    check_case_clash("run", run, runs, "run")
    check_case_clash("split", split, runs.get(run, ()), "split")


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
    """Labels must be class indices ``0..num_classes-1`` (``0..MAX_CLASSES-1`` when unknown)."""
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
    if hi >= MAX_CLASSES:
        raise BadInputError(
            f"{what}: label {hi} is beyond the {MAX_CLASSES:,} classes a lake holds; labels must "
            "be class indices 0..C-1 (remap sparse labels to dense indices first)"
        )


# --- type rules of every importer ------------------------------------------------------------
# One set of rules for .npy, long, wide and columns Parquet (the .npy importer's rules are the
# reference): ids and labels are integers (never floats, even whole ones like 1.0, never bool,
# never strings); ids fit in int64; labels are class indices; loss and margin are numbers (not
# bool); correct is bool or the integers 0/1. Each ``as_*`` names ``what`` (the argument and
# file) in its one-line error.

_INT64_MAX = int(np.iinfo(np.int64).max)
_CHANNEL_KINDS = {"loss": "fiu", "correct": "biu", "margin": "fiu", "el2n": "fiu"}
_CHANNEL_RULES = {
    "loss": "numbers (float or int)",
    "correct": "bool (or the integers 0/1)",
    "margin": "numbers (float or int)",
    "el2n": "numbers (float or int)",
}


def type_name(values: np.ndarray) -> str:
    """The dtype of ``values`` for a message; for an object array, its elements' Python type."""
    if values.dtype.kind != "O":
        return str(values.dtype)
    for v in values.reshape(-1)[:1000]:
        if v is not None:
            return f"object ({type(v).__name__} values)"
    return "object"


def _require_integers(values: np.ndarray, what: str, role: str, type_label: str = "") -> None:
    if values.dtype.kind not in "iu":
        raise BadInputError(
            f"{what}: dtype {type_label or type_name(values)} is not allowed for {role}; {role} must be integers "
            "(int8..int64 or uint8..uint64; floats, bools and strings are refused)"
        )
    if values.dtype.kind == "u" and values.size and int(values.max()) > _INT64_MAX:
        raise BadInputError(
            f"{what}: {role[:-1]} {int(values.max())} does not fit in int64; "
            f"{role} must be below 2**63"
        )


def as_ids(values: np.ndarray, what: str, type_label: str = "") -> np.ndarray:
    """Unique int64 ids from a 1-D integer array (``uint64`` values >= 2**63 are refused).

    ``type_label`` names the input's type in the error instead of the array's dtype (e.g. the
    Parquet column's type).
    """
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise BadInputError(f"{what}: shape {arr.shape}; ids are a 1-D array")
    _require_integers(arr, what, "ids", type_label)
    out = arr.astype(np.int64)
    dups = count_duplicates(out)
    if dups:
        raise BadInputError(f"{what}: {dups} duplicate ids; every id must be unique")
    return out


def as_checkpoint_ids(values: np.ndarray, what: str, type_label: str = "") -> np.ndarray:
    """Unique, non-negative int64 checkpoint ids (see :func:`as_ids`)."""
    out = as_ids(values, what, type_label)
    if out.size and int(out.min()) < 0:
        raise BadInputError(f"{what}: checkpoint id {int(out.min())} is negative; ids must be >= 0")
    return out


def as_labels(
    values: np.ndarray, what: str, num_classes: int | None = None, type_label: str = ""
) -> np.ndarray:
    """int64 class indices from an integer array, checked by :func:`check_labels`.

    Float labels are refused even when whole (1.0), as the ``.npy`` importer always did: a
    float label column usually means a join or a cast went wrong upstream.
    """
    arr = np.asarray(values)
    if arr.dtype.kind == "f":
        nan = np.isnan(arr)
        if nan.any():
            raise BadInputError(
                f"{what}: label is NaN in {int(nan.sum())} rows (first at row "
                f"{int(np.flatnonzero(nan.reshape(-1))[0])}); labels must be integer class "
                "indices 0..C-1"
            )
    _require_integers(arr, what, "labels", type_label)
    out = arr.astype(np.int64, copy=False)
    check_labels(out, num_classes, what)
    return out


def check_channel_dtype(channel: str, dtype: np.dtype, what: str, type_label: str = "") -> None:
    """The input dtype of ``channel`` must follow its rule (``type_label`` names it instead)."""
    if np.dtype(dtype).kind not in _CHANNEL_KINDS[channel]:
        raise BadInputError(
            f"{what}: dtype {type_label or dtype} is not allowed for {channel}; "
            f"{channel} must be {_CHANNEL_RULES[channel]}"
        )


def check_correct_values(block: np.ndarray, what: str) -> None:
    """Integer ``correct`` values must be 0 or 1 (bool needs no check)."""
    if block.dtype.kind in "iu" and block.size:
        bad = (block != 0) & (block != 1)
        if bad.any():
            raise BadInputError(
                f"{what}: correct holds {block[bad].reshape(-1)[0]}; correct must be bool "
                "(or the integers 0/1)"
            )


def as_loss(values: np.ndarray, what: str) -> np.ndarray:
    """``values`` (any shape, not copied) when they may be stored as losses."""
    check_channel_dtype("loss", values.dtype, what, type_name(values))
    return values


def as_margin(values: np.ndarray, what: str) -> np.ndarray:
    """``values`` (not copied) when they may be stored as margins."""
    check_channel_dtype("margin", values.dtype, what, type_name(values))
    return values


def as_correct(values: np.ndarray, what: str, block_rows: int = 65536) -> np.ndarray:
    """``values`` (not copied) when they are bool or 0/1 integers (checked in row blocks, so a
    memory-mapped file is never read whole)."""
    check_channel_dtype("correct", values.dtype, what, type_name(values))
    if values.dtype.kind in "iu":
        for a in range(0, len(values), block_rows):
            check_correct_values(np.asarray(values[a : a + block_rows]), what)
    return values


def arrow_dtype(arrow_type: object) -> tuple[np.dtype, str]:
    """The NumPy dtype a Parquet/Arrow column converts to, and its name for messages.

    Types without a NumPy number dtype (strings, decimals, nested, dictionaries) map to
    ``object`` so the ``as_*`` rules refuse them with the Arrow name.
    """
    import pyarrow as pa

    assert isinstance(arrow_type, pa.DataType)
    if (
        pa.types.is_integer(arrow_type)
        or pa.types.is_floating(arrow_type)
        or pa.types.is_boolean(arrow_type)
    ):
        dtype = np.dtype(arrow_type.to_pandas_dtype())
        return dtype, str(dtype)  # NumPy's name: the same words as for a .npy input
    return np.dtype(object), str(arrow_type)


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
