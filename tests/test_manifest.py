"""Manifests: schema, round trip, atomic writing, load errors, and the torch Subset."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import cld_lake
from cld_lake.errors import BadInputError, InputFileNotFoundError
from cld_lake.manifest import COLUMNS, manifest_table, seal, write_manifest
from tests.test_select import scored_lake  # noqa: F401  (fixture)


def test_round_trip_schema_order_and_metadata(scored_lake, tmp_path):  # noqa: F811
    lake, ids, labels, cld = scored_lake
    m = cld_lake.select(lake, "cld", fraction=0.2, balance="equal", out=tmp_path / "m.parquet")
    t = pq.read_table(tmp_path / "m.parquet")
    assert t.column_names == list(COLUMNS)
    assert [str(f.type) for f in t.schema] == ["int64", "int64", "double", "int64"]
    meta = json.loads(t.schema.metadata[b"cld_lake"])
    assert meta == m.metadata
    back = cld_lake.load_manifest(tmp_path / "m.parquet")
    assert back.table.equals(m.table)
    assert back.metadata == m.metadata and back.path == tmp_path / "m.parquet"
    assert back.sample_ids.dtype == np.int64
    np.testing.assert_array_equal(back.sample_ids, m.sample_ids)
    order = np.lexsort((back.ranks, back.labels))
    assert np.array_equal(order, np.arange(len(back)))  # sorted by label, then rank
    pos = {int(s): i for i, s in enumerate(ids)}
    assert all(
        labels[pos[int(s)]] == lab for s, lab in zip(back.sample_ids, back.labels, strict=True)
    )
    assert all(cld[pos[int(s)]] == sc for s, sc in zip(back.sample_ids, back.scores, strict=True))
    assert cld_lake.load_manifest(back) is back
    assert back.to_polars().height == len(back)


def test_interrupted_write_leaves_no_manifest(tmp_path, monkeypatch):
    table = manifest_table(np.arange(5), np.zeros(5, int), np.ones(5), np.arange(1, 6))
    out = tmp_path / "m.parquet"
    real = pq.write_table

    def dies_halfway(tbl, where, **kw):  # fault injection: the process "dies" mid-write
        real(tbl, where, **kw)
        with open(where, "r+b") as fh:
            fh.truncate(100)
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        write_manifest(out, table, {"score": "x"})
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(pq, "write_table", real)
    write_manifest(out, table, {"score": "x"})
    assert cld_lake.load_manifest(out).metadata == seal(table, {"score": "x"})
    assert seal(table, {"score": "x"}).keys() == {"score", "checksum"}


def test_load_errors(tmp_path):
    with pytest.raises(InputFileNotFoundError):
        cld_lake.load_manifest(tmp_path / "none.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(BadInputError, match="not a readable Parquet"):
        cld_lake.load_manifest(tmp_path / "bad.parquet")
    pq.write_table(pa.table({"sample_id": [1, 2]}), tmp_path / "cols.parquet")
    with pytest.raises(BadInputError, match="missing column"):
        cld_lake.load_manifest(tmp_path / "cols.parquet")
    pq.write_table(
        pa.table({"sample_id": [1, 1], "label": [0, 0], "score": [0.1, 0.2], "rank": [1, 2]}),
        tmp_path / "dup.parquet",
    )
    with pytest.raises(BadInputError, match="more than once"):
        cld_lake.load_manifest(tmp_path / "dup.parquet")
    pq.write_table(
        pa.table({"sample_id": ["a"], "label": [0], "score": [0.1], "rank": [1]}),
        tmp_path / "str.parquet",
    )
    with pytest.raises(BadInputError, match="sample_id"):
        cld_lake.load_manifest(tmp_path / "str.parquet")


def test_torch_subset_yields_exactly_the_selected_samples(scored_lake, tmp_path):  # noqa: F811
    torch = pytest.importorskip("torch")
    from torch.utils.data import Subset, TensorDataset

    import cld_lake.torch as ct

    lake, ids, labels, cld = scored_lake
    m = cld_lake.select(lake, "cld", fraction=0.15, out=tmp_path / "m.parquet")
    # a dataset in another order than the lake, yielding (input, label, sample_id)
    perm = np.random.default_rng(5).permutation(len(ids))
    ds = TensorDataset(
        torch.randn(len(ids), 3), torch.as_tensor(labels[perm]), torch.as_tensor(ids[perm])
    )
    sub = ct.subset(ds, tmp_path / "m.parquet", sample_ids=ids[perm])
    assert isinstance(sub, Subset)
    got = [(int(s), int(y)) for _, y, s in sub]
    assert got == list(zip(m.sample_ids.tolist(), m.labels.tolist(), strict=True))
    ds.sample_ids = ids[perm]  # the attribute is used when sample_ids= is not given
    assert [int(s) for _, _, s in ct.subset(ds, m)] == m.sample_ids.tolist()
    # default: sample id == position
    plain = TensorDataset(torch.arange(2000))
    sub2 = ct.subset(plain, m)
    assert [int(x) for (x,) in sub2] == m.sample_ids.tolist()
    with pytest.raises(BadInputError, match="not in the dataset"):
        ct.subset(ds, m, sample_ids=ids[perm] + 100000)
    with pytest.raises(BadInputError, match="not positions"):
        ct.subset(TensorDataset(torch.arange(10)), m)
