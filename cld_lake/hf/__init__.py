"""Hugging Face: record a ``transformers.Trainer`` run into a lake, train on a coreset.

Imported only explicitly (``import cld_lake.hf``; needs the extra ``cld-lake[hf]``:
``transformers`` and ``datasets``); ``import cld_lake`` never imports torch or transformers.

- :class:`LossRecorderCallback`: a ``transformers.TrainerCallback`` that records the training
  split and reference splits at each evaluation (or every N steps): a causal LM's mean token
  loss per sequence, or a sequence classifier's logits (every channel).
- :func:`select`: the ``datasets.Dataset`` rows of a manifest, in manifest order.
"""

from __future__ import annotations

from cld_lake.errors import install_hint

try:
    import datasets  # noqa: F401
    import transformers  # noqa: F401
except ImportError as exc:  # pragma: no cover - the extra is installed by make
    raise ImportError(
        f"cld_lake.hf needs transformers and datasets ({exc.name} is missing); {install_hint('hf')}"
    ) from exc

from cld_lake.hf._callback import LossRecorderCallback
from cld_lake.hf._select import select

__all__ = ["LossRecorderCallback", "select"]
