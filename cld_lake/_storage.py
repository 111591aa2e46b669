"""Transitional names for code that still imports them from here (the writer, the recorder,
the CLI's LAKE argument): the storage lives in :mod:`cld_lake.storage`.

:func:`location` here returns what it always did, a :class:`pathlib.Path` for a local lake
and an :class:`~cld_lake.storage.ObjectPath` on an object store (``Lake.path``'s value);
lake code uses :func:`cld_lake.storage.location`, which returns a
:class:`~cld_lake.storage.StorePath` for both.
"""

from __future__ import annotations

import os
from pathlib import Path

from cld_lake import storage
from cld_lake.storage import Lease, ObjectPath, StorePath, is_url

__all__ = ["Lease", "ObjectPath", "is_url", "location"]


def location(spec: str | os.PathLike[str] | StorePath) -> Path | ObjectPath:
    """``Lake.path`` for ``spec``: see the module docstring."""
    return storage.compat_path(storage.location(spec))
