"""An independent, in-memory, float64 CLD reference, written from the definition in docs/scores.md.

Plain NumPy on whole arrays: class means of the validation losses, ``np.diff``, and a
per-sample ``np.corrcoef``. It shares no code with ``cld_lake.score``; tests compare every
engine against it. Only for small arrays (it loops over samples in Python).
"""

from __future__ import annotations

import numpy as np

# Same decision as the package (docs/scores.md): u_c is constant when the spread of its
# differences is within float64 rounding of the class means.
U_CONSTANT_RTOL = 1e-12


class MissingClassesError(ValueError):
    """Training classes without a usable validation sample (and no fallback)."""


def reference_cld(
    train_loss: np.ndarray,
    train_labels: np.ndarray,
    val_loss: np.ndarray,
    val_labels: np.ndarray,
    fallback: str | None = None,
) -> dict[str, object]:
    """CLD of every training row.

    Parameters
    ----------
    train_loss, val_loss : (N, K), (M, K) arrays
        Losses at the selected checkpoints (any float dtype; computed in float64).
    train_labels, val_labels : (N,), (M,) int arrays
    fallback : None or "global"

    Returns
    -------
    dict with ``scores`` (N,) float64, ``nan``, ``degenerate``, ``fallback`` (row counts) and
    ``val_left_out`` (validation rows dropped for a non-finite loss).
    """
    train = np.asarray(train_loss, dtype=np.float64)
    val = np.asarray(val_loss, dtype=np.float64)
    k = train.shape[1]
    if k < 3:
        raise ValueError(f"need at least 3 checkpoints, got {k}")
    val_ok = np.isfinite(val).all(axis=1)
    val, val_y = val[val_ok], np.asarray(val_labels)[val_ok]
    classes = np.unique(train_labels)
    means = {}
    missing = []
    for c in classes:
        rows = val[val_y == c]
        if len(rows):
            means[c] = rows.mean(axis=0)
        else:
            missing.append(int(c))
    if missing and fallback is None:
        raise MissingClassesError(f"classes without validation samples: {missing}")
    if missing:
        if len(val) == 0:
            raise MissingClassesError("no finite validation rows")
        global_mean = val.mean(axis=0)
        for c in missing:
            means[c] = global_mean

    scores = np.empty(len(train), dtype=np.float64)
    nan = degenerate = 0
    for i, (row, y) in enumerate(zip(train, train_labels, strict=True)):
        m = means[y]
        u = np.diff(m)
        with np.errstate(invalid="ignore"):
            d = np.diff(row)
        if not np.isfinite(row).all():
            scores[i] = np.nan
            nan += 1
        elif np.all(d == d[0]) or np.ptp(u) <= U_CONSTANT_RTOL * np.abs(m).max():
            scores[i] = 0.0
            degenerate += 1
        else:
            scores[i] = np.corrcoef(d, u)[0, 1]
    n_fallback = int(np.isin(train_labels, missing).sum())
    return {
        "scores": scores,
        "nan": nan,
        "degenerate": degenerate,
        "fallback": n_fallback,
        "val_left_out": int((~val_ok).sum()),
    }


def pooled_reference_cld(train_loss: np.ndarray, reference_loss: np.ndarray) -> dict[str, object]:
    """CLD of every training row against ONE trajectory: the mean loss of every reference row
    with finite losses, whatever its group (``--reference global`` over the reference split,
    ``--reference split:NAME``). Same dictionary as :func:`reference_cld` (``fallback`` is 0;
    ``val_left_out`` counts the reference rows left out)."""
    train = np.asarray(train_loss, dtype=np.float64)
    ref = np.asarray(reference_loss, dtype=np.float64)
    if train.shape[1] < 3:
        raise ValueError(f"need at least 3 checkpoints, got {train.shape[1]}")
    ok = np.isfinite(ref).all(axis=1)
    if not ok.any():
        raise MissingClassesError("no finite reference rows")
    m = ref[ok].mean(axis=0)
    u = np.diff(m)
    u_constant = np.ptp(u) <= U_CONSTANT_RTOL * np.abs(m).max()
    scores = np.empty(len(train), dtype=np.float64)
    nan = degenerate = 0
    for i, row in enumerate(train):
        with np.errstate(invalid="ignore"):
            d = np.diff(row)
        if not np.isfinite(row).all():
            scores[i] = np.nan
            nan += 1
        elif np.all(d == d[0]) or u_constant:
            scores[i] = 0.0
            degenerate += 1
        else:
            scores[i] = np.corrcoef(d, u)[0, 1]
    return {
        "scores": scores,
        "nan": nan,
        "degenerate": degenerate,
        "fallback": 0,
        "val_left_out": int((~ok).sum()),
    }
