"""Train on a coreset with Hugging Face: a manifest -> the ``datasets.Dataset`` rows it selected."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from cld_lake.errors import BadInputError
from cld_lake.hf._data import sample_ids
from cld_lake.manifest import Manifest, load_manifest

if TYPE_CHECKING:
    import datasets


def select(
    dataset: datasets.Dataset,
    manifest: str | os.PathLike[str] | Manifest,
    *,
    sample_id_column: str = "sample_id",
) -> datasets.Dataset:
    """The rows of ``dataset`` a manifest selected, in manifest order (group, then rank).

    Parameters
    ----------
    dataset : datasets.Dataset
        The dataset the lake was recorded from (the callback's ``train_dataset``).
    manifest : path or Manifest
        A manifest written by ``cld-lake select`` (or returned by ``cld_lake.select``).
    sample_id_column : str
        The column of sample ids (integers). A dataset without it is matched by row index,
        the ids :class:`~cld_lake.hf.LossRecorderCallback` records for it.

    Returns
    -------
    datasets.Dataset
        ``dataset.select(rows)``: the selected rows, in the manifest's order. Raises
        :class:`~cld_lake.errors.BadInputError` (one line) when a selected id is not in the
        dataset or an id is in it twice.

    Examples
    --------
    >>> coreset = select(train_dataset, "runs/lm.lake/manifests/cld-50.parquet")  # doctest: +SKIP
    >>> Trainer(model=model, args=args, train_dataset=coreset).train()  # doctest: +SKIP
    """
    m = load_manifest(manifest)
    ids = sample_ids(dataset, sample_id_column)
    wanted = m.sample_ids
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    if len(sorted_ids) > 1 and (sorted_ids[1:] == sorted_ids[:-1]).any():
        twice = sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]]
        raise BadInputError(
            f"dataset column {sample_id_column!r}: {len(twice)} sample ids occur twice (e.g. "
            f"{twice[:5].tolist()}); each row needs its own id"
        )
    n = len(ids)
    pos = np.searchsorted(sorted_ids, wanted)
    clipped = np.minimum(pos, max(n - 1, 0))
    found = (pos < n) & (sorted_ids[clipped] == wanted) if n else np.zeros(len(wanted), bool)
    if not found.all():
        missing = wanted[~found]
        where = (
            f"the dataset's {sample_id_column!r} column"
            if sample_id_column in dataset.column_names
            else f"the dataset's row indices 0..{n - 1} (it has no {sample_id_column!r} column)"
        )
        raise BadInputError(
            f"manifest {m.path or ''}: {len(missing)} selected sample ids are not in {where} "
            f"(e.g. {missing[:5].tolist()}); select from the dataset the lake was recorded from"
        )
    return dataset.select(order[clipped].tolist())
