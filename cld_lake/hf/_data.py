"""A ``datasets.Dataset`` as the batches :meth:`~cld_lake.torch.LossRecorder.record` reads:
this rank's rows in order, padded, with each row's sample id and group."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cld_lake.errors import BadInputError

if TYPE_CHECKING:
    import datasets

IGNORE_INDEX = -100  # Hugging Face's label of a position without a target


@dataclass(frozen=True)
class Columns:
    """Which columns of a dataset hold what the recording needs."""

    sample_id: str  # when the dataset lacks it, a row's id is its index
    group: str | None  # causal LM: each row's group (None: one group, 0)
    label: str | None  # sequence classification: the class column


def sample_ids(dataset: datasets.Dataset, column: str) -> np.ndarray:
    """Each row's sample id: the ``column`` (integers) when the dataset has it, else the row
    index (0..N-1)."""
    if column not in dataset.column_names:
        return np.arange(len(dataset), dtype=np.int64)
    values = np.asarray(dataset.with_format("numpy")[column])
    if values.ndim != 1 or values.dtype.kind not in "iu":
        raise BadInputError(
            f"dataset column {column!r}: sample ids must be integers, got {values.dtype}; map "
            "string keys to int64 ids first (docs/recording.md) and keep the mapping"
        )
    return values.astype(np.int64, copy=False)


def label_column(dataset: datasets.Dataset, split: str) -> str:
    """A classification dataset's class column: ``label`` or ``labels``."""
    for name in ("label", "labels"):
        if name in dataset.column_names:
            return name
    raise BadInputError(
        f"dataset of split {split!r} has no 'label' or 'labels' column (columns: "
        f"{dataset.column_names}); sequence classification records each row's class"
    )


def max_group(datasets_: Sequence[datasets.Dataset], column: str) -> int | None:
    """The largest integer group over the datasets' ``column`` (None for string groups)."""
    top = -1
    for ds in datasets_:
        values = np.asarray(ds.with_format("numpy")[column])
        if values.dtype.kind in "USO":
            return None
        if values.dtype.kind not in "iu":
            raise BadInputError(
                f"dataset column {column!r}: groups must be integers 0..G-1 or strings, got "
                f"{values.dtype}"
            )
        if len(values):
            top = max(top, int(values.max()))
    return top


def check_columns(dataset: datasets.Dataset, split: str, needed: Sequence[str]) -> None:
    missing = [c for c in needed if c not in dataset.column_names]
    if missing:
        raise BadInputError(
            f"dataset of split {split!r} has no column {missing[0]!r} (columns: "
            f"{dataset.column_names}); tokenize it first (dataset.map(...)) or name the column"
        )


def shard(num_rows: int) -> np.ndarray:
    """This rank's rows: every ``world``-th row from its rank (all rows without a process
    group). Each row on exactly one rank, no padding: recording needs no equal shards."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return np.arange(dist.get_rank(), num_rows, dist.get_world_size())
    return np.arange(num_rows)


class Batches:
    """The dataset's rows of this rank, ``batch_size`` at a time, as dicts of tensors:
    ``input_ids``, ``attention_mask`` (right padding), ``labels`` (causal LM: the targets,
    -100 at padding; classification: the classes), ``sample_id``, ``group`` (causal LM)."""

    def __init__(
        self,
        dataset: datasets.Dataset,
        columns: Columns,
        batch_size: int,
        pad_token_id: int,
        causal: bool,
    ) -> None:
        self.dataset = dataset
        self.columns = columns
        self.batch_size = batch_size
        self.pad = pad_token_id
        self.causal = causal
        self.ids = sample_ids(dataset, columns.sample_id)
        self.rows = shard(len(dataset))
        wanted = ["input_ids", "attention_mask", "token_type_ids", "labels"]
        wanted += [c for c in (columns.group, columns.label) if c is not None]
        self._view = dataset.select_columns([c for c in wanted if c in dataset.column_names])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for a in range(0, len(self.rows), self.batch_size):
            rows = self.rows[a : a + self.batch_size]
            yield self._batch(self._view[rows.tolist()], rows)

    def _batch(self, data: dict[str, list[Any]], rows: np.ndarray) -> dict[str, Any]:
        inputs = [list(x) for x in data["input_ids"]]
        length = max((len(x) for x in inputs), default=0)
        out: dict[str, Any] = {
            "input_ids": _padded(inputs, length, self.pad),
            "attention_mask": _padded(data.get("attention_mask") or _ones(inputs), length, 0),
            "sample_id": torch.from_numpy(self.ids[rows]),
        }
        if "token_type_ids" in data:
            out["token_type_ids"] = _padded(data["token_type_ids"], length, 0)
        if self.causal:
            if "labels" in data:
                out["labels"] = _padded(data["labels"], length, IGNORE_INDEX)
            else:  # the inputs are the targets, as DataCollatorForLanguageModeling makes them
                labels = out["input_ids"].clone()
                labels[out["attention_mask"] == 0] = IGNORE_INDEX
                out["labels"] = labels
            group = self.columns.group
            out["group"] = (
                torch.zeros(len(rows), dtype=torch.int64) if group is None else _groups(data[group])
            )
        else:
            assert self.columns.label is not None
            out["labels"] = torch.as_tensor(np.asarray(data[self.columns.label]))
        return out


def _ones(rows: list[list[int]]) -> list[list[int]]:
    return [[1] * len(r) for r in rows]


def _padded(rows: Sequence[Sequence[int]], length: int, value: int) -> torch.Tensor:
    out = torch.full((len(rows), length), value, dtype=torch.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(list(row), dtype=torch.int64)
    return out


def _groups(values: list[Any]) -> torch.Tensor | np.ndarray:
    array = np.asarray(values)
    return array if array.dtype.kind in "USO" else torch.from_numpy(array.astype(np.int64))
