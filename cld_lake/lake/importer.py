"""Bring trajectories into a lake: :func:`import_file` detects the input and dispatches.

``.npy`` N x T arrays are read by row range and streamed in row blocks; long Parquet
(``sample_id, checkpoint, loss[, correct, margin]``) is re-ordered by DuckDB's out-of-core
sort; wide Parquet (``wide`` list columns or ``loss_<checkpoint>`` columns, as
``cld-lake export`` writes) is read row group by row group (:mod:`._import_wide`). Every input
is validated before anything is written, so a bad input leaves the lake exactly as it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cld_lake.errors import BadInputError, one_line
from cld_lake.lake import _format as fmt
from cld_lake.lake._import_common import (
    ImportResult,
    PathLike,
    Target,
    channel_dtype,
    check_import_options,
    import_rows,
    load_groups,
    load_ids,
    load_labels,
    load_npy,
    parquet_schema,
)
from cld_lake.lake._import_samples import (
    ArrayColumn,
    ImportSamples,
    check_classes,
    groups_type,
    joined_groups,
    load_sample_ids,
    npy_column,
    scan,
)
from cld_lake.lake._import_wide import import_wide_parquet, is_wide_parquet, wide_layout
from cld_lake.lake._validate import (
    arrow_dtype,
    as_checkpoint_ids,
    as_correct,
    as_ids,
    as_labels,
    as_loss,
    as_margin,
    check_channel_dtype,
    check_correct_values,
    check_run_name,
)
from cld_lake.lake.store import Lake
from cld_lake.lake.writer import RowReader

if TYPE_CHECKING:
    import pyarrow as pa

    from cld_lake._duckdb import Connection

__all__ = [
    "ImportResult",
    "import_file",
    "import_long_parquet",
    "import_npy",
    "import_wide_parquet",
    "is_wide_parquet",
]


def import_file(
    lake: Target,
    split: str,
    *,
    loss: PathLike,
    labels: PathLike | None = None,
    sample_ids: PathLike | None = None,
    correct: PathLike | None = None,
    margin: PathLike | None = None,
    num_classes: int | None = None,
    checkpoint_ids: PathLike | None = None,
    dtypes: Mapping[str, str] | None = None,
    row_chunk: int = fmt.DEFAULT_ROW_CHUNK,
    run: str | None = None,
    groups: PathLike | None = None,
) -> ImportResult:
    """Import trajectories into ``split`` of ``lake`` (both created if missing).

    The kind of ``loss`` is detected: a ``.npy`` N x T array, a long ``.parquet`` (one row per
    sample and checkpoint) or a wide ``.parquet`` (one row per sample). Nothing is written
    unless the whole input is valid.

    Parameters
    ----------
    lake : Lake or path
    split : str
        ``train``, ``val``, ``test`` or any other split name (e.g. ``target``): letters,
        digits, ``_``, ``-``, ``.``, not starting with ``.`` or ``-``, at most 64 characters.
    loss : path
        ``.npy`` (N x T, float), or ``.parquet`` long (``sample_id, checkpoint, loss[, correct,
        margin]``) or wide (``sample_id[, label], loss`` as a list, or ``loss_<checkpoint>``).
    labels : path or None
        ``.npy`` of N labels (class indices); with a ``.parquet`` loss also a ``.parquet``
        with ``sample_id, label``. None for a wide file with a ``label`` column (the file's
        own labels), or when ``groups`` is given.
    groups : path or None
        In place of ``labels``: a ``.npy`` of N group names (strings) or integers, or a
        ``.parquet`` with a ``group`` column (joined on its ``sample_id`` column when it has
        one, else one row per sample in ``--loss`` order). Names are *named groups*: the lake
        gives each a dense id (new names sorted, after the lake's existing ones) and keeps
        the table of names (:meth:`Lake.group_names`); integers behave as labels. A long
        ``.parquet`` loss may carry a ``group`` column instead.
    sample_ids, checkpoint_ids : path, optional
        ``.npy`` of N unique sample ids (default ``0..N-1``) / T checkpoint ids (default
        ``0..T-1``). A Parquet file carries its checkpoint ids, a wide one its sample ids.
    correct, margin : path, optional
        ``.npy`` N x T arrays of those channels (``.npy`` loss only; Parquet files carry them
        as columns).
    num_classes : int, optional
        Number of classes (default: max label + 1 of the lake's first import).
    dtypes : mapping of channel to dtype, optional
        Stored dtypes, e.g. ``{"loss": "float16"}``.
    row_chunk : int
        Rows per chunk of a new split.
    run : str, optional
        The proxy run (seed, architecture) the trajectories belong to (default: the lake's
        default run); each run holds its own splits.
    """
    check_import_options(split, num_classes, dtypes, row_chunk)
    run = check_run_name(lake.run if run is None and isinstance(lake, Lake) else run)
    if labels is not None and groups is not None:
        raise BadInputError(
            "--labels and --groups: give one of them (--groups takes group names or integers, "
            "--labels class indices)"
        )
    if Path(loss).suffix == ".parquet":
        for option, value in (
            ("--correct", correct),
            ("--margin", margin),
            ("--checkpoint-ids", checkpoint_ids),
        ):
            if value is not None:
                raise BadInputError(
                    f"{option}: not used with a .parquet --loss (its columns carry them)"
                )
        if wide_layout(parquet_schema(loss, "--loss"), loss) is not None:
            return import_wide_parquet(
                lake,
                split,
                loss,
                labels,
                groups=groups,
                sample_ids=sample_ids,
                num_classes=num_classes,
                dtypes=dtypes,
                row_chunk=row_chunk,
                run=run,
            )
        return import_long_parquet(
            lake,
            split,
            loss,
            labels,
            groups=groups,
            sample_ids=sample_ids,
            num_classes=num_classes,
            dtypes=dtypes,
            row_chunk=row_chunk,
            run=run,
        )
    return import_npy(
        lake,
        split,
        loss,
        labels if groups is not None else _required_labels(labels, "a .npy"),
        groups=groups,
        sample_ids=sample_ids,
        correct=correct,
        margin=margin,
        checkpoint_ids=checkpoint_ids,
        num_classes=num_classes,
        dtypes=dtypes,
        row_chunk=row_chunk,
        run=run,
    )


def _required_labels(labels: PathLike | None, kind: str) -> PathLike:
    if labels is None:
        raise BadInputError(
            f"--labels: {kind} --loss has no labels; give a .npy of labels "
            "(or, with a long .parquet, a .parquet with sample_id, label), or --groups FILE "
            "(group names or integers)"
        )
    return labels


def import_npy(
    lake_path: Target,
    split: str,
    loss: PathLike,
    labels: PathLike | None,
    *,
    groups: PathLike | None = None,
    sample_ids: PathLike | None = None,
    correct: PathLike | None = None,
    margin: PathLike | None = None,
    checkpoint_ids: PathLike | None = None,
    num_classes: int | None = None,
    dtypes: Mapping[str, str] | None = None,
    row_chunk: int = fmt.DEFAULT_ROW_CHUNK,
    run: str | None = None,
) -> ImportResult:
    """Import N x T ``.npy`` arrays into ``split`` (created if missing, with the lake).

    Type rules (shared with every importer, :mod:`._validate`): loss and margin are float or
    int, correct is bool or 0/1 integers, labels and ids are integers (floats refused even when
    whole), ids below 2**63, checkpoint ids >= 0; ``groups`` (in place of ``labels``) are
    integers or names. Labels, groups and sample ids are read a block at a time: a new split
    whose ids increase (the default ``0..N-1`` do) holds one block of them, never N.
    """
    check_import_options(split, num_classes, dtypes, row_chunk)
    loss_arr = load_npy(loss, "--loss")
    if loss_arr.ndim != 2:
        raise BadInputError(
            f"--loss {loss}: expected a 2-D N x T array, got shape {loss_arr.shape}"
        )
    as_loss(loss_arr, f"--loss {loss}")
    n, t = loss_arr.shape
    if n == 0 or t == 0:
        raise BadInputError(
            f"--loss {loss}: shape {loss_arr.shape} has no {'rows' if n == 0 else 'checkpoints (0 columns)'}; nothing to import"
        )
    if groups is None:
        if labels is None:
            raise BadInputError("--labels: a .npy --loss needs --labels FILE or --groups FILE")
        label_arr = load_npy(labels, "--labels")
        if label_arr.shape != (n,):
            raise BadInputError(
                f"--labels {labels}: shape {label_arr.shape} does not match --loss {loss} with {n} rows; expected ({n},)"
            )
        samples = scan(npy_column(labels, label_arr), f"--labels {labels}", names=False)
    else:
        samples = load_groups(groups, n, lambda: _whole_ids(sample_ids, n))
    check_classes(samples, num_classes, samples.what)
    channels_src: dict[str, np.ndarray] = {"loss": loss_arr}
    paths_src: dict[str, PathLike] = {"loss": loss}
    for name, path, rule in (("correct", correct, as_correct), ("margin", margin, as_margin)):
        if path is None:
            continue
        arr = load_npy(path, f"--{name}")
        if arr.shape != (n, t):
            raise BadInputError(
                f"--{name} {path}: shape {arr.shape} does not match --loss shape {(n, t)}"
            )
        channels_src[name] = rule(arr, f"--{name} {path}")
        paths_src[name] = path
    samples = samples.with_ids(load_sample_ids(sample_ids, n, "--sample-ids", load_npy))
    ckpts = load_ids(checkpoint_ids, t, "--checkpoint-ids", checkpoints=True)
    channels = {c: channel_dtype(c, a.dtype, dtypes) for c, a in channels_src.items()}

    def source(rows: np.ndarray | None) -> RowReader:
        readers = {c: npy_column(paths_src[c], arr).read for c, arr in channels_src.items()}

        def read_rows(a: int, b: int) -> dict[str, np.ndarray]:
            if rows is None:
                return {c: read(a, b) for c, read in readers.items()}
            sel = np.sort(rows[a:b])
            out = {c: np.asarray(arr[sel]) for c, arr in channels_src.items()}
            # rows[a:b] were sorted for a sequential read: undo that order
            back = np.argsort(np.argsort(rows[a:b], kind="stable"), kind="stable")
            return {c: v[back] for c, v in out.items()}

        return read_rows

    return import_rows(
        lake_path, split, samples, ckpts, channels, source, num_classes, row_chunk, run
    )


def _whole_ids(sample_ids: PathLike | None, n: int) -> np.ndarray:
    """The import's sample ids as one array (to join groups on them)."""
    return load_ids(sample_ids, n, "--sample-ids")


def import_long_parquet(
    lake_path: Target,
    split: str,
    loss: PathLike,
    labels: PathLike | None,
    *,
    groups: PathLike | None = None,
    sample_ids: PathLike | None = None,
    num_classes: int | None = None,
    dtypes: Mapping[str, str] | None = None,
    row_chunk: int = fmt.DEFAULT_ROW_CHUNK,
    memory_limit: str = "1GB",
    run: str | None = None,
) -> ImportResult:
    """Import a long Parquet file (``sample_id, checkpoint, loss[, correct, margin]``).

    Labels come from ``labels``: a ``.parquet`` with ``sample_id, label`` or a ``.npy`` aligned
    with ``sample_ids`` (default: the file's distinct sample ids, ascending); or groups from
    ``groups`` (:func:`import_file`), or from the file's own ``group`` column (one group per
    sample). DuckDB sorts the rows by (sample, checkpoint) out of core, and row blocks stream
    into the split.
    """
    from cld_lake import _duckdb

    check_import_options(split, num_classes, dtypes, row_chunk)
    loss_path = Path(loss)
    what = f"--loss {loss_path}"
    schema = parquet_schema(loss_path, "--loss")
    for need in ("sample_id", "checkpoint", "loss"):
        if need not in schema.names:
            raise BadInputError(
                f"{what}: missing column {need!r}; a long file has sample_id, checkpoint, loss"
            )
    present = [c for c in fmt.CHANNELS if c in schema.names]
    types = {c: arrow_dtype(schema.field(c).type) for c in ("sample_id", "checkpoint", *present)}
    # the type rules, on the schema: nothing is read yet
    as_ids(np.zeros(0, types["sample_id"][0]), f"{what} column sample_id", types["sample_id"][1])
    as_ids(np.zeros(0, types["checkpoint"][0]), f"{what} column checkpoint", types["checkpoint"][1])
    for c in present:
        check_channel_dtype(c, types[c][0], what, types[c][1])
    group_column = "group" in schema.names
    if group_column:
        if labels is not None or groups is not None:
            option = "--labels" if labels is not None else "--groups"
            raise BadInputError(
                f"{option}: {what} carries a group column; leave out {option}, or drop the column"
            )
        named = groups_type(schema.field("group").type, f"{what}")
    elif labels is None and groups is None:
        labels = _required_labels(None, "a long .parquet")
    con = _duckdb.connect(memory_limit=memory_limit)
    try:
        return _import_long(
            con, lake_path, split, loss_path, labels, groups, named if group_column else None,
            sample_ids, present, types, num_classes, dtypes, row_chunk, run,
        )  # fmt: skip
    except _duckdb.Error as exc:
        raise BadInputError(f"{what}: could not be read ({one_line(exc)})") from exc
    finally:
        con.close()


def _import_long(
    con: Connection,
    lake_path: Target,
    split: str,
    loss_path: Path,
    labels: PathLike | None,
    groups: PathLike | None,
    group_column: bool | None,
    sample_ids: PathLike | None,
    present: list[str],
    types: dict[str, tuple[np.dtype, str]],
    num_classes: int | None,
    dtypes: Mapping[str, str] | None,
    row_chunk: int,
    run: str | None = None,
) -> ImportResult:
    import pyarrow as pa

    from cld_lake._duckdb import sql_str

    what = f"--loss {loss_path}"
    src = f"read_parquet({sql_str(loss_path)})"
    cols = ["sample_id", "checkpoint", *present]
    counts = con.execute(
        f"SELECT count(*), {', '.join(f'count(*) - count({c})' for c in cols)} FROM {src}"
    ).fetchall()[0]
    total = int(counts[0])
    for c, nulls in zip(cols, counts[1:], strict=True):
        if nulls:
            raise BadInputError(
                f"{what}: {c} has {nulls} null values; every row needs sample_id, checkpoint and its values"
            )
    if total == 0:
        raise BadInputError(f"{what}: no rows; nothing to import")
    if "correct" in present and types["correct"][0].kind in "iu":
        bad = con.execute(
            f"SELECT correct FROM {src} WHERE correct NOT IN (0, 1) LIMIT 1"
        ).fetchall()
        if bad:
            check_correct_values(np.array([bad[0][0]]), what)
    ckpts = as_checkpoint_ids(
        con.execute(f"SELECT DISTINCT checkpoint FROM {src} ORDER BY 1").fetchnumpy()["checkpoint"],
        f"{what} column checkpoint",
    )
    if sample_ids is not None:
        ids = load_ids(sample_ids, len(load_npy(sample_ids, "--sample-ids")), "--sample-ids")
    else:
        ids = as_ids(
            con.execute(f"SELECT DISTINCT sample_id FROM {src} ORDER BY 1").fetchnumpy()[
                "sample_id"
            ],
            f"{what} column sample_id",
        )
    samples = _long_groups(con, src, what, labels, groups, group_column, ids, num_classes)
    n, t = len(ids), len(ckpts)
    distinct_pairs = con.execute(
        f"SELECT count(DISTINCT (sample_id, checkpoint)) FROM {src}"
    ).fetchall()[0][0]
    if total != distinct_pairs:
        raise BadInputError(
            f"{what}: {total - distinct_pairs} duplicate (sample_id, checkpoint) rows"
        )
    con.register("_ids", pa.table({"sample_id": ids, "row": np.arange(n, dtype=np.int64)}))
    con.register("_ck", pa.table({"checkpoint": ckpts, "col": np.arange(t, dtype=np.int64)}))
    unknown = con.execute(
        f"SELECT count(*) FROM {src} l ANTI JOIN _ids USING (sample_id)"
    ).fetchall()[0][0]
    if unknown:
        raise BadInputError(f"{what}: {unknown} rows have sample ids not in --sample-ids")
    if total != n * t:
        raise BadInputError(
            f"{what}: {total} rows, expected {n} samples x {t} checkpoints = {n * t}; every sample needs a value at every checkpoint"
        )
    channels = {c: channel_dtype(c, types[c][0], dtypes) for c in present}
    select_cols = ", ".join(f"l.{c}" for c in present)

    def make_source(rows: np.ndarray | None) -> RowReader:
        # the writer asks for split rows [a, b) in order; stream the sorted result once
        order_sql = "i.row" if rows is None else "r.split_row"
        if rows is not None:
            con.register(
                "_rows", pa.table({"row": rows, "split_row": np.arange(n, dtype=np.int64)})
            )
        join_rows = "" if rows is None else " JOIN _rows r ON r.row = i.row"
        reader = con.sql(
            f"SELECT {order_sql} AS r, c.col, {select_cols} FROM {src} l JOIN _ids i USING (sample_id) "
            f"JOIN _ck c USING (checkpoint){join_rows} ORDER BY 1, 2"
        ).to_arrow_reader(batch_size=1 << 20)
        return _LongRowReader(reader, t, present, what)

    return import_rows(
        lake_path, split, samples, ckpts, channels, make_source, num_classes, row_chunk, run
    )


def _long_groups(
    con: Connection,
    src: str,
    what: str,
    labels: PathLike | None,
    groups: PathLike | None,
    group_column: bool | None,
    ids: np.ndarray,
    num_classes: int | None,
) -> ImportSamples:
    """The groups of a long import's ``ids``: from ``labels``, ``groups``, or the file's own
    ``group`` column (``group_column``: named or not; every sample one group)."""
    if group_column is not None:
        nulls, mixed = con.execute(
            f'SELECT count(*) - count("group"), (SELECT count(*) FROM (SELECT sample_id FROM '
            f'{src} GROUP BY sample_id HAVING count(DISTINCT "group") > 1)) FROM {src}'
        ).fetchall()[0]
        if nulls:
            raise BadInputError(f"{what}: group has {nulls} null values; every row needs a group")
        if mixed:
            raise BadInputError(
                f"{what}: {mixed} samples have more than one group; give each sample one group"
            )
        source = f'(SELECT sample_id, any_value("group") AS "group" FROM {src} GROUP BY 1)'
        found = scan(joined_groups(source, ids, f"{what} column group", group_column), what)
    elif groups is not None:
        found = load_groups(groups, len(ids), lambda: ids)
    else:
        assert labels is not None
        label_arr = as_labels(load_labels(con, labels, ids), "--labels", num_classes)
        found = scan(ArrayColumn(label_arr), "--labels", names=False)
    check_classes(found, num_classes, found.what)
    return found.with_ids(ArrayColumn(ids))


class _LongRowReader:
    """Turns a (row, col)-sorted long stream into dense row blocks on demand."""

    def __init__(
        self, reader: pa.RecordBatchReader, t: int, channels: list[str], what: str
    ) -> None:
        self._reader = reader
        self._t = t
        self._channels = channels
        self._what = what
        self._pending: dict[str, np.ndarray] | None = None

    def __call__(self, a: int, b: int) -> dict[str, np.ndarray]:
        import pyarrow as pa

        from cld_lake._duckdb import Error

        try:
            return self._rows(a, b)
        except (Error, pa.ArrowException, StopIteration) as exc:
            raise BadInputError(f"{self._what}: could not be read ({one_line(exc)})") from exc

    def _rows(self, a: int, b: int) -> dict[str, np.ndarray]:
        t = self._t
        need = (b - a) * t
        parts: dict[str, list[np.ndarray]] = {c: [] for c in self._channels}
        have = 0
        while have < need:
            if self._pending is None:
                batch = self._reader.read_next_batch()
                self._pending = {
                    c: batch.column(c).to_numpy(zero_copy_only=False) for c in self._channels
                }
            take = min(need - have, len(self._pending["loss"]))
            for c in self._channels:
                parts[c].append(self._pending[c][:take])
            rest = {c: v[take:] for c, v in self._pending.items()}
            self._pending = rest if len(rest["loss"]) else None
            have += take
        return {c: np.concatenate(v).reshape(b - a, t) for c, v in parts.items()}
