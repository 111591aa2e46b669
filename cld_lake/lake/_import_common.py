"""What every importer shares: reading small ``.npy`` inputs with clear errors, the stored
dtype of a channel, labels from ``.npy`` or Parquet, and :func:`import_rows`, which checks
an import against the lake (changing nothing) before it writes and commits one segment.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cld_lake.errors import BadInputError, CldLakeError, InputFileNotFoundError, one_line
from cld_lake.lake import _format as fmt
from cld_lake.lake._groups import GroupEncoder, UnknownGroupError, too_many_groups
from cld_lake.lake._import_samples import (
    ImportSamples,
    check_classes,
    groups_type,
    joined_groups,
    load_groups_npy,
    row_aligned_groups,
    scan,
)
from cld_lake.lake._validate import (
    MAX_CLASSES,
    arrow_dtype,
    as_checkpoint_ids,
    as_ids,
    as_labels,
    check_channels,
    check_num_classes,
    check_run_name,
    check_split_name,
)
from cld_lake.lake.store import Lake, Split, lock_root
from cld_lake.lake.writer import RowReader, SplitWriter
from cld_lake.storage import StorePath, location

if TYPE_CHECKING:
    import pyarrow as pa

    from cld_lake._duckdb import Connection

PathLike = str | os.PathLike[str]
#: where an import goes: an opened lake, or the place of one (created when missing)
Target = Lake | PathLike | StorePath
# Given the split's rows for each import row (None: same order), a reader of row blocks.
SourceFactory = Callable[[np.ndarray | None], RowReader]


@dataclass(frozen=True)
class ImportResult:
    """What an import committed: the split, its size, the new checkpoints and channels, and
    the number of NaN/inf losses among the imported values."""

    split: str
    num_samples: int
    checkpoints: list[int]
    channels: dict[str, str]
    nonfinite: int


def load_npy(path: PathLike, what: str) -> np.ndarray:
    """Memory-map a ``.npy`` file (no copy into RAM) with a clear error when it is unusable."""
    p = Path(path)
    if not p.exists():
        raise InputFileNotFoundError(f"{what} {p}: no such file")
    if p.suffix != ".npy":
        raise BadInputError(f"{what} {p}: expected a .npy file (or a long .parquet for --loss)")
    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BadInputError(
            f"{what} {p}: not a readable .npy file ({str(exc).splitlines()[0]}); is it truncated?"
        ) from exc
    return arr


def channel_dtype(channel: str, dtype: np.dtype, requested: Mapping[str, str] | None) -> str:
    """The stored dtype of ``channel``: as requested, else the input's when it is allowed and
    narrower or wider than the default on purpose (float16/float64 loss, float16 margin)."""
    if requested and channel in requested:
        return requested[channel]
    if channel == "loss" and dtype in (np.float16, np.float64):
        return str(dtype)
    if channel == "margin" and dtype == np.float16:
        return "float16"
    return fmt.CHANNEL_DTYPES[channel][0]


def load_ids(path: PathLike | None, n: int, what: str, *, checkpoints: bool = False) -> np.ndarray:
    """Unique int64 ids from a 1-D ``.npy`` of length ``n``; ``0..n-1`` when ``path`` is None.

    ``checkpoints``: the ids must also be >= 0 (:func:`as_checkpoint_ids`).
    """
    if path is None:
        return np.arange(n, dtype=np.int64)
    arr = load_npy(path, what)
    if arr.shape != (n,):
        raise BadInputError(f"{what} {path}: shape {arr.shape}, expected ({n},) to match --loss")
    return (as_checkpoint_ids if checkpoints else as_ids)(arr, f"{what} {path}")


def load_labels(con: Connection, labels: PathLike, ids: np.ndarray) -> np.ndarray:
    """Labels for ``ids`` from a ``.parquet`` with ``sample_id, label`` (joined by DuckDB on
    ``con``) or from a ``.npy`` aligned with ``ids``."""
    p = Path(labels)
    if p.suffix != ".parquet":
        arr = load_npy(p, "--labels")
        if arr.shape != ids.shape:
            raise BadInputError(
                f"--labels {p}: shape {arr.shape} does not match the {len(ids)} sample ids; "
                f"expected ({len(ids)},)"
            )
        return as_labels(arr, f"--labels {p}")
    schema = parquet_schema(p, "--labels")
    for need in ("sample_id", "label"):
        if need not in schema.names:
            raise BadInputError(
                f"--labels {p}: missing column {need!r}; a labels .parquet has sample_id, label"
            )
    id_dtype, id_type = arrow_dtype(schema.field("sample_id").type)
    as_ids(np.zeros(0, id_dtype), f"--labels {p}", id_type)
    label_dtype, label_type = arrow_dtype(schema.field("label").type)
    if label_dtype.kind != "f":  # float labels are refused after the read: NaN is named
        as_labels(np.zeros(0, label_dtype), f"--labels {p}", type_label=label_type)
    import pyarrow as pa

    from cld_lake._duckdb import Error, sql_str

    con.register("_want", pa.table({"sample_id": ids, "pos": np.arange(len(ids))}))
    try:
        got = con.execute(
            f"SELECT w.pos, l.label FROM _want w LEFT JOIN read_parquet({sql_str(p)}) l "
            "USING (sample_id) ORDER BY w.pos"
        ).fetchnumpy()
    except Error as exc:
        raise BadInputError(f"--labels {p}: could not be read ({one_line(exc)})") from exc
    lab = got["label"]
    if len(lab) != len(ids):
        raise BadInputError(
            f"--labels {p}: {len(lab) - len(ids)} rows repeat a sample id; one label per sample"
        )
    if np.ma.is_masked(lab):
        raise BadInputError(
            f"--labels {p}: {int(np.ma.getmaskarray(lab).sum())} sample ids have no label "
            "(missing row or null label)"
        )
    return as_labels(np.ma.getdata(lab), f"--labels {p}")


def load_groups(path: PathLike, n: int, ids: Callable[[], np.ndarray]) -> ImportSamples:
    """``--groups FILE`` for ``n`` import rows, checked: a ``.npy`` of integers or strings,
    or a ``.parquet`` with a ``group`` column (joined on its ``sample_id`` column when it has
    one, else row ``i`` for import row ``i``). ``ids()`` gives the import's ids for a join."""
    from cld_lake._duckdb import sql_str

    p = Path(path)
    what = f"--groups {p}"
    if p.suffix == ".npy":
        return scan(load_groups_npy(p, n, load_npy), what)
    if p.suffix != ".parquet":
        raise BadInputError(
            f"{what}: expected a .npy (integers or strings) or a .parquet with a group column"
        )
    schema = parquet_schema(p, "--groups")
    if "group" not in schema.names:
        raise BadInputError(
            f"{what}: missing column 'group'; a groups .parquet has group (names or integers) "
            "and, to join on it, sample_id"
        )
    named = groups_type(schema.field("group").type, what)
    if "sample_id" in schema.names:
        source = f'(SELECT sample_id, "group" FROM read_parquet({sql_str(p)}))'
        return scan(joined_groups(source, ids(), what, named), what)
    return scan(row_aligned_groups(p, n, what), what)


def parquet_schema(path: PathLike, what: str) -> pa.Schema:
    """The Arrow schema of a Parquet file, with one-line errors when it is missing or unreadable."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.exists():
        raise InputFileNotFoundError(f"{what} {p}: no such file")
    try:
        return pq.read_schema(p)
    except (OSError, pa.ArrowException) as exc:
        raise BadInputError(
            f"{what} {p}: not a readable Parquet file ({one_line(exc)}); is it truncated?"
        ) from exc


def check_import_options(
    split: str, num_classes: int | None, dtypes: Mapping[str, str] | None, row_chunk: int
) -> None:
    """Options every importer checks first, before it reads its inputs."""
    check_split_name(split)
    if num_classes is not None:
        check_num_classes(num_classes)
    if dtypes:
        unknown = sorted(set(dtypes) - set(fmt.CHANNELS))
        if unknown:
            raise BadInputError(
                f"dtypes: unknown channel(s) {unknown}; channels are {fmt.CHANNELS}"
            )
        check_channels({"loss": fmt.CHANNEL_DTYPES["loss"][0], **dtypes})
    if row_chunk < 1 or row_chunk & (row_chunk - 1):
        raise BadInputError(f"row_chunk must be a power of two, got {row_chunk}")


def target_root(lake: Target) -> StorePath:
    """Where an import into ``lake`` goes (parsed once, here)."""
    return lake.root if isinstance(lake, Lake) else location(lake)


def import_rows(
    lake: Target,
    split: str,
    samples: ImportSamples,
    ckpts: np.ndarray,
    channels: dict[str, str],
    make_source: SourceFactory,
    num_classes: int | None,
    row_chunk: int,
    run: str | None = None,
) -> ImportResult:
    """Validate against the lake (without changing it), then write and commit ``split`` of
    ``run`` (None: the default run) with the ``samples`` (checked ids and groups).

    Everything that can be checked is checked before the lake (or split) is created. If writing
    still fails (disk full, permissions, an interrupt), what this call created is removed
    again (see :class:`_Undo`) and the error propagates (the CLI words it in one line, exit 1).
    The root metadata is read once, here (an opened ``lake`` may be older than the import).
    """
    root = target_root(lake)
    check_import_options(split, num_classes, None, row_chunk)
    run = check_run_name(run)
    if samples.named and num_classes is not None:
        raise BadInputError(
            f"--num-classes {num_classes}: not used with group names (the lake counts its "
            "names); leave it out"
        )
    check_classes(samples, num_classes, samples.what)
    ckpts = as_checkpoint_ids(ckpts, "checkpoint ids")
    channels = check_channels(channels)
    if samples.num_rows == 0:
        raise BadInputError("--loss: no samples to import (0 rows)")
    if len(ckpts) == 0:
        raise BadInputError("--loss: no checkpoints to import (0 columns)")
    rows: np.ndarray | None = None
    root_bytes = fmt.read_root_bytes(root)
    opened: Lake | None = None
    if root_bytes is not None:
        opened = Lake(root, run, meta=fmt.parse_root_metadata(root, root_bytes))
        if (
            num_classes is not None
            and opened.num_classes is not None
            and num_classes != opened.num_classes
        ):
            raise BadInputError(
                f"--num-classes {num_classes}: the lake at {root} has {opened.num_classes} classes; use the same number or a new lake"
            )
        _check_groups_fit(opened, samples, num_classes)
        if opened.has_split(split):
            rows = _rows_in_existing_split(opened, split, samples, ckpts, channels)
    undo = _Undo(root, split, run, root_bytes)
    try:
        if opened is None:
            opened = Lake.create(root, num_classes).with_run(run)
        with SplitWriter(opened, split, num_classes=num_classes, row_chunk=row_chunk) as writer:
            new_samples = samples.new_samples() if writer.split is None else None
            if writer.split is not None and rows is None:  # created meanwhile by another job
                undo.split_existed = True  # not ours to remove
                rows = _rows_in_existing_split(opened, split, samples, ckpts, channels)
            try:
                writer.append_columns(
                    ckpts.tolist(),
                    make_source(rows),
                    num_rows=samples.num_rows,
                    channels=channels,
                    new_samples=new_samples,
                )
            except BaseException:
                undo.remove_new_segments()  # while the lock still keeps other writers out
                raise
            result_split = writer.split
    except BaseException as exc:
        undo.run()
        if isinstance(exc, OSError) and not isinstance(exc, CldLakeError) and exc.filename is None:
            exc.filename = str(root)  # e.g. EFBIG from a chunk write: name the lake
        raise
    assert result_split is not None
    return ImportResult(
        split,
        samples.num_rows,
        sorted(int(c) for c in ckpts),
        dict(channels),
        _nonfinite_of(result_split, ckpts),
    )


def _check_groups_fit(lake: Lake, samples: ImportSamples, num_classes: int | None) -> None:
    """The import's groups suit the lake: names for a lake of names (at most ``MAX_CLASSES``
    of them in all), class indices in range for a lake of classes."""
    names = lake.group_names()
    role = samples.what.split(" ")[0]
    if samples.named:
        if names is None and lake.num_classes is not None:
            raise BadInputError(
                f"{samples.what}: group names (strings), but the lake at {lake.root} holds plain "
                f"integer groups (classes 0..{lake.num_classes - 1}); give integer groups, or "
                "import into a new lake"
            )
        total = len(set(names or ()) | set(samples.names or ()))
        if total > MAX_CLASSES:
            raise too_many_groups(total, f"{samples.what} with the lake's names")
        return
    if names is not None:
        raise BadInputError(
            f"{samples.what}: integers, but the lake at {lake.root} names its groups "
            f"({len(names):,} names, e.g. {names[0]!r}); give the names with --groups FILE "
            "(strings), or import into a new lake"
        )
    limit = lake.num_classes if lake.num_classes is not None else num_classes
    check_classes(samples, limit, f"{role} for {lake.root}")


class _Undo:
    """What one import may create, noted before it starts, and removed if the import fails.

    * a lake path that did not exist: the whole directory, with any parent this call made;
    * an existing directory that was not yet a lake: the entries this call added;
    * a split that did not exist: its directory (and ``num_classes`` of a lake with no split
      left, which the first split sets);
    * an existing split: new segment directories its commit record does not reference
      (:meth:`remove_new_segments`, called while the import holds the split's writer lock, so
      nobody else made them).
    """

    def __init__(self, root: StorePath, split: str, run: str, root_bytes: bytes | None) -> None:
        self.root = root
        self.run_name = run
        self.top_created = root.first_missing()
        self.root_bytes = root_bytes
        self.entries = (
            set(root.list())
            if self.top_created is None
            and root_bytes is None
            and root.exists()
            and not root.is_file()
            else None
        )
        self.split_dir = fmt.split_dir(root, split, run)
        self.split_existed = self.split_dir.exists()
        self.segments = set((self.split_dir / fmt.SEGMENTS_DIR).list())

    def run(self) -> None:
        if self.top_created is not None:
            self.top_created.delete_tree()
        elif self.entries is not None:
            for name in set(self.root.list()) - self.entries:
                (self.root / name).delete_tree()
        elif not self.split_existed:
            self.split_dir.delete_tree()
            self._restore_root()

    def remove_new_segments(self) -> None:
        """Segments this import made that its split's commit record does not reference; call
        it while holding the split's writer lock."""
        if not self.split_existed:
            return  # run() removes the whole split
        segments = self.split_dir / fmt.SEGMENTS_DIR
        if not segments.list():
            return
        try:
            split = Lake(self.root, self.run_name).split(self.split_dir.name)
            referenced = set(split.segment_names())
        except CldLakeError:
            return  # the commit record is unreadable: leave everything for verify / gc
        for name in set(segments.list()) - self.segments - referenced:
            (segments / name).delete_tree()

    def _restore_root(self) -> None:
        """Put back ``num_classes: null`` that the failed first split wrote into a lake whose
        root had none, unless another split now relies on it."""
        if self.root_bytes is None or fmt.read_root_bytes(self.root) in (None, self.root_bytes):
            return
        with lock_root(self.root):
            if not any(fmt.listed_runs(Lake(self.root).meta).values()):
                (self.root / fmt.ROOT_FILE).put(self.root_bytes)


def _nonfinite_of(split: Split, ckpts: np.ndarray) -> int:
    """NaN/inf losses recorded at commit for these checkpoints."""
    table = split.checkpoint_table
    chosen = np.isin(table.column("checkpoint").to_numpy(), np.asarray(ckpts, np.int64))
    return int(table.column("nonfinite").to_numpy()[chosen].sum())


def _rows_in_existing_split(
    lake: Lake,
    split_name: str,
    samples: ImportSamples,
    ckpts: np.ndarray,
    channels: dict[str, str],
) -> np.ndarray | None:
    """Map import rows onto the split's rows; None when they are already in the split's order
    (compared a block at a time: nothing held whole unless the order differs)."""
    split = lake.split(split_name)
    if samples.num_rows != split.num_samples:
        raise BadInputError(
            f"split {split_name!r} of {lake.root} has {split.num_samples} samples; the import has {samples.num_rows}. "
            "An import adds checkpoints for the same samples"
        )
    if channels != split.channels:
        raise BadInputError(
            f"split {split_name!r} of {lake.root} stores channels {split.channels}; the import "
            f"gives {channels}; import the same channels with the same dtypes (see --loss-dtype)"
        )
    dup = np.intersect1d(ckpts, split.checkpoint_ids)
    if len(dup):
        raise BadInputError(
            f"checkpoints {dup[:5].tolist()} are already committed in split {split_name!r} of {lake.root}; use --checkpoint-ids with new ids"
        )
    names = lake.group_names()
    encoder = GroupEncoder(names) if samples.named and names is not None else None
    differ = BadInputError(
        f"{samples.what.split(' ')[0]} differ from the {samples.noun} stored for split "
        f"{split_name!r}"
    )
    step = samples.group_step()
    for a, b in samples.spans(step):
        stored_ids, stored_labels = split.sample_rows(a, b)
        if not np.array_equal(samples.ids.read(a, b), stored_ids):
            break
        if not np.array_equal(_labels_or_differ(samples, a, b, encoder, differ), stored_labels):
            raise differ
    else:
        return None
    ids = samples.whole_ids()
    pos = split.rows_of(ids)
    if (pos < 0).any():
        raise BadInputError(
            f"sample ids {ids[pos < 0][:5].tolist()} are not in split {split_name!r} of {lake.root}"
        )
    labels = np.empty(samples.num_rows, np.int64)
    for a, b in samples.spans(step):
        labels[a:b] = _labels_or_differ(samples, a, b, encoder, differ)
    if not np.array_equal(split.labels[pos], labels):
        raise differ
    # import row i holds split row pos[i]; the writer wants split order: source row for split row r
    source_rows = np.empty_like(pos)
    source_rows[pos] = np.arange(len(pos))
    return source_rows


def _labels_or_differ(
    samples: ImportSamples, a: int, b: int, encoder: GroupEncoder | None, differ: Exception
) -> np.ndarray:
    """Rows ``a..b`` of the import's groups as the lake's ids; a name the lake lacks (or
    names for a lake of classes) is no stored label: ``differ``."""
    if samples.named and encoder is None:
        raise differ
    try:
        return samples.labels(a, b, encoder)
    except UnknownGroupError:
        raise differ from None
