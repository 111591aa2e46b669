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

import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cld_lake.errors import BadInputError, CldLakeError, NotALakeError, ScoringError
from cld_lake.lake.store import Lake, Split
from cld_lake.score._method import Plan
from cld_lake.score._passes import Progress, ScoredChunk, merge_counts, score_blocks

TASKS_PER_WORKER = 4
# Rows per task at most: one result (labels and a float64 score per method) stays a few MiB, so
# the client's memory is bounded (docs/scores.md has the measured client RSS per task size).
MAX_TASK_ROWS = 1 << 18
# Tasks submitted ahead per worker thread: workers stay busy while the client takes a result.
IN_FLIGHT_PER_THREAD = 2
CONNECT_TIMEOUT_S = 10
# Host:port schemes of ``distributed.comm`` a scheduler in another process can listen on.
ADDRESS_SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")
START_ONE = (
    "start one with `dask scheduler` (it prints the address to pass) and workers with "
    "`dask worker ADDRESS`, or leave --scheduler out to run a LocalCluster"
)


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


def lake_location(lake: Lake) -> str:
    """The lake's location as every worker can open it: an absolute path or a URL."""
    path = lake.path
    if isinstance(path, Path):
        return str(path.resolve())
    return str(path)


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
def check_scheduler_address(address: str) -> str:
    """``address`` as ``SCHEME://HOST:PORT`` (``HOST:PORT`` means tcp), or one line saying how
    to write it."""
    _distributed()
    from distributed.comm.addressing import parse_address, parse_host_port, unparse_address

    fix = (
        f"--scheduler {address!r}: not a scheduler address; write tcp://HOST:PORT, e.g. "
        "tcp://127.0.0.1:8786 (what `dask scheduler` prints)"
    )
    try:
        scheme, loc = parse_address(address.strip(), strict=False)
        host, port = parse_host_port(loc)
    except (ValueError, TypeError):
        raise BadInputError(fix) from None
    if scheme not in ADDRESS_SCHEMES or not host or not 0 < port < 65536:
        raise BadInputError(fix)
    return unparse_address(scheme, loc)


def connect(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> Any:
    """A client of the scheduler at ``address`` that has at least one worker; one line (exit 2)
    when the address is malformed, nobody answers within ``timeout_s``, or it has no workers."""
    distributed = _distributed()
    address = check_scheduler_address(address)
    try:
        client = distributed.Client(address, timeout=f"{timeout_s}s", set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise ScoringError(
            f"--scheduler {address}: no dask scheduler answered within {timeout_s:g} s "
            f"({type(exc).__name__}); {START_ONE}"
        ) from None
    try:
        client.wait_for_workers(1, timeout=timeout_s)
    except (OSError, TimeoutError):
        client.close()
        raise ScoringError(
            f"--scheduler {address}: the scheduler has no workers (none joined within "
            f"{timeout_s:g} s); start one with `dask worker {address}`"
        ) from None
    return client


def _active_client() -> Any | None:
    try:
        return _distributed().default_client()
    except ValueError:
        return None


@contextlib.contextmanager
def _client(lake: Lake, scheduler: str | None, n_workers: int | None) -> Iterator[tuple[Any, str]]:
    """The client to run on and the lake location its workers open."""
    distributed = _distributed()
    location = lake_location(lake)
    active = None if scheduler is not None else _active_client()
    if location.startswith("memory://") and (scheduler is not None or active is not None):
        raise ScoringError(
            f"{location}: a memory:// lake lives in this process only and the workers of "
            f"{scheduler or 'the active dask client'} cannot open it; write the lake to a path "
            "or URL they reach (s3://...), or score it without a cluster of your own "
            "(--engine dask then runs its workers as threads of this process)"
        )
    if scheduler is not None:
        client = connect(scheduler)
        try:
            yield client, location
        finally:
            client.close()
    elif active is not None:
        yield active, location
    else:  # a LocalCluster of our own, for this run
        with (
            distributed.LocalCluster(
                n_workers=n_workers or max(1, min(os.cpu_count() or 1, 8)),
                threads_per_worker=1,
                processes=not location.startswith("memory://"),
                dashboard_address=None,
            ) as cluster,
            distributed.Client(cluster, set_as_default=False) as client,
        ):
            yield client, location


def _threads(client: Any) -> int:
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return max(1, sum(int(w.get("nthreads", 1)) for w in workers))


def in_row_order(client: Any, tasks: Iterable[Any], window: int) -> Iterator[Any]:
    """Submit ``tasks`` (each ``submit(client)``) with at most ``window`` in flight and yield
    their results in submission order, one at a time; the rest are cancelled if the consumer
    stops early."""
    todo = iter(tasks)
    pending: deque[Any] = deque()
    try:
        for task in todo:
            pending.append(task(client))
            if len(pending) >= window:
                break
        while pending:
            future = pending.popleft()
            result = future.result()
            future.release()
            task = next(todo, None)
            if task is not None:
                pending.append(task(client))
            yield result
            del result
    finally:
        if pending:
            client.cancel(list(pending))


def _shared(value: Any) -> Any:
    return value


def _on_cluster(
    split: Split,
    block_rows: int | None,
    options: dict[str, Any],
    task: Callable[[RowRange, Any], Any],
    shared: Any,
) -> Iterator[tuple[RowRange, Any]]:
    """``task(range, shared)`` for each row range of ``split``, on the chosen cluster;
    ``(range, result)`` in row order.

    ``shared`` (CLD's reference table, the plans) is sent once, as a task of its own that the
    row tasks depend on: each row task then carries only its :class:`RowRange` (measured: with
    the C x K table in every task, the client grew by about the table's size per task). A task,
    unlike scattered data, is recomputed if the worker holding it is lost.
    """
    task_rows = int(options["task_rows"])
    if task_rows < 1:
        raise ScoringError(f"task_rows must be >= 1, got {task_rows}")
    with _client(split.lake, options["scheduler"], options["n_workers"]) as (client, location):
        threads = _threads(client)
        align = block_rows or split.row_chunk
        cuts = row_ranges(split.num_samples, threads * TASKS_PER_WORKER, align, task_rows)
        ranges = [RowRange(location, split.run, split.name, a, b, block_rows) for a, b in cuts]
        window = IN_FLIGHT_PER_THREAD * threads
        common = client.submit(_shared, shared, pure=False)
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
