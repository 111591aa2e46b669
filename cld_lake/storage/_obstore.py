"""S3 through obstore (the Rust ``object_store`` crate): native conditional PUTs
(``If-None-Match: *`` for put-if-absent, ``If-Match`` on the ETag for replace-if-unchanged),
a light import, and reads that release the GIL.

Configured from the same environment as the other S3 client: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``;
without keys in the environment, botocore's credential chain (``AWS_PROFILE``, the shared
credentials and config files, SSO, a container's or an instance's role) supplies them.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from cld_lake.errors import BadInputError, CldLakeError, install_hint
from cld_lake.storage._abc import joined
from cld_lake.storage._errors import remote_problem
from cld_lake.storage._object import ObjectStore

if TYPE_CHECKING:
    from collections.abc import Buffer

READ_BLOCK = 8 * 2**20  # what a reader fetches per range request
_CLIENTS: dict[tuple[str, ...], Any] = {}
_ENV_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
    "CLD_LAKE_CONNECT_TIMEOUT",
)


def _client(bucket: str) -> Any:
    """The obstore ``S3Store`` of ``bucket``, one per bucket and environment."""
    key = (bucket, *(os.environ.get(k, "") for k in _ENV_KEYS))
    store = _CLIENTS.get(key)
    if store is None:
        store = _CLIENTS[key] = _new_client(bucket)
    return store


def _require_obstore() -> None:
    """One line with the install hint when obstore is missing (before any call needs it)."""
    try:
        import obstore.store  # noqa: F401
    except ImportError as exc:
        raise BadInputError(
            f"s3:// lakes need the obstore package; {install_hint('remote')}"
        ) from exc


def _new_client(bucket: str) -> Any:
    _require_obstore()
    from obstore.store import S3Store

    env = os.environ
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    timeout = float(env.get("CLD_LAKE_CONNECT_TIMEOUT", "10"))
    config: dict[str, Any] = {}
    if endpoint:
        if not endpoint.startswith(("http://", "https://")):
            raise ValueError(f"Invalid endpoint: {endpoint}")
        config["endpoint"] = endpoint
    for name, option in (
        ("AWS_ACCESS_KEY_ID", "access_key_id"),
        ("AWS_SECRET_ACCESS_KEY", "secret_access_key"),
        ("AWS_SESSION_TOKEN", "session_token"),
    ):
        if env.get(name):
            config[option] = env[name]
    provider = None
    region = env.get("AWS_DEFAULT_REGION")
    if "access_key_id" not in config:
        provider, region = _botocore_credentials(region)
    config["region"] = region or ("us-east-1" if endpoint else _bucket_region(bucket, timeout))
    return S3Store(
        bucket,
        config=config,  # type: ignore[arg-type]
        client_options={
            "allow_http": bool(endpoint and endpoint.startswith("http://")),
            "connect_timeout": datetime.timedelta(seconds=timeout),
            "timeout": datetime.timedelta(seconds=120),
        },
        retry_config={"max_retries": 2, "retry_timeout": datetime.timedelta(seconds=3 * timeout)},
        credential_provider=provider,
    )


def _bucket_region(bucket: str, timeout: float) -> str:
    """The AWS region of ``bucket`` (one HEAD request, answered without credentials), for an
    environment that names none: the other client follows S3's redirects, this one needs it."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"https://{bucket}.s3.amazonaws.com", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return str(response.headers.get("x-amz-bucket-region") or "us-east-1")
    except urllib.error.HTTPError as exc:  # 301/403 still name the region
        return str(exc.headers.get("x-amz-bucket-region") or "us-east-1")
    except OSError:
        return "us-east-1"  # unreachable: the requests themselves will say so


class NoCredentialsError(Exception):
    """No credentials anywhere botocore looks (named as botocore's error is)."""


def _botocore_credentials(region: str | None) -> tuple[Any, str | None]:
    """A credential provider over botocore's chain, and the region its configuration names
    (when the environment names none)."""
    try:
        import botocore.session
    except ImportError as exc:
        raise NoCredentialsError(
            "Unable to locate credentials: could not find AWS_ACCESS_KEY_ID"
        ) from exc
    session = botocore.session.get_session()
    credentials = session.get_credentials()
    if credentials is None:
        raise NoCredentialsError("Unable to locate credentials: could not find AWS_ACCESS_KEY_ID")

    def provide() -> dict[str, Any]:
        frozen = credentials.get_frozen_credentials()  # refreshed by botocore when due
        return {
            "access_key_id": frozen.access_key,
            "secret_access_key": frozen.secret_key,
            "token": frozen.token,
            "expires_at": datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5),
        }

    return provide, region or session.get_config_variable("region")


def _problem(url: str, scheme: str, bucket: str, exc: BaseException) -> str | None:
    """The one line for an error of obstore's (its texts first, then every client's)."""
    text = " ".join(str(exc).split())
    if "NoSuchBucket" in text:
        return f"{url}: bucket {bucket!r} does not exist; create it first or fix the URL"
    if "169.254.169.254" in text or "credential" in text.lower() and "error" in text.lower():
        return remote_problem(url, scheme, bucket, NoCredentialsError(text))
    if "error sending request" in text or "connection refused" in text.lower():
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
        return (
            f"{url}: cannot reach {endpoint or 'the default endpoint'} ({text[:200]}); check "
            f"AWS_ENDPOINT_URL and the network"
        )
    return remote_problem(url, scheme, bucket, exc)


class ObstoreStore(ObjectStore):
    """``s3://`` keys (``BUCKET/PATH``) through obstore. Every call's errors about the
    bucket, credentials and endpoint are one line."""

    parallel_reads = 4

    def __init__(self, scheme: str = "s3") -> None:
        self.scheme = scheme
        _require_obstore()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObstoreStore) and other.scheme == self.scheme

    def __hash__(self) -> int:
        return hash(("obstore", self.scheme))

    def __repr__(self) -> str:
        return f"ObstoreStore({self.scheme!r})"

    def url(self, key: str) -> str:
        return f"{self.scheme}://{key}"

    def _call(self, key: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """``obstore.METHOD(bucket store, path, ...)`` with its errors in one line."""
        import obstore

        bucket, _, path = key.partition("/")
        try:
            return getattr(obstore, method)(_client(bucket), path, *args, **kwargs)
        except (CldLakeError, FileNotFoundError):
            raise
        except Exception as exc:
            message = _problem(self.url(key), self.scheme, bucket, exc)
            if message is None:
                raise
            raise BadInputError(message) from exc

    # --- reads ----------------------------------------------------------------------------
    def read(self, key: str) -> bytes:
        return bytes(self._call(key, "get").bytes())

    def read_range(self, key: str, start: int, length: int) -> bytes:
        return bytes(self._call(key, "get_range", start=start, length=length))

    def open_reader(self, key: str) -> BinaryIO:
        return _Reader(self._call(key, "open_reader", buffer_size=READ_BLOCK))  # type: ignore[return-value]

    def exists(self, key: str) -> bool:
        try:
            self._call(key, "head")
            return True
        except FileNotFoundError:
            return bool(self.list(key))

    def list(self, key: str) -> list[str]:
        try:
            found = self._call(key, "list_with_delimiter")
        except FileNotFoundError:
            return []
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in found["common_prefixes"]]
        return names + [o["path"].rsplit("/", 1)[-1] for o in found["objects"]]

    def _objects(self, key: str) -> Iterator[dict[str, Any]]:
        bucket = key.partition("/")[0]
        for batch in self._call(key, "list"):
            for meta in batch:
                yield {**meta, "key": f"{bucket}/{meta['path']}"}

    def walk(self, key: str) -> Iterator[str]:
        for meta in self._objects(key):
            if meta["key"] != key:
                yield meta["key"]

    def tree_bytes(self, key: str) -> int:
        return sum(int(meta["size"]) for meta in self._objects(key))

    # --- writes ---------------------------------------------------------------------------
    def put(self, key: str, data: Buffer | Sequence[Buffer]) -> None:
        self._call(key, "put", joined(data))

    def upload(self, key: str, local: Path) -> None:
        self._call(key, "put", local)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        try:
            self._call(key, "put", data, mode="create")
        except (AlreadyExistsError, PreconditionError):
            return False
        return True

    def version(self, key: str) -> str | None:
        try:
            tag = self._call(key, "head").get("e_tag")
        except FileNotFoundError:
            return None
        return None if tag is None else str(tag)

    def replace_if(self, key: str, data: bytes, version: str) -> bool:
        from obstore.exceptions import PreconditionError

        try:
            self._call(key, "put", data, mode={"e_tag": version})
        except (PreconditionError, FileNotFoundError):
            return False
        return True

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._call(key, "delete")

    def delete_tree(self, key: str) -> None:
        import obstore

        bucket, _, path = key.partition("/")
        found = [meta["path"] for meta in self._objects(key)]
        if found:
            obstore.delete(_client(bucket), found)
        self.delete(key)

    def check_reachable(self, key: str) -> None:
        bucket = key.partition("/")[0]
        try:
            self._call(bucket + "/", "list_with_delimiter")
        except BadInputError as exc:
            if "does not exist" not in str(exc):
                raise
            raise BadInputError(
                f"{self.url(key)}: bucket {bucket!r} does not exist (or these credentials "
                f"cannot see it); create it first or fix the URL"
            ) from exc
        except FileNotFoundError:
            return


class _Reader:
    """obstore's ``ReadableFile`` with the file attributes pyarrow asks a Python file for."""

    def __init__(self, file: Any) -> None:
        self._file = file
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        return bytes(self._file.read(None if size is None or size < 0 else size))

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self._file.seek(offset, whence))

    def tell(self) -> int:
        return int(self._file.tell())

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True
        self._file.close()
