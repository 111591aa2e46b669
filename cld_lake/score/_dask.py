"""The Dask engine: the NumPy kernel mapped over row ranges on a ``distributed`` cluster.

Each task opens the lake itself (workers share the file system) and runs the same kernel as
the numpy engine over its row range; only the three sums per row travel back. For the other
methods (``compute_methods``) each task runs the numpy engine's one pass over its range and
sends back every method's final scores. Uses the
active ``distributed.Client`` when there is one, else starts a ``LocalCluster`` of processes
for the run. Dask is optional: install it with ``pip install 'cld-lake[dask]'``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from cld_lake.errors import CldLakeError
from cld_lake.lake.store import Lake, Split
from cld_lake.score._formula import Chunk, Progress, Reference, Sums, sums_over_blocks
from cld_lake.score._method import Plan
from cld_lake.score._passes import ScoredChunk, merge_counts, score_blocks

TASKS_PER_WORKER = 4


class MissingDependencyError(CldLakeError, ImportError):
    """An optional dependency of the requested engine is not installed."""


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:  # pragma: no cover - dask is installed in the dev environment
        raise MissingDependencyError(
            "--engine dask needs dask and distributed; install them with "
            "pip install 'cld-lake[dask]' or choose --engine numpy"
        ) from exc
    return distributed


def row_ranges(num_rows: int, parts: int, align: int) -> list[tuple[int, int]]:
    """About ``parts`` consecutive ranges covering ``[0, num_rows)``, cut at multiples of ``align``."""
    if num_rows == 0:
        return []
    step = -(-num_rows // max(parts, 1))
    step = -(-step // align) * align
    return [(a, min(a + step, num_rows)) for a in range(0, num_rows, step)]


def _task(
    lake_path: str,
    split_name: str,
    reference: Reference,
    start: int,
    stop: int,
    block_rows: int | None,
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Row sums of rows ``[start, stop)``, on a worker: ``(start, labels, a, b, q)``."""
    split = Lake(lake_path).split(split_name)
    chunks = list(sums_over_blocks(split, reference, block_rows=block_rows, start=start, stop=stop))
    joined = [np.concatenate([getattr(c.sums, x) for c in chunks]) for x in ("a", "b", "q")]
    labels = np.concatenate([c.labels for c in chunks])
    return start, labels, joined[0], joined[1], joined[2]


def _methods_task(
    lake_path: str,
    split_name: str,
    plans: Sequence[Plan],
    start: int,
    stop: int,
    block_rows: int | None,
) -> tuple[int, np.ndarray, dict[str, np.ndarray], dict[str, dict[str, int]]]:
    """Every plan's scores for rows ``[start, stop)``, on a worker."""
    split = Lake(lake_path).split(split_name)
    chunks = list(score_blocks(split, plans, block_rows=block_rows, start=start, stop=stop))
    labels = np.concatenate([c.labels for c in chunks])
    scores = {p.name: np.concatenate([c.scores[p.name] for c in chunks]) for p in plans}
    counts = merge_counts([c.counts for c in chunks], [p.name for p in plans])
    return start, labels, scores, counts


def _on_cluster(
    split: Split,
    block_rows: int | None,
    n_workers: int | None,
    submit: Callable[[Any, int, int], Any],
) -> Iterator[Any]:
    """Submit one task per row range (``submit(client, start, stop)``) on the active client or
    a LocalCluster of our own, and yield the results as they complete."""
    distributed = _distributed()
    try:
        client = distributed.default_client()
        own = None
    except ValueError:  # no active client: run on a LocalCluster of our own
        workers = n_workers or max(1, min(os.cpu_count() or 1, 8))
        cluster = distributed.LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = distributed.Client(cluster, set_as_default=False)
        own = (client, cluster)
    try:
        workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
        align = block_rows or split.row_chunk
        ranges = row_ranges(split.num_samples, workers * TASKS_PER_WORKER, align)
        futures = [submit(client, a, b) for a, b in ranges]
        for future in distributed.as_completed(futures, loop=client.loop):
            yield future.result()
            future.release()
    finally:
        if own is not None:
            own[0].close()
            own[1].close()


def compute(
    split: Split,
    reference: Reference,
    *,
    block_rows: int | None = None,
    progress: Progress | None = None,
    n_workers: int | None = None,
) -> Iterator[Chunk]:
    """The three sums for every row of ``split``, computed by Dask workers."""

    # The reference table is small (C x K floats): it travels with each task. (A scattered
    # copy could be lost with a worker that had not finished starting: "lost dependencies".)
    def submit(client: Any, a: int, b: int) -> Any:
        path = str(split.lake.path)
        return client.submit(_task, path, split.name, reference, a, b, block_rows, pure=False)

    for start, labels, a, b, q in _on_cluster(split, block_rows, n_workers, submit):
        yield Chunk(slice(start, start + len(a)), labels, Sums(a, b, q))
        if progress is not None:
            progress(len(a))


def compute_methods(
    split: Split,
    plans: Sequence[Plan],
    *,
    block_rows: int | None = None,
    progress: Progress | None = None,
    n_workers: int | None = None,
) -> Iterator[ScoredChunk]:
    """Every planned method's scores for every row of ``split``, computed by Dask workers (the
    plans, with CLD's small reference table, travel with each task)."""

    def submit(client: Any, a: int, b: int) -> Any:
        path = str(split.lake.path)
        return client.submit(
            _methods_task, path, split.name, list(plans), a, b, block_rows, pure=False
        )

    for start, labels, scores, counts in _on_cluster(split, block_rows, n_workers, submit):
        yield ScoredChunk(slice(start, start + len(labels)), labels, scores, counts)
        if progress is not None:
            progress(len(labels))
