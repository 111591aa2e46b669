"""Streaming top-k: :func:`select_rows`'s top-k over the scores table in bounded memory.

The default path for a stored score (``topk``, not random, no --query) once the table has
``stream_min_rows()`` rows: the same rows in the same order as :func:`select_rows`, with
memory of about the selected rows instead of the whole table. Three passes stream the
table ``SPAN_ROWS`` rows at a time (each column's checksum is checked the first time it is
read): class sizes; per-class histograms of the ranking key over ``buckets`` quantile
buckets of a sample; then only the rows that can still be selected (those below each
class's boundary bucket, the boundary bucket itself) are kept and cut to each class's
quota by the exact order (key, sample_id, row), pruning whenever the kept rows outgrow
the quota by ``PRUNE_SLACK``. Buckets only decide how few rows are kept, never which
rows win, so the result is exact for any data (ties, NaN, infinities included).

The passes run on a :class:`PassSource`: :class:`_ScoresStream` in this process, or
``select._dask._Cluster``, the same passes mapped over dask workers.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np

from cld_lake._types import Balance
from cld_lake.errors import BadInputError, CorruptLakeError, one_line
from cld_lake.lake import Lake
from cld_lake.lake import scores as scores_table
from cld_lake.select._rules import BALANCES, Chosen, _quotas, _ranks_within_class, target_size

STREAM_ROWS_ENV = "CLD_LAKE_SELECT_STREAM_ROWS"
STREAM_MIN_ROWS = 2_000_000  # below this the table is read whole (faster, and small)
SPAN_ROWS = 1 << 20  # rows of the scores table read at a time
HIST_BUCKETS = 256  # per class; sized down when there are very many classes
HIST_CELLS = 1 << 22  # classes x buckets at most (32 MB of counts)
SAMPLE_ROW_GROUPS = 16  # row groups read to place the bucket edges
PRUNE_SLACK = 1 << 21  # rows kept beyond the quotas before the kept rows are cut back
TIE_BLOCK = 1 << 20  # tied rows ordered by id at a time
DENSE_LABELS = 1 << 20  # labels below this are counted with a lookup table, not a sort
_SIGN_BIT = np.int64(-(2**63))
_KEY_MAX = np.uint64(2**64 - 1)
_ID_MIN = np.iinfo(np.int64).min
_ID_MAX = np.iinfo(np.int64).max


def stream_min_rows() -> int:
    """Rows from which ``select`` streams the scores table: ``CLD_LAKE_SELECT_STREAM_ROWS``
    (0 = always) or ``STREAM_MIN_ROWS``."""
    raw = os.environ.get(STREAM_ROWS_ENV)
    if raw is None:
        return STREAM_MIN_ROWS
    try:
        rows = int(raw)
    except ValueError:
        rows = -1
    if rows < 0:
        raise BadInputError(
            f"{STREAM_ROWS_ENV}={raw!r}: must be an integer >= 0 (rows from which select "
            f"streams the scores table), e.g. {STREAM_MIN_ROWS}; or unset it"
        )
    return rows


def rank_keys(scores: np.ndarray, lowest: bool) -> np.ndarray:
    """Unsigned 64-bit keys in selection order: ascending key = higher score first
    (``lowest``: lower score first), as :func:`select_rows` sorts them.

    The IEEE bit pattern of the (negated) score, made order-preserving as unsigned: equal
    floats get equal keys (``-0.0`` is ``0.0``, as a float sort has them), so ties are exact.
    NaN scores get keys too; they are never selectable and callers mask them out.
    """
    value = np.asarray(scores, dtype=np.float64)
    value = np.add(value, 0.0) if lowest else np.negative(value)
    value += 0.0  # -0.0 becomes 0.0
    signed = value.view(np.int64)
    flip = np.right_shift(signed, 63)  # all ones for a negative value, else zero
    np.bitwise_or(flip, _SIGN_BIT, out=flip)
    np.bitwise_xor(signed, flip, out=signed)  # negative: every bit flipped; else the sign bit
    return signed.view(np.uint64)


class _ClassIndex:
    """Labels -> positions in ``classes`` (ascending): a lookup table for small labels."""

    def __init__(self, classes: np.ndarray) -> None:
        self.classes = classes
        self._lookup: np.ndarray | None = None
        if len(classes) and classes[0] >= 0 and classes[-1] < DENSE_LABELS:
            self._lookup = np.zeros(int(classes[-1]) + 1, dtype=np.int32)
            self._lookup[classes] = np.arange(len(classes), dtype=np.int32)

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        lookup = self._lookup
        if lookup is not None and (
            not len(labels) or (labels.min() >= 0 and labels.max() < len(lookup))
        ):
            return lookup[labels]
        return np.searchsorted(self.classes, labels).astype(np.int32)


class PassSource(Protocol):
    """Where :func:`stream_select` runs its passes: a table read here, or a dask cluster."""

    @property
    def num_rows(self) -> int: ...

    def class_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Classes present (ascending) and their sizes, NaN scores included."""

    def edges(self, score: str, lowest: bool, buckets: int) -> np.ndarray:
        """At most ``buckets - 1`` distinct key edges, at the quantiles of a sample."""

    def histogram(
        self, score: str, lowest: bool, classes: np.ndarray, single: bool, edges: np.ndarray
    ) -> np.ndarray:
        """Per group (each class, or one for ``single``): selectable rows in each bucket."""

    def keep(self, score: str, classes: np.ndarray, top: _TopRows) -> None:
        """Offer every row to ``top``, in table order; the checksums checked at the end."""


def open_stream(lake: Lake, *, check: bool = True) -> _ScoresStream:
    """The scores table of ``lake`` to stream (its metadata checked on open; each column read
    checked against its recorded checksum unless ``check`` is False)."""
    return _ScoresStream(scores_table.open_scores_file(lake), lake, check=check)


class _ScoresStream:
    """A scores table read ``span_rows`` rows (whole row groups) at a time; each column's
    checksum is computed the first time a pass reads it and compared at the end of that pass.

    ``pf`` is the lake's scores table as :mod:`cld_lake.lake.scores` opened it (its metadata
    checked), ``lake`` names it in errors; without ``lake`` (a bare Parquet file, as the tests
    write) no checksum is compared.
    """

    def __init__(
        self,
        pf: Any,
        lake: Lake | None = None,
        span_rows: int | None = None,
        check: bool = True,
    ) -> None:
        span_rows = SPAN_ROWS if span_rows is None else span_rows
        self.pf = pf
        self.lake = lake
        self.check = lake is not None and check
        self.checked: set[str] = set()
        self.spans: list[list[int]] = []
        rows = 0
        for g in range(pf.metadata.num_row_groups):
            if not self.spans or rows >= span_rows:
                self.spans.append([])
                rows = 0
            self.spans[-1].append(g)
            rows += pf.metadata.row_group(g).num_rows

    def read(self, span: list[int], columns: list[str]) -> Any:
        try:
            return self.pf.read_row_groups(span, columns=columns)
        except Exception as exc:
            if self.lake is None:
                raise
            path = scores_table.scores_path(self.lake) or self.lake.root
            raise CorruptLakeError(
                f"{path}: unreadable ({one_line(exc)}); {self.lake.fix}"
            ) from exc

    def passes(self, columns: list[str]) -> Any:
        """Yield each span of ``columns`` as NumPy arrays (name -> array; a null score is NaN)."""
        fresh = [c for c in columns if c not in self.checked] if self.check else []
        check = None
        if fresh:
            assert self.lake is not None
            path = scores_table.scores_path(self.lake)
            check = scores_table.ColumnCheck(self.lake, self.pf, fresh, path)
        for span in self.spans:
            table = self.read(span, columns)
            if check is not None:
                check.update(table)
            yield {name: _column_array(table, name) for name in columns}
        if check is not None:
            check.verify()
            self.checked.update(fresh)

    # the passes of stream_select (a _Cluster runs the same ones over its workers)
    @property
    def num_rows(self) -> int:
        return int(self.pf.metadata.num_rows)

    def class_counts(self) -> tuple[np.ndarray, np.ndarray]:
        classes = np.zeros(0, dtype=np.int64)
        sizes = np.zeros(0, dtype=np.int64)
        for part in self.passes(["label"]):
            classes, sizes = _merge_counts(classes, sizes, *_label_counts(part["label"]))
        return classes, sizes

    def edges(self, score: str, lowest: bool, buckets: int) -> np.ndarray:
        return _bucket_edges(self.sample_scores(score), lowest, buckets)

    def histogram(
        self, score: str, lowest: bool, classes: np.ndarray, single: bool, edges: np.ndarray
    ) -> np.ndarray:
        groups = 1 if single else len(classes)
        group_of = _group_of(classes, single)
        hist = np.zeros((groups, len(edges) + 1), dtype=np.int64)
        for part in self.passes(["label", score]):
            hist += _part_histogram(part["label"], part[score], lowest, group_of, groups, edges)
        return hist

    def keep(self, score: str, classes: np.ndarray, top: _TopRows) -> None:
        index = _ClassIndex(classes)
        for part in self.passes(["sample_id", "label", score]):
            top.offer(index(part["label"]), part["sample_id"], part[score])

    def sample_scores(self, score: str) -> np.ndarray:
        """The ``score`` column of up to ``SAMPLE_ROW_GROUPS`` row groups spread over the table
        (used only to place bucket edges, so it is not checked)."""
        groups = self.pf.metadata.num_row_groups
        if groups == 0:
            return np.zeros(0)
        picks = np.unique(np.linspace(0, groups - 1, min(groups, SAMPLE_ROW_GROUPS)).round())
        table = self.read([int(g) for g in picks], [score])
        return _column_array(table, score)


def _group_of(classes: np.ndarray, single: bool) -> Any:
    """Labels -> histogram group: the class position, or 0 for everything (``none``)."""
    if single:
        return lambda labels: np.zeros(len(labels), np.int64)
    return _ClassIndex(classes)


def _column_array(table: Any, name: str) -> np.ndarray:
    column = table.column(name)
    if name == "sample_id" or name == "label":
        return column.to_numpy().astype(np.int64, copy=False)
    return column.to_numpy().astype(np.float64, copy=False)


def _label_counts(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels present in ``labels`` (ascending) and how often each occurs."""
    if not len(labels):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if labels.min() >= 0 and labels.max() < DENSE_LABELS:
        counts = np.bincount(labels)
        found = np.flatnonzero(counts)
        return found, counts[found]
    return np.unique(labels, return_counts=True)


def _merge_counts(
    classes: np.ndarray, sizes: np.ndarray, found: np.ndarray, found_sizes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    merged, where = np.unique(np.r_[classes, found], return_inverse=True)
    total = np.zeros(len(merged), dtype=np.int64)
    np.add.at(total, where, np.r_[sizes, found_sizes])
    return merged, total


def _bucket_edges(sample: np.ndarray, lowest: bool, buckets: int) -> np.ndarray:
    """``buckets - 1`` (or fewer, distinct) key edges at the quantiles of a sample's keys."""
    keys = np.sort(rank_keys(sample[~np.isnan(sample)], lowest))
    if buckets <= 1 or not len(keys):
        return np.zeros(0, dtype=np.uint64)
    return np.unique(keys[(np.arange(1, buckets) * len(keys)) // buckets])


def _part_histogram(
    labels: np.ndarray,
    values: np.ndarray,
    lowest: bool,
    group_of: Any,
    groups: int,
    edges: np.ndarray,
) -> np.ndarray:
    """The (groups x buckets) counts of one part's selectable rows (``searchsorted`` of the
    key)."""
    buckets = len(edges) + 1
    ok = ~np.isnan(values)
    if not ok.all():
        values, labels = values[ok], labels[ok]
    cell = group_of(labels).astype(np.int64)
    cell *= buckets
    cell += np.searchsorted(edges, rank_keys(values, lowest), side="right")
    return np.bincount(cell, minlength=groups * buckets).reshape(groups, buckets)


def sorted_order(
    group: np.ndarray | None, values: np.ndarray, lowest: bool, ids: np.ndarray, groups: int
) -> np.ndarray:
    """``np.lexsort((ids, rank_keys(values, lowest), group))`` (``group`` None: one group) in
    less time and memory: a stable sort by key, a stable (radix, for < 65536 groups) sort by
    group, then only the runs of equal (group, key) are ordered by id; equal ids stay in row
    order."""
    key = rank_keys(values, lowest)
    order = np.argsort(key, kind="stable")
    if group is not None:
        small = group.astype(np.uint16) if groups <= 1 << 16 else group
        order = order[np.argsort(small[order], kind="stable")]
        del small
    sorted_key = key[order]
    del key
    tied = sorted_key[1:] == sorted_key[:-1]
    del sorted_key
    if group is not None:
        sorted_group = group[order]
        tied &= sorted_group[1:] == sorted_group[:-1]
        del sorted_group
    if tied.any():  # position p + 1 ties with position p
        small_index = np.int32 if len(order) < 2**31 else np.int64
        in_run = np.zeros(len(order), dtype=bool)
        in_run[:-1] = tied
        in_run[1:] |= tied
        members = np.flatnonzero(in_run).astype(small_index)
        del in_run
        run = np.zeros(len(order), dtype=small_index)
        np.cumsum(~tied, out=run[1:])  # the run each position belongs to
        del tied
        run = run[members]
        start = 0
        while start < len(members):  # whole runs, about TIE_BLOCK positions at a time
            stop = min(start + TIE_BLOCK, len(members))
            stop = int(np.searchsorted(run, run[stop - 1], side="right"))
            at = members[start:stop]
            rows = order[at]
            order[at] = rows[np.lexsort((ids[rows], run[start:stop]))]
            start = stop
    return order


class _TopRows:
    """The best ``take[g]`` rows of each group by (key, sample id, row), kept in bounded memory.

    Rows are offered in table order; a row passes when it is before its group's bound in
    (key, sample id) order (strictly: a later row with an equal pair loses, as in the stable
    sort of :func:`select_rows`). The kept rows live in preallocated arrays of ``take.sum() +
    PRUNE_SLACK`` rows; when they fill up, each group is cut back to ``take[g]`` rows (sorted)
    and a full group's bound tightens to its last kept row.
    """

    def __init__(
        self,
        take: np.ndarray,
        bound_key: np.ndarray,
        bound_id: np.ndarray,
        lowest: bool,
        single_group: bool,
        slack: int = PRUNE_SLACK,
    ) -> None:
        self.take = take
        self.bound_key = bound_key
        self.bound_id = bound_id
        self.lowest = lowest
        self.single = single_group
        capacity = int(take.sum()) + max(1, slack)
        self.cls = np.empty(capacity, dtype=np.int32)
        self.ids = np.empty(capacity, dtype=np.int64)
        self.scores = np.empty(capacity, dtype=np.float64)
        self.size = 0

    def passes(self, cls: np.ndarray, ids: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Positions of the rows that are selectable and before their group's bound."""
        key = rank_keys(values, self.lowest)
        if self.single:
            near = np.flatnonzero(key <= self.bound_key[0])  # a cheap superset first
            bound_key, bound_id = self.bound_key[0], self.bound_id[0]
        else:
            near = np.flatnonzero(key <= self.bound_key[cls])
            bound_key, bound_id = self.bound_key[cls[near]], self.bound_id[cls[near]]
        key = key[near]
        before = (key < bound_key) | ((key == bound_key) & (ids[near] < bound_id))
        before &= ~np.isnan(values[near])
        return near[before]

    def offer(self, cls: np.ndarray, ids: np.ndarray, values: np.ndarray) -> None:
        """Keep the rows of this part (in table order) that can still be selected."""
        keep = self.passes(cls, ids, values)
        cls, ids, values = cls[keep], ids[keep], values[keep]
        while len(ids):
            room = len(self.ids) - self.size
            if room == 0:  # cut back, then drop what the tightened bounds exclude
                self.prune()
                keep = self.passes(cls, ids, values)
                cls, ids, values = cls[keep], ids[keep], values[keep]
                continue
            n = min(room, len(ids))
            self.cls[self.size : self.size + n] = cls[:n]
            self.ids[self.size : self.size + n] = ids[:n]
            self.scores[self.size : self.size + n] = values[:n]
            self.size += n
            cls, ids, values = cls[n:], ids[n:], values[n:]

    def prune(self) -> None:
        """Cut each group back to its ``take`` best rows, sorted by (group, key, id, row)."""
        m = self.size
        cls, ids, values = self.cls[:m], self.ids[:m], self.scores[:m]
        groups = len(self.take)
        group = None if self.single else cls
        order = sorted_order(group, values, self.lowest, ids, groups)
        if group is None:
            order = order[: int(self.take[0])]
        else:
            sorted_group = group[order]
            starts = np.searchsorted(sorted_group, np.arange(groups))
            position = np.arange(m) - starts[sorted_group]
            order = order[position < self.take[sorted_group]]
            del sorted_group, position
        kept = len(order)
        self.cls[:kept] = cls[order]
        self.ids[:kept] = ids[order]
        self.scores[:kept] = values[order]
        self.size = kept
        del order
        # a group holding all it takes only admits rows before its last kept row
        if group is None:
            counts = np.array([kept])
        else:
            counts = np.bincount(self.cls[:kept], minlength=groups)
        ends = np.cumsum(counts) - 1
        full = np.flatnonzero((counts == self.take) & (counts > 0))
        last = ends[full]
        self.bound_key[full] = rank_keys(self.scores[last], self.lowest)
        self.bound_id[full] = self.ids[last]

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Class positions, ids and scores of the kept rows, by group, then key, id, row."""
        self.prune()
        m = self.size
        return self.cls[:m], self.ids[:m], self.scores[:m]


def stream_top_k(
    lake: Lake,
    score: str,
    *,
    fraction: float | None = None,
    count: int | None = None,
    balance: Balance = "proportional",
    lowest: bool = False,
) -> Chosen:
    """:func:`select_rows` (top-k, no seed) over stored score ``score``, streaming the scores
    table of ``lake``: the same rows in manifest order, in memory of about the selected rows.

    Size, balance, largest-remainder quotas, NaN counted in class sizes and never selected,
    ties by the smaller sample id (then row order), shortfall: all as :func:`select_rows`.
    """
    return stream_select(
        open_stream(lake), score, fraction=fraction, count=count, balance=balance, lowest=lowest
    )


def stream_select(
    source: PassSource,
    score: str,
    *,
    fraction: float | None = None,
    count: int | None = None,
    balance: Balance = "proportional",
    lowest: bool = False,
    buckets: int = HIST_BUCKETS,
    slack: int = PRUNE_SLACK,
) -> Chosen:
    """:func:`stream_top_k` over a :class:`PassSource` (a table read in this process, or
    ``select._dask._Cluster``: the same passes on dask workers); ``buckets`` (histogram buckets per class) and
    ``slack`` (rows kept beyond the quotas before a cut) change only the work done, never the
    result (the tests shrink them to exercise every path)."""
    if balance not in BALANCES:
        raise BadInputError(f"--balance {balance!r}: use one of {', '.join(BALANCES)}")
    n = source.num_rows
    if n == 0:
        raise BadInputError("no candidate samples to select from")
    total = target_size(n, fraction, count)
    classes, sizes = source.class_counts()
    single = balance == "none"
    groups = 1 if single else len(classes)
    edges = source.edges(score, lowest, max(1, min(buckets, HIST_CELLS // groups)))
    hist = source.histogram(score, lowest, classes, single, edges)
    available = hist.sum(axis=1)
    quota = np.array([total]) if single else _quotas(sizes, classes, total, balance)
    take = np.minimum(quota, available)
    # the boundary bucket of each group: the first whose running count reaches its take
    boundary = (np.cumsum(hist, axis=1) < take[:, None]).sum(axis=1)
    del hist
    inside = boundary < len(edges)  # else the last bucket: no bound on the key
    bound_key = np.full(groups, _KEY_MAX, dtype=np.uint64)
    bound_key[inside] = edges[boundary[inside]]
    bound_id = np.where(inside, _ID_MIN, _ID_MAX).astype(np.int64)
    bound_key[take == 0] = 0
    bound_id[take == 0] = _ID_MIN
    top = _TopRows(take, bound_key, bound_id, lowest, single, slack)
    source.keep(score, classes, top)
    cls, ids, values = top.result()
    if single:  # the global top-k, listed by class (stable: rank order kept within a class)
        small = cls.astype(np.uint16) if len(classes) <= 1 << 16 else cls
        by_class = np.argsort(small, kind="stable")
        del small
        for column in (cls, ids, values):  # in place: one column's copy at a time
            column[:] = column[by_class]
        del by_class
    labels = classes[cls]
    short = quota - take
    if single:
        shortfall = {-1: int(short[0])} if short[0] > 0 else {}
    else:
        shortfall = {int(c): int(s) for c, s in zip(classes, short, strict=True) if s > 0}
    return Chosen(
        ids,
        labels,
        values,
        _ranks_within_class(labels),
        total,
        shortfall,
        candidates=n,
        nan_scores=n - int(available.sum()),
        classes=len(classes),
        in_order=True,
    )
