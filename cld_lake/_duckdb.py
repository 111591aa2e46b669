"""The one adapter between cld_lake and DuckDB.

Everything cld_lake asks of DuckDB beyond running SQL lives here:

- :func:`connect`: every connection setting (memory limit, threads, temp directory, join-order
  pinning, no extension autoinstall/autoload); :func:`lock_down`: the sandbox of user SQL;
- :class:`ScanSource`: the base of the Python scan sources (the ``losses`` view, the scoring
  engine's trajectories). It builds on DuckDB's *private* ``duckdb._sources`` module, which
  offers a source the query's filters and asks it for its row count. That module is imported
  here and nowhere else; when it is missing or changed, :data:`SCAN_SOURCES` is False and
  :func:`register` hands DuckDB a plain Arrow stream instead (same rows, no pushdown, join order
  pinned by :func:`connect`). ``tests/test_duckdb_adapter.py`` runs that fallback on purpose;
  the dependency is bounded in ``pyproject.toml`` so a new DuckDB is adopted deliberately;
- the predicate node classes the pushdown analysis matches on (placeholders that match nothing
  when the module is missing);
- SQL quoting (:func:`sql_str`);
- running statements so that they can be stopped (:class:`Runner`: a deadline, Ctrl-C, each
  through ``interrupt()``) and several in a row (:func:`finish`).

This module imports duckdb: import it only where DuckDB is used (``import cld_lake`` must not).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import duckdb

if TYPE_CHECKING:
    import pyarrow as pa

try:  # DuckDB 2.0's private source protocol: filters offered to the source, row counts
    from duckdb._sources import ArrowScanSource as _ScanBase
    from duckdb._sources.nodes import Binary, Col, In, Lit, Postfix, Unary

    _IMPORTED = True
except ImportError:  # pragma: no cover - exercised in a subprocess by tests/test_duckdb_adapter.py
    _ScanBase = object  # type: ignore[assignment,misc]
    _IMPORTED = False

    class _NoNode:  # isinstance() against these is always False: nothing is pushed down
        pass

    Binary = Col = In = Lit = Postfix = Unary = _NoNode  # type: ignore[misc,assignment]

#: Whether sources are registered through ``duckdb._sources`` (pushdown, row counts). Read at
#: call time by :func:`register`, so a test can switch the fallback on.
SCAN_SOURCES: bool = _IMPORTED

Error = duckdb.Error
#: What a locked connection raises for a file outside its list.
SandboxError = duckdb.PermissionException
#: What DuckDB raises for a file it cannot read or write (a full disk among them).
IOError_ = duckdb.IOException
Connection = duckdb.DuckDBPyConnection
T = TypeVar("T")

__all__ = [
    "SCAN_SOURCES",
    "Binary",
    "Col",
    "Connection",
    "Error",
    "IOError_",
    "In",
    "Lit",
    "Postfix",
    "Runner",
    "SandboxError",
    "ScanSource",
    "Stopped",
    "Unary",
    "connect",
    "finish",
    "lock_down",
    "register",
    "sql_str",
]


def sql_str(value: str | os.PathLike[str]) -> str:
    """A SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


def default_threads() -> int:
    return min(os.cpu_count() or 1, 4)


def private_temp_dir(prefix: str = "cld-lake-duckdb-") -> Path:
    """A fresh, not yet created directory under the system temp dir for DuckDB to spill into.

    DuckDB creates it on the first spill and removes it when the connection closes.
    """
    return Path(tempfile.gettempdir()) / f"{prefix}{uuid.uuid4().hex[:12]}"


def connect(
    *,
    memory_limit: str | None = None,
    threads: int | None = None,
    temp_directory: str | os.PathLike[str] | None = None,
    pin_join_order: bool = False,
) -> Connection:
    """An in-memory DuckDB connection with cld_lake's settings.

    Parameters
    ----------
    memory_limit : str, optional
        DuckDB's memory limit (default: DuckDB's own); larger sorts and joins spill to
        ``temp_directory``.
    threads : int, optional
        Worker threads (default: DuckDB's own choice).
    temp_directory : path, optional
        Where DuckDB spills (default: a private directory under the system temp dir).
    pin_join_order : bool
        Keep joins in the order written (the scoring engine's small class table on the build
        side) when a stream cannot state its row count.

    Extensions are never installed or loaded on demand (those cld_lake uses are built in).
    """
    temp = Path(temp_directory) if temp_directory is not None else private_temp_dir()
    config: dict[str, Any] = {
        "temp_directory": str(temp),
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
    }
    if memory_limit is not None:
        config["memory_limit"] = memory_limit
    if threads is not None:
        config["threads"] = threads
    con = duckdb.connect(config=config)
    if pin_join_order:
        con.execute("SET disabled_optimizers = 'join_order,build_side_probe_side'")
    return con


def lock_down(con: Connection, files: Sequence[str | os.PathLike[str]] = ()) -> None:
    """Sandbox ``con`` for user SQL, for good.

    Afterwards the connection opens no file except its spill directory and exactly ``files``
    (read or write: DuckDB does not tell the two apart), installs or loads no extension, and
    no statement can change a setting (``SET``, ``RESET``, ``PRAGMA`` ... fail), so neither
    can be undone. Python objects registered on the connection (the lake's views) stay
    readable, before or after.
    """
    temp = con.execute("SELECT current_setting('temp_directory')").fetchone()[0]
    files = sorted({str(p) for p in files})
    # allowed_* can only be set on a running database, and only before access is disabled.
    con.execute(f"SET allowed_directories = [{sql_str(os.path.join(temp, ''))}]")
    con.execute(f"SET allowed_paths = [{', '.join(map(sql_str, files))}]")
    con.execute("SET allow_community_extensions = false")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


class ScanSource(_ScanBase):  # type: ignore[misc,valid-type]
    """A table DuckDB reads from Python, batch by batch, optionally with filter pushdown.

    Subclasses define :attr:`schema` and :meth:`batches`; they may override :meth:`accepts`
    (take a filter and apply it exactly in :meth:`batches`) and :meth:`rows` (the row count, so
    DuckDB's join planner knows the size). Every scan calls :meth:`batches` afresh (self-joins
    and sub-queries work). An exception raised while reading is kept in :attr:`failure`, so the
    caller can report it instead of DuckDB's wrapped traceback text.
    """

    schema_is_stable = True

    def __init__(self) -> None:
        if _IMPORTED:
            super().__init__(self)
        self.failure: BaseException | None = None

    @property
    def schema(self) -> pa.Schema:
        raise NotImplementedError

    def batches(
        self, columns: list[str] | None, filters: Sequence[Any]
    ) -> Iterator[pa.RecordBatch]:
        """Record batches holding ``columns`` (None: all) of the rows passing ``filters``."""
        raise NotImplementedError

    def accepts(self, predicate: Any) -> bool:
        return False

    def rows(self) -> int | None:
        return None

    def reader(
        self, columns: list[str] | None = None, filters: Sequence[Any] = ()
    ) -> pa.RecordBatchReader:
        import pyarrow as pa

        schema = self.schema
        if columns is not None:
            schema = pa.schema([schema.field(c) for c in columns])
        return pa.RecordBatchReader.from_batches(schema, self._kept(columns, filters))

    def _kept(self, columns: list[str] | None, filters: Sequence[Any]) -> Iterator[Any]:
        try:
            yield from self.batches(columns, filters)
        except Exception as exc:
            self.failure = exc
            raise

    # DuckDB's source protocol (used when duckdb._sources is present) ---------------------
    def stream(self, columns: Sequence[int] | None, filters: Sequence[Any]) -> tuple[object, bool]:
        names = self.schema.names
        chosen = None if columns is None else [names[i] for i in columns]
        return self.reader(chosen, filters).__arrow_c_stream__(), chosen is not None

    # The Arrow PyCapsule interface (the fallback: every column, no filters) ---------------
    def __arrow_c_schema__(self) -> Any:
        return self.schema.__arrow_c_schema__()

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        return self.reader().__arrow_c_stream__(requested_schema)


class _PlainStream:
    """A source seen by DuckDB as a bare Arrow stream (the fallback without ``duckdb._sources``)."""

    def __init__(self, source: ScanSource) -> None:
        self.source = source

    def __arrow_c_schema__(self) -> Any:
        return self.source.__arrow_c_schema__()

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        return self.source.__arrow_c_stream__(requested_schema)


def register(con: Connection, name: str, source: ScanSource) -> None:
    """Register ``source`` as table ``name``: as a scan source, or as a plain Arrow stream."""
    con.register(name, source if SCAN_SOURCES else _PlainStream(source))


def finish(con: Connection) -> None:
    """Run the result ``con.execute()`` left pending to its end without reading its rows, so
    the next statement can run on ``con`` (DuckDB refuses while a result is unfinished)."""
    con.complete()


class Stopped(Exception):
    """A :class:`Runner` stopped the statement: ``reason`` is ``"timeout"``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Runner:
    """Runs the DuckDB calls of one connection so that they can be stopped.

    Each call runs in a helper thread while the calling thread waits: a ``KeyboardInterrupt``
    there (Ctrl-C) or the deadline (``timeout`` seconds after the runner was made) passing
    makes it call ``con.interrupt()`` until the call has ended (DuckDB stops the statement at
    its next check). Then Ctrl-C is raised again as ``KeyboardInterrupt`` and the deadline as
    :class:`Stopped`; the connection is idle either way, so the caller can close it. (A
    thread blocked inside DuckDB does not run Python's signal handler: hence the helper.)
    """

    POLL = 0.05  # seconds between checks of the deadline, and between interrupts

    def __init__(self, con: Connection, timeout: float | None = None) -> None:
        self.con = con
        self.deadline = None if timeout is None else time.monotonic() + timeout

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def __call__(self, call: Callable[[], T]) -> T:
        if self.expired():
            raise Stopped("timeout")
        box: dict[str, Any] = {}
        done = threading.Event()

        def work() -> None:
            try:
                box["value"] = call()
            except BaseException as exc:
                box["error"] = exc
            finally:
                done.set()

        threading.Thread(target=work, name="cld-lake-duckdb", daemon=True).start()
        reason = None
        try:
            while not done.wait(self._wait()):
                if self.expired():
                    reason = "timeout"
                    break
        except KeyboardInterrupt:
            reason = "interrupt"
        if reason is not None:
            while not done.wait(self.POLL):
                self.con.interrupt()
            if "error" in box or reason == "interrupt":
                if reason == "interrupt":
                    raise KeyboardInterrupt
                raise Stopped(reason) from box["error"]
        if "error" in box:
            raise box["error"]
        return box["value"]  # type: ignore[no-any-return]

    def _wait(self) -> float:
        if self.deadline is None:
            return self.POLL * 4
        return max(0.0, min(self.POLL * 4, self.deadline - time.monotonic()))
