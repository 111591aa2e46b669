"""Null positions are part of every checksum (issue 23, item 3).

A checksum that ignored where the nulls are would take ``[1.5, null, 2.0]`` for
``[1.5, 0.0, 2.0]``: the canonical bytes of a null are zeroed, so only the null positions
tell the two apart. For every checksummed table that can hold nulls (the scores table above
all, the commit record's columns, the samples table's metadata columns, manifests), a file in
which a null is swapped for a zero (and a zero for a null) while its recorded checksums are
kept must be refused.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import cld_lake
from cld_lake._meta import read_meta, with_checksum
from cld_lake.errors import CldLakeError, CorruptFileError, CorruptLakeError
from cld_lake.lake import _format as fmt
from cld_lake.lake import open_lake
from cld_lake.lake.check import scan_samples, verify_lake
from cld_lake.lake.scores import CHECKSUMS_KEY, read_scores, store_score
from cld_lake.lake.store import sample_groups
from cld_lake.manifest import load_manifest, manifest_table, write_manifest
from tests.conftest import import_arrays, make_arrays, scores_file

N = 40
NULL_ROW, ZERO_ROW = 3, 5


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A lake whose checksummed tables each hold a null (row 3) and a zero (row 5) in a
    nullable column: score ``s``; the commit record's ``epoch``; the samples' ``weight``
    (float) and ``flag`` (bool) metadata columns; each re-checksummed, so the lake verifies."""
    d = tmp_path_factory.mktemp("nulls")
    loss, labels, ids = make_arrays(N, 5, 3, seed=2)
    vloss, vlabels, _ = make_arrays(12, 5, 3, seed=3)
    lake = d / "lake"
    import_arrays(d, lake, loss=loss, labels=labels, sample_ids=ids)
    import_arrays(d, lake, split="val", loss=vloss, labels=vlabels)
    values = np.linspace(1.0, 2.0, N)
    values[NULL_ROW], values[ZERO_ROW] = np.nan, 0.0
    opened = open_lake(lake)
    store_score(opened, opened.split("train"), "s", values, {"method": "x"})
    train = lake / "splits" / "train"
    record = pq.ParquetFile(train / fmt.CHECKPOINTS_FILE).read()
    epochs = [None if i == 0 else i - 1 for i in range(record.num_rows)]  # null, then 0
    record = record.set_column(1, "epoch", pa.array(epochs, pa.int64()))
    pq.write_table(with_checksum(record, read_meta(record.schema)), train / fmt.CHECKPOINTS_FILE)
    samples = pq.ParquetFile(train / fmt.SAMPLES_FILE).read()
    weight = np.linspace(0.5, 1.0, N)
    weight[ZERO_ROW] = 0.0
    null = np.arange(N) == NULL_ROW
    samples = samples.append_column("weight", pa.array(weight, mask=null))
    samples = samples.append_column("flag", pa.array(np.arange(N) % 2 == 1, mask=null))
    _write_samples(train / fmt.SAMPLES_FILE, with_checksum(samples, read_meta(samples.schema)))
    assert verify_lake(open_lake(lake)).ok, verify_lake(open_lake(lake)).errors
    return lake


def _write_samples(path: Path, table: pa.Table) -> None:
    """The samples table in the row groups its commit record lists."""
    meta = read_meta(pq.ParquetFile(path.parent / fmt.CHECKPOINTS_FILE).read().schema)
    sizes = [rows for rows, _ in sample_groups(meta)]
    with pq.ParquetWriter(path, table.schema) as writer:
        start = 0
        for rows in sizes:
            writer.write_table(table.slice(start, rows))
            start += rows


def _swapped(column: pa.ChunkedArray, which: str) -> pa.Array:
    """``column`` with its null made a zero (``null_to_zero``) or its zero made a null."""
    values = column.combine_chunks()
    zero = pa.scalar(False if pa.types.is_boolean(values.type) else 0, values.type)
    items = values.to_pylist()
    if which == "null_to_zero":
        row = items.index(None)
        items[row] = zero.as_py()
    else:
        row = ZERO_ROW if not pa.types.is_boolean(values.type) else 0
        assert items[row] == zero.as_py()
        items[row] = None
    return pa.array(items, values.type)


def _copy(pristine: Path, tmp_path: Path) -> Path:
    lake = tmp_path / "lake"
    shutil.copytree(pristine, lake)
    return lake


SWAPS = ["null_to_zero", "zero_to_null"]


@pytest.mark.parametrize("which", SWAPS)
def test_the_scores_table(pristine, tmp_path, which):
    lake = _copy(pristine, tmp_path)
    path = scores_file(lake)
    pf = pq.ParquetFile(path)
    table = pf.read()
    footer = pf.metadata.metadata[CHECKSUMS_KEY]
    at = table.schema.get_field_index("s")
    tampered = table.set_column(at, "s", _swapped(table.column("s"), which))
    assert tampered.column("s").null_count == table.column("s").null_count + (
        -1 if which == "null_to_zero" else 1
    )
    with pq.ParquetWriter(path, tampered.schema) as writer:  # its recorded checksums kept
        writer.write_table(tampered)
        writer.add_key_value_metadata({CHECKSUMS_KEY: footer})
    with pytest.raises(CorruptLakeError, match=r"fails its checksum \(column 's'\)"):
        read_scores(open_lake(lake), ["s"])
    report = verify_lake(open_lake(lake))
    assert not report.ok and "fails its checksum" in report.errors[0]
    with pytest.raises(CldLakeError, match="fails its checksum"):
        cld_lake.select(lake, "s", fraction=0.5)


@pytest.mark.parametrize("which", SWAPS)
def test_the_commit_record(pristine, tmp_path, which):
    lake = _copy(pristine, tmp_path)
    path = lake / "splits" / "train" / fmt.CHECKPOINTS_FILE
    table = pq.ParquetFile(path).read()
    if which == "zero_to_null":  # the record's zero epoch is in its second row
        items = table.column("epoch").to_pylist()
        assert items[1] == 0
        items[1] = None
        epoch = pa.array(items, pa.int64())
    else:
        epoch = _swapped(table.column("epoch"), which)
    pq.write_table(table.set_column(1, "epoch", epoch), path)  # the old cld_lake JSON kept
    with pytest.raises(CorruptLakeError, match="checkpoints.parquet fails its checksum"):
        open_lake(lake).split("train")
    assert not verify_lake(open_lake(lake)).ok


@pytest.mark.parametrize("column", ["weight", "flag"])
@pytest.mark.parametrize("which", SWAPS)
def test_the_samples_tables_metadata_columns(pristine, tmp_path, which, column):
    lake = _copy(pristine, tmp_path)
    path = lake / "splits" / "train" / fmt.SAMPLES_FILE
    table = pq.ParquetFile(path).read()
    at = table.schema.get_field_index(column)
    _write_samples(path, table.set_column(at, column, _swapped(table.column(column), which)))
    split = open_lake(lake).split("train")
    with pytest.raises(CorruptLakeError, match="samples.parquet fails its checksum"):
        scan_samples(split)
    with pytest.raises(CorruptLakeError, match="samples.parquet fails its checksum"):
        _ = open_lake(lake).split("train").samples_table
    assert not verify_lake(open_lake(lake)).ok


@pytest.mark.parametrize("which", SWAPS)
def test_a_manifest(tmp_path, which):
    scores = np.linspace(0.1, 0.9, 10)
    scores[ZERO_ROW] = 0.0
    table = manifest_table(np.arange(10), np.zeros(10, np.int64), scores, np.arange(10))
    table = table.set_column(2, "score", pa.array(scores, mask=np.arange(10) == NULL_ROW))
    path = write_manifest(tmp_path / "m.parquet", table, {"score": "s"})
    assert np.isnan(load_manifest(path).scores[NULL_ROW])  # a null score stays undefined
    pf = pq.ParquetFile(path)
    stored = pf.read()
    at = stored.schema.get_field_index("score")
    tampered = stored.set_column(at, stored.schema.field("score"), _swapped(stored["score"], which))
    pq.write_table(tampered, path, write_page_checksum=True)  # its checksums kept
    with pytest.raises(CorruptFileError, match="checksum mismatch"):
        load_manifest(path)
