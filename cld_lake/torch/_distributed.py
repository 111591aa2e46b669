"""The distributed commit of :class:`~cld_lake.torch.LossRecorder`: every rank recorded its
own samples; one rank (``dst``) writes the checkpoint.

The writing rank never gathers a checkpoint. It walks the split's rows in blocks of whole
chunks: for each block it broadcasts which sample ids the block holds (a first id when they
are consecutive, as ids 0..N-1 are, else the ids themselves) and their labels; every rank
answers with the values it recorded for those ids (row positions in the block and the
values, one message); dst fills the block lowest rank first (the ``first`` rule: the order a
gather would have concatenated) and hands it to the writer
(:meth:`~cld_lake.lake.SplitWriter.commit_row_blocks`), which writes its chunk files while
the next block is assembled. Nothing goes through the lake's storage but dst's own writes,
so a remote lake needs nothing more than the writer's remote support.

Memory on dst: a few blocks whatever N, plus its own recorded values like every rank; each
rank sorts its ids in place and keeps their order (8 bytes per sample it recorded). Ids that
are not 0..N-1 (or any run of consecutive ids) cost no index either: dst broadcasts each
block's ids (8 bytes per sample of traffic) and every rank looks its own up by binary
search. The first commit of a split is the exception: dst joins every rank's distinct ids
and labels into the split's sample set (O(N) while it sorts them), which the writer then
streams into ``samples.parquet`` as :class:`~cld_lake.lake.SampleBlocks`; bounding the
sample set itself needs a k-way merge of the ranks' sorted ids in pieces.

Then all ranks learn the outcome, so no rank runs ahead of the commit and an error is raised
on every rank.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch

from cld_lake.errors import BadInputError, CldLakeError
from cld_lake.lake import Lake, SampleBlocks, SplitWriter
from cld_lake.storage import StorePath

COMMIT_BLOCK_ROWS = 1 << 19  # rows per block (rounded to whole chunks): dst's memory per block
# how values travel: widest first, so every array in a message stays aligned
WIRE_DTYPES = {
    "loss": np.dtype("<f4"),
    "margin": np.dtype("<f4"),
    "el2n": np.dtype("<f4"),
    "correct": np.dtype("?"),
}
ERROR_EXAMPLES = 5  # sample ids an error message names
TOKENS = "num_tokens"  # update_loss's token counts: a new split's samples table column
NO_TOKENS = -1  # what a rank without token counts sends when dst asks for them
T = TypeVar("T")


class Ask(IntEnum):
    """What dst's header asks of the other ranks."""

    ABORT = 0  # nothing more: the commit ended early
    SAMPLE_SET = 1  # send your distinct sample ids and their labels (a new split)
    ID_RANGE = 2  # send your values for the block's ids, a range from its first id
    ID_LIST = 3  # send your values for the block's ids, broadcast next
    DONE = 4  # every block is written: send your statistics


@dataclass
class CommitTarget:
    """The split a distributed commit writes, and the recorder's settings for it."""

    lake_path: StorePath
    split: str
    run: str
    channels: dict[str, str]
    num_classes: int | None  # None until some rank saw a batch
    duplicates: str | None  # the recorder's choice; None: "first"
    with_correct: bool = True  # logits were recorded (update_loss records no correct flag)


class CommitTotals(NamedTuple):
    """What the commit wrote, for the recorder's summary."""

    num_samples: int
    mean_loss: float
    accuracy: float


def commit_distributed(
    target: CommitTarget,
    local: dict[str, np.ndarray],
    checkpoint: int,
    epoch: int | None,
    step: int | None,
    allow_missing: bool,
    group: Any,
    dst: int,
) -> CommitTotals:
    """Commit ``checkpoint`` from every rank's ``local`` values (call on every rank); dst
    writes it. Returns the totals on every rank, or raises the commit's error on every rank."""
    comm = Comm(group, dst)
    rows = LocalRows(local, wire_channels(target.channels, target.with_correct), target.num_classes)
    counts = comm.gather_ints(rows.counts())
    outcome: list[Any] = [None]
    if comm.rank == comm.dst:
        assert counts is not None
        session = WriteSession(target, comm, rows)
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
        serve(comm, rows)
    torch.distributed.broadcast_object_list(outcome, src=comm.dst_global, group=group)
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def read_on_dst(group: Any, dst: int, read: Callable[[], T]) -> T:
    """``read()`` run on dst alone (the one rank that touches the lake), its result, or the
    error it raised, on every rank (call on every rank): every rank acts on the same answer,
    and an error stops every rank at once instead of leaving the others at the next
    collective."""
    dist = torch.distributed
    box: list[Any] = [None]
    if dist.get_rank(group) == dst:
        try:
            box[0] = (True, read())
        except CldLakeError as exc:
            box[0] = (False, exc)
        except Exception as exc:  # noqa: BLE001 - re-raised on every rank below
            box[0] = (False, RuntimeError(f"rank {dst} failed to read the lake: {exc!r}"))
    src = dst if group is None else dist.get_global_rank(group, dst)
    dist.broadcast_object_list(box, src=src, group=group)
    ok, value = box[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def wire_channels(stored: dict[str, str], with_correct: bool = True) -> tuple[str, ...]:
    """The channels a rank sends at commit: the stored ones and ``correct`` when logits were
    recorded (the summary's accuracy needs it even when it is not stored)."""
    return tuple(c for c in WIRE_DTYPES if c in stored or (c == "correct" and with_correct))


def mean_loss(loss: np.ndarray) -> float:
    """The mean of the losses that are not NaN (NaN when none is): a commit's summary."""
    known = loss[~np.isnan(loss)]
    return float(np.mean(known, dtype=np.float64)) if len(known) else float("nan")


def bad_count_message(split: str, count: int, examples: list[int], classes: int | None) -> str:
    """The one line that refuses ``count`` labels (groups) outside ``0..classes-1``."""
    if classes is None:
        return (
            f"split {split!r}: {count} groups are negative (e.g. {examples}); "
            "groups must be integers 0..G-1"
        )
    return (
        f"split {split!r}: {count} labels are outside the {classes} classes "
        f"(e.g. {examples}); labels must be class indices 0..{classes - 1}"
    )


class Comm:
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

    def header(self, code: int = Ask.ABORT, a: int = 0, b: int = 0, first: int = 0) -> list[int]:
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


def pack_message(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Arrays as one message of bytes."""
    parts = [np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in arrays]
    return np.concatenate(parts) if parts else np.zeros(0, np.uint8)


def unpack_message(payload: np.ndarray, dtypes: Sequence[np.dtype]) -> list[np.ndarray]:
    """The arrays of a :func:`pack_message` message whose arrays all have the same length."""
    n = len(payload) // sum(d.itemsize for d in dtypes)
    out, offset = [], 0
    for dtype in dtypes:
        out.append(payload[offset : offset + n * dtype.itemsize].view(dtype))
        offset += n * dtype.itemsize
    return out


class LocalRows:
    """One rank's values of a checkpoint, ordered by sample id (stably: a sample's first
    occurrence comes first), and what answering dst's blocks learns about them."""

    def __init__(
        self, local: dict[str, np.ndarray], channels: Sequence[str], num_classes: int | None
    ) -> None:
        ids = local.pop("sample_id")  # sorted in place: this rank's ids are held once
        self.labels = local["label"]
        self.tokens = local.get(TOKENS)
        self.channels = list(channels)
        self.values = [local[c].astype(WIRE_DTYPES[c], copy=False) for c in self.channels]
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
        """[samples, bad labels, classes (-1: unknown), up to 3 bad labels (count first),
        token counts given (0/1)]."""
        bad: list[int] = []
        if self.bad_labels:
            limit = self.num_classes or np.iinfo(np.int64).max
            bad = self.labels[(self.labels < 0) | (self.labels >= limit)][:3].tolist()
        classes = -1 if self.num_classes is None else self.num_classes
        pad = [0] * (3 - len(bad))
        return [len(self.order), self.bad_labels, classes, len(bad), *bad, *pad, self.has_tokens]

    @property
    def has_tokens(self) -> int:
        return int(self.tokens is not None)

    def unique(self, with_tokens: bool = False) -> list[np.ndarray]:
        """This rank's distinct sample ids, sorted, with the label (and ``with_tokens`` the
        token count; :data:`NO_TOKENS` where this rank has none) of each one's first
        occurrence."""
        first = np.ones(len(self.sorted_ids), dtype=bool)
        first[1:] = self.sorted_ids[1:] != self.sorted_ids[:-1]
        rows = self.order[first]
        out = [self.sorted_ids[first], self.labels[rows].astype(np.int64)]
        if with_tokens:
            tokens = self.tokens
            out.append(
                np.full(len(rows), NO_TOKENS, np.int64)
                if tokens is None
                else tokens[rows].astype(np.int64)
            )
        return out

    def piece(
        self, code: int, first_id: int, block_ids: np.ndarray | None, block_labels: np.ndarray
    ) -> list[np.ndarray]:
        """Positions in the block (int32) and values of every channel for the block's ids this
        rank recorded, each id once; checks the labels of every occurrence on the way."""
        n = len(block_labels)
        if code == Ask.ID_RANGE:  # the block holds ids first_id .. first_id + n - 1
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
        examples = [self._id_at(k) for k in np.flatnonzero(~self.placed)[:ERROR_EXAMPLES]]
        conflict = [1, *self.conflict] if self.conflict is not None else [0, 0, 0, 0, 0]
        pad = [0] * (ERROR_EXAMPLES - len(examples))
        return [unplaced, len(examples), *examples, *pad, *conflict, self.duplicates]

    def _id_at(self, k: int) -> int:
        """The id this rank added k-th (a scan: only for an error message)."""
        return int(self.sorted_ids[np.flatnonzero(self.order == k)[0]])


def serve(comm: Comm, rows: LocalRows) -> None:
    """A rank other than dst: answer dst's requests until it is done (or gives up)."""
    while True:
        code, a, b, first = comm.header()
        if code == Ask.ABORT:
            return
        if code == Ask.DONE:
            comm.gather_ints(rows.stats())
            return
        if code == Ask.SAMPLE_SET:
            comm.send(pack_message(rows.unique(with_tokens=bool(a))))
            continue
        ids = comm.broadcast(np.empty(b - a, np.int64)) if code == Ask.ID_LIST else None
        labels = comm.broadcast(np.empty(b - a, np.int32))
        comm.send(pack_message(rows.piece(code, first, ids, labels)))


class WriteSession:
    """dst's side of a distributed commit: checks, the new split's sample set, the blocks."""

    def __init__(self, target: CommitTarget, comm: Comm, rows: LocalRows) -> None:
        self.target = target
        self.comm = comm
        self.rows = rows
        self.ranks_waiting = True  # the other ranks wait for a header
        self.seen = 0
        self.loss_sum = 0.0
        self.losses = 0  # samples with a loss (not NaN)
        self.correct = 0
        self.missing = 0
        self.missing_examples: list[int] = []
        self.duplicates = 0  # ids two ranks both recorded (each rank counts its own repeats)

    def release_ranks(self) -> None:
        """Tell the ranks still waiting for a header that there is nothing more to do."""
        if self.ranks_waiting:
            self.ranks_waiting = False
            self.comm.header(Ask.ABORT)

    def run(
        self,
        counts: list[np.ndarray],
        checkpoint: int,
        epoch: int | None,
        step: int | None,
        allow_missing: bool,
    ) -> CommitTotals:
        target = self.target
        if target.num_classes is None:  # dst saw no batch: another rank knows the width
            known = [int(c[2]) for c in counts if c[2] > 0]
            target.num_classes = known[0] if known else None
        classes = target.num_classes
        total = sum(int(c[0]) for c in counts)
        if total == 0:
            raise BadInputError(
                f"checkpoint {checkpoint} of split {target.split!r}: no samples were recorded; "
                "call update() or record() with a non-empty loader before commit()"
            )
        bad = sum(int(c[1]) for c in counts)
        if bad:
            examples = [x for c in counts for x in c[4 : 4 + int(c[3])].tolist()][:3]
            raise BadInputError(bad_count_message(target.split, bad, examples, classes))
        with_tokens = any(int(c[7]) for c in counts)
        duplicates = target.duplicates or "first"
        lake = Lake.create(target.lake_path, num_classes=classes)
        with SplitWriter(
            lake, target.split, channels=target.channels, num_classes=classes, run=target.run
        ) as writer:
            split = writer.split
            block_rows = max(COMMIT_BLOCK_ROWS // writer.row_chunk, 1) * writer.row_chunk
            source: Callable[[int, int], tuple[np.ndarray, np.ndarray]]
            if split is None:  # the first commit defines the split: its sample set first
                ids, labels, metadata = self._sample_set(with_tokens)
                if duplicates == "error" and len(ids) != total:
                    raise BadInputError(
                        f"checkpoint {checkpoint}: {total - len(ids)} sample ids given twice; "
                        "pass duplicates='first' when a sampler repeats samples"
                    )

                def source(a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
                    return ids[a:b], labels[a:b]

                new_samples = _sample_blocks(source, len(ids), block_rows, metadata)
                num_rows = len(ids)
            else:
                new_samples, num_rows, source = None, split.num_samples, split.sample_rows
            blocks = self._blocks(source, num_rows, block_rows)
            checks = self._checked(
                blocks, writer, checkpoint, new_samples is not None, allow_missing
            )
            writer.commit_row_blocks(
                checkpoint, checks, epoch=epoch, step=step, new_samples=new_samples
            )
        mean = self.loss_sum / self.losses if self.losses else float("nan")
        accuracy = self.correct / self.seen if target.with_correct else float("nan")
        return CommitTotals(self.seen, mean, accuracy)

    def _sample_set(
        self, with_tokens: bool
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray] | None]:
        """The new split's sample ids (sorted) and each one's label (and token count) at its
        first occurrence (lowest rank first). O(N) on dst: the split's first commit only."""
        comm = self.comm
        comm.header(Ask.SAMPLE_SET, int(with_tokens))
        columns = 2 + with_tokens
        parts: list[list[np.ndarray]] = [[] for _ in range(columns)]
        for rank in range(comm.world):
            if rank == comm.dst:
                arrays = self.rows.unique(with_tokens)
            else:
                arrays = unpack_message(comm.recv(rank), [np.dtype("<i8")] * columns)
            for part, array in zip(parts, arrays, strict=True):
                part.append(array)
        ids, labels, *rest = (np.concatenate(p) for p in parts)
        del parts
        uniq, first = np.unique(ids, return_index=True)
        if not with_tokens:
            return uniq, labels[first], None
        tokens = rest[0][first]
        if (tokens == NO_TOKENS).any():
            raise BadInputError(
                "num_tokens: given on some ranks and not on others; give "
                "update_loss(..., num_tokens=...) for every batch on every rank, or for none"
            )
        return uniq, labels[first], {TOKENS: tokens}

    def _blocks(
        self,
        source: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
        num_rows: int,
        block_rows: int,
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Each block of rows, assembled from every rank's values."""
        comm = self.comm
        for a in range(0, num_rows, block_rows):
            b = min(a + block_rows, num_rows)
            ids, labels = source(a, b)
            ids = np.asarray(ids, dtype=np.int64)
            first = int(ids[0])
            consecutive = int(ids[-1]) - first == b - a - 1 and bool(np.all(np.diff(ids) == 1))
            code = Ask.ID_RANGE if consecutive else Ask.ID_LIST
            comm.header(code, a, b, first)
            if code == Ask.ID_LIST:
                comm.broadcast(ids)
            block_labels = comm.broadcast(np.asarray(labels, dtype=np.int32))
            yield a, self._assemble(code, first, ids, block_labels)
        comm.header(Ask.DONE)
        self.ranks_waiting = False

    def _assemble(
        self, code: int, first: int, ids: np.ndarray, block_labels: np.ndarray
    ) -> dict[str, np.ndarray]:
        comm, rows, stored = self.comm, self.rows, self.target.channels
        n = len(ids)
        buffers = {
            c: np.full(
                n, False if stored.get(c, "bool") == "bool" else np.nan, stored.get(c, "bool")
            )
            for c in rows.channels
        }
        dtypes = [np.dtype("<i4"), *(WIRE_DTYPES[c] for c in rows.channels)]
        seen = np.zeros(n, dtype=bool)
        for rank in range(comm.world):
            if rank == comm.dst:
                pos, *values = rows.piece(code, first, ids, block_labels)
            else:
                pos, *values = unpack_message(comm.recv(rank), dtypes)
            fresh = ~seen[pos]
            if not fresh.all():  # a lower rank answered first: the `first` rule keeps its value
                self.duplicates += len(pos) - int(np.count_nonzero(fresh))
                pos, values = pos[fresh], [v[fresh] for v in values]
            seen[pos] = True
            for channel, v in zip(rows.channels, values, strict=True):
                buffers[channel][pos] = v
        count = int(np.count_nonzero(seen))
        self.seen += count
        loss = buffers["loss"][seen]
        known = ~np.isnan(loss)
        self.loss_sum += float(np.sum(loss[known], dtype=np.float64))
        self.losses += int(np.count_nonzero(known))
        if "correct" in buffers:
            self.correct += int(np.count_nonzero(buffers["correct"][seen]))
        if count < n:
            self.missing += n - count
            room = ERROR_EXAMPLES - len(self.missing_examples)
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
            examples = [x for s in unplaced for x in s[2 : 2 + int(s[1])].tolist()][:ERROR_EXAMPLES]
            raise BadInputError(
                f"sample ids {examples} are not in split {writer.name!r} of {writer.lake.root}"
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
        if repeated and not new and (self.target.duplicates or "first") == "error":
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


def _sample_blocks(
    source: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
    num_rows: int,
    block_rows: int,
    metadata: dict[str, np.ndarray] | None = None,
) -> SampleBlocks:
    """A new split's sample set (and metadata columns) as blocks of ``block_rows`` rows, for
    the writer to stream."""

    def blocks() -> Iterator[tuple[Any, ...]]:
        for a in range(0, num_rows, block_rows):
            b = min(a + block_rows, num_rows)
            ids, labels = source(a, b)
            if metadata is None:
                yield ids, labels
            else:
                yield ids, labels, {k: v[a:b] for k, v in metadata.items()}

    return SampleBlocks(blocks, num_rows=num_rows)
