"""Where a lake lives: a local directory or a prefix on an object store.

A local lake is a :class:`pathlib.Path` and keeps the fast path (``pread``, ``flock``,
``rename``). Any other location is an :class:`ObjectPath`: a key prefix on an fsspec
filesystem (``s3://``, ``gs://``, ``memory://``) with the subset of the ``pathlib`` API the lake
uses, so the same code reads and writes both. What an object store cannot do like a directory
(an atomic rename, a lock) is done here with what it can do:

- a file is replaced atomically by one PUT of its whole content (S3, GCS and fsspec's memory
  filesystem never show a half-written object);
- a lock is a *lease*: an object created by a conditional write (put-if-absent), naming its
  holder and an expiry time that the holder renews while it runs (:class:`Lease`).

Credentials and endpoints come from the standard environment of each store (for S3:
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` or ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``,
``AWS_DEFAULT_REGION``; for GCS: ``GOOGLE_APPLICATION_CREDENTIALS``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cld_lake.errors import BadInputError, CldLakeError, LakeChangedError

SCHEMES = ("s3", "gs", "memory")
_ALIASES = {"s3a": "s3", "gcs": "gs"}
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")
LEASE_SECONDS_ENV = "CLD_LAKE_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 60.0


def is_url(spec: object) -> bool:
    return isinstance(spec, str) and _URL.match(spec) is not None


def location(spec: str | os.PathLike[str] | ObjectPath) -> Path | ObjectPath:
    """The lake location ``spec`` names: a local path (plain or ``file://``) or an object-store
    URL. :class:`BadInputError` for a scheme this package cannot reach."""
    if isinstance(spec, ObjectPath | Path):
        return spec
    text = os.fspath(spec)
    m = _URL.match(text)
    if not m:
        return Path(text)
    scheme, rest = m.group(1).lower(), m.group(2)
    scheme = _ALIASES.get(scheme, scheme)
    if scheme == "file":
        return Path(urllib.parse.unquote(urllib.parse.urlparse(text).path))
    if scheme not in SCHEMES:
        raise BadInputError(
            f"{text}: unknown URL scheme {scheme!r}; give a local path or a file://, "
            f"{', '.join(s + '://' for s in SCHEMES)} URL"
        )
    key = rest.strip("/")
    if not key:
        raise BadInputError(f"{text}: no bucket in the URL; write {scheme}://BUCKET/PATH")
    return ObjectPath(filesystem(scheme), scheme, key)


_ENV_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "CLD_LAKE_CONNECT_TIMEOUT",
)
_FILESYSTEMS: dict[tuple[str, ...], Any] = {}


def filesystem(scheme: str) -> Any:
    """The fsspec filesystem for ``scheme``, configured from the environment (one per
    scheme and environment, so a changed endpoint or credential gets a new client); listings
    are never cached (another process may commit at any time)."""
    key = (scheme, *(os.environ.get(k, "") for k in _ENV_KEYS))
    fs = _FILESYSTEMS.get(key)
    if fs is None:
        fs = _FILESYSTEMS[key] = _new_filesystem(scheme)
    return fs


def _new_filesystem(scheme: str) -> Any:
    if scheme == "memory":
        import fsspec

        return fsspec.filesystem("memory")
    if scheme == "s3":
        try:
            import s3fs
        except ImportError as exc:
            raise BadInputError(
                "s3:// lakes need the s3fs package; install cld_lake[remote]"
            ) from exc
        timeout = float(os.environ.get("CLD_LAKE_CONNECT_TIMEOUT", "10"))
        return s3fs.S3FileSystem(
            skip_instance_cache=True,
            use_listings_cache=False,
            config_kwargs={
                "connect_timeout": timeout,
                "read_timeout": 120,
                "retries": {"max_attempts": 2, "mode": "standard"},
            },
        )
    try:
        import gcsfs
    except ImportError as exc:
        raise BadInputError("gs:// lakes need the gcsfs package; pip install gcsfs") from exc
    return gcsfs.GCSFileSystem(skip_instance_cache=True, use_listings_cache=False)


@dataclass(frozen=True)
class _Stat:
    st_size: int
    st_mtime: float


class ObjectPath:
    """A key on an object store, with the ``pathlib.Path`` methods the lake uses.

    ``str()`` is the URL. Directories are key prefixes: :meth:`mkdir` does nothing, a
    "directory" exists while a key below it does.
    """

    __slots__ = ("fs", "key", "scheme")

    def __init__(self, fs: Any, scheme: str, key: str) -> None:
        self.fs = fs
        self.scheme = scheme
        self.key = key.strip("/")

    @property
    def _fs(self) -> _Guarded:
        """The filesystem, its errors about credentials, endpoint and bucket in one line."""
        return _Guarded(self.fs, self)

    # --- names ----------------------------------------------------------------------------
    @property
    def _fs_key(self) -> str:
        return f"/{self.key}" if self.scheme == "memory" else self.key

    def __str__(self) -> str:
        return f"{self.scheme}://{self.key}"

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and (self.scheme, self.key) == (
            other.scheme,
            other.key,
        )

    def __hash__(self) -> int:
        return hash((self.scheme, self.key))

    def __lt__(self, other: ObjectPath) -> bool:
        return str(self) < str(other)

    def __truediv__(self, other: str | os.PathLike[str]) -> ObjectPath:
        part = os.fspath(other).strip("/")
        return ObjectPath(self.fs, self.scheme, f"{self.key}/{part}" if part else self.key)

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        name = self.name
        i = name.rfind(".")
        return name[i:] if 0 < i < len(name) - 1 else ""

    @property
    def stem(self) -> str:
        return self.name[: len(self.name) - len(self.suffix)]

    @property
    def parent(self) -> ObjectPath:
        head = self.key.rsplit("/", 1)[0] if "/" in self.key else self.key
        return ObjectPath(self.fs, self.scheme, head)

    def with_name(self, name: str) -> ObjectPath:
        return self.parent / name

    def relative_to(self, other: ObjectPath) -> Path:
        if self.key == other.key:
            return Path(".")
        prefix = other.key + "/"
        if not self.key.startswith(prefix):
            raise ValueError(f"{self} is not below {other}")
        return Path(self.key[len(prefix) :])

    def is_relative_to(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and (
            self.key == other.key or self.key.startswith(other.key + "/")
        )

    def resolve(self) -> ObjectPath:
        return self

    def expanduser(self) -> ObjectPath:
        return self

    # --- queries --------------------------------------------------------------------------
    def exists(self) -> bool:
        return bool(self._fs.exists(self._fs_key))

    def is_dir(self) -> bool:
        return bool(self._fs.isdir(self._fs_key))

    def is_file(self) -> bool:
        return bool(self._fs.isfile(self._fs_key))

    def stat(self) -> _Stat:
        info = self._fs.info(self._fs_key)
        mtime = info.get("LastModified") or info.get("created") or info.get("mtime") or 0
        if hasattr(mtime, "timestamp"):
            mtime = mtime.timestamp()
        return _Stat(int(info.get("size") or 0), float(mtime))

    def iterdir(self) -> Iterator[ObjectPath]:
        try:
            entries = self._fs.ls(self._fs_key, detail=False)
        except FileNotFoundError:
            return
        for entry in entries:
            name = str(entry).rstrip("/").rsplit("/", 1)[-1]
            if name:
                yield self / name

    def glob(self, pattern: str) -> Iterator[ObjectPath]:
        for entry in self._fs.glob(f"{self._fs_key}/{pattern}"):
            yield ObjectPath(self.fs, self.scheme, str(entry))

    def rglob(self, pattern: str) -> Iterator[ObjectPath]:
        for entry in self.walk_files():
            if Path(entry.name).match(pattern):
                yield entry

    def walk_files(self) -> Iterator[ObjectPath]:
        """Every object below this prefix (the prefix itself excluded)."""
        try:
            found = self._fs.find(self._fs_key)
        except FileNotFoundError:
            return
        for entry in found:
            if str(entry).strip("/") != self.key:
                yield ObjectPath(self.fs, self.scheme, str(entry))

    # --- bytes ----------------------------------------------------------------------------
    def read_bytes(self) -> bytes:
        return bytes(self._fs.cat_file(self._fs_key))

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes | bytearray | memoryview) -> int:
        """Replace the object with ``data`` in one PUT."""
        self._fs.pipe_file(self._fs_key, bytes(data))
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def open(self, mode: str = "rb", **kwargs: Any) -> Any:
        return self._fs.open(self._fs_key, mode, **kwargs)

    def upload(self, local: Path) -> None:
        """Replace the object with the content of the local file ``local`` (one PUT, or a
        multipart upload that becomes visible whole when it completes)."""
        self._fs.put_file(str(local), self._fs_key)

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self._fs.rm_file(self._fs_key)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Object stores have no directories: nothing to create."""

    def rmtree(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._fs.rm(self._fs_key, recursive=True)

    # --- conditional writes ---------------------------------------------------------------
    def create(self, data: bytes) -> bool:
        """Create the object with ``data`` unless it exists (one conditional PUT); return
        whether this call created it."""
        try:
            if self.scheme == "memory":
                with _MEMORY_LOCK:
                    self._fs.pipe_file(self._fs_key, data, mode="create")
            else:
                self._fs.pipe_file(self._fs_key, data, mode="create")
        except FileExistsError:
            return False
        return True

    def version(self) -> str | None:
        """A tag of the object's current content (the ETag on S3/GCS); None when absent."""
        if self.scheme == "memory":
            try:
                return hashlib.sha1(self.read_bytes()).hexdigest()
            except FileNotFoundError:
                return None
        try:
            info = self._fs.info(self._fs_key)
        except FileNotFoundError:
            return None
        tag = info.get("ETag") or info.get("etag") or info.get("generation")
        return None if tag is None else str(tag)

    def replace_if(self, data: bytes, version: str) -> bool:
        """Replace the object with ``data`` only while its content is still ``version``
        (one conditional PUT: ``If-Match`` on S3, the generation on GCS); return whether it
        was replaced."""
        if self.scheme == "memory":
            with _MEMORY_LOCK:
                if self.version() != version:
                    return False
                self._fs.pipe_file(self._fs_key, data)
                return True
        if self.scheme == "s3":
            bucket, _, key = self.key.partition("/")
            try:
                self._fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfMatch=version)
            except (OSError, FileExistsError) as exc:
                if "pre-condition" in str(exc) or "PreconditionFailed" in str(exc):
                    return False
                raise
            return True
        try:  # gcs: the object's generation must still match
            self._fs.pipe_file(self._fs_key, data, if_generation_match=int(version))
        except (OSError, ValueError):
            return False
        return True


class _Guarded:
    """Calls an fsspec filesystem's methods inside :func:`remote_errors`."""

    __slots__ = ("_fs", "_path")

    def __init__(self, fs: Any, path: ObjectPath) -> None:
        self._fs = fs
        self._path = path

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._fs, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            with remote_errors(self._path):
                return method(*args, **kwargs)

        return call


_MEMORY_LOCK = threading.Lock()


def is_remote(path: object) -> bool:
    return isinstance(path, ObjectPath)


def list_names(path: Path | ObjectPath) -> set[str]:
    """Names directly under ``path`` (empty when it does not exist)."""
    if isinstance(path, ObjectPath):
        return {p.name for p in path.iterdir()}
    try:
        return set(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return set()


def remove_tree(path: Path | ObjectPath) -> None:
    """Delete ``path`` and everything below it (no error when it is gone)."""
    if isinstance(path, ObjectPath):
        path.rmtree()
        return
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def tree_bytes(path: Path | ObjectPath) -> int:
    """Bytes stored below ``path``."""
    if isinstance(path, ObjectPath):
        found = path.fs.find(path._fs_key, detail=True)
        return sum(int(v.get("size") or 0) for v in found.values())
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(root, f))
    return total


def check_reachable(path: ObjectPath) -> None:
    """Probe the bucket of ``path`` once, so that a wrong bucket, missing credentials or an
    unreachable endpoint fail up front with one line naming the URL and what to set."""
    with remote_errors(path):
        if path.scheme == "memory":
            return
        bucket = path.key.split("/", 1)[0]
        if not path.fs.exists(bucket):
            raise BadInputError(
                f"{path}: bucket {bucket!r} does not exist (or these credentials cannot see "
                f"it); create it first or fix the URL"
            )


@contextlib.contextmanager
def remote_errors(path: ObjectPath) -> Iterator[None]:
    """Turn the object store client's errors about the URL, credentials and endpoint into
    one-line :class:`BadInputError` naming what to set."""
    try:
        yield
    except CldLakeError:
        raise
    except Exception as exc:
        message = _remote_problem(path, exc)
        if message is None:
            raise
        raise BadInputError(message) from exc


def _remote_problem(path: ObjectPath, exc: BaseException) -> str | None:
    name = type(exc).__name__
    text = " ".join(str(exc).split())[:200]
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    if name in ("NoCredentialsError", "PartialCredentialsError", "NoAuthTokenError") or (
        "credentials" in text.lower() and "could not" in text.lower()
    ):
        return (
            f"{path}: no credentials for {path.scheme}://; set AWS_ACCESS_KEY_ID and "
            f"AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
            if path.scheme == "s3"
            else f"{path}: no credentials; set GOOGLE_APPLICATION_CREDENTIALS"
        )
    if isinstance(exc, ValueError) and "Invalid endpoint" in text:
        return (
            f"{path}: {text}; set AWS_ENDPOINT_URL to the store's http(s)://HOST[:PORT] "
            f"(or unset it for AWS)"
        )
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError") or (
        "connect" in text.lower() and ("endpoint" in text.lower() or "timeout" in text.lower())
    ):
        where = endpoint or "the default endpoint"
        return f"{path}: cannot reach {where} ({text}); check AWS_ENDPOINT_URL and the network"
    if name in ("InvalidAccessKeyId", "SignatureDoesNotMatch") or any(
        k in text for k in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied")
    ):
        return f"{path}: access denied ({text}); check the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
    if isinstance(exc, PermissionError):
        return f"{path}: access denied ({text}); check the credentials"
    if name == "NoSuchBucket" or "bucket does not exist" in text.lower():
        bucket = path.key.split("/", 1)[0]
        return f"{path}: bucket {bucket!r} does not exist; create it first or fix the URL"
    return None


# --- leases: the single-writer rule on stores without flock -------------------------------


def lease_seconds() -> float:
    """How long a lease lasts without renewal (``CLD_LAKE_LEASE_SECONDS``, default 60)."""
    try:
        return max(0.5, float(os.environ.get(LEASE_SECONDS_ENV, DEFAULT_LEASE_SECONDS)))
    except ValueError:
        return DEFAULT_LEASE_SECONDS


class Lease:
    """An exclusive lease on an object store: the ``flock`` of a remote lake.

    Taken by creating ``path`` with a conditional PUT (put-if-absent); the object names the
    holder and the time the lease expires. A background thread renews it (a conditional PUT on
    the version it last wrote) every third of its duration; a holder killed by ``kill -9``
    stops renewing and the lease expires, after which the next writer takes it over with a
    conditional PUT on the expired version (two writers racing for it: one wins). A holder
    that finds its lease taken over stops: :meth:`check` raises before its next commit.
    """

    def __init__(self, path: ObjectPath, holder: str, seconds: float | None = None) -> None:
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
            if self.path.create(body) and self._still_ours():
                self._took(body)
                return None
            version = self.path.version()
            if version is None:
                continue  # released between the two calls: try again
            current = _read_lease(self.path)
            if current is not None and float(current.get("expires_at", 0)) > time.time():
                until = time.strftime("%H:%M:%S UTC", time.gmtime(float(current["expires_at"])))
                return f"{current.get('holder', 'another writer')} (lease on {self.path} until {until}, renewed while it runs)"
            if self.path.replace_if(body, version) and self._still_ours():  # expired: take over
                self._took(body)
                return None
        return f"another writer (lease on {self.path} changes hands as we look; try again)"

    def _still_ours(self) -> bool:
        """Read the lease back: a store that ignores the conditional header (it accepts every
        PUT) shows another writer's token here when one raced us; then nobody may trust the
        lease, and this writer does not take it."""
        current = _read_lease(self.path)
        return current is not None and current.get("token") == self.token

    def _took(self, body: bytes) -> None:
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
                        self.path.unlink(missing_ok=True)
            self._version = None

    @property
    def held(self) -> bool:
        return self._version is not None and not self._lost


def _read_lease(path: ObjectPath) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@contextlib.contextmanager
def blocking_lease(path: ObjectPath, holder: str, timeout: float = 120.0) -> Iterator[Lease]:
    """Hold the lease on ``path`` for a short critical section, waiting for it if needed."""
    lease = Lease(path, holder)
    deadline = time.monotonic() + timeout
    delay = 0.02
    while (held_by := lease.try_acquire()) is not None:
        if time.monotonic() > deadline:
            from cld_lake.errors import LakeLockedError

            raise LakeLockedError(f"{path}: held by {held_by} for over {timeout:.0f} s; try again")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    try:
        yield lease
    finally:
        lease.release()
