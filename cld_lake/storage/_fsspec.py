"""Object stores through fsspec (``s3fs``, ``gcsfs`` and fsspec's in-process memory
filesystem): one PUT per object, conditional PUTs on an ETag or generation, leases.

Credentials and endpoints come from the standard environment of each store (for S3:
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` or ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``,
``AWS_DEFAULT_REGION``; for GCS: ``GOOGLE_APPLICATION_CREDENTIALS``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from cld_lake.errors import BadInputError, install_hint
from cld_lake.storage._abc import joined
from cld_lake.storage._errors import remote_errors
from cld_lake.storage._object import ObjectStore

if TYPE_CHECKING:
    from collections.abc import Buffer

T = TypeVar("T")

#: the environment that configures a client: a change makes a new one
ENV_KEYS = (
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
#: fsspec's memory filesystem has no conditional writes: this lock makes them atomic
_MEMORY_LOCK = threading.Lock()
READ_BLOCK = 8 * 2**20  # what a reader fetches per range request


def filesystem(scheme: str) -> Any:
    """The fsspec filesystem for ``scheme``, configured from the environment (one per
    scheme and environment, so a changed endpoint or credential gets a new client); listings
    are never cached (another process may commit at any time)."""
    key = (scheme, *(os.environ.get(k, "") for k in ENV_KEYS))
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
                "s3:// lakes through fsspec (CLD_LAKE_S3_CLIENT=fsspec) need the s3fs package; pip install s3fs"
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
        raise BadInputError(f"gs:// lakes need the gcsfs package; {install_hint('gcs')}") from exc
    return gcsfs.GCSFileSystem(skip_instance_cache=True, use_listings_cache=False)


class FsspecStore(ObjectStore):
    """``scheme://`` keys (``BUCKET/PATH``) on an fsspec filesystem. Every call's errors
    about the bucket, credentials and endpoint are one line (:func:`remote_errors`)."""

    parallel_reads = 4

    def __init__(self, scheme: str, fs: Any | None = None) -> None:
        self.scheme = scheme
        self._fs = fs

    @property
    def fs(self) -> Any:
        """The filesystem (made on first use, from the environment of that moment)."""
        return self._fs if self._fs is not None else filesystem(self.scheme)

    @property
    def process_local(self) -> bool:  # type: ignore[override]
        return self.scheme == "memory"  # fsspec's memory filesystem: a dict of this process

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FsspecStore) and other.scheme == self.scheme

    def __hash__(self) -> int:
        return hash(("fsspec", self.scheme))

    def __repr__(self) -> str:
        return f"FsspecStore({self.scheme!r})"

    def url(self, key: str) -> str:
        return f"{self.scheme}://{key}"

    def _path(self, key: str) -> str:
        return f"/{key}" if self.scheme == "memory" else key

    def _call(self, key: str, method: str, *args: Any, **kwargs: Any) -> Any:
        with remote_errors(self.url(key), self.scheme, key.split("/", 1)[0]):
            return getattr(self.fs, method)(*args, **kwargs)

    # --- reads ----------------------------------------------------------------------------
    def read(self, key: str) -> bytes:
        return bytes(self._call(key, "cat_file", self._path(key)))

    def read_range(self, key: str, start: int, length: int) -> bytes:
        return bytes(self._call(key, "cat_file", self._path(key), start=start, end=start + length))

    def read_into(self, key: str, out: memoryview) -> int:
        data = self.read(key)  # one GET of the whole object
        got = min(len(data), len(out))
        out[:got] = data[:got]
        return got

    def open_reader(self, key: str) -> BinaryIO:
        return self._call(key, "open", self._path(key), "rb", block_size=READ_BLOCK)  # type: ignore[no-any-return]

    def exists(self, key: str) -> bool:
        return bool(self._call(key, "exists", self._path(key)))

    def list(self, key: str) -> list[str]:
        try:
            entries = self._call(key, "ls", self._path(key), detail=False)
        except FileNotFoundError:
            return []
        names = (str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)
        return [n for n in names if n]

    def walk(self, key: str) -> Iterator[str]:
        try:
            found = self._call(key, "find", self._path(key))
        except FileNotFoundError:
            return
        for entry in found:
            entry = str(entry).strip("/")
            if entry != key:
                yield entry

    def tree_bytes(self, key: str) -> int:
        try:
            found = self._call(key, "find", self._path(key), detail=True)
        except FileNotFoundError:
            return 0
        return sum(int(v.get("size") or 0) for v in found.values())

    # --- writes ---------------------------------------------------------------------------
    def put(self, key: str, data: Buffer | Sequence[Buffer]) -> None:
        self._call(key, "pipe_file", self._path(key), joined(data))

    def upload(self, key: str, local: Path) -> None:
        self._call(key, "put_file", str(local), self._path(key))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        try:
            self._locked(lambda: self._call(key, "pipe_file", self._path(key), data, mode="create"))
        except FileExistsError:
            return False
        return True

    def _locked(self, call: Callable[[], T]) -> T:
        if self.scheme != "memory":
            return call()
        with _MEMORY_LOCK:
            return call()

    def version(self, key: str) -> str | None:
        if self.scheme == "memory":
            try:
                return hashlib.sha1(self.read(key)).hexdigest()
            except FileNotFoundError:
                return None
        try:
            info = self._call(key, "info", self._path(key))
        except FileNotFoundError:
            return None
        tag = info.get("ETag") or info.get("etag") or info.get("generation")
        return None if tag is None else str(tag)

    def replace_if(self, key: str, data: bytes, version: str) -> bool:
        if self.scheme == "memory":
            with _MEMORY_LOCK:
                if self.version(key) != version:
                    return False
                self.put(key, data)
                return True
        if self.scheme == "s3":
            bucket, _, name = key.partition("/")
            try:
                self._call(
                    key,
                    "call_s3",
                    "put_object",
                    Bucket=bucket,
                    Key=name,
                    Body=data,
                    IfMatch=version,
                )
            except FileNotFoundError:
                return False  # nothing there: no version matches
            except (OSError, FileExistsError) as exc:
                if "pre-condition" in str(exc) or "PreconditionFailed" in str(exc):
                    return False
                raise
            return True
        try:  # gcs: the object's generation must still match
            self._call(key, "pipe_file", self._path(key), data, if_generation_match=int(version))
        except (OSError, ValueError):
            return False
        return True

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._call(key, "rm_file", self._path(key))

    def delete_tree(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._call(key, "rm", self._path(key), recursive=True)

    def check_reachable(self, key: str) -> None:
        if self.scheme == "memory":
            return
        bucket = key.split("/", 1)[0]
        if not self._call(key, "exists", bucket):
            raise BadInputError(
                f"{self.url(key)}: bucket {bucket!r} does not exist (or these credentials "
                f"cannot see it); create it first or fix the URL"
            )
