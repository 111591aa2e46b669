"""The torch side of cld_lake: record loss trajectories, train on a manifest's samples.

Imported only explicitly (``import cld_lake.torch``); ``import cld_lake`` never imports torch.

- :class:`LossRecorder` records per-sample loss, correct flag and logit margin of a split,
  one checkpoint at a time (single process or ``torch.distributed``), or any per-sample loss
  you computed (``update_loss``, ``record(..., loss_fn=...)``).
- :func:`sequence_loss`: a causal language model's mean token loss per sequence.
- :class:`WithIndex` makes a dataset yield ``(input, label, sample_id)``.
- :func:`subset` turns a manifest into a ``torch.utils.data.Subset``.
"""

from __future__ import annotations

from cld_lake.torch.data import WithIndex
from cld_lake.torch.losses import sequence_loss
from cld_lake.torch.record import CheckpointSummary, LossRecorder, sample_stats
from cld_lake.torch.subset import subset  # binds the function over the submodule's name

__all__ = [
    "CheckpointSummary",
    "LossRecorder",
    "WithIndex",
    "sample_stats",
    "sequence_loss",
    "subset",
]
