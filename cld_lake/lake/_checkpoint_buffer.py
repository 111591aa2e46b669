"""One checkpoint's values gathered batch by batch (any order), then committed at once.

Memory: O(N) values per channel of the split; never the N x T matrix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from cld_lake._types import Duplicates, choices
from cld_lake.errors import BadInputError
from cld_lake.lake._groups import GroupEncoder, dictionary, is_named
from cld_lake.lake._validate import check_labels, default_channels

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from cld_lake.lake.store import Lake, Split


class BufferedWriter(Protocol):
    """What a checkpoint buffer uses of its writer (:class:`~cld_lake.lake.SplitWriter`)."""

    name: str
    lake: Lake
    num_classes: int | None

    @property
    def split(self) -> Split | None: ...

    @property
    def channels(self) -> dict[str, str] | None: ...

    def _check_new_checkpoints(self, ckpts: Sequence[int]) -> None: ...

    def _commit_segment(
        self,
        columns: Sequence[tuple[int, int | None, int | None, float | None]],
        blocks: Iterable[tuple[int, Mapping[str, np.ndarray]]],
        num_rows: int,
        channels: dict[str, str],
        new_samples: Any,
    ) -> None: ...


class CheckpointBuffer:
    """Values of one checkpoint being recorded; nothing is visible until :meth:`commit`."""

    def __init__(
        self,
        writer: BufferedWriter,
        checkpoint: int,
        epoch: int | None,
        step: int | None,
        wall_time: float | None,
        duplicates: Duplicates,
    ) -> None:
        if duplicates not in choices(Duplicates):
            allowed = " or ".join(repr(c) for c in choices(Duplicates))
            raise BadInputError(f"duplicates={duplicates!r}: use {allowed}")
        self.writer = writer
        self.checkpoint = checkpoint
        self.epoch, self.step, self.wall_time = epoch, step, wall_time
        self.duplicates = duplicates
        self.committed = False
        split = writer.split
        self._channels = writer.channels
        if split is not None:
            n = split.num_samples
            self._values = {c: np.full(n, _fill(d), dtype=d) for c, d in split.channels.items()}
            self._seen = np.zeros(n, dtype=bool)
        else:  # first checkpoint of a new split: it defines the sample set
            self._parts: list[dict[str, np.ndarray]] = []
        self._named: bool | None = None  # are the labels given group names (first batch)?
        self._encoder: GroupEncoder | None = None

    def add(
        self,
        sample_ids: ArrayLike,
        loss: ArrayLike,
        labels: ArrayLike | None = None,
        correct: ArrayLike | None = None,
        margin: ArrayLike | None = None,
        el2n: ArrayLike | None = None,
    ) -> None:
        """Add values for a batch of samples (numpy arrays or anything array-like).

        ``labels``: class indices, or group names (strings) in every batch."""
        ids = np.asarray(sample_ids).astype(np.int64, copy=False).reshape(-1)
        given = {"loss": loss, "correct": correct, "margin": margin, "el2n": el2n}
        batch = {c: np.asarray(v).reshape(-1) for c, v in given.items() if v is not None}
        for channel, values in batch.items():
            if values.shape != ids.shape:
                raise BadInputError(
                    f"{channel}: {values.shape[0]} values for {ids.shape[0]} sample ids"
                )
        lab = None if labels is None else self._labels(labels)
        if lab is not None and lab.shape != ids.shape:
            raise BadInputError(f"labels: {lab.shape[0]} values for {ids.shape[0]} sample ids")
        if self._channels is not None:
            missing = set(self._channels) - set(batch)
            extra = set(batch) - set(self._channels)
            if missing or extra:
                raise BadInputError(
                    f"split {self.writer.name!r} stores channels {sorted(self._channels)}; this batch has {sorted(batch)}"
                )
        split = self.writer.split
        if split is None:
            if lab is None:
                raise BadInputError("labels are needed for the first checkpoint of a new split")
            if self._named:
                dictionary(lab, f"split {self.writer.name!r}: labels")  # checked now, encoded later
            else:
                check_labels(lab, self.writer.num_classes, f"split {self.writer.name!r}")
            self._parts.append({"sample_id": ids, "label": lab, **batch})
            return
        if lab is not None and self._named:
            lab = self._encode(lab)
        rows = split.rows_of(ids)
        if (rows < 0).any():
            bad = ids[rows < 0][:5].tolist()
            raise BadInputError(
                f"sample ids {bad} are not in split {self.writer.name!r} of {self.writer.lake.root}"
            )
        if lab is not None and not np.array_equal(split.labels[rows], lab):
            i = int(np.flatnonzero(split.labels[rows] != lab)[0])
            raise BadInputError(
                f"sample {int(ids[i])}: label {self._shown(int(lab[i]))} differs from its stored "
                f"label {self._shown(int(split.labels[rows][i]))}"
            )
        rows, keep = self._dedupe(rows)
        self._seen[rows] = True
        for channel, values in batch.items():
            self._values[channel][rows] = values[keep]

    def _labels(self, labels: ArrayLike) -> np.ndarray:
        """A batch's labels as int64 class indices, or as group names (1-D); the first batch
        decides which, every later one must agree."""
        lab = np.asarray(labels).reshape(-1)
        named = is_named(lab)
        if self._named is None:
            self._named = named
        elif named != self._named:
            raise BadInputError(
                f"labels: {'group names' if named else 'class indices'} after batches of "
                f"{'group names' if self._named else 'class indices'}; give every batch the "
                "same kind of labels"
            )
        return lab if named else lab.astype(np.int64, copy=False)

    def _encode(self, names: np.ndarray) -> np.ndarray:
        """Group names of an existing split's samples as the lake's ids (a name the lake
        lacks is no sample's label)."""
        if self._encoder is None:
            table = self.writer.lake.group_names()
            if table is None:
                raise BadInputError(
                    f"labels: group names, but the lake at {self.writer.lake.root} holds plain "
                    "integer groups (classes); give class indices"
                )
            self._encoder = GroupEncoder(table)
        return self._encoder.encode(names, f"split {self.writer.name!r}: labels")

    def _shown(self, label: int) -> str:
        """A label as a message shows it: the group's name when the labels are names."""
        if self._encoder is not None and 0 <= label < len(self._encoder.names):
            return repr(self._encoder.names[label])
        return str(label)

    def _dedupe(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, first = np.unique(rows, return_index=True)
        fresh = np.zeros(len(rows), dtype=bool)
        fresh[first] = True
        fresh &= ~self._seen[rows]
        if not fresh.all() and self.duplicates == "error":
            raise BadInputError(
                f"checkpoint {self.checkpoint}: {int((~fresh).sum())} sample ids given twice; "
                "pass duplicates='first' when a sampler repeats samples (e.g. DistributedSampler padding)"
            )
        keep = np.flatnonzero(fresh)
        return rows[keep], keep

    def commit(self, allow_missing: bool = False) -> None:
        """Make the checkpoint visible. Every sample must have a value unless ``allow_missing``
        (then missing values are stored as NaN / False)."""
        if self.committed:
            raise BadInputError(f"checkpoint {self.checkpoint} is already committed")
        w = self.writer
        w._check_new_checkpoints([self.checkpoint])
        if w.split is None:
            new_samples, values = self._gather_new_split()
            channels = self._channels or default_channels(list(values))
        else:
            missing = int((~self._seen).sum())
            if missing and not allow_missing:
                example = w.split.sample_ids[~self._seen][:5].tolist()
                raise BadInputError(
                    f"checkpoint {self.checkpoint} of split {w.name!r}: no values for {missing} of "
                    f"{len(self._seen)} samples (e.g. ids {example}); add them or commit(allow_missing=True)"
                )
            new_samples, values, channels = None, self._values, w.split.channels
        n = len(values["loss"])
        block = {c: values[c].astype(d, copy=False).reshape(n, 1) for c, d in channels.items()}
        w._commit_segment(
            [(self.checkpoint, self.epoch, self.step, self.wall_time)],
            [(0, block)],
            num_rows=n,
            channels=channels,
            new_samples=new_samples,
        )
        self.committed = True

    def _gather_new_split(
        self,
    ) -> tuple[tuple[np.ndarray, np.ndarray, None], dict[str, np.ndarray]]:
        if not self._parts:
            raise BadInputError(f"checkpoint {self.checkpoint}: no values were added")
        keys = self._parts[0].keys()
        cat = {k: np.concatenate([p[k] for p in self._parts]) for k in keys}
        ids = cat.pop("sample_id")
        labels = cat.pop("label")
        uniq, first = np.unique(ids, return_index=True)
        if len(uniq) != len(ids):
            if self.duplicates == "error":
                raise BadInputError(
                    f"checkpoint {self.checkpoint}: {len(ids) - len(uniq)} sample ids given twice; "
                    "pass duplicates='first' when a sampler repeats samples"
                )
        labels_u = labels[first]
        dup_labels = labels != labels_u[np.searchsorted(uniq, ids)]
        if dup_labels.any():
            raise BadInputError(
                f"sample {int(ids[dup_labels][0])} was given with two different labels"
            )
        self._parts = []
        return (uniq, labels_u, None), {k: v[first] for k, v in cat.items()}


def _fill(dtype: str) -> bool | float:
    return False if dtype == "bool" else np.nan
