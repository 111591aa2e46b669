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
    """

    def __init__(self, path: StorePath, holder: str, seconds: float | None = None) -> None:
        self.path = path
        self.holder = holder
        self.seconds = lease_seconds() if seconds is None else seconds
        self.token = uuid.uuid4().hex
        self._version: str | None = None
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _body(self) -> bytes:
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

    def try_acquire(self) -> str | None:
        """Take the lease; None on success, else who holds it."""
        for _ in range(5):
            body = self._body()
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
        self._version = self.path.version()
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name="cld-lake-lease", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            with contextlib.suppress(Exception):
                self.renew()

    def renew(self) -> None:
        """Extend the lease; records it lost when another writer has taken it over."""
        with self._lock:
            if self._version is None or self._lost:
                return
            body = self._body()
            if self.path.replace_if(body, self._version):
                self._version = self.path.version()
            else:
                current = _read_lease(self.path) or {}
                self._lost = str(current.get("holder", "another writer"))

    def check(self) -> None:
        """Raise :class:`LakeChangedError` unless this process still holds the lease (called
        before every commit, so a writer paused past its lease never commits over the next)."""
        self.renew()
        if self._lost or self._version is None:
            raise LakeChangedError(
                f"{self.path}: this writer lost its lease to {self._lost or 'another writer'} "
                f"(it did not renew within {self.seconds:.0f} s); nothing more was committed, "
                f"open the lake again"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            if self._version is not None and not self._lost:
                current = _read_lease(self.path)
                if current is not None and current.get("token") == self.token:
                    with contextlib.suppress(FileNotFoundError):
                        self.path.delete()
            self._version = None

    @property
    def held(self) -> bool:
        return self._version is not None and not self._lost


def _read_lease(path: StorePath) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read())
    except FileNotFoundError:
        return None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
