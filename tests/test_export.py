"""Trajectory export to Parquet (wide, columns, long) and the wide import back."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cld_lake.errors import BadInputError
from cld_lake.export import export_trajectories
from cld_lake.lake import Lake
from cld_lake.lake.importer import import_npy, import_wide_parquet, is_wide_parquet
from cld_lake.sql import query as lake_query
from tests.conftest import lake_hash, make_arrays

N, T = 700, 5


@pytest.fixture
def lake_arrays(tmp_path):
    loss, labels, ids = make_arrays(N, T, 3, seed=41, nan_rows=2)
    correct = np.random.default_rng(42).random((N, T)) > 0.3
    for k, v in {"l": loss, "y": labels, "i": ids, "c": correct}.items():
        np.save(tmp_path / f"{k}.npy", v)
    import_npy(
        tmp_path / "lk",
        "train",
        tmp_path / "l.npy",
        tmp_path / "y.npy",
        sample_ids=tmp_path / "i.npy",
        correct=tmp_path / "c.npy",
        checkpoint_ids=None,
        row_chunk=128,
    )
    return Lake(tmp_path / "lk"), {"loss": loss, "labels": labels, "ids": ids, "correct": correct}


def _losses(lake_path) -> list:
    return repr(
        lake_query(
            Lake(lake_path),
            "SELECT sample_id, label, checkpoint, loss, correct FROM losses ORDER BY sample_id, checkpoint",
        ).rows()
    )


def test_wide_export_matches_the_arrays_in_row_groups(lake_arrays, tmp_path):
    lake, a = lake_arrays
    res = export_trajectories(lake, "train", tmp_path / "w.parquet", block_rows=100)
    pf = pq.ParquetFile(tmp_path / "w.parquet")
    assert pf.metadata.num_row_groups == res.row_groups == 7  # streamed: one row group per block
    t = pf.read()
    assert t.column_names == ["sample_id", "label", "loss", "correct"]
    kind = t.schema.field("loss").type
    assert (
        pa.types.is_fixed_size_list(kind)
        and kind.list_size == T
        and kind.value_type == pa.float32()
    )
    np.testing.assert_array_equal(t["sample_id"].to_numpy(), a["ids"])
    np.testing.assert_array_equal(np.stack(t["loss"].to_numpy(zero_copy_only=False)), a["loss"])
    np.testing.assert_array_equal(
        np.stack(t["correct"].to_numpy(zero_copy_only=False)), a["correct"]
    )
    meta = json.loads(t.schema.metadata[b"cld_lake"])
    assert (
        meta["checkpoints"] == list(range(T))
        and meta["split"] == "train"
        and meta["layout"] == "wide"
    )
    assert meta["lake"]["lake_id"] == lake.lake_id


def test_columns_and_long_exports(lake_arrays, tmp_path):
    lake, a = lake_arrays
    export_trajectories(
        lake,
        "train",
        tmp_path / "c.parquet",
        layout="columns",
        channels=["loss"],
        checkpoints="1:4",
    )
    t = pq.read_table(tmp_path / "c.parquet")
    assert t.column_names == ["sample_id", "label", "loss_1", "loss_2", "loss_3"]
    np.testing.assert_array_equal(t["loss_2"].to_numpy(), a["loss"][:, 2])
    export_trajectories(lake, "train", tmp_path / "l.parquet", layout="long")
    t = pq.read_table(tmp_path / "l.parquet")
    assert t.num_rows == N * T and t.column_names == [
        "sample_id",
        "label",
        "checkpoint",
        "loss",
        "correct",
    ]
    np.testing.assert_array_equal(t["loss"].to_numpy(), a["loss"].reshape(-1))
    np.testing.assert_array_equal(t["checkpoint"].to_numpy(), np.tile(np.arange(T), N))


@pytest.mark.parametrize("layout", ["wide", "columns", "long"])
def test_round_trip_through_cli_import(cli, lake_arrays, tmp_path, layout):
    lake, a = lake_arrays
    f = tmp_path / f"{layout}.parquet"
    assert cli("export", lake.path, "--out", f, "--layout", layout).code == 0
    labels = f
    if layout == "long":  # a long file has one row per checkpoint: labels come separately
        assert (
            cli(
                "sql",
                lake.path,
                "SELECT sample_id, label FROM samples",
                "--out",
                tmp_path / "y.parquet",
            ).code
            == 0
        )
        labels = tmp_path / "y.parquet"
    assert is_wide_parquet(f) == (layout != "long")
    r = cli("import", tmp_path / "back", "--split", "train", "--loss", f, "--labels", labels)
    assert r.code == 0, r.err
    assert _losses(tmp_path / "back") == _losses(lake.path)


def test_wide_import_into_existing_split_in_another_row_order(lake_arrays, tmp_path):
    lake, a = lake_arrays
    perm = np.random.default_rng(3).permutation(N)
    extra = np.random.default_rng(4).random((N, 2)).astype(np.float32)
    table = pa.table(
        {
            "sample_id": a["ids"][perm],
            "label": a["labels"][perm],
            "loss": pa.FixedSizeListArray.from_arrays(pa.array(extra[perm].reshape(-1)), 2),
            "correct": pa.FixedSizeListArray.from_arrays(pa.array(np.ones(2 * N, bool)), 2),
        }
    ).replace_schema_metadata({"cld_lake": json.dumps({"checkpoints": [10, 11]})})
    pq.write_table(table, tmp_path / "more.parquet", row_group_size=64)
    res = import_wide_parquet(lake.path, "train", tmp_path / "more.parquet")
    assert res.checkpoints == [10, 11]
    df = lake_query(
        Lake(lake.path),
        "SELECT loss FROM losses WHERE checkpoint >= 10 ORDER BY sample_id, checkpoint",
    )
    order = np.argsort(a["ids"])
    np.testing.assert_array_equal(df["loss"].to_numpy(), extra[order].reshape(-1))


def test_bad_wide_files_leave_the_lake_unchanged(cli, lake_arrays, tmp_path):
    lake, a = lake_arrays
    ragged = pa.table(
        {
            "sample_id": [1, 2],
            "label": [0, 1],
            "loss": pa.array([[0.1, 0.2], [0.3]], pa.list_(pa.float32())),
        }
    )
    pq.write_table(ragged, tmp_path / "ragged.parquet")
    nulls = pa.table(
        {"sample_id": [1, 2], "label": [0, 1], "loss_0": pa.array([0.1, None], pa.float32())}
    )
    pq.write_table(nulls, tmp_path / "nulls.parquet")
    dup = pa.table({"sample_id": [1, 1], "label": [0, 1], "loss_0": [0.1, 0.2]})
    pq.write_table(dup, tmp_path / "dup.parquet")
    before = lake_hash(lake.path)
    for name in ("ragged", "nulls", "dup"):
        f = tmp_path / f"{name}.parquet"
        r = cli("import", lake.path, "--split", "val", "--loss", f, "--labels", f)
        assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert lake_hash(lake.path) == before
    with pytest.raises(BadInputError, match="inside the lake"):
        export_trajectories(lake, "train", lake.path / "x.parquet")
    with pytest.raises(BadInputError, match="does not exist"):
        export_trajectories(lake, "train", tmp_path / "no" / "x.parquet")
    r = cli("export", lake.path, "--out", tmp_path / "x.parquet", "--channels", "margin")
    assert r.code == 2 and not (tmp_path / "x.parquet").exists()
    assert lake_hash(lake.path) == before


def test_float16_lake_exports_float32(tmp_path):
    loss, labels, _ = make_arrays(50, 4, 2, seed=5)
    np.save(tmp_path / "l.npy", loss.astype(np.float16))
    np.save(tmp_path / "y.npy", labels)
    import_npy(tmp_path / "lk", "train", tmp_path / "l.npy", tmp_path / "y.npy")
    export_trajectories(tmp_path / "lk", "train", tmp_path / "h.parquet")
    t = pq.read_table(tmp_path / "h.parquet")
    assert str(t.schema.field("loss").type.value_type) == "float"
    np.testing.assert_array_equal(
        np.stack(t["loss"].to_numpy(zero_copy_only=False)),
        loss.astype(np.float16).astype(np.float32),
    )


def test_export_out_existing_file_is_not_overwritten_without_force(cli, lake_arrays, tmp_path):
    """issue 9: the outputs of export refuse to replace an existing file unless --force."""
    lake, _ = lake_arrays
    out = tmp_path / "t.parquet"
    out.write_bytes(b"precious")
    r = cli("export", lake.path, "--out", out)
    assert r.code == 2 and "exists" in r.err and "--force" in r.err and len(r.err.splitlines()) == 1
    assert out.read_bytes() == b"precious"
    assert cli("export", lake.path, "--out", out, "--force").code == 0
    assert pq.ParquetFile(out).metadata.num_rows == lake.split("train").num_samples
