"""``location``: the one parser of a lake's place (a path, or a URL) into a :class:`StorePath`."""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path

from cld_lake.errors import BadInputError
from cld_lake.storage._abc import Store
from cld_lake.storage._local import LocalStore
from cld_lake.storage._path import StorePath

SCHEMES = ("s3", "gs", "memory")
_ALIASES = {"s3a": "s3", "gcs": "gs"}
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")
LOCAL = LocalStore()


# a URL whose "//" a command-line parser folded to "/" (click.Path makes "s3:/b/k" of "s3://b/k")
_FOLDED_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/[^/]")


def location(spec: str | os.PathLike[str] | StorePath) -> StorePath:
    """The place ``spec`` names: a local path (plain or ``file://``) or an object-store URL
    (``s3://BUCKET/PATH``, ``gs://``, ``memory://``). :class:`BadInputError` for a scheme this
    package cannot reach or a URL without a bucket."""
    if isinstance(spec, StorePath):
        return spec
    text = os.fspath(spec)
    m = _URL.match(text)
    if not m:
        return local(text)
    scheme, rest = m.group(1).lower(), m.group(2)
    scheme = _ALIASES.get(scheme, scheme)
    if scheme == "file":
        return local(urllib.parse.unquote(urllib.parse.urlparse(text).path))
    if scheme not in SCHEMES:
        raise BadInputError(
            f"{text}: unknown URL scheme {scheme!r}; give a local path or a file://, "
            f"{', '.join(s + '://' for s in SCHEMES)} URL"
        )
    key = rest.strip("/")
    if not key:
        raise BadInputError(f"{text}: no bucket in the URL; write {scheme}://BUCKET/PATH")
    return StorePath(object_store(scheme), key)


def local(path: str | os.PathLike[str] | StorePath) -> StorePath:
    """``path`` on the local disk, never read as a URL (a location is kept as it is)."""
    if isinstance(path, StorePath):
        return path
    return StorePath(LOCAL, str(Path(path)))


def local_file(spec: str | os.PathLike[str] | StorePath) -> Path | None:
    """The local file ``spec`` names (an output a command writes); None when it names a place
    on an object store: a URL (also one whose ``//`` a command-line parser folded to ``/``), or
    a location that is not on the local disk."""
    if isinstance(spec, StorePath):
        return spec.local_path
    text = os.fspath(spec)
    if _URL.match(text) or _FOLDED_URL.match(text):
        return None
    return Path(text)


#: which client reaches ``s3://``: ``obstore`` or ``fsspec`` (s3fs)
S3_CLIENT_ENV = "CLD_LAKE_S3_CLIENT"
DEFAULT_S3_CLIENT = "obstore"


def object_store(scheme: str) -> Store:
    """The store for ``scheme`` (``s3``, ``gs``, ``memory``), its client configured from the
    environment (``s3``: the client ``CLD_LAKE_S3_CLIENT`` names, default
    :data:`DEFAULT_S3_CLIENT`)."""
    if scheme == "s3" and os.environ.get(S3_CLIENT_ENV, DEFAULT_S3_CLIENT) == "obstore":
        from cld_lake.storage._obstore import ObstoreStore

        return ObstoreStore(scheme)
    from cld_lake.storage._fsspec import FsspecStore, filesystem

    return FsspecStore(scheme, filesystem(scheme))
