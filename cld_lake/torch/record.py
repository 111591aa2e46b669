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

Any other per-sample loss (a language model's mean token loss per sequence, a regression
error, a contrastive loss) is recorded by :meth:`LossRecorder.update_loss` (or ``record(...,
loss_fn=...)``): the ``loss`` channel alone, each sample in a *group* (a domain, a task, a
cluster; the class of a classification lake) that CLD's per-group reference averages over.
A split recorded so stores no ``correct`` or ``margin``; the scores that need them say so.

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
from cld_lake.torch._batches import (
    LogitsFn,
    LossFn,
    as_groups,
    as_tensor,
    batch_items,
    to_device,
    unpack_logits,
    unpack_loss,
)
from cld_lake.torch._distributed import (
    CommitTarget,
    bad_count_message,
    commit_distributed,
    mean_loss,
    read_on_dst,
)

# Rows kept on the device before one move to the host: few transfers, little device memory.
FLUSH_ROWS = 1 << 18
DEFAULT_CHANNELS = ("loss", "correct", "margin")
LOSS_CHANNELS = {"loss": "float32"}  # what update_loss records
TOKENS_COLUMN = "num_tokens"  # the samples table's column of update_loss(num_tokens=...)


@dataclass(frozen=True)
class CheckpointSummary:
    """What one commit wrote: the checkpoint, its sample count, mean loss (over the samples
    that have one: NaN losses are left out) and accuracy (NaN for losses recorded by
    :meth:`LossRecorder.update_loss`, which have no correct flag)."""

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
        Number of classes (of groups, for :meth:`update_loss`). Default: the lake's, else the
        width of the first logits seen (for ``update_loss``: the largest group of the lake's
        first split + 1, so give it when a later split holds more groups). Every logits
        tensor must have exactly this many columns.
    margin_dtype : {"float32", "float16"}
        Stored dtype of the margin channel (loss is float32, correct is bool).
    channels : sequence of str
        Channels to store: ``loss`` (required), ``correct``, ``margin`` (the default three)
        and ``el2n`` (on request: ``("loss", "correct", "margin", "el2n")``, for
        ``cld-lake score --method el2n``). A split keeps the channels of its first commit.
        :meth:`update_loss` records ``loss`` alone (the default there).
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

    or any per-sample loss you computed (here a causal LM's mean token loss per sequence)::

        loss = sequence_loss(model(input_ids).logits, labels)
        rec.update_loss(ids, loss, groups)
        ...
        rec.commit(checkpoint=step)
    """

    def __init__(
        self,
        lake_path: str | os.PathLike[str],
        split: str,
        num_classes: int | None = None,
        *,
        margin_dtype: str = "float32",
        channels: Sequence[str] | None = None,
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
        self._channels_given = channels is not None
        self.channels = _check_channels(
            DEFAULT_CHANNELS if channels is None else channels, margin_dtype
        )
        self._mode: str | None = None  # "logits" (update) or "loss" (update_loss): the first call's
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
        self._enter_mode("logits")
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

    def update_loss(
        self, sample_ids: Any, loss: Any, groups: Any, *, num_tokens: Any = None
    ) -> None:
        """Add one batch of losses you computed: ``sample_ids`` (B,), ``loss`` (B,), ``groups``
        (B,).

        The loss is any per-sample loss (lower = better fit): a sequence's mean token loss
        (:func:`~cld_lake.torch.sequence_loss`), a regression error, a contrastive loss. NaN
        marks a sample without a loss (stored as NaN; scores treat it as undefined). Only the
        ``loss`` channel is stored: the split has no ``correct`` or ``margin``, and the scores
        that need them refuse it in one line.

        Parameters
        ----------
        sample_ids : integer tensor or array of shape (B,)
        loss : tensor or array of shape (B,)
            Any device, any float dtype (stored as float32); gradients are not kept.
        groups : integer tensor or array of shape (B,), or a NumPy array of strings
            Each sample's group (a domain, source, task or cluster; the class for a classifier):
            CLD's per-group reference averages the reference split's losses per group. Integer
            groups are ``0..num_classes-1``; string groups are passed to the lake as they are.
        num_tokens : integer tensor or array of shape (B,), optional
            Each sample's number of target tokens (``sequence_loss(..., return_counts=True)``):
            written once, with the split's first commit, as column ``num_tokens`` of the
            split's samples table (``SELECT ... FROM samples`` shows it); a sequence's
            tokens do not change between checkpoints, so later commits do not store it again.
            Give it with every batch of a checkpoint or with none.
        """
        self._enter_mode("loss")
        values = as_tensor(loss)
        ids = as_tensor(sample_ids).reshape(-1)
        batch = ids.shape[0]
        if values.ndim > 1 and values.numel() == batch:  # (B, 1)
            values = values.reshape(-1)
        if values.ndim != 1 or values.shape[0] != batch:
            raise BadInputError(
                f"loss: expected shape ({batch},), one loss per sample id, got {tuple(values.shape)}"
            )
        if not values.dtype.is_floating_point:
            values = values.float()
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise BadInputError(f"sample ids must be integers, got {ids.dtype}")
        group_values = self._groups(groups, batch)
        parts = [ids, group_values, values.detach().float()]
        if (num_tokens is not None) != self._tokens and self._tokens is not None:
            raise BadInputError(
                "num_tokens: given for some batches of this checkpoint and not for others; "
                "give it with every batch or with none"
            )
        self._tokens = num_tokens is not None
        if num_tokens is not None:
            tokens = as_tensor(num_tokens).reshape(-1)
            if tokens.shape[0] != batch or tokens.dtype.is_floating_point:
                raise BadInputError(
                    f"num_tokens: expected {batch} integers, one per sample id, got "
                    f"{tuple(tokens.shape)} of {tokens.dtype}"
                )
            parts.append(tokens)
        self._dev.append(tuple(parts))
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
        loss_fn: LossFn | None = None,
        logits_fn: LogitsFn | None = None,
    ) -> CheckpointSummary:
        """One eval-mode, no-grad pass of ``model`` over ``loader``, then :meth:`commit`.

        Without ``loss_fn`` / ``logits_fn``, ``loader`` yields ``(inputs, labels,
        sample_ids)`` (wrap the dataset in :class:`~cld_lake.torch.WithIndex`) and ``model(inputs)``
        returns the logits; use eval transforms (no augmentation). Batches go to ``device``
        (default: the model's). The model's train/eval mode is restored afterwards.

        ``loss_fn(model, batch)`` takes any batch (a dict of Hugging Face's ``input_ids``,
        ``attention_mask``, ``labels``, ``sample_id``, ``group``, ...) on the device and
        returns ``(sample_ids, loss, groups)`` or ``(sample_ids, loss, groups, num_tokens)``,
        recorded by :meth:`update_loss`. ``logits_fn(model, batch)`` returns ``(sample_ids,
        logits, labels)`` instead, recorded by :meth:`update` (every channel).
        """
        if loss_fn is not None and logits_fn is not None:
            raise BadInputError("record(): give loss_fn or logits_fn, not both")
        if loss_fn is not None:
            self._enter_mode("loss")
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
                    if loss_fn is not None:
                        result = loss_fn(model, to_device(batch, device))
                        ids, loss, groups, tokens = unpack_loss(result, batches)
                        self.update_loss(ids, loss, groups, num_tokens=tokens)
                    elif logits_fn is not None:
                        ids, logits, labels = unpack_logits(
                            logits_fn(model, to_device(batch, device)), batches
                        )
                        self.update(ids, logits, labels)
                    else:
                        inputs, labels, ids = batch_items(batch, batches)
                        logits = model(to_device(inputs, device))
                        if not isinstance(logits, torch.Tensor):
                            raise BadInputError(
                                f"the model returned {type(logits).__name__}; record() needs a "
                                "logits tensor (batch, classes), or pass logits_fn= or loss_fn="
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
        self._dev: list[tuple[torch.Tensor | np.ndarray, ...]] = []
        self._host: list[tuple[np.ndarray, ...]] = []
        self._pending_rows = 0
        self._bad_labels: torch.Tensor | None = None
        self._bad_total = 0
        self._tokens: bool | None = None  # update_loss: num_tokens given (None: no batch yet)
        self._string_groups: bool | None = None

    def _enter_mode(self, mode: str) -> None:
        """The first update() or update_loss() fixes what this recorder records."""
        if self._mode == mode:
            return
        if self._mode is not None:
            used, other = (
                ("update_loss", "update") if self._mode == "loss" else ("update", "update_loss")
            )
            raise BadInputError(
                f"recorder of split {self.split!r} records with {used}(); {other}() records "
                "other channels: use one recorder (and one split) per kind of loss"
            )
        if mode == "loss":
            if self._channels_given and set(self.channels) != set(LOSS_CHANNELS):
                raise BadInputError(
                    f"channels={tuple(self.channels)!r}: update_loss() records the 'loss' "
                    "channel alone (no logits: no correct, margin or el2n); create the recorder "
                    "without channels=, or record logits with update()"
                )
            self.channels = dict(LOSS_CHANNELS)
            self._el2n = False
        self._mode = mode

    def _groups(self, groups: Any, batch: int) -> torch.Tensor | np.ndarray:
        """A batch's groups, of the kind (integers or strings) of the checkpoint's first batch."""
        values = as_groups(groups, batch, _is_distributed())
        strings = isinstance(values, np.ndarray)
        if self._string_groups is not None and strings != self._string_groups:
            raise BadInputError(
                "groups: integers in one batch and strings in another; give one kind"
            )
        self._string_groups = strings
        return values

    def _resolve_num_classes(self, width: int | None) -> int | None:
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
        if self._num_classes is None and width is not None:
            self._num_classes = int(width)
        return self._num_classes

    def _to_host(self) -> None:
        """One device-to-host move of everything pending (ids, labels, loss, correct, margin
        and el2n when recorded; ids, groups, loss and token counts for update_loss)."""
        if not self._dev:
            return
        cols = list(zip(*self._dev, strict=True))
        self._dev = []
        self._pending_rows = 0
        bad = self._bad_labels
        self._bad_labels = None
        joined = [_joined(col) for col in cols]
        if bad is not None:
            self._bad_total += int(bad)
        self._host.append(tuple(joined))

    def _column_names(self) -> tuple[str, ...]:
        if self._mode == "loss":
            return ("sample_id", "label", "loss", TOKENS_COLUMN)[: 3 + bool(self._tokens)]
        return ("sample_id", "label", "loss", "correct", "margin", "el2n")[: 5 + self._el2n]

    def _host_arrays(self) -> dict[str, np.ndarray]:
        self._to_host()
        names = self._column_names()
        if not self._host:
            return {n: np.zeros(0, dtype=_EMPTY_DTYPES[n]) for n in names} | {
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
        if self._mode == "loss" and not self._string_groups:
            self._resolve_num_classes(None)
            groups = out["label"] = out["label"].astype(np.int64, copy=False)
            bad = (groups < 0) | (groups >= (self._num_classes or np.iinfo(np.int64).max))
            self._bad_total = int(np.count_nonzero(bad))
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
            self.lake_path,
            self.split,
            self.run,
            self.channels,
            self._num_classes,
            self._duplicates,
            with_correct=self._mode != "loss",
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
        if int(values["bad_labels"]):  # counted before update() clamped them for the maths
            labels = values["label"]
            bad = labels[(labels < 0) | (labels >= (classes or np.iinfo(np.int64).max))]
            count, examples = int(values["bad_labels"]), bad[:3].tolist()
            raise BadInputError(bad_count_message(self.split, count, examples, classes))
        lake = Lake.create(self.lake_path, num_classes=classes)
        with SplitWriter(
            lake, self.split, channels=self.channels, num_classes=classes, run=self.run
        ) as writer:
            new = writer.split is None
            buffer = writer.checkpoint(checkpoint, epoch=epoch, step=step, duplicates=duplicates)
            buffer.add(
                values["sample_id"],
                values["loss"],
                labels=values["label"],
                **{c: values[c] for c in self.channels if c != "loss"},
            )
            buffer.commit(allow_missing=allow_missing)
            ids, first = np.unique(values["sample_id"], return_index=True)
            if new and TOKENS_COLUMN in values:
                split = writer.split
                assert split is not None
                tokens = np.zeros(split.num_samples, np.int64)
                tokens[split.rows_of(ids)] = values[TOKENS_COLUMN][first]
                writer.annotate_samples({TOKENS_COLUMN: tokens})
        correct = values.get("correct")
        return CheckpointSummary(
            split=self.split,
            checkpoint=checkpoint,
            num_samples=len(ids),
            mean_loss=mean_loss(values["loss"][first]),
            accuracy=float("nan") if correct is None else float(np.mean(correct[first])),
        )


_EMPTY_DTYPES = {
    "sample_id": "int64",
    "label": "int64",
    "loss": "float32",
    "correct": "bool",
    "margin": "float32",
    "el2n": "float32",
    TOKENS_COLUMN: "int64",
}


def _joined(parts: Sequence[torch.Tensor | np.ndarray]) -> np.ndarray:
    """One column's batches as one host array (string groups are host arrays already)."""
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    return torch.cat(list(parts)).cpu().numpy()


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


def _return_freed_memory() -> None:
    """Hand the heap's free pages back to the system (glibc keeps the many freed host chunks
    of a commit otherwise, so the joined columns would count twice); elsewhere nothing."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
