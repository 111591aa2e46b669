"""Where a lake's bytes live, behind one interface.

:class:`Store` declares what the lake needs of a place to keep its files: ranged reads (and a
read into a buffer), atomic puts, put-if-absent, replace-if-unchanged on a version, listing, a
tree's deletion and size, and a :class:`Lock` (``try_acquire`` / ``check`` / ``release`` /
``held``). :class:`LocalStore` is a directory tree with the fast path (``pread``/``readinto``,
``flock``, temp file + fsync + rename + fsync of the folder); the object stores, where a lock
is a :class:`Lease`, are :class:`ObstoreStore` (``s3://`` through obstore, the default) and
:class:`FsspecStore` (``gs://``, fsspec's in-process ``memory://``, and ``s3://`` through s3fs
with ``CLD_LAKE_S3_CLIENT=fsspec``). Lake code holds a :class:`StorePath` (a store and a key)
that :func:`location` parses from a path or URL, and never asks which store it holds
(:func:`local` names a place on the local disk, :func:`local_file` an output file);
``tests/test_store_contract.py`` holds every store to the same contract.
"""

from cld_lake.storage._abc import Lock, Store, VersionConflict
from cld_lake.storage._fsspec import FsspecStore, filesystem
from cld_lake.storage._lease import DEFAULT_LEASE_SECONDS, LEASE_SECONDS_ENV, Lease, lease_seconds
from cld_lake.storage._local import FileLock, LocalStore, fsync_dir, is_temp_name, temp_path_for
from cld_lake.storage._location import S3_CLIENT_ENV, SCHEMES, local, local_file, location
from cld_lake.storage._obstore import ObstoreStore
from cld_lake.storage._path import StorePath

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "LEASE_SECONDS_ENV",
    "S3_CLIENT_ENV",
    "SCHEMES",
    "FileLock",
    "FsspecStore",
    "Lease",
    "LocalStore",
    "Lock",
    "ObstoreStore",
    "Store",
    "StorePath",
    "VersionConflict",
    "filesystem",
    "fsync_dir",
    "is_temp_name",
    "lease_seconds",
    "local",
    "local_file",
    "location",
    "temp_path_for",
]
