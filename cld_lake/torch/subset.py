"""Train on a coreset: a manifest -> ``torch.utils.data.Subset``."""

from __future__ import annotations

import os
import sys
import types
from typing import TYPE_CHECKING, Any

import numpy as np

from cld_lake.errors import BadInputError
from cld_lake.manifest import Manifest, load_manifest

if TYPE_CHECKING:
    import numpy.typing as npt
    import torch
    from torch.utils.data import Dataset, Subset


def subset(
    dataset: Dataset[Any],
    manifest: str | os.PathLike[str] | Manifest,
    *,
    sample_ids: npt.ArrayLike | torch.Tensor | None = None,
) -> Subset[Any]:
    """The samples of ``dataset`` a manifest selected, as a ``torch.utils.data.Subset``.

    Parameters
    ----------
    dataset : torch.utils.data.Dataset
        A map-style dataset (``len`` and integer indexing).
    manifest : path or Manifest
        A manifest written by ``cld-lake select`` (or one returned by ``cld_lake.select``).
    sample_ids : array-like of int, optional
        The sample id of each position of ``dataset``. Default: ``dataset.sample_ids`` when
        the dataset has that attribute, else the positions ``0..len(dataset)-1`` (the lake's
        default ids). Integers only: float ids are refused, never truncated.

    Returns
    -------
    torch.utils.data.Subset
        Indices in manifest order (class, then rank). Raises
        :class:`~cld_lake.errors.BadInputError` when a selected id is not in the dataset, or
        for a bad argument (a dataset without ``len``, ids that are not integers, ...).
    """
    from torch.utils.data import Subset

    m = load_manifest(manifest)
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise BadInputError(
            f"dataset: expected a map-style dataset (len and integer indexing), got {type(dataset).__name__}"
        )
    n = len(dataset)
    given = "sample_ids" if sample_ids is not None else "dataset.sample_ids"
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
    ids = _integer_ids(ids, given)
    if len(ids) != n:
        raise BadInputError(f"{given} has {len(ids)} entries but the dataset has {n} samples")
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


def _integer_ids(values: object, what: str) -> np.ndarray:
    """``values`` (array-like or tensor) as a flat int64 array; anything but integers is refused."""
    try:
        arr = np.asarray(values.cpu() if hasattr(values, "cpu") else values)
    except (TypeError, ValueError) as exc:  # ragged nesting, unconvertible objects
        raise BadInputError(f"{what}: not an array of sample ids ({exc})") from exc
    if arr.size and arr.dtype.kind not in "iu":
        example = arr.reshape(-1)[:3].tolist()
        raise BadInputError(
            f"{what}: sample ids must be integers, got {arr.dtype} (e.g. {example}); "
            "convert them exactly, float ids are not rounded"
        )
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise BadInputError(f"{what}: sample id {arr.max()} is beyond the int64 range")
    return arr.astype(np.int64, copy=False).reshape(-1)


class _CallableModule(types.ModuleType):
    """``cld_lake.torch.subset`` is this module once imported; calling it calls :func:`subset`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Subset[Any]:
        return subset(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
