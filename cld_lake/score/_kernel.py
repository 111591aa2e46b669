"""CLD's row kernel: the three sums of each row, compiled C when it was built, else NumPy.

:func:`row_sums` is the one entry point; both kernels compute every ``e_t`` with the same float64
operations (see :mod:`cld_lake.score._formula` for the sums). The compiled kernel
(``_ckernel.c``, built at install) is loaded through ctypes on first use; without it (no C
compiler at install time) the checkpoint-major NumPy kernel runs. Both release the GIL, so rows
are split over a small shared thread pool (:func:`run_pieces`), which the method passes use too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np

from cld_lake.errors import ScoringError

# Rows per inner step of the NumPy kernel: keeps the float64 temporaries cache-sized.
KERNEL_ROWS = 1024

Kernel = Literal["fused", "numpy"]


def kernel_name() -> Kernel:
    """The row kernel CLD runs in this install: ``"fused"`` (the compiled C kernel) or
    ``"numpy"`` (it was not compiled: no C compiler at install time)."""
    return "fused" if _fused_kernel() is not None else "numpy"


def row_sums(
    loss: np.ndarray,
    labels: np.ndarray,
    u: np.ndarray,
    threads: int = 1,
    kernel: Kernel | Literal["auto"] = "auto",
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

    run_pieces(run, pieces, threads)
    return out


# --- the NumPy kernel -------------------------------------------------------------------------
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

    run_pieces(run, pieces, threads)
    return out


# --- the compiled kernel --------------------------------------------------------------------
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


# --- threads ----------------------------------------------------------------------------------
def run_pieces(
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
