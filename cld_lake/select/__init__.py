"""Class-balanced selection: scores -> a coreset manifest.

Rules (see ``docs/sql.md``):

- Size: ``fraction`` of the candidates (``round(fraction x N)``, halves rounded up, exact for
  the decimal fraction as written) or ``count`` rows in total. Candidates are the training
  samples of ``LAKE/scores.parquet`` (or the rows of ``query``).
- Balance: ``proportional`` (default) gives class ``c`` ``total x n_c / N`` rows, rounded by
  largest remainder (ties: smaller label) so the total is exact; ``equal`` gives every class
  ``total // C`` rows, the first ``total % C`` classes by label one more (the authors' rule);
  ``none`` takes the global top ``total``.
- Order: highest score first (``lowest=True``: lowest first); ties by smaller ``sample_id``.
  ``random=True`` draws a seeded random order instead, with the same class balance.
- NaN (null) scores are never selected, by any strategy. They still count in the class sizes
  (the class balance of the data); a class with fewer non-NaN samples than its quota gives all
  it has and the shortfall is reported, not moved to other classes.
- ``+inf`` and ``-inf`` are the largest and smallest scores, selectable by every strategy:
  top-k takes ``+inf`` first, ``lowest`` takes ``-inf`` first, ``random`` draws them as any
  other score; ``ccs`` prunes them as the hardest or easiest end and bins the finite scores
  over their own ``[min, max]``, with ``-inf`` in the first bin and ``+inf`` in the last.
- A stored score computed over fewer checkpoints than the lake now holds (see
  :func:`cld_lake.lake.scores.stale_scores`) is used, with a warning recorded in the
  manifest's ``score_stale``.
- Memory: the top-k of a stored score streams the scores table once it has
  ``STREAM_MIN_ROWS`` rows (:func:`stream_top_k`: the same rows, in memory of about the
  selected rows); ``--query``, ``--random`` and ``ccs`` read their candidates whole.
- Strategy ``ccs`` (Coverage-Centric Coreset Selection, Zheng et al., ICLR 2023) replaces the
  top-k within each class by: prune the hardest ``prune`` share, split the rest into ``bins``
  equal-width score bins, spread the quota over the bins from the least-filled bin up, and
  draw within each bin at random (seeded). See :func:`ccs_rows`.

The modules: ``_rules`` (size, quotas, top-k and CCS on arrays), ``_candidates`` (what is
ranked: a stored score, a SQL query, the train split), ``_select`` (:func:`select`: the checks,
the path taken, the manifest), ``_stream`` (the streaming top-k), ``_dask`` (its passes on a
dask cluster). ``cld_lake.select``, read as an attribute of the package ``cld_lake``, is the
function :func:`select`; ``from cld_lake.select import ...`` reads this package.
"""

from __future__ import annotations

from cld_lake.select._dask import stream_top_k_on_cluster
from cld_lake.select._rules import (
    BALANCES,
    CCS_BINS,
    CCS_PRUNE,
    STRATEGIES,
    Chosen,
    Picked,
    ccs_bin_budgets,
    ccs_bin_index,
    ccs_rows,
    check_ccs_args,
    check_size_args,
    class_quotas,
    fraction_size,
    select_rows,
    target_size,
)
from cld_lake.select._select import MANIFESTS_DIR, select
from cld_lake.select._stream import (
    STREAM_MIN_ROWS,
    STREAM_ROWS_ENV,
    rank_keys,
    sorted_order,
    stream_min_rows,
    stream_select,
    stream_top_k,
)

__all__ = [
    "BALANCES",
    "CCS_BINS",
    "CCS_PRUNE",
    "MANIFESTS_DIR",
    "STRATEGIES",
    "STREAM_MIN_ROWS",
    "STREAM_ROWS_ENV",
    "Chosen",
    "Picked",
    "ccs_bin_budgets",
    "ccs_bin_index",
    "ccs_rows",
    "check_ccs_args",
    "check_size_args",
    "class_quotas",
    "fraction_size",
    "rank_keys",
    "select",
    "select_rows",
    "sorted_order",
    "stream_min_rows",
    "stream_select",
    "stream_top_k",
    "stream_top_k_on_cluster",
    "target_size",
]
