""":class:`ObjectStore`: what every object store does alike (no rename, no flock)."""

from __future__ import annotations

import contextlib
import tempfile
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cld_lake.storage._abc import Store, VersionConflict
from cld_lake.storage._lease import Lease

if TYPE_CHECKING:
    from collections.abc import Buffer


class ObjectStore(Store):
    """A store of whole objects: a file is put by uploading it whole, a new object is durable
    once its PUT returns, and the lock is a :class:`Lease` object."""

    @abstractmethod
    def upload(self, key: str, local: Path) -> None:
        """Replace the object ``key`` with the local file ``local`` (one PUT, or a multipart
        upload that becomes visible whole when it completes)."""

    @contextlib.contextmanager
    def put_file(
        self, key: str, *, if_version: str | None = None, if_absent: bool = False
    ) -> Iterator[Path]:
        """A local temp file, uploaded whole; a conditional put sends it in one request."""
        with tempfile.TemporaryDirectory(prefix="cld-lake-upload-") as folder:
            tmp = Path(folder) / key.rsplit("/", 1)[-1]
            yield tmp
            if if_version is None and not if_absent:
                self.upload(key, tmp)
                return
            data = tmp.read_bytes()
            done = (
                self.replace_if(key, data, if_version)
                if if_version is not None
                else self.put_if_absent(key, data)
            )
            if not done:
                raise VersionConflict(f"{self.url(key)}: changed since version {if_version}")

    def put_new(self, key: str, data: Buffer | Sequence[Buffer], *, durable: bool = False) -> None:
        self.put(key, data)  # durable once the PUT returns

    def lock(self, key: str, holder: str) -> Lease:
        from cld_lake.storage._path import StorePath

        return Lease(StorePath(self, key), holder)
