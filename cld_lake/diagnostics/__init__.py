"""Diagnostics over the stored scores: how a score behaves, not what it selects.

Pure functions over a lake (nothing is written), each returning plain rows (dicts) the CLI,
the report and the comparison harness print or plot:

- :func:`class_nonpositive_share`: per class, the share of scored samples with a score
  ``<= 0`` (for CLD: samples whose loss does not move with their class's validation loss).
- :func:`selection_alignment`: the mean score of a manifest's samples (the empirical
  alignment of a coreset) next to the mean over the whole train split.
- :func:`rank_stability`: Spearman's rank correlation between two stored scores (two CLD
  windows, two strides, two methods).
- :func:`noise_detection`: where the samples table carries a ``noisy`` flag, the AUROC and
  the precision at the noise rate of every stored score for finding the flipped labels, each
  score oriented by its direction (``higher_keep``: low = suspect).
- :func:`cld_windows`: stores CLD over the first half of the checkpoints and over every other
  checkpoint, to feed :func:`rank_stability`.

The same detection on arrays, without a lake: :func:`detection` (AUROC, precision at the
noise rate, the noisy share among the lowest fractions; :func:`detection_row` and
:func:`noisy_among_lowest` are its two halves) and :class:`DetectionTally`, its twin over
batches in memory independent of N. Rank statistics: :func:`average_ranks`,
:func:`spearman`, :func:`auroc`, :func:`precision_at`.

Bounded memory: :func:`class_nonpositive_share` and :func:`selection_alignment` stream the
scores table one row group at a time (the latter holds the manifest's ids). Up to
``exact_rows`` (:data:`EXACT_ROWS`, the report's limit too) rows, :func:`noise_detection` and
:func:`rank_stability` read whole columns (exact); past it the first streams (noisy flags as
bits, :func:`noisy_bits`; AUROC within a reported bound, the rest exact) and the second takes
rho over every ``s``-th row (reported). The N x T loss matrix is never read. Undefined (null)
scores are left out of every statistic and counted.

Modules: ``_ranks`` (rank statistics), ``_read`` (score columns and noisy flags from the
lake), ``_detection`` (detection on arrays, whole and streamed), ``_noise_detection`` (over a
lake), ``_classes``, ``_alignment``, ``_stability``.
"""

from __future__ import annotations

from cld_lake.diagnostics._alignment import selection_alignment
from cld_lake.diagnostics._classes import class_nonpositive_share
from cld_lake.diagnostics._detection import (
    CUT_ROWS,
    FINE_BINS,
    DetectionTally,
    detection,
    detection_row,
    noisy_among_lowest,
    suspicion,
)
from cld_lake.diagnostics._noise_detection import noise_detection
from cld_lake.diagnostics._ranks import auroc, average_ranks, precision_at, spearman
from cld_lake.diagnostics._read import EXACT_ROWS, flags_at, noisy_bits, scores_aligned
from cld_lake.diagnostics._stability import cld_windows, rank_stability

__all__ = [
    "CUT_ROWS",
    "EXACT_ROWS",
    "FINE_BINS",
    "DetectionTally",
    "auroc",
    "average_ranks",
    "class_nonpositive_share",
    "cld_windows",
    "detection",
    "detection_row",
    "flags_at",
    "noise_detection",
    "noisy_among_lowest",
    "noisy_bits",
    "precision_at",
    "rank_stability",
    "scores_aligned",
    "selection_alignment",
    "spearman",
    "suspicion",
]
