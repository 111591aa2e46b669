"""Per class, the share of scored training samples whose score is ``<= 0``, streamed."""

from __future__ import annotations

from typing import Any

import numpy as np

from cld_lake.diagnostics._read import LakeLike, as_lake, check_stored, score_batches


def _add_counts(counts: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``counts`` plus the samples per label of ``labels``, grown as labels need."""
    part = np.bincount(labels, minlength=len(counts))
    part[: len(counts)] += counts
    return part


def class_nonpositive_share(lake: LakeLike, score: str = "cld") -> list[dict[str, Any]]:
    """Per class: the share of scored training samples whose ``score`` is ``<= 0``.

    Returns
    -------
    list of dict
        One row per class present, ascending label: ``label``, ``samples``, ``null`` (no
        score, left out), ``nonpositive`` (score ``<= 0``) and ``share`` (``nonpositive`` /
        scored samples; NaN when none is scored).
    """
    lake = as_lake(lake)
    check_stored(lake, score)
    samples, scored, nonpos = (np.zeros(0, np.int64) for _ in range(3))
    for labels, values in score_batches(lake, score):  # one row group at a time: bounded memory
        finite = ~np.isnan(values)
        nonpositive = finite & (np.nan_to_num(values, nan=1.0) <= 0)
        samples = _add_counts(samples, labels)
        scored = _add_counts(scored, labels[finite])
        nonpos = _add_counts(nonpos, labels[nonpositive])
    size = len(samples)
    scored, nonpos = (np.pad(c, (0, size - len(c))) for c in (scored, nonpos))
    return [
        {
            "label": int(c),
            "samples": int(samples[c]),
            "null": int(samples[c] - scored[c]),
            "nonpositive": int(nonpos[c]),
            "share": float(nonpos[c] / scored[c]) if scored[c] else float("nan"),
        }
        for c in np.flatnonzero(samples)
    ]
