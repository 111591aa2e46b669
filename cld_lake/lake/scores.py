"""The scores table: its one reader and writer.

The table has one row per training sample (``sample_id, label`` in the train split's row
order) and one column per stored score; the Parquet key-value metadata ``cld_lake`` holds
``{"scores": {name: provenance}, "rows": {...}, "table": {"seq": ...}}``. It is committed like
a split's checkpoints: every change writes a new, immutable version
(``LAKE/scores/scores-<seq>-<token>.parquet``) and then replaces the record in
``cld_lake.json`` that names the current one (see :mod:`cld_lake.lake._scores_record`), so a
crash leaves the previous table, and a table that is missing, swapped for another file or
rolled back is refused by every reader. :func:`scores_path` is the one way to find it.
Scoring stores columns with :func:`store_scores`; ``info``, ``select``, ``report`` and the SQL
view read it through :func:`stored_scores`, :func:`read_scores` and :func:`iter_scores`.

**Whose rows.** One table per lake; its rows are one set of training samples (with their
labels): those of the train split the first score was computed on. Every run whose train
split holds the same samples and labels (each proxy run of one data set; an ensemble of them)
stores its scores there, each under its own name; a run whose train split holds the same
samples in another order is realigned by sample id; a score of any other set of samples is
refused before anything is written (it would drop every stored score): score it in a lake of
its own.

An undefined score (NaN in the NumPy column scoring produces) is stored as null, so SQL
orderings put it last (``ORDER BY cld DESC`` in DuckDB) and aggregates skip it. Readers that
need NumPy get NaN back: Arrow's ``to_numpy`` turns a null float into NaN.

Integrity: the table is streamed (it is never whole in memory), so its checksums are computed
as the row groups are written and stored at the end, in the footer key ``cld_lake.checksum``
(:mod:`cld_lake.lake._scores_checks`); the root record keeps a checksum of those. A reader
checks the record and the JSON and exactly the columns it reads; ``verify`` and the SQL view
check every column, streaming. In a checksummed lake (format 2) a table without that key is
refused. No Parquet statistics are written, so no reader can skip rows on bytes the checksums
do not cover.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from cld_lake._io import parquet_file
from cld_lake._meta import META_KEY, canonical_json, crc32c_hex, read_meta
from cld_lake._types import Direction, choices
from cld_lake.errors import (
    BadInputError,
    CldLakeError,
    CorruptLakeError,
    LakeChangedError,
    ScoringError,
    one_line,
)
from cld_lake.lake import _format as fmt
from cld_lake.lake import _scores_record as _record
from cld_lake.lake._scores_checks import (
    CHECKSUMS_KEY,
    ColumnCheck,
    ColumnChecksums,
    footer,
    recorded_checksums,
)
from cld_lake.lake._scores_record import Located, RootState, strays
from cld_lake.lake._scores_write import (
    RESERVED,
    ScoreReader,
    array_reader,
    rows_fit,
    write_table,
)
from cld_lake.lake._validate import check_case_clash
from cld_lake.lake._validate import check_score_name as check_score_name  # its users' name
from cld_lake.lake.store import Lake, Split, lock_root
from cld_lake.storage import StorePath

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

__all__ = [
    "BATCH_ROWS",
    "CHECKSUMS_KEY",
    "RESERVED",
    "ColumnCheck",
    "ColumnChecksums",
    "RootState",
    "ScoreReader",
    "check_score_name",
    "check_scores_file",
    "check_scores_fit",
    "existing_score_message",
    "footer",
    "iter_scores",
    "open_scores_file",
    "read_scores",
    "score_direction",
    "score_reference",
    "score_reference_split",
    "score_summary",
    "scores_path",
    "scores_state",
    "stale_scores",
    "store_score",
    "store_scores",
    "stored_scores",
    "strays",
]

DIRECTIONS = choices(Direction)
BATCH_ROWS = 1 << 16  # rows per row group of the table (and per batch written)


def score_direction(provenance: Mapping[str, Any]) -> Direction:
    """What a higher value of a stored score means, from its provenance: ``"higher_keep"``
    (more worth keeping, e.g. CLD) or ``"higher_harder"`` (harder, e.g. forgetting counts).

    A score stored before directions were recorded has none and is ``higher_keep``; a
    direction this version does not know (a newer cld_lake wrote it) is refused, since
    reading it the wrong way round would select the opposite end.
    """
    direction = provenance.get("direction", "higher_keep")
    if direction not in DIRECTIONS:
        raise BadInputError(
            f"score provenance has direction {direction!r}; expected one of "
            f"{', '.join(DIRECTIONS)} (recompute the score with this version of cld_lake)"
        )
    return direction  # type: ignore[no-any-return]


# --- where the table is -------------------------------------------------------------------------
def _located(lake: Lake) -> Located | None:
    """The current table as the root metadata names it now (read afresh: another process may
    have stored a score since ``lake`` was opened)."""
    lake.meta = fmt.read_root_metadata(lake.root)
    return _record.locate(lake.root, lake.meta)


def scores_path(lake: Lake) -> StorePath | None:
    """Where the current scores table of ``lake`` is: the file ``cld_lake.json`` names (a lake
    written before versioned tables: ``LAKE/scores.parquet``); None before any score. The one
    way to find the table: it moves with every score stored. (Opening it through
    :func:`open_scores_file` checks it is the table the lake recorded.)"""
    located = _located(lake)
    return located.path if located is not None else None


def open_scores_file(lake: Lake) -> pq.ParquetFile:
    """The current scores table as a ``pyarrow.parquet.ParquetFile``, checked against the
    lake's record of it (the file, its checksum, its rows) and its ``cld_lake`` JSON against
    its recorded CRC32C; read its columns through a :class:`ColumnCheck`.

    Raises :class:`CorruptLakeError` (one line) for a table that is missing, swapped for
    another file, rolled back to an older version or damaged; :class:`BadInputError` when
    nothing is scored yet.
    """
    located = _located(lake)
    if located is None:
        raise BadInputError(
            f"{lake.root} has no scores yet; compute one with `cld-lake score {lake.root}`"
        )
    return _open(lake, located)


def _open(lake: Lake, located: Located) -> pq.ParquetFile:
    path = located.path
    try:
        pf = parquet_file(path)
    except FileNotFoundError as exc:
        raise _missing(lake, located) from exc
    except Exception as exc:  # a damaged footer
        raise CorruptLakeError(f"{path}: unreadable ({one_line(exc)}); {lake.fix}") from exc
    recorded = recorded_checksums(pf)
    if located.record is not None:
        _check_record(lake, located, pf, recorded)
    if recorded is None:
        if lake.checksummed:
            raise CorruptLakeError(f"{path} fails its checksum (none recorded); {lake.fix}")
        return pf
    # the JSON is in the footer and again inside pyarrow's schema copy: both must match
    footer = {META_KEY: (pf.metadata.metadata or {}).get(META_KEY, b"")}
    for meta in (read_meta(pf.schema_arrow), read_meta(_Schema(footer))):
        if recorded.get("meta") != crc32c_hex(canonical_json(meta)):
            raise CorruptLakeError(f"{path} fails its checksum (metadata); {lake.fix}")
    return pf


def _check_record(
    lake: Lake, located: Located, pf: pq.ParquetFile, recorded: dict[str, Any] | None
) -> None:
    """The file is the table the root record names: the same footer checksums, rows."""
    record = located.record
    assert record is not None
    computed = _record.fingerprint(recorded)
    rows = pf.metadata.num_rows
    if computed == record["checksum"] and rows == record["rows"]:
        return
    version = read_meta(pf.schema_arrow).get("table")
    seq = version.get("seq") if isinstance(version, dict) else None
    if isinstance(seq, int) and seq < int(record["seq"]):
        why = f"rolled back: it holds version {seq}, {fmt.ROOT_FILE} names version {record['seq']}"
    elif computed != record["checksum"]:
        why = f"checksum {computed}, {fmt.ROOT_FILE} records {record['checksum']}"
    else:
        why = f"{rows} rows, {fmt.ROOT_FILE} records {record['rows']}"
    raise CorruptLakeError(
        f"{located.path} is not the scores table {fmt.ROOT_FILE} names ({why}); {lake.fix}"
    )


def _missing(lake: Lake, located: Located) -> CldLakeError:
    """The error for a table that is gone: replaced by a newer score and deleted since this
    command found it (run again), or the current table lost (corrupt)."""
    try:
        now = _located(lake)
    except CldLakeError:
        now = None
    if now is not None and now.path != located.path:
        return LakeChangedError(
            f"{located.path}: scores table replaced by a newer one while this command ran; "
            "run it again"
        )
    named = f"the scores table {fmt.ROOT_FILE} names" if located.record else "the scores table"
    return CorruptLakeError(f"{located.path}: {named} is missing; {lake.fix}")


class _Schema:
    """Just enough of a schema for :func:`read_meta`: its key-value metadata."""

    def __init__(self, metadata: dict[bytes, bytes]) -> None:
        self.metadata = metadata


# --- reading ------------------------------------------------------------------------------------
def check_scores_file(lake: Lake) -> None:
    """Check the current scores table against the lake's record and every column against its
    checksum, one row group at a time (bounded memory); nothing when nothing is scored.

    Raises :class:`CorruptLakeError` (one line) when anything differs from what was recorded.
    """
    located = _located(lake)
    if located is None:
        return
    pf = _open(lake, located)
    recorded = recorded_checksums(pf)
    if recorded is None:
        return
    sums = ColumnChecksums(pf.schema_arrow)
    try:
        for g in range(pf.metadata.num_row_groups):
            sums.update(pf.read_row_group(g))
    except Exception as exc:
        raise CorruptLakeError(f"{located.path}: unreadable ({one_line(exc)}); {lake.fix}") from exc
    expected = recorded.get("columns") if isinstance(recorded.get("columns"), dict) else {}
    if sums.values() != expected:
        raise CorruptLakeError(f"{located.path} fails its checksum (columns); {lake.fix}")


def stored_scores(lake: Lake) -> dict[str, dict[str, Any]]:
    """Name -> provenance of every stored score, in column order; ``{}`` before any score."""
    located = _located(lake)
    if located is None:
        return {}
    schema = _open(lake, located).schema_arrow
    provenance = read_meta(schema).get("scores", {})
    if not isinstance(provenance, dict):
        provenance = {}
    return {
        name: provenance.get(name, {}) if isinstance(provenance.get(name, {}), dict) else {}
        for name in schema.names
        if name not in RESERVED
    }


def read_scores(lake: Lake, columns: list[str] | None = None) -> pa.Table | None:
    """``sample_id, label`` and the score ``columns`` (default: all) as a pyarrow Table, or
    None when nothing is scored yet. Undefined scores are null (``to_numpy`` gives NaN)."""
    located = _located(lake)
    if located is None:
        return None
    pf = _open(lake, located)
    wanted = None if columns is None else ["sample_id", "label", *columns]
    try:
        table = pf.read(columns=wanted)
    except Exception as exc:
        raise CorruptLakeError(f"{located.path}: unreadable ({one_line(exc)}); {lake.fix}") from exc
    check = ColumnCheck(lake, pf, table.schema.names, located.path)
    check.update(table)
    check.verify()
    return table


def iter_scores(lake: Lake, columns: list[str]) -> Iterator[pa.Table]:
    """:func:`read_scores` one row group at a time: ``sample_id, label`` and ``columns``.

    Memory is one row group, whatever the number of rows. The table is found (and checked
    against the lake's record, its JSON against its checksum) before the first group, and read
    to the end even if a newer score is stored meanwhile; the columns' checksums are compared
    after the last group has been read (and before the iterator ends, raising
    :class:`CorruptLakeError`), so a consumer that reads to the end has checked everything it
    used. Nothing when no scores table exists.
    """
    located = _located(lake)
    if located is None:
        return
    pf = _open(lake, located)
    wanted = ["sample_id", "label", *columns]
    try:
        check = ColumnCheck(lake, pf, wanted, located.path)
    except KeyError as exc:
        raise CorruptLakeError(f"{located.path}: unreadable (no column {exc}); {lake.fix}") from exc
    for g in range(pf.metadata.num_row_groups):
        try:
            part = pf.read_row_group(g, columns=wanted)
        except Exception as exc:
            raise CorruptLakeError(
                f"{located.path}: unreadable ({one_line(exc)}); {lake.fix}"
            ) from exc
        check.update(part)
        yield part
    check.verify()


# --- writing ------------------------------------------------------------------------------------
def store_score(
    lake: Lake,
    train: Split,
    name: str,
    scores: np.ndarray | ScoreReader,
    provenance: dict[str, Any],
    *,
    replace: bool = True,
) -> None:
    """Add or replace column ``name`` of the scores table, with its provenance.

    A new version of the table is streamed in row batches (memory: one batch, not the whole
    table) and committed (see :func:`store_scores`). ``scores`` is the column (an array, NaN
    where undefined) or a function ``read(start, stop)`` returning rows of it; NaN is stored
    as null.
    """
    store_scores(lake, train, {name: scores}, {name: provenance}, replace=replace)


def store_scores(
    lake: Lake,
    train: Split,
    columns: Mapping[str, np.ndarray | ScoreReader],
    provenance: Mapping[str, dict[str, Any]],
    *,
    replace: bool = True,
) -> None:
    """Add or replace several columns at once (one new version of the table): ``columns``
    maps each name to its scores as in :func:`store_score`, ``provenance`` each name to its
    own. ``replace=False`` refuses a name the table holds.

    Under the root lock: the current table is checked; a score of ``train`` whose samples are
    not the table's is refused (:func:`check_scores_fit`), before anything is written; the
    new version goes to a new file, then the root record is replaced to name it (the commit
    point; on an object store a conditional PUT), then the version it replaced is retired.
    A crash at any moment leaves the previous table current (and at most an unreferenced file
    the next writer deletes). A lake of format 1 (no record, no checksums) has its
    ``scores.parquet`` replaced in place, as before.
    """
    readers = {
        name: scores if callable(scores) else array_reader(np.asarray(scores, dtype=np.float64))
        for name, scores in columns.items()
    }
    with lock_root(lake.root):  # read-modify-write: one scorer at a time
        state = _record.read_state(lake.root)
        lake.meta = state.meta
        located = state.located
        old = _open(lake, located) if located is not None else None
        aligned = old is not None and rows_fit(old, located.path, train)  # type: ignore[union-attr]
        if not replace and old is not None:
            _refuse_existing(lake, old, list(readers))
        if old is not None:
            stored = [c for c in old.schema_arrow.names if c not in RESERVED]
            for name in readers:
                check_case_clash("score", name, stored, "name")
        (lake.root / fmt.SCORES_FILE).remove_dead_temps()  # a killed old-layout writer's
        if not lake.checksummed:
            path = lake.root / fmt.SCORES_FILE
            write_table(
                path,
                old,
                train,
                readers,
                provenance,
                aligned=aligned,
                version=None,
                batch_rows=BATCH_ROWS,
            )
            return
        _record.remove_debris(state)
        key = _record.new_table_key(state)
        target = lake.root / key
        version = {"seq": state.next_seq, "lake_id": lake.lake_id}
        try:
            checks = write_table(
                target,
                old,
                train,
                readers,
                provenance,
                aligned=aligned,
                version=version,
                batch_rows=BATCH_ROWS,
            )
        except BaseException:
            target.delete()
            raise
        try:
            meta, expired = _record.commit(
                state, key, _record.fingerprint(checks), train.num_samples, train.ids_digest
            )
        except LakeChangedError:  # not committed: nobody will ever reference the new file
            target.delete()
            raise
        # (any other failure leaves the file: if the commit landed it is the current table,
        # if not, the next writer deletes it as debris)
        lake.meta = train.lake.meta = meta
        for path in expired:  # out of the record: no reader can find them any more
            path.delete()


def _refuse_existing(lake: Lake, old: pq.ParquetFile, names: list[str]) -> None:
    present = [n for n in names if n in old.schema_arrow.names]
    if present:
        provenance = read_meta(old.schema_arrow).get("scores", {})
        prov = provenance.get(present[0], {}) if isinstance(provenance, dict) else {}
        raise ScoringError(existing_score_message(present[0], prov))


def existing_score_message(name: str, provenance: Mapping[str, Any]) -> str:
    """The one line refusing to replace stored score ``name`` without ``force``."""
    return (
        f"score {name} exists ({score_summary(provenance)}); pass --force to replace it "
        "or --name NEW"
    )


def score_summary(provenance: Mapping[str, Any]) -> str:
    """What a stored score is, in a few words: its method, CLD's reference, its window
    (``cld, reference class, window all``)."""
    parts = [str(provenance.get("method", "unknown method"))]
    reference = score_reference(provenance)
    if reference is not None:
        split = score_reference_split(provenance)
        of = "" if reference.startswith("split:") or split == "val" else f" of {split}"
        parts.append(f"reference {reference}{of}")
    parts.append(f"window {provenance.get('window') or 'all'}")
    if provenance.get("runs"):
        parts.append(f"mean of runs {','.join(map(str, provenance['runs']))}")
    return ", ".join(parts)


def score_reference(provenance: Mapping[str, Any]) -> str | None:
    """CLD's reference of a stored score (``group``, ``global`` or ``split:NAME``; ``class``,
    which scores stored before groups recorded, is read as ``group``, its alias); None for a
    method without one."""
    params = provenance.get("parameters")
    if isinstance(params, dict) and params.get("reference") is not None:
        reference = str(params["reference"])
        return "group" if reference == "class" else reference
    return "group" if provenance.get("method") == "cld" else None


def score_reference_split(provenance: Mapping[str, Any]) -> str | None:
    """The split whose losses formed a stored score's CLD reference (``val`` for scores stored
    before it could be chosen); None for a method without one."""
    if score_reference(provenance) is None:
        return None
    params = provenance.get("parameters")
    if isinstance(params, dict) and params.get("reference_split") is not None:
        return str(params["reference_split"])
    return "val"


def check_scores_fit(lake: Lake, train: Split) -> None:
    """Refuse, before a score of ``train`` is computed, what :func:`store_scores` would
    refuse: a train split whose samples are not the scores table's (:class:`ScoringError`:
    the run, both sample sets, what to do). Nothing when nothing is scored yet."""
    located = _located(lake)
    if located is not None:
        rows_fit(_open(lake, located), located.path, train)


def scores_state(lake: Lake) -> RootState:
    """The root record of the scores table as it is now (for ``verify`` and ``info``: the
    current table, and every other file of the layout through :func:`strays`)."""
    return _record.read_state(lake.root)


def stale_scores(lake: Lake) -> dict[str, str]:
    """Stored scores computed over other checkpoints than they would be now: name -> reason.

    A score's provenance records the checkpoint ids it used (``checkpoint_ids``), the window
    asked for (``window``, None = all) and, optionally, the splits it read (``splits``,
    default train and val). It is stale when that window over the checkpoints now committed
    in all of those splits picks other checkpoints, e.g. after checkpoints were appended.
    Scores without recorded checkpoint ids are not judged. ``select``, ``report`` and ``info``
    warn with the reason; nothing is refused.
    """
    import functools

    from cld_lake.errors import BadInputError
    from cld_lake.lake.store import parse_window

    stale: dict[str, str] = {}
    committed: dict[tuple[str, ...], np.ndarray] = {}
    for name, prov in stored_scores(lake).items():
        used = prov.get("checkpoint_ids")
        splits = tuple(prov.get("splits") or ("train", "val"))
        run = str(prov.get("run") or fmt.DEFAULT_RUN)  # an ensemble's runs are not judged
        if not isinstance(used, list) or not all(lake.has_split(s, run) for s in splits):
            continue
        if (run, *splits) not in committed:
            ids = (lake.split(s, run).checkpoint_ids for s in splits)
            committed[(run, *splits)] = functools.reduce(np.intersect1d, ids)
        window = prov.get("window")
        try:
            now = committed[(run, *splits)][parse_window(window) if window else slice(None)]
        except BadInputError:
            continue
        if [int(c) for c in now] == [int(c) for c in used]:
            continue
        args = f" --checkpoints {window}" if window else ""
        reference, of = score_reference(prov), score_reference_split(prov)
        if reference is not None and reference != "group":
            args += f" --reference {reference}"
        if of is not None and of != "val" and reference is not None and ":" not in reference:
            args += f" --reference-split {of}"
        if isinstance(prov.get("fallback_mode"), str):
            args += f" --fallback {prov['fallback_mode']}"
        if run != fmt.DEFAULT_RUN:
            args += f" --run {run}"
        stale[name] = (
            f"computed over {_span(used)}, but {' and '.join(splits)} now give {_span(now)}; "
            f"recompute it: cld-lake score {lake.root} --method {prov.get('method', name)} "
            f"--name {name}{args} --force"
        )
    return stale


def _span(ids: Any) -> str:
    """``5 checkpoints (0..4)`` for a list of checkpoint ids."""
    ids = [int(c) for c in ids]
    ends = f" ({ids[0]}..{ids[-1]})" if ids else ""
    return f"{len(ids)} checkpoint{'s' if len(ids) != 1 else ''}{ends}"
