"""A new split's sample ids and labels given block by block (:class:`SampleBlocks`), and the
checks each block passes on its way into the split's samples table."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from cld_lake.errors import BadInputError
from cld_lake.lake._groups import GroupEncoder, NameCollector, dictionary, is_named
from cld_lake.lake._validate import as_labels, type_name
from cld_lake.lake._write_checks import check_metadata_column

if TYPE_CHECKING:
    import pyarrow as pa
    from numpy.typing import ArrayLike

SampleBlock: TypeAlias = (
    "tuple[ArrayLike, ArrayLike] | tuple[ArrayLike, ArrayLike, Mapping[str, ArrayLike]]"
)


class SampleBlocks:
    """A new split's sample ids and labels (and metadata columns), given block by block.

    Pass it as ``new_samples`` to :meth:`SplitWriter.append_columns` or
    :meth:`SplitWriter.commit_row_blocks`, or to :meth:`SplitWriter.declare_samples`, in place
    of whole arrays: the writer then streams the split's ``samples.parquet`` and
    ``classes.parquet`` from the blocks, so creating a split holds one block of ids and labels
    in memory, whatever the number of samples.

    Parameters
    ----------
    blocks : callable
        ``blocks()`` returns an iterable over the split's rows in order: tuples
        ``(sample_ids, labels)`` or ``(sample_ids, labels, metadata)``, with 1-D integer arrays
        of one length (any length, block to block) and ``metadata`` a mapping of column name
        to values (the same names in every block). The writer calls ``blocks()`` twice (the
        samples table's checksum precedes its rows in the file): both calls must yield the
        same values. Labels may be group names (string arrays) instead of class indices:
        then the writer calls ``blocks()`` once more, first, to gather the names (unless
        ``group_names`` gives them).
    num_rows : int
        The number of samples: the blocks together hold exactly this many rows.
    group_names : collection of str, optional
        When the labels are group names and their distinct names are known: those names (a
        name in a block but not here is refused).

    Notes
    -----
    Sample ids must increase strictly, within a block and from one block to the next: that
    makes them unique without holding them all (``0..N-1`` does). Labels are class indices
    ``0..C-1``. A block that breaks a rule raises :class:`~cld_lake.errors.BadInputError` and
    the writer commits nothing.

    Examples
    --------
    >>> import numpy as np
    >>> def blocks():
    ...     for a in range(0, 1000, 256):
    ...         ids = np.arange(a, min(a + 256, 1000))
    ...         yield ids, ids % 10
    >>> samples = SampleBlocks(blocks, num_rows=1000)
    >>> with SplitWriter(lake, "train", channels={"loss": "float32"}) as writer:  # doctest: +SKIP
    ...     writer.declare_samples(samples)
    """

    def __init__(
        self,
        blocks: Callable[[], Iterable[SampleBlock]],
        num_rows: int,
        *,
        group_names: Collection[str] | None = None,
    ) -> None:
        if not callable(blocks):
            raise BadInputError(
                f"blocks: got {type(blocks).__name__}; give a function that returns the "
                "(sample_ids, labels) blocks, so the writer can read them twice"
            )
        if not isinstance(num_rows, int | np.integer) or num_rows < 0:
            raise BadInputError(f"num_rows={num_rows!r}: expected the number of samples (>= 0)")
        self.blocks = blocks
        self.num_rows = int(num_rows)
        self.group_names = None if group_names is None else frozenset(group_names)

    def __repr__(self) -> str:
        return f"SampleBlocks({self.blocks!r}, num_rows={self.num_rows})"


def block_group_names(samples: SampleBlocks) -> frozenset[str] | None:
    """The distinct group names of ``samples`` (each checked), or None when its labels are
    class indices (its first block tells; a pass over every block only for names)."""
    if samples.group_names is not None:
        dictionary(np.array(sorted(samples.group_names), dtype=object), "group_names")
        return samples.group_names
    first = next(iter(samples.blocks()), None)
    if first is None or not is_named(_unpack(first, 0)[1]):
        return None
    collector = NameCollector("new_samples: the labels (group names)")
    for block in samples.blocks():
        labels = _unpack(block, collector.rows)[1]
        if not is_named(labels):
            raise BadInputError(
                f"{_at_row(collector.rows)}: labels of dtype {type_name(np.asarray(labels))} "
                "after blocks of group names; give every block's labels as names"
            )
        collector.add(labels)
    return frozenset(collector.names)


def encoded_blocks(samples: SampleBlocks, encoder: GroupEncoder) -> SampleBlocks:
    """``samples`` with each block's group names replaced by their ids in the lake."""

    def blocks() -> Iterator[tuple[Any, ...]]:
        start = 0
        for block in samples.blocks():
            ids, labels, metadata = _unpack(block, start)
            what = f"{_at_row(start)}: labels"
            yield ids, encoder.encode(labels, what, start), metadata
            start += len(np.asarray(ids))

    return SampleBlocks(blocks, samples.num_rows)


def checked_tables(samples: SampleBlocks, num_classes: int | None) -> Iterator[pa.Table]:
    """One pass over ``samples.blocks()``, each block checked and as a table of the split's
    samples (``sample_id``, ``label`` as int64, then the metadata columns)."""
    import pyarrow as pa

    schema: pa.Schema | None = None
    last_id: int | None = None
    start = 0
    for block in samples.blocks():
        ids, labels, metadata = _checked_block(block, start, last_id, num_classes)
        start += len(ids)
        if start > samples.num_rows:
            break
        columns = {"sample_id": pa.array(ids), "label": pa.array(labels)}
        columns |= _metadata_columns(metadata, len(ids), schema, _at_row(start - len(ids)))
        table = pa.table(columns, schema=schema)
        schema = table.schema
        last_id = int(ids[-1]) if len(ids) else last_id
        yield table
    if start != samples.num_rows:
        raise BadInputError(
            f"new_samples: the blocks hold {start if start <= samples.num_rows else 'more'} "
            f"rows, num_rows says {samples.num_rows}; give num_rows the number of samples"
        )


def _checked_block(
    block: Any, start: int, last_id: int | None, num_classes: int | None
) -> tuple[np.ndarray, np.ndarray, Mapping[str, Any]]:
    """The int64 ids and labels of the block at row ``start`` (ids above ``last_id``)."""
    ids, labels, metadata = _unpack(block, start)
    what = _at_row(start)
    ids = _block_ids(ids, what)
    labels = np.asarray(labels)
    if labels.shape != ids.shape:
        raise BadInputError(
            f"{what}: {ids.shape[0]} sample ids and labels of shape {labels.shape}; "
            "give one label per sample id"
        )
    labels = as_labels(labels, "labels", num_classes)
    if len(ids) and ((last_id is not None and ids[0] <= last_id) or (ids[1:] <= ids[:-1]).any()):
        raise BadInputError(
            f"{what}: sample ids must increase strictly from row to row (from one block to "
            "the next too); give the split's samples sorted by id"
        )
    return ids, labels, metadata


def _block_ids(values: Any, what: str) -> np.ndarray:
    """The block's sample ids as int64: 1-D integers below 2**63, the importers' rules (unique
    because they increase, so without the sort :func:`as_ids` makes)."""
    ids = np.asarray(values)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise BadInputError(
            f"{what}: sample ids of shape {ids.shape} and dtype {type_name(ids)}; give a 1-D "
            "array of integers"
        )
    if ids.dtype.kind == "u" and ids.size and int(ids.max()) > np.iinfo(np.int64).max:
        raise BadInputError(f"{what}: sample id {int(ids.max())} does not fit in int64")
    return ids.astype(np.int64, copy=False)


def _at_row(start: int) -> str:
    return f"new_samples: the block at row {start}"


def _unpack(block: Any, start: int) -> tuple[Any, Any, Mapping[str, Any]]:
    if not isinstance(block, tuple | list) or len(block) not in (2, 3):
        raise BadInputError(
            f"{_at_row(start)} is {type(block).__name__}; blocks are "
            "(sample_ids, labels) or (sample_ids, labels, metadata) tuples"
        )
    metadata = block[2] if len(block) == 3 else {}
    if not isinstance(metadata, Mapping):
        raise BadInputError(
            f"{_at_row(start)} has metadata of type "
            f"{type(metadata).__name__}; give a mapping of column name to values"
        )
    return block[0], block[1], metadata


def _metadata_columns(
    metadata: Mapping[str, Any], rows: int, schema: pa.Schema | None, what: str
) -> dict[str, Any]:
    """The block's metadata as Arrow arrays, typed as the first block's columns."""
    import pyarrow as pa

    expected = [] if schema is None else schema.names[2:]
    if schema is not None and sorted(metadata) != sorted(expected):
        raise BadInputError(
            f"{what}: metadata columns {sorted(metadata)}; the first block has {sorted(expected)}"
        )
    out = {}
    for name in expected or metadata:
        values = np.asarray(metadata[name])
        check_metadata_column(name, values, rows)
        typ = None if schema is None else schema.field(name).type
        out[name] = pa.array(values, type=typ)
    return out
