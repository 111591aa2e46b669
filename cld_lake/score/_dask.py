"""The Dask engine: the numpy engine's pass mapped over row ranges on a ``distributed`` cluster.

A task carries where the rows are, never the rows: the lake's location (an absolute path the
workers share, or an object-store URL), the run and split and a row range. The plans (with
CLD's per-class reference table, C x K floats) are sent once, as a task the row tasks depend
on. Each worker opens the lake itself and runs the numpy engine's pass over its range; only
every method's final scores per row travel back.

The client stays in bounded memory, whatever N: a task covers at most :data:`MAX_TASK_ROWS`
rows, at most :data:`IN_FLIGHT_PER_THREAD` tasks per worker thread are submitted at a time, and
results are taken in row order, one at a time, and handed on before the next is fetched (the
scorer writes them out as they come).

The cluster: ``scheduler="tcp://HOST:PORT"`` connects to a running scheduler (``dask
scheduler``; its workers must reach the lake at the same path or URL); else the active
``distributed.Client`` when there is one; else a ``LocalCluster`` of worker processes started for
the run (worker threads of this process for a ``memory://`` lake, which no other process can
see). Dask is optional: install it with ``pip install 'cld-lake[dask]'``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cld_lake._dask import IN_FLIGHT_PER_THREAD, client_for, in_row_order, shared, thread_count
from cld_lake.errors import NotALakeError, ScoringError
from cld_lake.lake.store import Lake, Split
from cld_lake.score._method import Plan
from cld_lake.score._passes import Progress, ScoredChunk, merge_counts, score_blocks

TASKS_PER_WORKER = 4
# Rows per task at most: one result (labels and a float64 score per method) stays a few MiB, so
# the client's memory is bounded (docs/scores.md has the measured client RSS per task size).
MAX_TASK_ROWS = 1 << 18


# --- what a task carries ---------------------------------------------------------------------
@dataclass(frozen=True)
class RowRange:
    """Rows ``[start, stop)`` of split ``split`` of run ``run`` of the lake at ``location``."""

    location: str
    run: str
    split: str
    start: int
    stop: int
    block_rows: int | None

    def open(self) -> Split:
        """The split, opened by the worker itself."""
        return Lake(self.location).split(self.split, self.run)


def row_ranges(
    num_rows: int, parts: int, align: int, max_rows: int = MAX_TASK_ROWS
) -> list[tuple[int, int]]:
    """Consecutive ranges covering ``[0, num_rows)``: about ``parts`` of them, none longer
    than ``max_rows`` (rounded up to ``align``), cut at multiples of ``align``."""
    if num_rows == 0:
        return []
    step = min(-(-num_rows // max(parts, 1)), max_rows)
    step = -(-step // align) * align
    return [(a, min(a + step, num_rows)) for a in range(0, num_rows, step)]


def _task(
    where: RowRange, plans: Sequence[Plan]
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, dict[str, int]]]:
    """Labels and every plan's scores of a row range, on a worker."""
    split = where.open()
    chunks = list(
        score_blocks(split, plans, block_rows=where.block_rows, start=where.start, stop=where.stop)
    )
    labels = np.concatenate([c.labels for c in chunks])
    scores = {p.name: np.concatenate([c.scores[p.name] for c in chunks]) for p in plans}
    return labels, scores, merge_counts([c.counts for c in chunks], [p.name for p in plans])


# --- the cluster ---------------------------------------------------------------------------------
def _on_cluster(
    split: Split,
    block_rows: int | None,
    options: dict[str, Any],
    task: Callable[[RowRange, Any], Any],
    common_value: Any,
) -> Iterator[tuple[RowRange, Any]]:
    """``task(range, common_value)`` for each row range of ``split``, on the chosen cluster;
    ``(range, result)`` in row order.

    ``common_value`` (CLD's reference table, the plans) is sent once, as a task of its own that
    the row tasks depend on: each row task then carries only its :class:`RowRange` (with the
    C x K table in every task, the client would grow by about the table's size per task). A
    task, unlike scattered data, is recomputed if the worker holding it is lost.
    """
    task_rows = int(options["task_rows"])
    if task_rows < 1:
        raise ScoringError(f"task_rows must be >= 1, got {task_rows}")
    scheduler, n_workers = options["scheduler"], options["n_workers"]
    with client_for(split.lake.root, scheduler, n_workers) as (client, location):
        threads = thread_count(client)
        align = block_rows or split.row_chunk
        cuts = row_ranges(split.num_samples, threads * TASKS_PER_WORKER, align, task_rows)
        ranges = [RowRange(location, split.run, split.name, a, b, block_rows) for a, b in cuts]
        window = IN_FLIGHT_PER_THREAD * threads
        common = client.submit(shared, common_value, pure=False)
        submits = (_submitter(task, where, common) for where in ranges)
        results = in_row_order(client, submits, window)
        try:
            yield from zip(ranges, results, strict=True)
        except NotALakeError as exc:  # raised on a worker: it does not see the lake
            raise ScoringError(
                f"a dask worker could not read {location}: {' '.join(str(exc).split())}; the "
                "workers must reach the lake at this path or URL (a shared file system or "
                "object storage)"
            ) from exc
        finally:
            common.release()


def _submitter(task: Callable[[RowRange, Any], Any], where: RowRange, common: Any) -> Any:
    return lambda client: client.submit(task, where, common, pure=False)


def compute(
    split: Split,
    plans: Sequence[Plan],
    *,
    block_rows: int | None = None,
    progress: Progress | None = None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    task_rows: int = MAX_TASK_ROWS,
) -> Iterator[ScoredChunk]:
    """Every planned method's scores for every row of ``split``, computed by Dask workers, in
    row order.

    ``scheduler``: the address of a running scheduler (else the active client, else a
    LocalCluster of ``n_workers`` processes). ``task_rows``: rows per task at most (rounded up
    to whole blocks), which bounds what one result holds in the client.
    """
    options = {"scheduler": scheduler, "n_workers": n_workers, "task_rows": task_rows}
    for where, result in _on_cluster(split, block_rows, options, _task, list(plans)):
        labels, scores, counts = result
        yield ScoredChunk(slice(where.start, where.stop), labels, scores, counts)
        if progress is not None:
            progress(where.stop - where.start)
