"""Train on a coreset: a manifest -> ``torch.utils.data.Subset``."""

from __future__ import annotations

import os
import sys
import types
from typing import Any

import numpy as np

from cld_lake.errors import BadInputError
from cld_lake.manifest import Manifest, load_manifest


def subset(
    dataset: Any,
    manifest: str | os.PathLike[str] | Manifest,
    *,
    sample_ids: Any = None,
) -> Any:
    """The samples of ``dataset`` a manifest selected, as a ``torch.utils.data.Subset``.

    Parameters
    ----------
    dataset : torch.utils.data.Dataset
        A map-style dataset (``len`` and integer indexing).
    manifest : path or Manifest
        A manifest written by ``cld-lake select`` (or one returned by ``cld_lake.select``).
    sample_ids : array-like, optional
        The sample id of each position of ``dataset``. Default: ``dataset.sample_ids`` when
        the dataset has that attribute, else the positions ``0..len(dataset)-1`` (the lake's
        default ids).

    Returns
    -------
    torch.utils.data.Subset
        Indices in manifest order (class, then rank). Raises
        :class:`~cld_lake.errors.BadInputError` when a selected id is not in the dataset.
    """
    from torch.utils.data import Subset

    m = load_manifest(manifest)
    n = len(dataset)
    ids = getattr(dataset, "sample_ids", None) if sample_ids is None else sample_ids
    wanted = m.sample_ids
    if ids is None:
        bad = (wanted < 0) | (wanted >= n)
        if bad.any():
            raise BadInputError(
                f"manifest {m.path or ''}: {int(bad.sum())} selected sample ids (e.g. {wanted[bad][:5].tolist()}) "
                f"are not positions of the dataset (len {n}); pass sample_ids= giving each position's id"
            )
        return Subset(dataset, wanted.tolist())
    ids = (
        np.asarray(ids.cpu() if hasattr(ids, "cpu") else ids)
        .astype(np.int64, copy=False)
        .reshape(-1)
    )
    if len(ids) != n:
        raise BadInputError(f"sample_ids has {len(ids)} entries but the dataset has {n} samples")
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    pos = np.searchsorted(sorted_ids, wanted)
    clipped = np.minimum(pos, max(n - 1, 0))
    found = (pos < n) & (sorted_ids[clipped] == wanted) if n else np.zeros(len(wanted), bool)
    if not found.all():
        missing = wanted[~found]
        raise BadInputError(
            f"manifest {m.path or ''}: {len(missing)} selected sample ids are not in the dataset "
            f"(e.g. {missing[:5].tolist()}); is it the dataset the lake was recorded from?"
        )
    return Subset(dataset, order[clipped].tolist())


class _CallableModule(types.ModuleType):
    """``cld_lake.torch.subset`` is this module once imported; calling it calls :func:`subset`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return subset(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
