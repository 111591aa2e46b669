"""Per-sample losses of models whose loss is not one softmax per sample: a causal language
model's mean token loss per sequence (:func:`sequence_loss`), to record with
:meth:`~cld_lake.torch.LossRecorder.update_loss`."""

from __future__ import annotations

from typing import Literal, overload

import torch
import torch.nn.functional as F

from cld_lake.errors import BadInputError


@overload
def sequence_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = ...,
    return_counts: Literal[False] = ...,
) -> torch.Tensor: ...


@overload
def sequence_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = ...,
    *,
    return_counts: Literal[True],
) -> tuple[torch.Tensor, torch.Tensor]: ...


def sequence_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    return_counts: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Each sequence's mean token loss, as a Hugging Face causal LM computes its loss.

    Position ``t`` of ``logits`` predicts token ``t + 1`` of ``labels`` (the causal shift:
    ``logits[:, :-1]`` against ``labels[:, 1:]``); targets equal to ``ignore_index`` (padding,
    a prompt you do not train on) are left out. The cross-entropy is computed in float32
    whatever the logits' dtype, as ``model(input_ids, labels=labels).loss`` does for a batch of
    one sequence.

    Parameters
    ----------
    logits : Tensor of shape (B, L, V)
        The model's output for a batch of ``B`` sequences of length ``L`` (``.logits`` of a
        ``transformers`` causal LM).
    labels : Tensor of shape (B, L)
        The token ids (usually the ``input_ids``), ``ignore_index`` where no loss is wanted.
    ignore_index : int
        The label that marks a position without a target (Hugging Face: -100).
    return_counts : bool
        Also return each sequence's number of target tokens.

    Returns
    -------
    loss : float32 Tensor of shape (B,)
        Mean cross-entropy over the sequence's target tokens, in nats per token, >= 0 (lower:
        the model predicts the sequence better). NaN for a sequence without a target token
        (length 1, or every label ``ignore_index``): it has no loss; CLD and the other
        scores treat it as undefined.
    counts : int64 Tensor of shape (B,)
        The number of target tokens of each sequence (only with ``return_counts``): a
        sequence's summed loss is ``loss * counts``.
    """
    if not isinstance(logits, torch.Tensor) or logits.ndim != 3:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise BadInputError(
            f"logits: expected a tensor of shape (batch, length, vocab), got {shape}; "
            "pass the model output's .logits"
        )
    labels = torch.as_tensor(labels, device=logits.device)
    if labels.shape != logits.shape[:2]:
        raise BadInputError(
            f"labels of shape {tuple(labels.shape)} for logits of shape {tuple(logits.shape)}; "
            "give one label per position (batch, length), ignore_index where there is none"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise BadInputError(f"labels must be integer token ids, got {labels.dtype}")
    batch, _, vocab = logits.shape
    targets = F.pad(labels.long(), (0, 1), value=ignore_index)[:, 1:]
    token_loss = F.cross_entropy(
        logits.float().reshape(-1, vocab),
        targets.reshape(-1),
        ignore_index=ignore_index,
        reduction="none",
    ).reshape(batch, -1)
    counts = (targets != ignore_index).sum(dim=1)
    # 0 / 0 is NaN: a sequence without a target has no loss, not a loss of 0
    loss = token_loss.sum(dim=1) / counts
    return (loss, counts) if return_counts else loss
