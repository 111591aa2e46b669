"""Record per-sample loss trajectories from torch training into a lake.

Per checkpoint and sample the recorder stores three channels by default:

- ``loss``: cross-entropy of the logits against the label (``reduction='none'``), float32;
- ``correct``: ``argmax(logits) == label`` (ties resolve to the first maximal class, as
  ``torch.argmax`` does), bool;
- ``margin``: the labelled class's logit minus the largest other logit, float32 (or float16).
  Positive means correct with that much room; negative means wrong; 0 is a tie.

and, on request (``channels=("loss", "correct", "margin", "el2n")``), a fourth:

- ``el2n``: the L2 norm of ``softmax(logits) - onehot(label)`` (Paul et al. 2021), float32,
  computed on the device from the same logits (one more pass over the logits).

Results stay on the model's device while the pass runs (no host sync per batch) and move to
the host in large chunks; a commit writes the checkpoint atomically through
:class:`cld_lake.lake.SplitWriter`. The recorder opens the lake lazily and takes the split's
writer lock only while it commits, so a process can record ``train`` and ``val`` with two
recorders and other tools can read the lake between commits.

Under ``torch.distributed`` every rank records its own samples; at commit one rank (``dst``)
writes the checkpoint, with duplicate ids (the padding of ``DistributedSampler``) kept once,
lowest rank first; then all ranks learn the outcome, so no rank runs ahead of the commit and
an error is raised on every rank. ``dst`` never gathers the checkpoint: it walks the split's
rows in blocks of whole chunks, and for each block every rank sends the values it recorded
for the block's sample ids (see :mod:`cld_lake.torch._distributed`). So what ``dst`` adds to
its own recorded values for a commit is a few blocks and the order of its own values (8
bytes per sample it recorded), whatever the other ranks recorded; only a split's first
commit gathers the split's sample ids and labels on ``dst``, since they define it.
Nothing but ``dst``'s own reads and writes touches the lake, so a lake on object storage
needs no staging area the ranks share.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cld_lake.errors import BadInputError, CheckpointExistsError
from cld_lake.lake import (
    CHANNEL_DTYPES,
    CHANNELS,
    DEFAULT_RUN,
    ROOT_FILE,
    Lake,
    SplitWriter,
    check_run_name,
    check_split_name,
)
from cld_lake.storage import StorePath, location
from cld_lake.torch._distributed import CommitTarget, commit_distributed, read_on_dst

# Rows kept on the device before one move to the host: few transfers, little device memory.
FLUSH_ROWS = 1 << 18
DEFAULT_CHANNELS = ("loss", "correct", "margin")


@dataclass(frozen=True)
class CheckpointSummary:
    """What one commit wrote: the checkpoint, its sample count, mean loss and accuracy."""

    split: str
    checkpoint: int
    num_samples: int
    mean_loss: float
    accuracy: float


def sample_stats(
    logits: torch.Tensor, labels: torch.Tensor, el2n: bool = False
) -> tuple[torch.Tensor, ...]:
    """Per-sample loss, correct flag and logit margin (see the module docstring), and with
    ``el2n`` the EL2N score.

    Computed in float32 whatever the logits' dtype (autocast logits are half precision).

    Parameters
    ----------
    logits : Tensor of shape (B, C)
    labels : Tensor of shape (B,), int64 in ``0..C-1``
    el2n : bool
        Also return ``||softmax(logits) - onehot(label)||_2`` per sample.

    Returns
    -------
    loss : float32 (B,), correct : bool (B,), margin : float32 (B,)[, el2n : float32 (B,)]
    """
    logits = logits.float()
    labels = labels.long()
    loss = F.cross_entropy(logits, labels, reduction="none")
    correct = logits.argmax(dim=1) == labels
    own = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    margin = own - others.amax(dim=1)
    if not el2n:
        return loss, correct, margin
    # softmax minus the one-hot row, then its norm: subtracting 1 in place at the label keeps
    # small errors exact (the expanded form sum(p^2) - 2 p_y + 1 cancels catastrophically)
    error = torch.softmax(logits, dim=1)
    error.scatter_add_(1, labels[:, None], torch.full_like(own[:, None], -1.0))
    return loss, correct, margin, torch.linalg.vector_norm(error, dim=1)


def _is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _model_device(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


class LossRecorder:
    """Record per-sample loss, correct flag and margin (and on request el2n) of one split,
    checkpoint by checkpoint.

    Parameters
    ----------
    lake_path : path
        The lake directory; created on the first commit if it does not exist.
    split : str
        ``train``, ``val`` or ``test`` (or another name of letters, digits, ``_-.``).
    num_classes : int, optional
        Number of classes. Default: the lake's, else the width of the first logits seen.
        Every logits tensor must have exactly this many columns.
    margin_dtype : {"float32", "float16"}
        Stored dtype of the margin channel (loss is float32, correct is bool).
    channels : sequence of str
        Channels to store: ``loss`` (required), ``correct``, ``margin`` (the default three)
        and ``el2n`` (on request: ``("loss", "correct", "margin", "el2n")``, for
        ``cld-lake score --method el2n``). A split keeps the channels of its first commit.
    duplicates : {"error", "first"}, optional
        What a commit does with a sample id seen twice. Default: ``"first"`` under
        ``torch.distributed`` (the sampler pads with duplicates), else ``"error"``.
    group : ProcessGroup, optional
        The process group to gather over (default: the world).
    dst : int
        The rank that writes the lake (rank within ``group``).
    run : str, optional
        The proxy run (seed, architecture) this training is; each run holds its own splits,
        and ``cld-lake score --run A --run B`` scores their ensemble. Default: the lake's
        default run. Letters, digits, ``_-.``.

    Examples
    --------
    >>> rec = LossRecorder("runs/x.lake", "train")                   # doctest: +SKIP
    >>> rec.record(model, eval_loader, checkpoint=epoch, epoch=epoch)  # doctest: +SKIP

    or, inside your own step (logits of the batch you just computed)::

        rec.update(ids, logits.detach(), labels)
        ...
        rec.commit(checkpoint=epoch)
    """

    def __init__(
        self,
        lake_path: str | os.PathLike[str],
        split: str,
        num_classes: int | None = None,
        *,
        margin_dtype: str = "float32",
        channels: Sequence[str] = DEFAULT_CHANNELS,
        duplicates: str | None = None,
        group: Any = None,
        dst: int = 0,
        run: str | None = None,
    ) -> None:
        self.lake_path = location(lake_path)  # a directory or an object-store URL
        self.split = check_split_name(split)
        self.run = check_run_name(run)
        if num_classes is not None and (
            not isinstance(num_classes, int | np.integer) or num_classes < 1
        ):
            raise BadInputError(f"num_classes={num_classes!r}: expected a positive integer")
        self._num_classes = None if num_classes is None else int(num_classes)
        self._lake_checked = False
        if margin_dtype not in CHANNEL_DTYPES["margin"]:
            raise BadInputError(
                f"margin_dtype={margin_dtype!r}: choose one of {', '.join(CHANNEL_DTYPES['margin'])}"
            )
        self.channels = _check_channels(channels, margin_dtype)
        self._el2n = "el2n" in self.channels
        if duplicates not in (None, "error", "first"):
            raise BadInputError(f"duplicates={duplicates!r}: use 'error' or 'first'")
        self._duplicates = duplicates
        self.group = group
        self.dst = dst
        self._reset()

    # --- public API ----------------------------------------------------------------------
    @property
    def num_classes(self) -> int | None:
        return self._num_classes

    @property
    def committed_checkpoints(self) -> np.ndarray:
        """The checkpoint ids already committed in this recorder's split (of its run), sorted;
        empty before the first commit. Read afresh from the lake each time: a resumed loop
        starts after the last of them (``record`` refuses a committed id before its pass).

        Under ``torch.distributed`` read it on every rank, as ``record`` and ``commit`` are
        called: the writing rank ``dst`` reads the lake and every rank gets its answer.
        """
        if _is_distributed():
            return read_on_dst(self.group, self.dst, self._read_committed)
        return self._read_committed()

    @property
    def pending(self) -> int:
        """Samples added since the last commit (on this rank)."""
        return self._pending_rows + sum(len(c[0]) for c in self._host)

    def update(self, sample_ids: Any, logits: torch.Tensor, labels: Any) -> None:
        """Add one batch: ``sample_ids`` (B,), ``logits`` (B, C), ``labels`` (B,).

        Tensors may live on any device; nothing is copied to the host here. Pass logits
        computed in eval mode for the paper's protocol (``record`` does that for you);
        gradients are not kept.
        """
        if not isinstance(logits, torch.Tensor):
            raise BadInputError(
                f"logits: expected a torch.Tensor of shape (batch, classes), got {type(logits).__name__}"
            )
        if logits.ndim != 2:
            raise BadInputError(
                f"logits: expected shape (batch, classes), got {tuple(logits.shape)}"
            )
        classes = self._resolve_num_classes(logits.shape[1])
        if logits.shape[1] != classes:
            raise BadInputError(
                f"the model outputs {logits.shape[1]} logits per sample but split {self.split!r} has "
                f"{classes} classes; give the model {classes} outputs (or use a lake with {logits.shape[1]} classes)"
            )
        labels = torch.as_tensor(labels).reshape(-1)
        ids = torch.as_tensor(sample_ids).reshape(-1)
        batch = logits.shape[0]
        if labels.shape[0] != batch or ids.shape[0] != batch:
            raise BadInputError(
                f"batch of {batch} logits with {ids.shape[0]} sample ids and {labels.shape[0]} labels; "
                "give one id and one label per row of logits"
            )
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise BadInputError(f"sample ids must be integers, got {ids.dtype}")
        labels = labels.to(logits.device, non_blocking=True).long()
        # Out-of-range labels would crash cross_entropy (a device assert on CUDA): clamp them
        # for the maths, count them, and refuse at commit. On the CPU a min/max check costs
        # nothing; on an accelerator the count stays on the device (no sync per batch).
        if logits.device.type == "cpu":
            if batch and (int(labels.min()) < 0 or int(labels.max()) >= classes):
                self._bad_total += int(((labels < 0) | (labels >= classes)).sum())
                labels = labels.clamp(0, classes - 1)
        else:
            bad = ((labels < 0) | (labels >= classes)).sum()
            self._bad_labels = self._bad_labels + bad if self._bad_labels is not None else bad
            labels = labels.clamp(0, classes - 1)
        with torch.no_grad():
            stats = sample_stats(logits.detach(), labels, el2n=self._el2n)
        self._dev.append((ids, labels, *stats))
        self._pending_rows += batch
        if self._pending_rows >= FLUSH_ROWS:
            self._to_host()

    def commit(
        self,
        checkpoint: int,
        *,
        epoch: int | None = None,
        step: int | None = None,
        allow_missing: bool = False,
    ) -> CheckpointSummary:
        """Write everything added since the last commit as checkpoint ``checkpoint``.

        Every sample of the split must be present (unless ``allow_missing``); the first commit
        of a new split defines its sample set. Under ``torch.distributed`` call this on every
        rank. Returns a summary (on every rank).
        """
        checkpoint = int(checkpoint)
        try:
            local = self._host_arrays()
        finally:
            self._reset()
        if _is_distributed():
            return self._commit_distributed(local, checkpoint, epoch, step, allow_missing)
        return self._write(
            local, checkpoint, epoch, step, allow_missing, duplicates=self._duplicates or "error"
        )

    def record(
        self,
        model: torch.nn.Module,
        loader: Iterable[Any],
        checkpoint: int,
        *,
        epoch: int | None = None,
        step: int | None = None,
        device: torch.device | str | None = None,
        allow_missing: bool = False,
    ) -> CheckpointSummary:
        """One eval-mode, no-grad pass of ``model`` over ``loader``, then :meth:`commit`.

        ``loader`` yields ``(inputs, labels, sample_ids)`` (wrap the dataset in
        :class:`~cld_lake.torch.WithIndex`); use eval transforms (no augmentation). Inputs go to
        ``device`` (default: the model's). The model's train/eval mode is restored afterwards.
        """
        if self.pending:
            raise BadInputError(
                f"recorder of split {self.split!r} holds {self.pending} values from update(); "
                "commit() them before record()"
            )
        self._refuse_committed(int(checkpoint))  # before the pass, not after a whole epoch
        device = torch.device(device) if device is not None else _model_device(model)
        was_training = model.training
        model.eval()
        batches = 0
        try:
            with torch.no_grad():
                for batch in loader:
                    inputs, labels, ids = _unpack(batch, batches)
                    logits = model(_to_device(inputs, device))
                    if not isinstance(logits, torch.Tensor):
                        raise BadInputError(
                            f"the model returned {type(logits).__name__}; record() needs a logits tensor (batch, classes)"
                        )
                    self.update(ids, logits, labels)
                    batches += 1
        except BaseException:
            self._reset()
            raise
        finally:
            model.train(was_training)
        if batches == 0 and not _is_distributed():  # a rank may own no samples: commit decides
            raise BadInputError(f"record(): the loader for split {self.split!r} yielded no batches")
        return self.commit(checkpoint, epoch=epoch, step=step, allow_missing=allow_missing)

    # --- internals -----------------------------------------------------------------------
    def _read_committed(self) -> np.ndarray:
        if not (self.lake_path / ROOT_FILE).exists():
            return np.zeros(0, np.int64)
        lake = Lake(self.lake_path)
        if not lake.has_split(self.split, self.run):
            return np.zeros(0, np.int64)
        return np.sort(lake.split(self.split, self.run).checkpoint_ids)

    def _refuse_committed(self, checkpoint: int) -> None:
        """A committed ``checkpoint`` refused in one line, on every rank, with the fixes."""
        committed = self.committed_checkpoints
        if checkpoint not in committed:
            return
        where = f"split {self.split!r}" + (
            "" if self.run == DEFAULT_RUN else f" of run {self.run!r}"
        )
        raise CheckpointExistsError(
            f"checkpoint {checkpoint} is already committed in {where} of {self.lake_path} "
            f"(committed: {_ids_text(committed)}); committed checkpoints are never overwritten: "
            f"record the next checkpoint id ({int(committed[-1]) + 1}; a resumed loop starts "
            "after LossRecorder.committed_checkpoints), another run (LossRecorder(..., "
            "run='seed1')) or a new lake"
        )

    def _reset(self) -> None:
        self._dev: list[tuple[torch.Tensor, ...]] = []
        self._host: list[tuple[np.ndarray, ...]] = []
        self._pending_rows = 0
        self._bad_labels: torch.Tensor | None = None
        self._bad_total = 0

    def _resolve_num_classes(self, width: int) -> int:
        if not self._lake_checked:
            self._lake_checked = True
            lake_classes = _lake_num_classes(self.lake_path)
            if lake_classes is not None:
                if self._num_classes is not None and self._num_classes != lake_classes:
                    raise BadInputError(
                        f"num_classes={self._num_classes}: the lake at {self.lake_path} has {lake_classes} "
                        "classes; use the same number or a new lake"
                    )
                self._num_classes = lake_classes
        if self._num_classes is None:
            self._num_classes = int(width)
        return self._num_classes

    def _to_host(self) -> None:
        """One device-to-host move of everything pending (ids, labels, loss, correct, margin
        and el2n when recorded)."""
        if not self._dev:
            return
        cols = list(zip(*self._dev, strict=True))
        self._dev = []
        self._pending_rows = 0
        bad = self._bad_labels
        self._bad_labels = None
        cat = [torch.cat(col) for col in cols]
        if bad is not None:
            self._bad_total += int(bad)
        self._host.append(tuple(t.cpu().numpy() for t in cat))

    def _host_arrays(self) -> dict[str, np.ndarray]:
        self._to_host()
        names = ("sample_id", "label", "loss", "correct", "margin", "el2n")[: 5 + self._el2n]
        if not self._host:
            dtypes = ("int64", "int64", "float32", "bool", "float32", "float32")
            return {n: np.zeros(0, dtype=d) for n, d in zip(names, dtypes, strict=False)} | {
                "bad_labels": np.int64(0)
            }
        # column by column, each column's parts freed once joined: the host holds the values
        # plus one column, not the values twice
        columns = [list(parts) for parts in zip(*self._host, strict=True)]
        self._host = []
        out = {}
        for name, parts in zip(names, columns, strict=True):
            out[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
            parts.clear()
            _return_freed_memory()
        out["sample_id"] = out["sample_id"].astype(np.int64, copy=False)
        out["bad_labels"] = np.int64(self._bad_total)
        return out

    def _commit_distributed(
        self,
        local: dict[str, np.ndarray],
        checkpoint: int,
        epoch: int | None,
        step: int | None,
        allow_missing: bool,
    ) -> CheckpointSummary:
        """Every rank's values to the writing rank ``dst`` (see :mod:`._distributed`)."""
        target = CommitTarget(
            self.lake_path, self.split, self.run, self.channels, self._num_classes, self._duplicates
        )
        totals = commit_distributed(
            target, local, checkpoint, epoch, step, allow_missing, self.group, self.dst
        )
        self._num_classes = target.num_classes  # dst learns it from the ranks that saw batches
        return CheckpointSummary(self.split, checkpoint, *totals)

    def _write(
        self,
        values: dict[str, np.ndarray],
        checkpoint: int,
        epoch: int | None,
        step: int | None,
        allow_missing: bool,
        duplicates: str,
    ) -> CheckpointSummary:
        n = len(values["sample_id"])
        if n == 0:
            raise BadInputError(
                f"checkpoint {checkpoint} of split {self.split!r}: no samples were recorded; "
                "call update() or record() with a non-empty loader before commit()"
            )
        classes = self._num_classes
        if int(values["bad_labels"]):
            labels = values["label"]
            bad = labels[(labels < 0) | (labels >= (classes or 0))]
            raise BadInputError(
                f"split {self.split!r}: {int(values['bad_labels'])} labels are outside the {classes} classes "
                f"(e.g. {bad[:3].tolist()}); labels must be class indices 0..{(classes or 1) - 1}"
            )
        lake = Lake.create(self.lake_path, num_classes=classes)
        with SplitWriter(
            lake, self.split, channels=self.channels, num_classes=classes, run=self.run
        ) as writer:
            buffer = writer.checkpoint(checkpoint, epoch=epoch, step=step, duplicates=duplicates)
            buffer.add(
                values["sample_id"],
                values["loss"],
                labels=values["label"],
                **{c: values[c] for c in self.channels if c != "loss"},
            )
            buffer.commit(allow_missing=allow_missing)
        ids, first = np.unique(values["sample_id"], return_index=True)
        loss = values["loss"][first]
        return CheckpointSummary(
            split=self.split,
            checkpoint=checkpoint,
            num_samples=len(ids),
            mean_loss=float(np.mean(loss, dtype=np.float64)),
            accuracy=float(np.mean(values["correct"][first])),
        )


def _ids_text(ids: np.ndarray) -> str:
    """Sorted checkpoint ids for a message: ``0..30`` when consecutive, else the first few."""
    first, last = int(ids[0]), int(ids[-1])
    if last - first + 1 == len(ids):
        return f"{first}..{last}" if len(ids) > 1 else str(first)
    shown = ", ".join(str(int(i)) for i in ids[:5])
    return f"{shown}, ... {last} ({len(ids)} ids)" if len(ids) > 5 else shown


def _check_channels(channels: Sequence[str], margin_dtype: str) -> dict[str, str]:
    """The recorder's channels -> stored dtypes, in the lake's channel order."""
    names = [channels] if isinstance(channels, str) else list(channels)
    unknown = [c for c in names if c not in CHANNELS]
    if unknown or "loss" not in names or len(set(names)) != len(names):
        raise BadInputError(
            f"channels={tuple(names)!r}: give 'loss' and any of 'correct', 'margin', 'el2n', "
            "each once (default: ('loss', 'correct', 'margin'))"
        )
    dtypes = {"loss": "float32", "correct": "bool", "margin": margin_dtype, "el2n": "float32"}
    return {c: dtypes[c] for c in CHANNELS if c in names}


def _lake_num_classes(path: StorePath) -> int | None:
    if not (path / ROOT_FILE).exists():
        return None
    return Lake(path).num_classes


def _unpack(batch: Any, index: int) -> tuple[Any, Any, Any]:
    if isinstance(batch, dict):
        missing = [k for k in ("input", "label", "sample_id") if k not in batch]
        if missing:
            raise BadInputError(f"record(): batch {index} is a dict without keys {missing}")
        return batch["input"], batch["label"], batch["sample_id"]
    if not isinstance(batch, tuple | list) or len(batch) != 3:
        size = len(batch) if isinstance(batch, tuple | list) else type(batch).__name__
        raise BadInputError(
            f"record(): the loader yields batches of {size} items without sample ids; it must yield "
            "(inputs, labels, sample_ids): wrap the dataset as cld_lake.torch.WithIndex(dataset)"
        )
    return batch[0], batch[1], batch[2]


def _to_device(inputs: Any, device: torch.device) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device, non_blocking=True)
    if isinstance(inputs, tuple | list):
        return type(inputs)(_to_device(x, device) for x in inputs)
    if isinstance(inputs, dict):
        return {k: _to_device(v, device) for k, v in inputs.items()}
    return inputs


def _return_freed_memory() -> None:
    """Hand the heap's free pages back to the system (glibc keeps the many freed host chunks
    of a commit otherwise, so the joined columns would count twice); elsewhere nothing."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
