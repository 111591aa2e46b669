"""Leases: the single-writer rule on a store without ``flock``, built on its conditional
writes (put-if-absent, replace-if-unchanged)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
import weakref
from typing import TYPE_CHECKING, Any

from cld_lake.errors import LakeChangedError
from cld_lake.storage._abc import Lock

if TYPE_CHECKING:
    from cld_lake.storage._path import StorePath

LEASE_SECONDS_ENV = "CLD_LAKE_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 60.0


def lease_seconds() -> float:
    """How long a lease lasts without renewal (``CLD_LAKE_LEASE_SECONDS``, default 60)."""
    try:
        return max(0.5, float(os.environ.get(LEASE_SECONDS_ENV, DEFAULT_LEASE_SECONDS)))
    except ValueError:
        return DEFAULT_LEASE_SECONDS


class Lease(Lock):
    """An exclusive lease on an object store: the ``flock`` of a remote lake.

    Taken by creating ``path`` with a conditional PUT (put-if-absent); the object names the
    holder and the time the lease expires. A background thread renews it (a conditional PUT on
    the version it last wrote) every third of its duration; a holder killed by ``kill -9``
    stops renewing and the lease expires, after which the next writer takes it over with a
    conditional PUT on the expired version (two writers racing for it: one wins). A holder
    that finds its lease taken over stops: :meth:`check` raises before its next commit.

    The renewal thread stops when the lease is released, and when the lease is
    garbage-collected while held (its owner, a writer, dropped without being closed): the
    thread then gives the lease up, as the kernel drops an ``flock`` whose file is closed.
    """

    def __init__(self, path: StorePath, holder: str, seconds: float | None = None) -> None:
        self.path = path
        self.holder = holder
        self.seconds = lease_seconds() if seconds is None else seconds
        self.token = uuid.uuid4().hex
        self._holding = _Holding(path, holder, self.token, self.seconds)
        self._stop = self._holding.stop  # set: the renewal thread ends
        self._thread: threading.Thread | None = None
        self._on_drop: weakref.finalize[Any, Any] | None = None

    def try_acquire(self) -> str | None:
        """Take the lease; None on success, else who holds it."""
        for _ in range(5):
            body = self._holding.body()
            if self.path.put_if_absent(body) and self._still_ours():
                self._took()
                return None
            version = self.path.version()
            if version is None:
                continue  # released between the two calls: try again
            current = _read_lease(self.path)
            if current is not None and float(current.get("expires_at", 0)) > time.time():
                until = time.strftime("%H:%M:%S UTC", time.gmtime(float(current["expires_at"])))
                return f"{current.get('holder', 'another writer')} (lease on {self.path} until {until}, renewed while it runs)"
            if self.path.replace_if(body, version) and self._still_ours():  # expired: take over
                self._took()
                return None
        return f"another writer (lease on {self.path} changes hands as we look; try again)"

    def _still_ours(self) -> bool:
        """Read the lease back: a store that ignores the conditional header (it accepts every
        PUT) shows another writer's token here when one raced us; then nobody may trust the
        lease, and this writer does not take it."""
        current = _read_lease(self.path)
        return current is not None and current.get("token") == self.token

    def _took(self) -> None:
        holding = self._holding
        holding.version = self.path.version()
        holding.abandoned = False
        holding.stop.clear()
        # The thread holds the holding, never this lease: a lease nobody holds any more is
        # collected, and its finalizer stops the thread.
        self._thread = threading.Thread(
            target=_renew_until_stopped,
            args=(holding,),
            name=f"cld-lake-lease {self.path}",
            daemon=True,
        )
        if self._on_drop is not None:
            self._on_drop.detach()
        self._on_drop = weakref.finalize(self, _abandon, holding)
        self._on_drop.atexit = False  # at exit the lease expires, as it always did
        self._thread.start()

    def renew(self) -> None:
        """Extend the lease; records it lost when another writer has taken it over."""
        self._holding.renew()

    def check(self) -> None:
        """Raise :class:`LakeChangedError` unless this process still holds the lease (called
        before every commit, so a writer paused past its lease never commits over the next)."""
        holding = self._holding
        holding.renew()
        if holding.lost or holding.version is None:
            raise LakeChangedError(
                f"{self.path}: this writer lost its lease to {holding.lost or 'another writer'} "
                f"(it did not renew within {self.seconds:.0f} s); nothing more was committed, "
                f"open the lake again"
            )

    def release(self) -> None:
        if self._on_drop is not None:
            self._on_drop.detach()
            self._on_drop = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._holding.give_up()

    @property
    def held(self) -> bool:
        return self._holding.version is not None and not self._holding.lost


class _Holding:
    """What a lease's renewal thread shares with its :class:`Lease`: where the lease is, the
    version this holder last wrote, whether it was lost, and the event that stops the thread."""

    def __init__(self, path: StorePath, holder: str, token: str, seconds: float) -> None:
        self.path = path
        self.holder = holder
        self.token = token
        self.seconds = seconds
        self.version: str | None = None
        self.lost: str | None = None
        #: the lease was garbage-collected while held: the thread gives it up as it ends
        self.abandoned = False
        self.stop = threading.Event()
        self._lock = threading.Lock()

    def body(self) -> bytes:
        now = time.time()
        return json.dumps(
            {
                "holder": self.holder,
                "token": self.token,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "renewed_at": now,
                "expires_at": now + self.seconds,
            },
            sort_keys=True,
        ).encode()

    def renew(self) -> None:
        with self._lock:
            if self.version is None or self.lost:
                return
            if self.path.replace_if(self.body(), self.version):
                self.version = self.path.version()
            else:
                current = _read_lease(self.path) or {}
                self.lost = str(current.get("holder", "another writer"))

    def give_up(self) -> None:
        """Delete the lease object unless another writer has taken it over."""
        with self._lock:
            if self.version is not None and not self.lost:
                current = _read_lease(self.path)
                if current is not None and current.get("token") == self.token:
                    with contextlib.suppress(FileNotFoundError):
                        self.path.delete()
            self.version = None


def _renew_until_stopped(holding: _Holding) -> None:
    """The renewal thread: renew every third of the lease's duration until stopped; give the
    lease up when its owner was dropped while holding it."""
    while not holding.stop.wait(holding.seconds / 3):
        with contextlib.suppress(Exception):
            holding.renew()
    if holding.abandoned:
        with contextlib.suppress(Exception):
            holding.give_up()


def _abandon(holding: _Holding) -> None:
    """A held lease was garbage-collected: end its thread (which then gives the lease up; a
    finalizer runs wherever the collection happens, so it does no I/O itself)."""
    holding.abandoned = True
    holding.stop.set()


def _read_lease(path: StorePath) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read())
    except FileNotFoundError:
        return None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
