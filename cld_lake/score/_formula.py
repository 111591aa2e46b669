"""The one CLD formula: checkpoint plan, per-class reference table, three row sums, finalisation.

Every engine streams training rows through :func:`row_sums` (or the same sums written in SQL /
Polars expressions) and hands the three sums to :func:`finalise`, so the edge cases are decided
in exactly one place. The public streaming API (:mod:`cld_lake.score._stream`) and the lake
orchestrator (:func:`cld_lake.score.compute_cld`) are both built on these functions. See
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

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from cld_lake._types import CLDReference, Fallback, choices
from cld_lake.errors import ScoringError
from cld_lake.lake.store import Split, parse_window

MIN_CHECKPOINTS = 3
FALLBACKS = (None, *choices(Fallback))
REFERENCES = choices(CLDReference)
# u_c counts as constant when its spread is within float64 rounding of the class means.
U_CONSTANT_RTOL = 1e-12
# Rows per inner step of the NumPy kernel: keeps the float64 temporaries cache-sized.
KERNEL_ROWS = 1024

Progress = Callable[[int], None]


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
    """

    checkpoints: np.ndarray
    u: np.ndarray
    u2: np.ndarray
    constant: np.ndarray
    fallback: np.ndarray
    usable: np.ndarray
    val_counts: np.ndarray
    val_left_out: int

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
class Chunk:
    """What an engine yields: the sums of some rows (a slice or row positions) and their labels."""

    rows: slice | np.ndarray
    labels: np.ndarray
    sums: Sums


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


# --- checkpoints ------------------------------------------------------------------------------
def plan_checkpoints(train: Split, val: Split, window: str | slice | None) -> np.ndarray:
    """Checkpoints committed in both splits, then the window/stride over their positions."""
    common = np.intersect1d(train.checkpoint_ids, val.checkpoint_ids)
    if len(common) < MIN_CHECKPOINTS:
        raise ScoringError(
            f"CLD needs at least {MIN_CHECKPOINTS} checkpoints committed in both train and val; "
            f"found {len(common)} (train has {train.num_checkpoints}, val has {val.num_checkpoints}); "
            "record more checkpoints"
        )
    if window is None:
        return common
    sel = parse_window(window) if isinstance(window, str) else window
    if not isinstance(sel, slice):
        raise ScoringError(f"--checkpoints {window!r}: expected START:STOP[:STEP]")
    chosen = common[sel]
    if len(chosen) < MIN_CHECKPOINTS:
        raise ScoringError(
            f"--checkpoints {_window_text(window)}: selects {len(chosen)} of the {len(common)} common "
            f"checkpoints; CLD needs at least {MIN_CHECKPOINTS} (e.g. --checkpoints 0:{len(common)})"
        )
    return chosen


def _window_text(window: str | slice) -> str:
    if isinstance(window, str):
        return window
    parts = [window.start, window.stop] + ([window.step] if window.step is not None else [])
    return ":".join("" if p is None else str(p) for p in parts)


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
        raise ScoringError(f"--fallback {fallback!r}: use {allowed} or leave it unset")


def reference_from_sums(
    class_sums: ClassSums,
    checkpoints: np.ndarray,
    fallback: Fallback | None = None,
    train_classes: np.ndarray | None = None,
    reference: CLDReference = "class",
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
        return _global_reference(class_sums, checkpoints)
    sums, counts = class_sums.sums, class_sums.counts
    empty = np.flatnonzero(counts == 0)
    missing = empty if train_classes is None else np.intersect1d(empty, train_classes)
    if len(missing) and fallback is None and train_classes is not None:
        raise ScoringError(
            f"{len(missing)} class(es) with training samples have no validation sample with finite "
            f"losses at the selected checkpoints: {_shown(missing)}; add validation samples for "
            "them or pass --fallback global to use the global validation trajectory for those classes"
        )
    use_global = np.zeros(len(counts), dtype=bool)
    if len(missing) and fallback is not None:
        global_mean = _global_mean(class_sums)
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
    )


def check_reference(reference: str) -> None:
    if reference not in REFERENCES:
        raise ScoringError(f"--reference {reference!r}: use {' or '.join(REFERENCES)}")


def _global_mean(class_sums: ClassSums) -> np.ndarray:
    """The mean validation trajectory over every usable sample (all classes pooled)."""
    if class_sums.counts.sum() == 0:
        raise ScoringError(
            "the validation split has no sample with finite losses at the selected checkpoints; "
            "nothing to compare against"
        )
    return class_sums.sums.sum(axis=0) / class_sums.counts.sum()


def _global_reference(class_sums: ClassSums, checkpoints: np.ndarray) -> Reference:
    """Every class gets the global trajectory: a C x (K-1) table of identical rows."""
    num_classes = len(class_sums.counts)
    means = np.broadcast_to(_global_mean(class_sums), (num_classes, class_sums.sums.shape[1]))
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
    )


def check_usable(reference: Reference, labels: np.ndarray) -> None:
    """Every row's class has a validation trajectory (its own or, by fallback, the global one)."""
    unusable = ~reference.usable[labels]
    if unusable.any():
        classes = np.unique(labels[unusable])
        raise ScoringError(
            f"{len(classes)} class(es) of these training rows have no validation sample with "
            f"finite losses: {_shown(classes)}; add validation samples for them or pass "
            "fallback='global' to use the global validation trajectory for those classes"
        )


def _shown(classes: np.ndarray) -> str:
    return ", ".join(str(c) for c in classes[:10]) + (" ..." if len(classes) > 10 else "")


# --- the three sums (NumPy kernel; numpy and dask engines) ----------------------------------
class _Buffers(threading.local):
    """Per-thread scratch arrays of the kernel, laid out checkpoint-major (K x rows) so every
    operation runs over long contiguous rows of cache-sized arrays."""

    def get(self, k: int, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        current = getattr(self, "arrays", None)
        if current is None or current[0].shape != (k, rows):
            current = (np.empty((k, rows)), np.empty((k - 1, rows)), np.empty((k - 1, rows)))
            self.arrays = current
        return current


_buffers = _Buffers()


def _row_sums_into(
    loss: np.ndarray, labels: np.ndarray, u_t: np.ndarray, out: tuple[np.ndarray, ...]
) -> None:
    """The kernel on at most ``KERNEL_ROWS`` rows: ``out = (A, B, Q)``."""
    m = loss.shape[0]
    if m == 1:  # reductions over one column take another summation order: keep >= 2 columns
        pair = tuple(np.empty(2) for _ in range(3))
        _row_sums_into(np.repeat(loss, 2, axis=0), np.repeat(labels, 2), u_t, pair)
        for dst, src in zip(out, pair, strict=True):
            dst[:] = src[:1]
        return
    lt, e, g = (x[:, :m] for x in _buffers.get(loss.shape[1], KERNEL_ROWS))
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: NaN, as intended
        np.copyto(lt, loss.T)  # widen to float64 (exact)
        np.subtract(lt[1:], lt[:-1], out=e)  # d_t
        e -= e[0].copy()  # e_t = d_t - d_0
        np.take(u_t, labels, axis=1, out=g)  # u'_{y, t}
        np.einsum("ij,ij->j", e, g, out=out[0])
        e.sum(axis=0, out=out[1])
        np.einsum("ij,ij->j", e, e, out=out[2])


def _row_sums_numpy(
    loss: np.ndarray, labels: np.ndarray, u: np.ndarray, threads: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The NumPy kernel: cache-sized pieces of ``KERNEL_ROWS`` rows on ``threads`` threads."""
    n_rows = loss.shape[0]
    out = tuple(np.empty(n_rows, dtype=np.float64) for _ in range(3))
    u_t = np.ascontiguousarray(u.T)
    pieces = [(a, min(a + KERNEL_ROWS, n_rows)) for a in range(0, n_rows, KERNEL_ROWS)]

    def run(piece: tuple[int, int]) -> None:
        a, b = piece
        _row_sums_into(loss[a:b], labels[a:b], u_t, tuple(x[a:b] for x in out))

    _run_pieces(run, pieces, threads)
    return out


def _fused_kernel() -> Callable[..., None] | None:
    """The compiled one-pass kernel (``_ckernel.c``), or None when it was not built (no C
    compiler at install time): the NumPy kernel is used instead."""
    global _FUSED
    if _FUSED is None:
        _FUSED = _load_ckernel() or False
    return _FUSED or None


def _load_ckernel() -> Callable[..., None] | None:
    import ctypes
    import importlib.util

    spec = importlib.util.find_spec("cld_lake.score._ckernel")
    if spec is None or not spec.origin:
        return None
    lib = ctypes.CDLL(spec.origin)
    double_p = ctypes.POINTER(ctypes.c_double)
    i64_p = ctypes.POINTER(ctypes.c_int64)
    functions = {}
    for dtype, name, ctype in (
        ("float32", "cld_row_sums_f32", ctypes.c_float),
        ("float64", "cld_row_sums_f64", ctypes.c_double),
    ):
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = [
            ctypes.POINTER(ctype),
            ctypes.c_int64,
            ctypes.c_int64,
            i64_p,
            double_p,
            double_p,
            double_p,
            double_p,
        ]
        functions[dtype] = (fn, ctype)

    def run(
        loss: np.ndarray,
        labels: np.ndarray,
        u: np.ndarray,
        a: np.ndarray,
        b: np.ndarray,
        q: np.ndarray,
    ) -> None:
        fn, ctype = functions[str(loss.dtype)]
        n, k = loss.shape
        ptr = lambda x, t: x.ctypes.data_as(ctypes.POINTER(t))  # noqa: E731
        fn(
            ptr(loss, ctype),
            n,
            k,
            ptr(labels, ctypes.c_int64),
            ptr(u, ctypes.c_double),
            ptr(a, ctypes.c_double),
            ptr(b, ctypes.c_double),
            ptr(q, ctypes.c_double),
        )

    return run


_FUSED: Any = None


def row_sums(
    loss: np.ndarray, labels: np.ndarray, u: np.ndarray, threads: int = 1, kernel: str = "auto"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three float64 sums ``(A, B, Q)`` for each row of a block of selected losses.

    ``u`` is the (C, K-1) reference table. ``kernel="auto"`` runs the fused one-pass kernel
    (compiled C) when available, else the NumPy kernel; both compute every ``e_t`` with the same
    float64 operations, so degenerate rows (``Q == 0``) agree exactly. Rows are split over
    ``threads`` threads (both kernels release the GIL).
    """
    fused = _fused_kernel() if kernel in ("auto", "fused") else None
    if kernel == "fused" and fused is None:
        raise ScoringError(
            "the fused kernel was not compiled (no C compiler at install); reinstall with gcc available"
        )
    if fused is None:
        return _row_sums_numpy(loss, labels, u, threads)
    n_rows = loss.shape[0]
    # compiled code does no bounds checks: check what it will index, here
    if loss.ndim != 2 or u.ndim != 2 or u.shape[1] != loss.shape[1] - 1:
        raise ValueError(f"reference table {u.shape} does not fit loss block {loss.shape}")
    if n_rows and (labels.min() < 0 or labels.max() >= u.shape[0]):
        raise ValueError(f"label outside the reference table's {u.shape[0]} classes")
    out = tuple(np.empty(n_rows, dtype=np.float64) for _ in range(3))
    u_c = np.ascontiguousarray(u, dtype=np.float64)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    # the kernel reads float32 or float64: widening float16 is exact (e_t is float64 anyway)
    loss = np.ascontiguousarray(loss, dtype=np.float32 if loss.dtype == np.float16 else loss.dtype)
    step = -(-n_rows // max(threads, 1))
    pieces = [(a, min(a + step, n_rows)) for a in range(0, n_rows, step)] if n_rows else []

    def run(piece: tuple[int, int]) -> None:
        a, b = piece
        fused(loss[a:b], labels[a:b], u_c, out[0][a:b], out[1][a:b], out[2][a:b])

    _run_pieces(run, pieces, threads)
    return out


def _run_pieces(
    run: Callable[[tuple[int, int]], None], pieces: list[tuple[int, int]], threads: int
) -> None:
    """Run ``run`` on each row range, on ``threads`` threads (the kernels release the GIL)."""
    if threads > 1 and len(pieces) > 1:
        list(_pool(threads).map(run, pieces))
    else:
        for piece in pieces:
            run(piece)


_pools: dict[int, ThreadPoolExecutor] = {}


def _pool(threads: int) -> ThreadPoolExecutor:
    if threads not in _pools:
        _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="cld-kernel")
    return _pools[threads]


def sums_over_blocks(
    split: Split,
    reference: Reference,
    block_rows: int | None = None,
    start: int = 0,
    stop: int | None = None,
    progress: Progress | None = None,
    threads: int = 1,
) -> Iterator[Chunk]:
    """Run :func:`row_sums` over rows ``[start, stop)`` of ``split``, one chunk per block."""
    blocks = split.blocks(
        block_rows=block_rows, checkpoints=reference.checkpoints, start=start, stop=stop
    )
    for block in blocks:
        a, b, q = row_sums(block.loss, block.labels, reference.u, threads)
        yield Chunk(slice(block.start, block.start + len(block)), block.labels, Sums(a, b, q))
        if progress is not None:
            progress(len(block))


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


class ScoreColumn:
    """Where finalised scores go, in any row order: memory (``values``) or, with ``spill``, a
    temporary float64 file on disk, so scoring a split holds no per-sample array at all.

    Rows written are tracked as intervals (not a per-row mask); :meth:`check_complete` proves
    they tile ``[0, num_rows)`` exactly once.
    """

    def __init__(self, num_rows: int, spill: bool = False) -> None:
        self.num_rows = num_rows
        self._intervals: list[tuple[int, int]] = []
        self.values: np.ndarray | None = None
        self._file: Any = None
        if spill:
            import tempfile

            self._file = tempfile.TemporaryFile(prefix="cld-lake-scores-")
            self._file.truncate(num_rows * 8)
        else:
            self.values = np.full(num_rows, np.nan, dtype=np.float64)

    def write(self, rows: slice | np.ndarray, part: np.ndarray) -> None:
        part = np.ascontiguousarray(part, dtype=np.float64)
        if isinstance(rows, slice):
            self._write_run(rows.start, part)
            return
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        rows, part = rows[order], part[order]
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, len(rows)], strict=True):
            if hi > lo:
                self._write_run(int(rows[lo]), part[lo:hi])

    def _write_run(self, start: int, part: np.ndarray) -> None:
        stop = start + len(part)
        if start < 0 or stop > self.num_rows:
            raise RuntimeError(f"engine returned rows {start}..{stop} outside 0..{self.num_rows}")
        self._intervals.append((start, stop))
        if self.values is not None:
            self.values[start:stop] = part
        else:
            import os

            data, offset = memoryview(part.tobytes()), start * 8
            while data:  # a short write (disk nearly full) is retried and then raises ENOSPC
                written = os.pwrite(self._file.fileno(), data, offset)
                data, offset = data[written:], offset + written

    def read(self, start: int, stop: int) -> np.ndarray:
        """Scores of rows ``[start, stop)``."""
        if self.values is not None:
            return self.values[start:stop]
        import os

        raw = os.pread(self._file.fileno(), (stop - start) * 8, start * 8)
        return np.frombuffer(raw, dtype=np.float64)

    def check_complete(self) -> None:
        """Every row written exactly once (an engine bug otherwise, never a user error)."""
        covered = 0
        for lo, hi in sorted(self._intervals):
            if lo != covered:
                raise RuntimeError(f"engine rows overlap or leave a gap at row {min(lo, covered)}")
            covered = hi
        if covered != self.num_rows:
            raise RuntimeError(f"engine returned {covered} of {self.num_rows} rows")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
