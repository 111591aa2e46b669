"""The one adapter between cld_lake and Dask ``distributed``: scoring and selection use it.

Everything cld_lake asks of a cluster beyond submitting its own tasks lives here:

- which cluster (:func:`client_for`): ``scheduler="tcp://HOST:PORT"`` connects to a running
  scheduler (``dask scheduler``; its workers must reach the lake at the same path or URL);
  else the active ``distributed.Client`` when there is one; else a ``LocalCluster`` of worker
  processes started for the call (worker threads of this process for a ``memory://`` lake,
  which no other process can see);
- where the workers find the lake (:func:`lake_location`): tasks carry a path or URL, never
  rows (a lake that lives in this process only, ``memory://``, is read by worker threads);
- how results come back (:func:`in_row_order`): at most a window of tasks in flight, results
  taken in submission order one at a time, so the client stays in bounded memory;
- a value every task needs, sent once (:func:`shared`, submitted as a task of its own);
- the address checks and the one-line errors (:func:`check_scheduler_address`,
  :func:`connect`).

Dask is optional: it is imported on first use, with an install hint when it is missing
(:class:`MissingDependencyError`). ``import cld_lake`` never imports it.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from cld_lake.errors import BadInputError, CldLakeError, ScoringError
from cld_lake.storage import StorePath

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
            "score --engine dask and select --dask need dask and distributed; install them "
            "with pip install 'cld-lake[dask]', or score with --engine numpy / drop --dask"
        ) from exc
    return distributed


def lake_location(root: StorePath) -> str:
    """The location of the lake at ``root`` as every worker can open it: an absolute path or
    a URL."""
    return str(root.canonical())


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
def client_for(
    root: StorePath, scheduler: str | None, n_workers: int | None
) -> Iterator[tuple[Any, str]]:
    """The client to run on and the location its workers open the lake at ``root`` from: the
    scheduler at ``scheduler``, else the active client, else a ``LocalCluster`` of
    ``n_workers`` (default: the CPU count, at most 8) for the ``with`` block."""
    distributed = _distributed()
    location = lake_location(root)
    in_process = root.store.process_local
    active = None if scheduler is not None else _active_client()
    if in_process and (scheduler is not None or active is not None):
        raise ScoringError(
            f"{location}: a memory:// lake lives in this process only and the workers of "
            f"{scheduler or 'the active dask client'} cannot open it; write the lake to a path "
            "or URL they reach (s3://...), or run without a cluster of your own "
            "(--engine dask and --dask then run their workers as threads of this process)"
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
                processes=not in_process,
                dashboard_address=None,
            ) as cluster,
            distributed.Client(cluster, set_as_default=False) as client,
        ):
            yield client, location


def thread_count(client: Any) -> int:
    """Worker threads of the cluster behind ``client`` (at least 1)."""
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


def shared(value: Any) -> Any:
    """The task that holds ``value`` on the cluster: submit it once and pass its future to the
    tasks that need the value (a task, unlike scattered data, is recomputed if its worker is
    lost)."""
    return value
