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
for the block's sample ids (see "the distributed commit" below). So what ``dst`` adds to
its own recorded values for a commit is a few blocks (about 30 MB) and the order of its own
values (8 bytes per sample it recorded), whatever the other ranks recorded; only a split's
first commit gathers the split's sample ids and labels on ``dst``, since they define it.
Nothing but ``dst``'s own reads and writes touches the lake, so a lake on object storage
needs no staging area the ranks share.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cld_lake._storage import location
from cld_lake.errors import BadInputError, CldLakeError
from cld_lake.lake import Lake
from cld_lake.lake import _format as fmt
from cld_lake.lake.writer import SplitWriter

# Rows kept on the device before one move to the host (a few MB even for ImageNet-size
# checkpoints, and one transfer per ~256k samples).
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
        from cld_lake.lake._validate import check_run_name, check_split_name

        self.lake_path = location(lake_path)  # a directory or an object-store URL
        self.split = check_split_name(split)
        self.run = check_run_name(run)
        if num_classes is not None and (
            not isinstance(num_classes, int | np.integer) or num_classes < 1
        ):
            raise BadInputError(f"num_classes={num_classes!r}: expected a positive integer")
        self._num_classes = None if num_classes is None else int(num_classes)
        self._lake_checked = False
        if margin_dtype not in fmt.CHANNEL_DTYPES["margin"]:
            raise BadInputError(
                f"margin_dtype={margin_dtype!r}: choose one of {', '.join(fmt.CHANNEL_DTYPES['margin'])}"
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
        comm = _Comm(self.group, self.dst)
        rows = _LocalRows(local, self._wire_channels(), self._num_classes)
        counts = comm.gather_ints(rows.counts())
        outcome: list[Any] = [None]
        if comm.rank == comm.dst:
            assert counts is not None
            session = _WriteSession(self, comm, rows)
            try:
                outcome[0] = session.run(counts, checkpoint, epoch, step, allow_missing)
            except CldLakeError as exc:
                outcome[0] = exc
            except Exception as exc:  # noqa: BLE001 - re-raised on every rank below
                outcome[0] = RuntimeError(
                    f"rank {comm.rank} failed to commit checkpoint {checkpoint}: {exc!r}"
                )
            finally:
                session.release_ranks()
        else:
            _serve(comm, rows)
        dist = torch.distributed
        dist.broadcast_object_list(outcome, src=comm.dst_global, group=self.group)
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]

    def _wire_channels(self) -> tuple[str, ...]:
        """The channels a rank sends at commit: the stored ones and ``correct`` (the summary's
        accuracy needs it even when it is not stored)."""
        return tuple(c for c in _WIRE_DTYPES if c in self.channels or c == "correct")

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


def _check_channels(channels: Sequence[str], margin_dtype: str) -> dict[str, str]:
    """The recorder's channels -> stored dtypes, in the lake's channel order."""
    names = [channels] if isinstance(channels, str) else list(channels)
    unknown = [c for c in names if c not in fmt.CHANNELS]
    if unknown or "loss" not in names or len(set(names)) != len(names):
        raise BadInputError(
            f"channels={tuple(names)!r}: give 'loss' and any of 'correct', 'margin', 'el2n', "
            "each once (default: ('loss', 'correct', 'margin'))"
        )
    dtypes = {"loss": "float32", "correct": "bool", "margin": margin_dtype, "el2n": "float32"}
    return {c: dtypes[c] for c in fmt.CHANNELS if c in names}


def _lake_num_classes(path: Path) -> int | None:
    if not (path / fmt.ROOT_FILE).exists():
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


# --- the distributed commit ----------------------------------------------------------------
# The writing rank (dst) never gathers a checkpoint. It walks the split's rows in blocks of
# whole chunks: for each block it broadcasts which sample ids the block holds (a first id
# when they are consecutive, as ids 0..N-1 are, else the ids themselves) and their labels;
# every rank answers with the values it recorded for those ids (row positions in the block
# and the values, one message); dst fills the block lowest rank first (the ``first`` rule:
# the order a gather would have concatenated) and hands it to the writer, which writes its
# chunk files while the next block is assembled. Nothing goes through the lake's storage
# but dst's own writes, so a remote lake needs nothing more than the writer's remote support.
# Memory on dst: a few blocks whatever N, plus its own recorded values like every rank;
# each rank sorts its ids in place and keeps their order (8 bytes per sample it recorded).
# Ids that are not 0..N-1 (or any run of consecutive ids) cost no index either: dst
# broadcasts each block's ids (8 bytes per sample of traffic) and every rank looks its own
# up by binary search. The first commit of a split is the exception: dst joins every rank's
# distinct ids and labels into the split's sample set (about 40 bytes per sample while it
# sorts them) and the writer writes samples.parquet from it; bounding that too needs a
# k-way merge of the ranks' sorted ids in pieces and a samples.parquet written row group by
# row group (the checksum and ids_sha1 can be computed as it streams).

COMMIT_BLOCK_ROWS = 1 << 19  # rows per block (rounded to whole chunks): dst's memory per block
# how values travel: widest first, so every array in a message stays aligned
_WIRE_DTYPES = {
    "loss": np.dtype("<f4"),
    "margin": np.dtype("<f4"),
    "el2n": np.dtype("<f4"),
    "correct": np.dtype("?"),
}
_ABORT, _SAMPLES, _RANGE, _LIST, _DONE = range(5)  # what dst's header asks of the ranks
_EXAMPLES = 5  # sample ids an error message names


class _Comm:
    """The process group as the commit uses it: dst broadcasts, the other ranks answer.

    Messages travel as tensors on the device the group's backend communicates on: the CPU
    for gloo (or a ``cpu:gloo,cuda:nccl`` group), the current CUDA device for NCCL."""

    def __init__(self, group: Any, dst: int) -> None:
        dist = torch.distributed
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.dst = dst
        self.dst_global = self.global_rank(dst)
        self.device = _comm_device(group)

    def global_rank(self, rank: int) -> int:
        if self.group is None:
            return rank
        return torch.distributed.get_global_rank(self.group, rank)

    def header(self, code: int = _ABORT, a: int = 0, b: int = 0, first: int = 0) -> list[int]:
        """dst: announce the next step; the others: learn it."""
        return self.broadcast(np.array([code, a, b, first], np.int64)).tolist()

    def broadcast(self, array: np.ndarray) -> np.ndarray:
        tensor = self._tensor(array)
        torch.distributed.broadcast(tensor, src=self.dst_global, group=self.group)
        return tensor.cpu().numpy()

    def send(self, payload: np.ndarray) -> None:
        """Send one message (bytes) to dst: its size, then the bytes."""
        dist = torch.distributed
        size = self._tensor(np.array([payload.nbytes], np.int64))
        dist.send(size, dst=self.dst_global, group=self.group)
        if payload.nbytes:
            dist.send(self._tensor(payload), dst=self.dst_global, group=self.group)

    def recv(self, rank: int) -> np.ndarray:
        dist = torch.distributed
        size = torch.zeros(1, dtype=torch.int64, device=self.device)
        dist.recv(size, src=self.global_rank(rank), group=self.group)
        payload = torch.empty(int(size[0]), dtype=torch.uint8, device=self.device)
        if len(payload):
            dist.recv(payload, src=self.global_rank(rank), group=self.group)
        return payload.cpu().numpy()

    def gather_ints(self, values: Sequence[int]) -> list[np.ndarray] | None:
        """A few integers from every rank, in rank order, on dst (None elsewhere)."""
        tensor = self._tensor(np.array(list(values), np.int64))
        out = [torch.empty_like(tensor) for _ in range(self.world)] if self._is_dst else None
        torch.distributed.gather(tensor, out, dst=self.dst_global, group=self.group)
        return None if out is None else [t.cpu().numpy() for t in out]

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    @property
    def _is_dst(self) -> bool:
        return self.rank == self.dst


def _comm_device(group: Any) -> torch.device:
    """Where the group's backend takes CPU-side messages: the CPU unless it is CUDA-only."""
    backend = str(torch.distributed.get_backend(group)).lower()
    if "gloo" in backend or "mpi" in backend or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def _pack_message(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Arrays as one message of bytes."""
    parts = [np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in arrays]
    return np.concatenate(parts) if parts else np.zeros(0, np.uint8)


def _unpack_message(payload: np.ndarray, dtypes: Sequence[np.dtype]) -> list[np.ndarray]:
    """The arrays of a :func:`_pack_message` message whose arrays all have the same length."""
    n = len(payload) // sum(d.itemsize for d in dtypes)
    out, offset = [], 0
    for dtype in dtypes:
        out.append(payload[offset : offset + n * dtype.itemsize].view(dtype))
        offset += n * dtype.itemsize
    return out


class _LocalRows:
    """One rank's values of a checkpoint, ordered by sample id (stably: a sample's first
    occurrence comes first), and what answering dst's blocks learns about them."""

    def __init__(
        self, local: dict[str, np.ndarray], channels: Sequence[str], num_classes: int | None
    ) -> None:
        ids = local.pop("sample_id")  # sorted in place: this rank's ids are held once
        self.labels = local["label"]
        self.channels = list(channels)
        self.values = [local[c].astype(_WIRE_DTYPES[c], copy=False) for c in self.channels]
        self.bad_labels = int(local["bad_labels"])
        self.num_classes = num_classes
        self.order = np.argsort(ids, kind="stable")
        if not ids.flags.writeable:
            ids = ids.copy()
        ids.sort()  # in place: the order and the ids, no third array of N/world
        self.sorted_ids = ids
        self.placed = np.zeros(len(self.sorted_ids), dtype=bool)
        self.duplicates = 0  # occurrences of an id this rank already answered with
        # (local index, id, label, the label the split holds) of the first label that differs
        self.conflict: tuple[int, int, int, int] | None = None

    def counts(self) -> list[int]:
        """[samples, bad labels, classes (-1: unknown), up to 3 bad labels (count first)]."""
        bad: list[int] = []
        if self.bad_labels:
            classes = self.num_classes or 0
            bad = self.labels[(self.labels < 0) | (self.labels >= classes)][:3].tolist()
        classes = -1 if self.num_classes is None else self.num_classes
        return [len(self.order), self.bad_labels, classes, len(bad), *bad, *[0] * (3 - len(bad))]

    def unique(self) -> list[np.ndarray]:
        """This rank's distinct sample ids, sorted, with the label of each one's first occurrence."""
        first = np.ones(len(self.sorted_ids), dtype=bool)
        first[1:] = self.sorted_ids[1:] != self.sorted_ids[:-1]
        return [self.sorted_ids[first], self.labels[self.order[first]].astype(np.int64)]

    def piece(
        self, code: int, first_id: int, block_ids: np.ndarray | None, block_labels: np.ndarray
    ) -> list[np.ndarray]:
        """Positions in the block (int32) and values of every channel for the block's ids this
        rank recorded, each id once; checks the labels of every occurrence on the way."""
        n = len(block_labels)
        if code == _RANGE:  # the block holds ids first_id .. first_id + n - 1
            i0, i1 = np.searchsorted(self.sorted_ids, [first_id, first_id + n])
            cand = self.sorted_ids[i0:i1]
            idx = self.order[i0:i1]
            pos = cand - first_id
        else:
            assert block_ids is not None
            by_id = np.argsort(block_ids)
            sorted_block = block_ids[by_id]
            i0 = np.searchsorted(self.sorted_ids, sorted_block[0] if n else 0)
            i1 = np.searchsorted(self.sorted_ids, sorted_block[-1], "right") if n else i0
            cand = self.sorted_ids[i0:i1]
            j = np.minimum(np.searchsorted(sorted_block, cand), max(n - 1, 0))
            found = sorted_block[j] == cand
            cand, idx, pos = cand[found], self.order[i0:i1][found], by_id[j[found]]
        self.placed[idx] = True
        self._check_labels(idx, cand, block_labels[pos])
        first = np.ones(len(cand), dtype=bool)
        first[1:] = cand[1:] != cand[:-1]
        self.duplicates += len(cand) - int(np.count_nonzero(first))
        idx = idx[first]
        return [pos[first].astype(np.int32), *(v[idx] for v in self.values)]

    def _check_labels(self, idx: np.ndarray, ids: np.ndarray, stored: np.ndarray) -> None:
        """Remember the first (in this rank's order) recorded label that differs from the
        block's (the split's stored label, or a new split's label at its first occurrence)."""
        wrong = np.flatnonzero(stored != self.labels[idx])
        if not len(wrong):
            return
        i = wrong[np.argmin(idx[wrong])]
        k = int(idx[i])
        if self.conflict is None or k < self.conflict[0]:
            self.conflict = (k, int(ids[i]), int(self.labels[k]), int(stored[i]))

    def stats(self) -> list[int]:
        """[unplaced ids, examples, 5 example ids, conflict?, its 4 values, duplicates]."""
        unplaced = len(self.placed) - int(np.count_nonzero(self.placed))
        examples = [self._id_at(k) for k in np.flatnonzero(~self.placed)[:_EXAMPLES]]
        conflict = [1, *self.conflict] if self.conflict is not None else [0, 0, 0, 0, 0]
        pad = [0] * (_EXAMPLES - len(examples))
        return [unplaced, len(examples), *examples, *pad, *conflict, self.duplicates]

    def _id_at(self, k: int) -> int:
        """The id this rank added k-th (a scan: only for an error message)."""
        return int(self.sorted_ids[np.flatnonzero(self.order == k)[0]])


def _return_freed_memory() -> None:
    """Hand the heap's free pages back to the system (glibc keeps the many freed host chunks
    of a commit otherwise, so the joined columns would count twice); elsewhere nothing."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _serve(comm: _Comm, rows: _LocalRows) -> None:
    """A rank other than dst: answer dst's requests until it is done (or gives up)."""
    while True:
        code, a, b, first = comm.header()
        if code == _ABORT:
            return
        if code == _DONE:
            comm.gather_ints(rows.stats())
            return
        if code == _SAMPLES:
            comm.send(_pack_message(rows.unique()))
            continue
        ids = comm.broadcast(np.empty(b - a, np.int64)) if code == _LIST else None
        labels = comm.broadcast(np.empty(b - a, np.int32))
        comm.send(_pack_message(rows.piece(code, first, ids, labels)))


class _WriteSession:
    """dst's side of a distributed commit: checks, the new split's sample set, the blocks."""

    def __init__(self, recorder: LossRecorder, comm: _Comm, rows: _LocalRows) -> None:
        self.rec = recorder
        self.comm = comm
        self.rows = rows
        self.ranks_waiting = True  # the other ranks wait for a header
        self.seen = 0
        self.loss_sum = 0.0
        self.correct = 0
        self.missing = 0
        self.missing_examples: list[int] = []
        self.duplicates = 0  # ids two ranks both recorded (each rank counts its own repeats)

    def release_ranks(self) -> None:
        """Tell the ranks still waiting for a header that there is nothing more to do."""
        if self.ranks_waiting:
            self.ranks_waiting = False
            self.comm.header(_ABORT)

    def run(
        self,
        counts: list[np.ndarray],
        checkpoint: int,
        epoch: int | None,
        step: int | None,
        allow_missing: bool,
    ) -> CheckpointSummary:
        rec = self.rec
        if rec._num_classes is None:  # dst saw no batch: another rank knows the width
            known = [int(c[2]) for c in counts if c[2] > 0]
            rec._num_classes = known[0] if known else None
        classes = rec._num_classes
        total = sum(int(c[0]) for c in counts)
        if total == 0:
            raise BadInputError(
                f"checkpoint {checkpoint} of split {rec.split!r}: no samples were recorded; "
                "call update() or record() with a non-empty loader before commit()"
            )
        bad = sum(int(c[1]) for c in counts)
        if bad:
            examples = [x for c in counts for x in c[4 : 4 + int(c[3])].tolist()][:3]
            raise BadInputError(
                f"split {rec.split!r}: {bad} labels are outside the {classes} classes "
                f"(e.g. {examples}); labels must be class indices 0..{(classes or 1) - 1}"
            )
        duplicates = rec._duplicates or "first"
        lake = Lake.create(rec.lake_path, num_classes=classes)
        with SplitWriter(
            lake, rec.split, channels=rec.channels, num_classes=classes, run=rec.run
        ) as writer:
            split = writer.split
            if split is None:  # the first commit defines the split: its sample set first
                ids, labels = self._sample_set()
                if duplicates == "error" and len(ids) != total:
                    raise BadInputError(
                        f"checkpoint {checkpoint}: {total - len(ids)} sample ids given twice; "
                        "pass duplicates='first' when a sampler repeats samples"
                    )
                new_samples: tuple[np.ndarray, np.ndarray] | None = (ids, labels)
                num_rows, row_chunk = len(ids), fmt.DEFAULT_ROW_CHUNK

                def source(a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
                    return ids[a:b], labels[a:b]
            else:
                new_samples, num_rows, row_chunk = None, split.num_samples, split.row_chunk
                source = split.sample_rows
            block_rows = max(COMMIT_BLOCK_ROWS // row_chunk, 1) * row_chunk
            blocks = self._blocks(source, num_rows, block_rows)
            checks = self._checked(
                blocks, writer, checkpoint, new_samples is not None, allow_missing
            )
            writer.commit_row_blocks(
                checkpoint, checks, epoch=epoch, step=step, new_samples=new_samples
            )
        return CheckpointSummary(
            split=rec.split,
            checkpoint=checkpoint,
            num_samples=self.seen,
            mean_loss=self.loss_sum / self.seen,
            accuracy=self.correct / self.seen,
        )

    def _sample_set(self) -> tuple[np.ndarray, np.ndarray]:
        """The new split's sample ids (sorted) and each one's label at its first occurrence
        (lowest rank first). O(N) on dst: the split's first commit only."""
        comm = self.comm
        comm.header(_SAMPLES)
        ids_parts, label_parts = [], []
        for rank in range(comm.world):
            if rank == comm.dst:
                ids, labels = self.rows.unique()
            else:
                ids, labels = _unpack_message(comm.recv(rank), [np.dtype("<i8")] * 2)
            ids_parts.append(ids)
            label_parts.append(labels)
        ids, labels = np.concatenate(ids_parts), np.concatenate(label_parts)
        del ids_parts, label_parts
        uniq, first = np.unique(ids, return_index=True)
        return uniq, labels[first]

    def _blocks(
        self, source: Any, num_rows: int, block_rows: int
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Each block of rows, assembled from every rank's values."""
        comm = self.comm
        for a in range(0, num_rows, block_rows):
            b = min(a + block_rows, num_rows)
            ids, labels = source(a, b)
            ids = np.asarray(ids, dtype=np.int64)
            first = int(ids[0])
            consecutive = int(ids[-1]) - first == b - a - 1 and bool(np.all(np.diff(ids) == 1))
            code = _RANGE if consecutive else _LIST
            comm.header(code, a, b, first)
            if code == _LIST:
                comm.broadcast(ids)
            block_labels = comm.broadcast(np.asarray(labels, dtype=np.int32))
            yield a, self._assemble(code, first, ids, block_labels)
        comm.header(_DONE)
        self.ranks_waiting = False

    def _assemble(
        self, code: int, first: int, ids: np.ndarray, block_labels: np.ndarray
    ) -> dict[str, np.ndarray]:
        comm, rows, stored = self.comm, self.rows, self.rec.channels
        n = len(ids)
        buffers = {
            c: np.full(
                n, False if stored.get(c, "bool") == "bool" else np.nan, stored.get(c, "bool")
            )
            for c in rows.channels
        }
        dtypes = [np.dtype("<i4"), *(_WIRE_DTYPES[c] for c in rows.channels)]
        seen = np.zeros(n, dtype=bool)
        for rank in range(comm.world):
            if rank == comm.dst:
                pos, *values = rows.piece(code, first, ids, block_labels)
            else:
                pos, *values = _unpack_message(comm.recv(rank), dtypes)
            fresh = ~seen[pos]
            if not fresh.all():  # a lower rank answered first: the `first` rule keeps its value
                self.duplicates += len(pos) - int(np.count_nonzero(fresh))
                pos, values = pos[fresh], [v[fresh] for v in values]
            seen[pos] = True
            for channel, v in zip(rows.channels, values, strict=True):
                buffers[channel][pos] = v
        count = int(np.count_nonzero(seen))
        self.seen += count
        self.loss_sum += float(np.sum(buffers["loss"][seen], dtype=np.float64))
        self.correct += int(np.count_nonzero(buffers["correct"][seen]))
        if count < n:
            self.missing += n - count
            room = _EXAMPLES - len(self.missing_examples)
            self.missing_examples += ids[~seen][:room].tolist()
        return {c: buffers[c] for c in stored}

    def _checked(
        self,
        blocks: Iterator[tuple[int, dict[str, np.ndarray]]],
        writer: SplitWriter,
        checkpoint: int,
        new: bool,
        allow_missing: bool,
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """The blocks, then the checks a single-process commit makes, in its order; raising
        here abandons the checkpoint (the writer removes its segment)."""
        yield from blocks
        stats = self.comm.gather_ints(self.rows.stats())
        assert stats is not None
        unplaced = [s for s in stats if s[0]]
        if unplaced:
            examples = [x for s in unplaced for x in s[2 : 2 + int(s[1])].tolist()][:_EXAMPLES]
            raise BadInputError(
                f"sample ids {examples} are not in split {writer.name!r} of {writer.lake.path}"
            )
        conflicts = [s for s in stats if s[7]]
        if conflicts:
            sample, label, stored = (int(x) for x in conflicts[0][9:12])
            if new:
                raise BadInputError(f"sample {sample} was given with two different labels")
            raise BadInputError(
                f"sample {sample}: label {label} differs from its stored label {stored}"
            )
        repeated = self.duplicates + sum(int(s[12]) for s in stats)
        if repeated and not new and (self.rec._duplicates or "first") == "error":
            raise BadInputError(
                f"checkpoint {checkpoint}: {repeated} sample ids given twice; "
                "pass duplicates='first' when a sampler repeats samples (e.g. DistributedSampler padding)"
            )
        if self.missing and not allow_missing:
            raise BadInputError(
                f"checkpoint {checkpoint} of split {writer.name!r}: no values for {self.missing} of "
                f"{writer.split.num_samples if writer.split else self.seen} samples "
                f"(e.g. ids {self.missing_examples}); add them or commit(allow_missing=True)"
            )
