"""CLD without a lake: the streaming API for arrays in memory or blocks from any storage.

Two steps, each fed with row blocks (any number, any size; the results do not depend on how
the rows were cut):

1. :func:`cld_reference` streams the validation rows once into the per-class reference table.
2. :class:`CLDAccumulator` scores training rows block by block against it; memory is one block
   plus the kept scores (8 bytes per row).

Both run the package's one formula (:mod:`cld_lake.score._formula`), the same code the ``cld``
method of the lake's passes runs (:func:`cld_lake.score.compute_cld`), so every edge case is
decided the same way. See ``docs/scores.md``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from cld_lake._types import CLDReference, Fallback
from cld_lake.errors import BadInputError, ScoringError
from cld_lake.score._formula import (
    MIN_CHECKPOINTS,
    ClassSums,
    Counts,
    Reference,
    Sums,
    check_fallback,
    check_reference,
    check_usable,
    finalise,
    reference_from_sums,
)
from cld_lake.score._kernel import row_sums

FLOATS = (np.float16, np.float32, np.float64)

__all__ = ["CLDAccumulator", "CLDScores", "Reference", "cld_reference"]


@dataclass(frozen=True)
class CLDScores:
    """Scores of the rows given to a :class:`CLDAccumulator`, in order, and their counts.

    ``scores`` in ``[-1, 1]``, higher = more useful; NaN for a row with a non-finite loss
    (``nan`` of them); 0.0 for a degenerate row (``degenerate``); ``fallback`` rows were scored
    against the global validation trajectory.
    """

    scores: np.ndarray
    nan: int
    degenerate: int
    fallback: int


def cld_reference(
    val_blocks: Iterable[tuple[ArrayLike, ArrayLike]],
    num_classes: int,
    *,
    checkpoints: ArrayLike | None = None,
    fallback: Fallback | None = None,
    train_classes: ArrayLike | None = None,
    reference: CLDReference = "group",
    split: str | None = None,
) -> Reference:
    """The per-class validation reference of CLD, from blocks of validation rows.

    Parameters
    ----------
    val_blocks : iterable of (losses, labels)
        ``losses`` (m, K): one row per validation sample, one column per selected checkpoint
        (in checkpoint order; any float dtype, accumulated in float64); ``labels`` (m,) ints in
        ``[0, num_classes)``. A row with a NaN or infinite loss is left out and counted
        (``Reference.val_left_out``).
    num_classes : int
    checkpoints : (K,) ints, optional
        Ids of the K checkpoints, for the record (default ``0..K-1``). K >= 3.
    fallback : {None, "global"}
        What a class without a usable validation row gets: nothing (default: scoring a training
        row of it is an error) or the global validation trajectory (its rows are counted as
        ``fallback``).
    train_classes : ints, optional
        Classes that have training rows: when given, a class of them without validation rows
        is an error here (without ``fallback``) rather than when its first row is scored.
    reference : {"group", "class", "global"}
        What each training row is correlated with: its group's (class's) mean validation
        trajectory (``"group"``, default; ``"class"`` is an alias) or the mean trajectory of
        every validation sample, whatever its group (``"global"``). For a lake's
        ``split:NAME`` reference, pass split NAME's blocks as ``val_blocks`` with
        ``reference="global"``.
    split : str, optional
        The name of the split the blocks come from, for messages (default: validation).

    Raises
    ------
    cld_lake.errors.ScoringError
        Fewer than 3 checkpoints; classes of ``train_classes`` without validation rows (and no
        fallback); nothing finite to fall back on.
    cld_lake.errors.BadInputError
        A block of the wrong shape, dtype or label range.
    """
    check_fallback(fallback)
    check_reference(reference)
    if num_classes < 1:
        raise BadInputError(f"num_classes must be >= 1, got {num_classes}")
    ids = None if checkpoints is None else _checkpoint_ids(checkpoints)
    k = None if ids is None else len(ids)
    sums: ClassSums | None = None
    for losses, labels in val_blocks:
        loss, y = _check_block(losses, labels, k, num_classes, "validation")
        if sums is None:
            k = _check_num_checkpoints(loss.shape[1])
            sums = ClassSums(num_classes, k)
        sums.add(loss, y)
    if k is None:
        raise BadInputError(
            "val_blocks is empty: give at least one block of validation rows, or the checkpoints "
            "so that the number of loss columns is known"
        )
    if sums is None:
        sums = ClassSums(num_classes, k)
    train = None if train_classes is None else np.unique(np.asarray(train_classes, dtype=np.int64))
    ids = np.arange(k) if ids is None else ids
    return reference_from_sums(sums, ids, fallback, train, reference, split)


class CLDAccumulator:
    """Scores training rows block by block against a :func:`cld_reference`.

    Parameters
    ----------
    reference : Reference
    keep : bool
        Keep the scores for :meth:`finalise` (8 bytes per row). ``False`` keeps only the counts:
        the arrays :meth:`update` returns are then the only copy of the scores.
    threads : int
        Threads the row kernel splits each block over.

    Examples
    --------
    >>> import numpy as np
    >>> from cld_lake.score import CLDAccumulator, cld_reference
    >>> val = np.array([[3.0, 2.0, 1.5, 1.2], [2.0, 1.0, 0.5, 0.2]])
    >>> reference = cld_reference([(val, [0, 0])], num_classes=1)
    >>> acc = CLDAccumulator(reference)
    >>> acc.update([[4.0, 3.0, 2.5, 2.2], [1.0, 1.0, 1.0, 1.0]], [0, 0])
    array([1., 0.])
    >>> acc.update([[1.0, np.nan, 1.0, 1.0]], [0]).tolist()
    [nan]
    >>> result = acc.finalise()
    >>> result.scores.round(6).tolist(), result.nan, result.degenerate
    ([1.0, 0.0, nan], 1, 1)
    """

    def __init__(self, reference: Reference, *, keep: bool = True, threads: int = 1) -> None:
        self.reference = reference
        self.keep = keep
        self.threads = threads
        self._counts = Counts()
        self._parts: list[np.ndarray] = []

    @property
    def counts(self) -> Counts:
        """NaN, degenerate and fallback rows so far."""
        return Counts(self._counts.nan, self._counts.degenerate, self._counts.fallback)

    def update(self, losses: ArrayLike, labels: ArrayLike) -> np.ndarray:
        """Score a block of training rows: ``losses`` (m, K) at the reference's checkpoints,
        ``labels`` (m,). Returns the block's scores (float64, NaN where undefined)."""
        ref = self.reference
        loss, y = _check_block(losses, labels, ref.num_diffs + 1, ref.num_classes, "training")
        a, b, q = row_sums(loss, y, ref.u, self.threads)
        return self.add_sums(a, b, q, y)

    def add_sums(
        self, a: np.ndarray, b: np.ndarray, q: np.ndarray, labels: np.ndarray
    ) -> np.ndarray:
        """Score rows from their three sums (for engines that compute them, e.g. in SQL).

        ``a, b, q`` are ``sum e_t u'_t``, ``sum e_t`` and ``sum e_t^2`` per row (float64), with
        ``e_t = d_t - d_0``; ``labels`` (int64) are checked against the reference's classes.
        """
        check_usable(self.reference, labels)
        scores, counts = finalise(Sums(a, b, q), labels, self.reference)
        self._counts += counts
        if self.keep:
            self._parts.append(scores)
        return scores

    def finalise(self) -> CLDScores:
        """The scores of every row given so far, in order, and their counts."""
        if not self.keep:
            raise ScoringError(
                "finalise() returns the kept scores: create the accumulator with keep=True, or "
                "use .counts and the arrays update() returned"
            )
        scores = np.concatenate(self._parts) if self._parts else np.zeros(0, dtype=np.float64)
        c = self._counts
        return CLDScores(scores, c.nan, c.degenerate, c.fallback)


# --- input checks -------------------------------------------------------------------------
def _checkpoint_ids(checkpoints: ArrayLike) -> np.ndarray:
    ids = np.asarray(checkpoints)
    if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
        raise BadInputError(f"checkpoints: expected a 1-D array of ints, got shape {ids.shape}")
    _check_num_checkpoints(len(ids))
    return ids.astype(np.int64)


def _check_num_checkpoints(k: int) -> int:
    if k < MIN_CHECKPOINTS:
        raise ScoringError(
            f"CLD needs at least {MIN_CHECKPOINTS} checkpoints (loss columns); got {k}: "
            "record or pass more checkpoints"
        )
    return k


def _check_block(
    losses: ArrayLike, labels: ArrayLike, k: int | None, num_classes: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """A block as (float losses (m, K), int64 labels (m,)), or a BadInputError saying why not."""
    loss = np.asarray(losses)
    if loss.ndim != 2:
        raise BadInputError(
            f"{what} losses: expected a 2-D block (rows, checkpoints), got shape {loss.shape}"
        )
    if loss.dtype not in FLOATS:
        if loss.size and loss.dtype.kind not in "iuf":
            raise BadInputError(f"{what} losses: expected floats, got dtype {loss.dtype}")
        loss = loss.astype(np.float64)
    if k is not None and loss.shape[1] != k:
        raise BadInputError(
            f"{what} losses: the block has {loss.shape[1]} columns, expected {k} (one per checkpoint)"
        )
    y = np.asarray(labels)
    if y.shape != (loss.shape[0],) or (y.size and y.dtype.kind not in "iu"):
        raise BadInputError(
            f"{what} labels: expected {loss.shape[0]} ints (one per row), got shape {y.shape} "
            f"dtype {y.dtype}"
        )
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise BadInputError(
            f"{what} labels: values {int(y.min())}..{int(y.max())} outside 0..{num_classes - 1} "
            "(num_classes); pass the right num_classes"
        )
    return loss, y.astype(np.int64, copy=False)
