"""The streaming top-k's passes on a dask cluster (``select(..., dask=True)``, ``--dask``).

Each task opens the lake's scores table itself (from the lake's path or URL) and returns
per-span results: class counts, a (classes x buckets) histogram, or the span's rows that
can still be selected, already cut to the quotas. The client holds what the local path
holds (the kept rows, about the selected rows) and reads no rows itself; one more task
checks every column's checksum, streaming, and the selection waits for it. Which cluster,
and how results come back, is :mod:`cld_lake._dask`'s (the adapter scoring uses too).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cld_lake._dask import IN_FLIGHT_PER_THREAD, client_for, in_row_order, thread_count
from cld_lake._types import Balance
from cld_lake.lake import Lake
from cld_lake.lake import scores as scores_table
from cld_lake.select._rules import Chosen
from cld_lake.select._stream import (
    _merge_counts,
    _ScoresStream,
    _TopRows,
    open_stream,
    stream_select,
)


def _span_source(location: str, span: list[int] | None) -> _ScoresStream:
    """The scores table of the lake at ``location``, as one span (all row groups: None); its
    checksums are compared by :func:`_check_task` instead."""
    stream = open_stream(Lake(location), check=False)
    if span is not None:
        stream.spans = [span]
    return stream


def _counts_task(location: str, span: list[int]) -> tuple[np.ndarray, np.ndarray]:
    return _span_source(location, span).class_counts()


def _edges_task(location: str, score: str, lowest: bool, buckets: int) -> np.ndarray:
    return _span_source(location, None).edges(score, lowest, buckets)


def _histogram_task(
    location: str,
    span: list[int],
    score: str,
    lowest: bool,
    classes: np.ndarray,
    single: bool,
    edges: np.ndarray,
) -> np.ndarray:
    return _span_source(location, span).histogram(score, lowest, classes, single, edges)


def _keep_task(
    location: str,
    span: list[int],
    score: str,
    lowest: bool,
    classes: np.ndarray,
    single: bool,
    take: np.ndarray,
    bound_key: np.ndarray,
    bound_id: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The span's rows that pass the bounds, cut to each group's take, sorted."""
    source = _span_source(location, span)
    rows = int(source.pf.metadata.row_group(span[0]).num_rows) * len(span)
    top = _TopRows(take, bound_key.copy(), bound_id.copy(), lowest, single, slack=rows)
    source.keep(score, classes, top)
    cls, ids, values = top.result()
    return cls.copy(), ids.copy(), values.copy()


def _check_task(location: str) -> None:
    scores_table.check_scores_file(Lake(location))


class _Cluster:
    """The passes of :func:`stream_select` mapped over the spans of the scores table on a dask
    client; results come back span by span (the kept rows in table order)."""

    def __init__(self, client: Any, location: str, stream: _ScoresStream) -> None:
        self.client = client
        self.location = location
        self.spans = stream.spans
        self.num_rows = stream.num_rows
        self.checked = client.submit(_check_task, location, pure=False)

    def _each(self, fn: Any, *args: Any) -> Any:
        """Results of ``fn(location, span, *args)`` for every span, in span order, at most
        ``IN_FLIGHT_PER_THREAD`` per worker thread in flight."""

        def task(span: list[int]) -> Any:
            return lambda client: client.submit(fn, self.location, span, *args, pure=False)

        window = IN_FLIGHT_PER_THREAD * thread_count(self.client)
        return in_row_order(self.client, (task(span) for span in self.spans), window)

    def class_counts(self) -> tuple[np.ndarray, np.ndarray]:
        classes = np.zeros(0, dtype=np.int64)
        sizes = np.zeros(0, dtype=np.int64)
        for found, found_sizes in self._each(_counts_task):
            classes, sizes = _merge_counts(classes, sizes, found, found_sizes)
        return classes, sizes

    def edges(self, score: str, lowest: bool, buckets: int) -> np.ndarray:
        future = self.client.submit(_edges_task, self.location, score, lowest, buckets)
        return future.result()

    def histogram(
        self, score: str, lowest: bool, classes: np.ndarray, single: bool, edges: np.ndarray
    ) -> np.ndarray:
        hist = np.zeros((1 if single else len(classes), len(edges) + 1), dtype=np.int64)
        for part in self._each(_histogram_task, score, lowest, classes, single, edges):
            hist += part
        return hist

    def keep(self, score: str, classes: np.ndarray, top: _TopRows) -> None:
        args = (score, top.lowest, classes, top.single, top.take, top.bound_key, top.bound_id)
        for cls, ids, values in self._each(_keep_task, *args):
            top.offer(cls, ids, values)
        self.checked.result()  # a damaged table fails here, before any manifest is written


def stream_top_k_on_cluster(
    lake: Lake,
    score: str,
    *,
    fraction: float | None = None,
    count: int | None = None,
    balance: Balance = "proportional",
    lowest: bool = False,
    scheduler: str | None = None,
    n_workers: int | None = None,
) -> Chosen:
    """:func:`stream_top_k` with its passes run by dask workers: the scheduler at
    ``scheduler``, else the active ``distributed.Client``, else a ``LocalCluster`` for this
    call (as ``cld-lake score --engine dask``). The workers open the lake from its path or
    URL; the same rows come back as from one process."""
    stream = open_stream(lake)
    with client_for(lake.root, scheduler, n_workers) as (client, location):
        cluster = _Cluster(client, location, stream)
        return stream_select(
            cluster, score, fraction=fraction, count=count, balance=balance, lowest=lowest
        )
