"""What the report reads from the train split: its score columns and noisy flags, streamed
one row group of the scores table at a time, in train row order."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cld_lake.diagnostics import EXACT_ROWS, flags_at, noisy_bits, scores_aligned
from cld_lake.lake.scores import iter_scores
from cld_lake.lake.store import Lake, Split
from cld_lake.report._stats import finite_range, sample_stride

MAX_POINTS = 200_000  # rows of the strided sample behind the data map and the correlations


def cld_name(stored: dict[str, dict[str, Any]]) -> str | None:
    """The CLD score the curves and the data map use: ``cld`` if stored, else the first
    score whose method is cld."""
    if "cld" in stored and stored["cld"].get("method", "cld") == "cld":
        return "cld"
    return next((n for n, p in stored.items() if p.get("method") == "cld"), None)


def run_pairs(stored: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """Pairs of stored scores of the same method computed on different runs."""
    names = [n for n, p in stored.items() if isinstance(p.get("run"), str)]
    return [
        (a, b)
        for i, a in enumerate(names)
        for b in names[i + 1 :]
        if stored[a]["run"] != stored[b]["run"]
        and stored[a].get("method") == stored[b].get("method")
    ]


@dataclass
class Column:
    """What one streamed read of a score column gives (memory independent of N, but for
    ``whole``, which is kept only up to ``exact_rows`` training rows)."""

    lo: float  # smallest finite value (inf when none)
    hi: float  # largest finite value (-inf when none)
    sample: np.ndarray  # values at the strided sample rows (NaN where missing)
    wide: np.ndarray | None = None  # values at every ``wide_stride``-th row, if asked for
    whole: np.ndarray | None = None  # the column in train row order, if asked for
    members: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # rows, values, labels
    member_stride: int = 1  # every member_stride-th row of the classes asked for is a member


@dataclass
class TrainData:
    """The train split's score columns and noisy flags, streamed one row group of the scores
    table at a time, in train row order.

    Only the flags are held for every row, as bits (N / 8 bytes); a score column is held whole
    only when the split has at most ``exact_rows`` rows. A scores table that no longer matches
    the train rows (samples appended after scoring) is mapped by sample id, which holds the
    split's ids (rescore to get the bounded path back).
    """

    train: Split | None
    stride: int
    sample_rows: np.ndarray
    exact_rows: int = EXACT_ROWS
    aligned: bool = True  # scores-table row i is train row i
    noisy_bits: np.ndarray | None = None
    samples: dict[str, np.ndarray] = field(default_factory=dict)  # score -> sampled values
    wide: dict[str, np.ndarray] = field(default_factory=dict)  # score -> wide-sampled values

    @classmethod
    def load(
        cls, lake: Lake, stored: dict[str, Any], max_points: int, exact_rows: int = EXACT_ROWS
    ) -> TrainData:
        if not lake.has_split("train"):
            return cls(None, 1, np.zeros(0, np.int64), exact_rows)
        train = lake.split("train")
        stride = sample_stride(train.num_samples, max_points)
        rows = np.arange(0, train.num_samples, stride, dtype=np.int64)
        data = cls(train, stride, rows, exact_rows)
        data.noisy_bits = noisy_bits(train)
        if stored:
            data.aligned = scores_aligned(lake, train)
        return data

    @property
    def has_noisy(self) -> bool:
        return self.noisy_bits is not None

    @property
    def whole(self) -> bool:
        """Small enough for every figure to be computed on whole columns (exactly)."""
        return self.train is not None and self.train.num_samples <= self.exact_rows

    @property
    def wide_stride(self) -> int:
        """Stride of the sample behind rank correlations over every row (above exact_rows)."""
        return sample_stride(self.train.num_samples if self.train else 0, self.exact_rows)

    def sample_words(self) -> str:
        """How the sample was taken, for the page."""
        return "every training row" if self.stride == 1 else f"every {self.stride:,}th training row"

    def noisy_of(self, rows: np.ndarray) -> np.ndarray:
        """The noisy flags of train ``rows``."""
        assert self.noisy_bits is not None
        return flags_at(self.noisy_bits, rows)

    def batches(
        self, lake: Lake, names: list[str]
    ) -> Iterator[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]]:
        """``(train rows, labels, {name: values})`` per row group of the scores table (rows of
        the table the train split lacks left out); the columns' checksums are checked once
        the last group is read."""
        assert self.train is not None
        start = 0
        for part in iter_scores(lake, names):
            size = part.num_rows
            labels = part.column("label").to_numpy()
            values = {
                n: part.column(n).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
                for n in names
            }
            if self.aligned:
                rows = np.arange(start, start + size, dtype=np.int64)
            else:
                rows = self.train.rows_of(part.column("sample_id").to_numpy())
                found = rows >= 0
                if not found.all():
                    rows, labels = rows[found], labels[found]
                    values = {n: v[found] for n, v in values.items()}
            del part
            yield rows, labels, values
            start += size

    def read(
        self,
        lake: Lake,
        name: str,
        *,
        whole: bool = False,
        wide: bool = False,
        classes: np.ndarray | None = None,
    ) -> Column:
        """One streamed read of score ``name``: its finite range and strided sample (kept in
        ``samples``), and as asked: the whole column (train row order, NaN for rows without a
        score), the wide sample (kept in ``wide``), the rows, values and labels of the training
        rows of ``classes`` (every ``s``-th of them, ``s`` such that at most ``exact_rows``
        are kept)."""
        assert self.train is not None
        n = self.train.num_samples
        lo, hi = np.inf, -np.inf
        sample = np.full(len(self.sample_rows), np.nan)
        wide_values = np.full(-(-n // self.wide_stride), np.nan) if wide else None
        column = np.full(n, np.nan) if whole else None
        member_stride, seen = 1, 0
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        if classes is not None:
            counts = self.train.label_counts()
            in_classes = int(counts[classes[classes < len(counts)]].sum())
            member_stride = sample_stride(in_classes, self.exact_rows)
        for rows, labels, values in self.batches(lake, [name]):
            v = values[name]
            batch_lo, batch_hi = finite_range(v)
            lo, hi = min(lo, batch_lo), max(hi, batch_hi)
            at = rows % self.stride == 0
            sample[rows[at] // self.stride] = v[at]
            if wide_values is not None:
                at = rows % self.wide_stride == 0
                wide_values[rows[at] // self.wide_stride] = v[at]
            if column is not None:
                column[rows] = v
            if classes is not None:
                mine = np.flatnonzero(np.isin(labels, classes))
                keep = mine[(seen + np.arange(len(mine))) % member_stride == 0]
                seen += len(mine)
                parts.append((rows[keep], v[keep], labels[keep].astype(np.int64)))
        self.samples[name] = sample
        if wide_values is not None:
            self.wide[name] = wide_values
        members = None
        if classes is not None:
            rows, v, labels = (np.concatenate(p) for p in zip(*parts, strict=True)) if parts else (
                np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64))  # fmt: skip
            order = np.argsort(rows, kind="stable")  # train row order (ties of curve groups)
            members = (rows[order], v[order], labels[order])
        return Column(lo, hi, sample, wide_values, column, members, member_stride)


def release_arrow_memory() -> None:
    """Hand the memory of freed Arrow tables back to the system: the Arrow allocator keeps it
    otherwise, and the report reads several N-row tables one after the other."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
