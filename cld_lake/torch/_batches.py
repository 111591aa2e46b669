"""What :meth:`~cld_lake.torch.LossRecorder.record` takes from a loader's batches: the
``(inputs, labels, sample_ids)`` items of a tuple batch, a batch moved to the model's device,
and the results of a user's ``loss_fn`` / ``logits_fn``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import numpy as np
import torch

from cld_lake.errors import BadInputError

# loss_fn(model, batch) -> (sample_ids, loss, groups) or (sample_ids, loss, groups, num_tokens)
LossFn: TypeAlias = Callable[[torch.nn.Module, Any], tuple[Any, ...]]
# logits_fn(model, batch) -> (sample_ids, logits, labels)
LogitsFn: TypeAlias = Callable[[torch.nn.Module, Any], tuple[Any, Any, Any]]


def batch_items(batch: Any, index: int) -> tuple[Any, Any, Any]:
    """``(inputs, labels, sample_ids)`` of a batch without a ``loss_fn``: a 3-tuple, or a dict
    with keys ``input``, ``label``, ``sample_id``."""
    if isinstance(batch, dict):
        missing = [k for k in ("input", "label", "sample_id") if k not in batch]
        if missing:
            raise BadInputError(
                f"record(): batch {index} is a dict without keys {missing}; for other dict "
                "batches (Hugging Face's input_ids, labels, ...) pass record(..., loss_fn=...) "
                "or logits_fn=... that computes each sample's loss or logits"
            )
        return batch["input"], batch["label"], batch["sample_id"]
    if not isinstance(batch, tuple | list) or len(batch) != 3:
        size = len(batch) if isinstance(batch, tuple | list) else type(batch).__name__
        raise BadInputError(
            f"record(): the loader yields batches of {size} items without sample ids; it must yield "
            "(inputs, labels, sample_ids): wrap the dataset as cld_lake.torch.WithIndex(dataset)"
        )
    return batch[0], batch[1], batch[2]


def to_device(inputs: Any, device: torch.device) -> Any:
    """Every tensor of ``inputs`` (nested in tuples, lists and dicts) moved to ``device``."""
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device, non_blocking=True)
    if isinstance(inputs, tuple | list):
        return type(inputs)(to_device(x, device) for x in inputs)
    if isinstance(inputs, dict):
        return {k: to_device(v, device) for k, v in inputs.items()}
    return inputs


def unpack_loss(result: Any, index: int) -> tuple[Any, Any, Any, Any]:
    """``(sample_ids, loss, groups, num_tokens or None)`` of what ``loss_fn`` returned."""
    if not isinstance(result, tuple | list) or len(result) not in (3, 4):
        raise BadInputError(
            f"record(): loss_fn returned {_what(result)} for batch {index}; it must return "
            "(sample_ids, loss, groups), or (sample_ids, loss, groups, num_tokens)"
        )
    return result[0], result[1], result[2], result[3] if len(result) == 4 else None


def unpack_logits(result: Any, index: int) -> tuple[Any, Any, Any]:
    """``(sample_ids, logits, labels)`` of what ``logits_fn`` returned."""
    if not isinstance(result, tuple | list) or len(result) != 3:
        raise BadInputError(
            f"record(): logits_fn returned {_what(result)} for batch {index}; it must return "
            "(sample_ids, logits, labels)"
        )
    return result[0], result[1], result[2]


def _what(value: Any) -> str:
    if isinstance(value, tuple | list):
        return f"{len(value)} items"
    return type(value).__name__


def as_tensor(values: Any) -> torch.Tensor:
    """A tensor of ``values`` (a tensor as it is; an array or list, also a reversed view)."""
    if isinstance(values, torch.Tensor):
        return values
    return torch.as_tensor(np.ascontiguousarray(values))


def as_groups(groups: Any, batch: int, distributed: bool) -> torch.Tensor | np.ndarray:
    """A batch's ``batch`` groups: an integer tensor (any device), or a NumPy array of strings
    (refused under ``torch.distributed``, whose commit sends integer groups)."""
    if isinstance(groups, torch.Tensor):
        values: torch.Tensor | np.ndarray = groups.reshape(-1)
    else:
        array = np.asarray(groups).reshape(-1)
        values = array if array.dtype.kind in "USO" else as_tensor(array)
    strings = isinstance(values, np.ndarray)
    if values.shape[0] != batch:
        raise BadInputError(
            f"groups: {values.shape[0]} values for {batch} sample ids; give one group per sample"
        )
    if strings and distributed:
        raise BadInputError(
            "groups: string groups under torch.distributed are not supported; map the names "
            "to integer ids 0..G-1 (the same on every rank, e.g. sorted names) and keep the map"
        )
    if not strings and (values.dtype.is_floating_point or values.dtype == torch.bool):
        raise BadInputError(f"groups must be integers 0..G-1 or strings, got {values.dtype}")
    return values
