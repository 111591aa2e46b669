"""The one CLD formula: per-class reference table, three row sums, finalisation, edge cases.

Every engine computes the three sums of each training row (the row kernel,
:func:`cld_lake.score._kernel.row_sums`, or the same sums written in SQL / Polars
expressions) and hands them to :func:`finalise`, so the edge cases are decided in exactly one
place. The streaming API (:mod:`cld_lake.score._stream`) and the ``cld`` method of the lake's
passes (:mod:`cld_lake.score._registry`) are both built on these functions. See
``docs/scores.md``.

The three sums of a row with selected losses ``l_0..l_{K-1}`` (float64), ``n = K - 1``
differences ``d_t = l_{t+1} - l_t``, shifted by the row's first difference
(``e_t = d_t - d_0``; a shift changes neither variance nor covariance, and keeps the
``sum e^2 - (sum e)^2 / n`` form free of catastrophic cancellation when a row drifts):

- ``A = sum_t e_t u'_t``  (``u'`` = the class's centred validation differences)
- ``B = sum_t e_t``
- ``Q = sum_t e_t^2``

``CLD = A / sqrt((Q - B^2 / n) * sum_t u'_t^2)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cld_lake._types import SPLIT_REFERENCE, CLDReference, Fallback, choices
from cld_lake.errors import ScoringError, argument

MIN_CHECKPOINTS = 3
FALLBACKS = (None, *choices(Fallback))
REFERENCES = choices(CLDReference)
# u_c counts as constant when its spread is within float64 rounding of the class means.
U_CONSTANT_RTOL = 1e-12


@dataclass(frozen=True)
class Reference:
    """The per-class validation reference, computed once per scoring run.

    Attributes
    ----------
    checkpoints : (K,) int64
        Checkpoint ids used, ascending.
    u : (C, K-1) float64
        Centred validation loss differences per class (the global trajectory for fallback
        classes; zeros for classes with neither).
    u2 : (C,) float64
        ``sum_t u'_t^2`` per class.
    constant : (C,) bool
        ``u_c`` is constant: every score of the class is 0.0 (degenerate).
    fallback : (C,) bool
        The class has no usable validation samples and uses the global trajectory.
    usable : (C,) bool
        The class has a trajectory (its own or the global one); rows of other classes cannot
        be scored.
    val_counts : (C,) int64
        Validation samples used per class.
    val_left_out : int
        Validation samples left out for a non-finite loss at a selected checkpoint.
    split : str, optional
        The lake split whose losses made the table (messages name it; None: validation blocks
        given to :func:`~cld_lake.score.cld_reference` without a lake).
    """

    checkpoints: np.ndarray
    u: np.ndarray
    u2: np.ndarray
    constant: np.ndarray
    fallback: np.ndarray
    usable: np.ndarray
    val_counts: np.ndarray
    val_left_out: int
    split: str | None = None

    @property
    def num_diffs(self) -> int:
        return len(self.checkpoints) - 1

    @property
    def num_classes(self) -> int:
        return len(self.u)


@dataclass
class Sums:
    """The three float64 sums of some training rows."""

    a: np.ndarray
    b: np.ndarray
    q: np.ndarray


@dataclass
class Counts:
    nan: int = 0
    degenerate: int = 0
    fallback: int = 0

    def __iadd__(self, other: Counts) -> Counts:
        self.nan += other.nan
        self.degenerate += other.degenerate
        self.fallback += other.fallback
        return self


# --- the reference table ----------------------------------------------------------------------
class ClassSums:
    """Running per-class float64 loss sums over validation rows, and finite-row counts.

    A row with a NaN or infinite loss at any selected checkpoint is left out and counted
    (``left_out``). Rows are added in order with ``np.add.at`` (unbuffered, row after row), so
    the sums do not depend on how the rows were cut into blocks.
    """

    def __init__(self, num_classes: int, num_checkpoints: int) -> None:
        self.sums = np.zeros((num_classes, num_checkpoints), dtype=np.float64)
        self.counts = np.zeros(num_classes, dtype=np.int64)
        self.left_out = 0

    def add(self, loss: np.ndarray, labels: np.ndarray) -> None:
        """Add a block of rows: ``loss`` (m, K) at the selected checkpoints, ``labels`` (m,)."""
        loss = loss.astype(np.float64)
        ok = np.isfinite(loss).all(axis=1)
        self.left_out += int(len(ok) - ok.sum())
        kept = labels[ok]
        np.add.at(self.sums, kept, loss[ok])
        self.counts += np.bincount(kept, minlength=len(self.counts))


def centred_differences(means: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``u' = diff(m) - mean(diff(m))`` per row of ``means``; ``sum u'^2``; and whether the
    differences are constant (spread within float64 rounding of the means)."""
    u = np.diff(means, axis=1)
    spread = u.max(axis=1) - u.min(axis=1)
    scale = np.abs(means).max(axis=1)
    constant = spread <= U_CONSTANT_RTOL * scale
    u_c = u - u.mean(axis=1, keepdims=True)
    u_c[constant] = 0.0
    return u_c, np.einsum("ij,ij->i", u_c, u_c), constant


def check_fallback(fallback: str | None) -> None:
    if fallback not in FALLBACKS:
        allowed = " or ".join(repr(f) for f in FALLBACKS if f is not None)
        raise ScoringError(f"{argument('fallback', fallback)}: use {allowed} or leave it unset")


def reference_from_sums(
    class_sums: ClassSums,
    checkpoints: np.ndarray,
    fallback: Fallback | None = None,
    train_classes: np.ndarray | None = None,
    reference: CLDReference = "group",
    split: str | None = None,
) -> Reference:
    """The C x (K-1) reference table from the validation class sums.

    ``train_classes`` (the classes that have training rows) makes a class without a usable
    validation sample an error here (or, with ``fallback="global"``, a fallback class); left
    unknown, every such class falls back (``"global"``) or is marked unusable, and scoring a
    row of it is the error (:func:`check_usable`). ``reference="global"`` gives every class the
    global trajectory (the one the fallback uses; no row counts as a fallback).
    """
    check_fallback(fallback)
    check_reference(reference)
    if reference == "global":
        return _global_reference(class_sums, checkpoints, split)
    sums, counts = class_sums.sums, class_sums.counts
    empty = np.flatnonzero(counts == 0)
    missing = empty if train_classes is None else np.intersect1d(empty, train_classes)
    if len(missing) and fallback is None and train_classes is not None:
        raise ScoringError(
            f"{len(missing)} class(es) with training samples have no {_of(split)} sample with "
            f"finite losses at the selected checkpoints: {_shown(missing)}; add {_of(split)} "
            f"samples for them or pass {argument('fallback', 'global')} to use the global "
            f"{_of(split)} trajectory for those classes"
        )
    use_global = np.zeros(len(counts), dtype=bool)
    if len(missing) and fallback is not None:
        global_mean = _global_mean(class_sums, split)
        use_global[missing] = True
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts[:, None]
    means[counts == 0] = 0.0
    if use_global.any():
        means[use_global] = global_mean
    u, u2, constant = centred_differences(means)
    usable = (counts > 0) | use_global
    return Reference(
        np.asarray(checkpoints, dtype=np.int64),
        u,
        u2,
        constant,
        use_global,
        usable,
        counts,
        class_sums.left_out,
        split,
    )


def check_reference(reference: str) -> None:
    """A reference the formula builds from class sums: ``group`` (alias ``class``) or
    ``global`` (a ``split:NAME`` reference is ``global`` over that split's blocks)."""
    if reference not in REFERENCES:
        hint = ""
        if isinstance(reference, str) and reference.startswith(SPLIT_REFERENCE):
            hint = (
                f"; {reference} names a split of a lake: without one, pass that split's blocks "
                f"with {argument('reference', 'global')}"
            )
        raise ScoringError(
            f"{argument('reference', reference)}: use group (its alias: class) or global{hint}"
        )


def _of(split: str | None) -> str:
    """How messages name the reference split's samples: ``validation`` (``val``, or blocks
    without a lake), else the split's name."""
    return "validation" if split in (None, "val") else split


def _global_mean(class_sums: ClassSums, split: str | None = None) -> np.ndarray:
    """The mean reference trajectory over every usable sample (all classes pooled)."""
    if class_sums.counts.sum() == 0:
        where = "the validation split" if split in (None, "val") else f"split {split!r}"
        raise ScoringError(
            f"{where} has no sample with finite losses at the selected checkpoints; "
            "nothing to compare against"
        )
    return class_sums.sums.sum(axis=0) / class_sums.counts.sum()


def _global_reference(
    class_sums: ClassSums, checkpoints: np.ndarray, split: str | None = None
) -> Reference:
    """Every class gets the global trajectory: a C x (K-1) table of identical rows."""
    num_classes = len(class_sums.counts)
    means = np.broadcast_to(
        _global_mean(class_sums, split), (num_classes, class_sums.sums.shape[1])
    )
    u, u2, constant = centred_differences(np.ascontiguousarray(means))
    return Reference(
        np.asarray(checkpoints, dtype=np.int64),
        u,
        u2,
        constant,
        np.zeros(num_classes, dtype=bool),
        np.ones(num_classes, dtype=bool),
        class_sums.counts,
        class_sums.left_out,
        split,
    )


def check_usable(reference: Reference, labels: np.ndarray) -> None:
    """Every row's class has a validation trajectory (its own or, by fallback, the global one)."""
    unusable = ~reference.usable[labels]
    if unusable.any():
        classes = np.unique(labels[unusable])
        raise ScoringError(
            f"{len(classes)} class(es) of these training rows have no {_of(reference.split)} "
            f"sample with finite losses: {_shown(classes)}; add {_of(reference.split)} samples "
            f"for them or pass {argument('fallback', 'global')} to use the global "
            f"{_of(reference.split)} trajectory for those classes"
        )


def _shown(classes: np.ndarray) -> str:
    return ", ".join(str(c) for c in classes[:10]) + (" ..." if len(classes) > 10 else "")


# --- finalisation: the edge cases, once -----------------------------------------------------
def finalise(sums: Sums, labels: np.ndarray, reference: Reference) -> tuple[np.ndarray, Counts]:
    """CLD per row from its three sums; NaN for non-finite rows, 0.0 for degenerate rows.

    A row is non-finite when any of its sums is (a NaN or infinite loss at a selected
    checkpoint propagates into them). It is degenerate when its differences are all equal
    (``Q == 0``; exact, since ``e_t`` is computed identically by every engine), or when its
    class's validation differences are constant.
    """
    n = reference.num_diffs
    a, b, q = sums.a, sums.b, sums.q
    nan = ~(np.isfinite(a) & np.isfinite(b) & np.isfinite(q))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        var_n = q - b * b / n
        degenerate = ~nan & ((q == 0) | (var_n <= 0) | reference.constant[labels])
        score = a / np.sqrt(var_n * reference.u2[labels])
    score[degenerate] = 0.0
    score[nan] = np.nan
    np.clip(score, -1.0, 1.0, out=score)
    counts = Counts(
        nan=int(nan.sum()),
        degenerate=int(degenerate.sum()),
        fallback=int(reference.fallback[labels].sum()),
    )
    return score, counts
