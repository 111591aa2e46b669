"""Dataset helpers for recording: make every item carry its sample id."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from cld_lake.errors import BadInputError


class WithIndex(Dataset):
    """Wrap a dataset of ``(input, label)`` items so it yields ``(input, label, sample_id)``.

    Parameters
    ----------
    dataset : Dataset
        Any map-style dataset whose items are ``(input, label)`` pairs.
    ids : sequence of int, optional
        Sample id of each item (``ids[i]`` for item ``i``). Default: the item's index, so
        the sample id is the position in ``dataset``. Wrap the *full* training set, then take
        subsets of the wrapper, and sample ids stay the full set's indices: that is what
        manifests and :func:`cld_lake.torch.subset` refer to.

    Examples
    --------
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> ds = WithIndex(TensorDataset(torch.zeros(3, 2), torch.tensor([0, 1, 0])))
    >>> x, y, i = ds[2]
    >>> int(y), i
    (0, 2)
    """

    def __init__(self, dataset: Dataset, ids: Sequence[int] | np.ndarray | None = None) -> None:
        self.dataset = dataset
        n = len(dataset)  # type: ignore[arg-type]
        if ids is not None:
            ids = np.asarray(ids)
            if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer):
                raise BadInputError(
                    f"ids: expected {n} integer sample ids, got shape {ids.shape} {ids.dtype}"
                )
            if len(np.unique(ids)) != n:
                raise BadInputError("ids: sample ids must be unique")
        self.ids = ids

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        item = self.dataset[index]
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise BadInputError(
                f"WithIndex: item {index} of {type(self.dataset).__name__} is not an (input, label) pair"
            )
        sample_id = int(self.ids[index]) if self.ids is not None else int(index)
        return item[0], item[1], sample_id
