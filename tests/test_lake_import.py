"""`cld_lake.lake.import_file`: one entry point that tells .npy, long and wide Parquet apart."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cld_lake.errors import BadInputError
from cld_lake.lake import Lake, import_file, open_lake
from tests.conftest import lake_hash, make_arrays

N, T = 60, 4


@pytest.fixture
def arrays(tmp_path):
    loss, labels, ids = make_arrays(N, T, 3, seed=7)
    np.save(tmp_path / "loss.npy", loss)
    np.save(tmp_path / "labels.npy", labels)
    np.save(tmp_path / "ids.npy", ids)
    return loss, labels, ids


def _stored(lake_path):
    split = open_lake(lake_path).split("train")
    block = next(split.blocks(block_rows=N))
    order = np.argsort(block.sample_ids)
    return block.sample_ids[order], block.labels[order], block.loss[order], split.checkpoint_ids


def _long(tmp_path, loss, ids):
    table = pa.table(
        {
            "sample_id": np.repeat(ids, T),
            "checkpoint": np.tile(np.arange(T) + 10, N),
            "loss": loss.reshape(-1),
        }
    )
    pq.write_table(table, tmp_path / "long.parquet", row_group_size=50)
    return tmp_path / "long.parquet"


def _wide(tmp_path, loss, labels, ids):
    table = pa.table(
        {
            "sample_id": ids,
            "label": labels,
            **{f"loss_{k + 10}": loss[:, k] for k in range(T)},
        }
    )
    pq.write_table(table, tmp_path / "wide.parquet", row_group_size=16)
    return tmp_path / "wide.parquet"


def test_each_kind_of_file_lands_the_same_values(tmp_path, arrays):
    loss, labels, ids = arrays
    res = import_file(
        tmp_path / "npy",
        "train",
        loss=tmp_path / "loss.npy",
        labels=tmp_path / "labels.npy",
        sample_ids=tmp_path / "ids.npy",
    )
    assert res.checkpoints == list(range(T)) and res.num_samples == N
    long_file = _long(tmp_path, loss, ids)
    labels_file = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"sample_id": ids, "label": labels}), labels_file)
    import_file(tmp_path / "long", "train", loss=long_file, labels=labels_file)
    # a Lake object works as well as a path; a wide file carries its own labels
    wide_lake = Lake.create(tmp_path / "wide")
    import_file(wide_lake, "train", loss=_wide(tmp_path, loss, labels, ids), labels=None)
    want_ids, want_labels, want_loss, _ = _stored(tmp_path / "npy")
    for name in ("long", "wide"):
        got_ids, got_labels, got_loss, ckpts = _stored(tmp_path / name)
        np.testing.assert_array_equal(got_ids, want_ids)
        np.testing.assert_array_equal(got_labels, want_labels)
        np.testing.assert_array_equal(got_loss, want_loss)
        assert ckpts.tolist() == [10, 11, 12, 13]


def test_options_that_do_not_fit_the_file_are_refused_before_writing(tmp_path, arrays):
    loss, labels, ids = arrays
    lake = tmp_path / "lake"
    import_file(lake, "train", loss=tmp_path / "loss.npy", labels=tmp_path / "labels.npy")
    before = lake_hash(lake)
    wide = _wide(tmp_path, loss, labels, ids)
    for option in ("correct", "margin", "checkpoint_ids"):
        with pytest.raises(BadInputError, match=f"--{option.replace('_', '-')}: not used"):
            import_file(lake, "val", loss=wide, labels=None, **{option: tmp_path / "loss.npy"})
    with pytest.raises(BadInputError, match="--labels: a .npy --loss has no labels"):
        import_file(lake, "val", loss=tmp_path / "loss.npy", labels=None)
    with pytest.raises(BadInputError, match="--labels: a long .parquet --loss has no labels"):
        import_file(lake, "val", loss=_long(tmp_path, loss, ids), labels=None)
    assert lake_hash(lake) == before
