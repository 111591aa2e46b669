"""The mean score of a manifest's samples (the empirical alignment of a coreset), streamed."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from cld_lake.diagnostics._read import (
    LakeLike,
    as_lake,
    check_stored,
    direction_of,
    score_batches,
)
from cld_lake.errors import BadInputError
from cld_lake.manifest import Manifest, load_manifest


def selection_alignment(
    lake: LakeLike, manifest: str | os.PathLike[str] | Manifest, score: str = "cld"
) -> dict[str, Any]:
    """The mean ``score`` of a manifest's samples: the empirical alignment of a coreset.

    Returns
    -------
    dict
        ``score``, ``selected`` (manifest rows), ``null`` (selected samples without a score,
        left out of the mean), ``mean`` (over the selected, scored samples), ``pool_mean``
        (over every scored training sample, for comparison) and ``direction``.

    Raises
    ------
    BadInputError
        The manifest names samples the scores table does not hold (another lake?).
    """
    lake = as_lake(lake)
    check_stored(lake, score)
    m = load_manifest(manifest)
    # the scores table is streamed past the manifest's sorted ids: memory is the manifest's
    order = np.argsort(m.sample_ids, kind="stable")
    wanted = m.sample_ids[order]
    found = np.zeros(len(wanted), bool)
    chosen_sum, chosen_n, pool_sum, pool_n = 0.0, 0, 0.0, 0
    for ids, _, values in score_batches(lake, score, ids=True):
        finite = ~np.isnan(values)
        pool_sum += float(values[finite].sum())
        pool_n += int(finite.sum())
        pos = np.minimum(np.searchsorted(wanted, ids), max(len(wanted) - 1, 0))
        hit = wanted[pos] == ids if len(wanted) else np.zeros(len(ids), bool)
        found[pos[hit]] = True
        chosen_sum += float(values[hit & finite].sum())
        chosen_n += int((hit & finite).sum())
    if not found.all():
        missing = np.zeros(len(m), bool)
        missing[order[~found]] = True  # back in manifest order, for the examples
        raise BadInputError(
            f"the manifest holds {int(missing.sum())} sample ids (e.g. "
            f"{m.sample_ids[missing][:5].tolist()}) that {lake.root} has no score for; "
            "pass the lake it was selected from"
        )
    return {
        "score": score,
        "selected": len(m),
        "null": len(m) - chosen_n,
        "mean": chosen_sum / chosen_n if chosen_n else float("nan"),
        "pool_mean": pool_sum / pool_n if pool_n else float("nan"),
        "direction": direction_of(lake, score),
    }
