"""The trajectory lake: round trips, the checkpoint writer, compaction, the block iterator."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cld_lake.errors import BadInputError, CheckpointExistsError, SplitNotFoundError
from cld_lake.lake import Lake, open_lake
from cld_lake.lake.check import lake_info, verify_lake
from cld_lake.lake.importer import import_long_parquet, import_npy
from cld_lake.lake.writer import SplitWriter
from tests.conftest import make_arrays


def read_all(split, channel="loss", **kw):
    blocks = list(split.blocks(channels=[channel], **kw))
    ids = np.concatenate([b.sample_ids for b in blocks]) if blocks else np.zeros(0, np.int64)
    vals = np.concatenate([b.values[channel] for b in blocks]) if blocks else None
    return ids, vals, blocks


def test_npy_round_trip_is_exact_with_shuffled_ids_and_nans(tmp_path, npy_files):
    a = npy_files["arrays"]
    lake_path = tmp_path / "lake"
    res = import_npy(
        lake_path,
        "train",
        npy_files["loss"],
        npy_files["labels"],
        sample_ids=npy_files["ids"],
        row_chunk=64,
    )
    assert res.nonfinite == 3
    split = open_lake(lake_path).split("train")
    assert split.num_samples == 300 and split.checkpoint_ids.tolist() == list(range(7))
    for block_rows in (1, 37, 64, 1000):
        ids, vals, blocks = read_all(split, block_rows=block_rows)
        np.testing.assert_array_equal(ids, a["ids"])
        np.testing.assert_array_equal(vals, a["loss"])  # bit-exact, NaNs in place
        np.testing.assert_array_equal(np.concatenate([b.labels for b in blocks]), a["labels"])
    assert lake_info(open_lake(lake_path))["splits"]["train"]["nonfinite_losses"] == 3


def test_all_channels_and_float16(tmp_path):
    loss, labels, _ = make_arrays(50, 5, 3)
    correct = np.random.default_rng(0).random((50, 5)) > 0.5
    margin = np.random.default_rng(1).normal(size=(50, 5)).astype(np.float16)
    for name, arr in dict(loss=loss, labels=labels, correct=correct, margin=margin).items():
        np.save(tmp_path / f"{name}.npy", arr)
    import_npy(
        tmp_path / "lake",
        "train",
        tmp_path / "loss.npy",
        tmp_path / "labels.npy",
        correct=tmp_path / "correct.npy",
        margin=tmp_path / "margin.npy",
        dtypes={"loss": "float16"},
    )
    split = open_lake(tmp_path / "lake").split("train")
    assert split.channels == {"loss": "float16", "correct": "bool", "margin": "float16"}
    block = next(split.blocks(channels=["loss", "correct", "margin"]))
    np.testing.assert_array_equal(block.values["loss"], loss.astype(np.float16))
    np.testing.assert_array_equal(block.values["correct"], correct)
    np.testing.assert_array_equal(block.values["margin"], margin)


def test_long_parquet_round_trip_any_row_order(tmp_path):
    loss, labels, ids = make_arrays(120, 6, 5, seed=3, nan_rows=2)
    n, t = loss.shape
    ck = np.array([0, 2, 4, 6, 8, 10])
    long = pa.table(
        {
            "sample_id": np.repeat(ids, t),
            "checkpoint": np.tile(ck, n),
            "loss": loss.reshape(-1),
        }
    )
    perm = np.random.default_rng(0).permutation(long.num_rows)
    pq.write_table(long.take(perm), tmp_path / "long.parquet", row_group_size=100)
    pq.write_table(pa.table({"sample_id": ids, "label": labels}), tmp_path / "labels.parquet")
    import_long_parquet(
        tmp_path / "lake",
        "train",
        tmp_path / "long.parquet",
        tmp_path / "labels.parquet",
        row_chunk=16,
    )
    split = open_lake(tmp_path / "lake").split("train")
    assert split.checkpoint_ids.tolist() == ck.tolist()
    got_ids, vals, _ = read_all(split)
    order = np.argsort(ids)
    np.testing.assert_array_equal(got_ids, ids[order])  # default ids: distinct, ascending
    np.testing.assert_array_equal(vals, loss[order])
    np.testing.assert_array_equal(split.labels, labels[order])


def test_import_more_checkpoints_into_existing_split_in_another_row_order(tmp_path, npy_files):
    a = npy_files["arrays"]
    lake = tmp_path / "lake"
    import_npy(
        lake,
        "train",
        npy_files["loss"],
        npy_files["labels"],
        sample_ids=npy_files["ids"],
        row_chunk=32,
    )
    perm = np.random.default_rng(5).permutation(300)
    more = np.random.default_rng(6).random((300, 3)).astype(np.float32)
    for name, arr in {
        "m": more[perm],
        "ml": a["labels"][perm],
        "mi": a["ids"][perm],
        "mc": np.array([10, 11, 12]),
    }.items():
        np.save(tmp_path / f"{name}.npy", arr)
    import_npy(
        lake,
        "train",
        tmp_path / "m.npy",
        tmp_path / "ml.npy",
        sample_ids=tmp_path / "mi.npy",
        checkpoint_ids=tmp_path / "mc.npy",
    )
    split = open_lake(lake).split("train")
    assert split.checkpoint_ids.tolist() == [0, 1, 2, 3, 4, 5, 6, 10, 11, 12]
    _, vals, _ = read_all(split, block_rows=50)
    np.testing.assert_array_equal(vals[:, :7], a["loss"])
    np.testing.assert_array_equal(vals[:, 7:], more)
    _, window, _ = read_all(split, checkpoints="5:8")
    np.testing.assert_array_equal(window, np.concatenate([a["loss"][:, 5:], more[:, :1]], axis=1))
    with pytest.raises(CheckpointExistsError):
        with SplitWriter(open_lake(lake), "train") as w:
            w.checkpoint(10)


def test_checkpoint_writer_batches_in_any_order_and_commit_visibility(tmp_path):
    loss, labels, ids = make_arrays(200, 4, 3, seed=7)
    lake = Lake.create(tmp_path / "lake")
    rng = np.random.default_rng(0)
    with SplitWriter(lake, "train", row_chunk=16) as w:
        for t in range(4):
            ck = w.checkpoint(t, epoch=t)
            for part in np.array_split(rng.permutation(200), 7):
                ck.add(ids[part], loss[part, t], labels=labels[part])
            if t == 3:  # not committed yet: invisible to readers
                assert open_lake(lake.path).split("train").num_checkpoints == 3
            ck.commit()
    split = open_lake(lake.path).split("train")
    order = np.argsort(ids)  # a recorded split stores samples by ascending id
    np.testing.assert_array_equal(split.sample_ids, ids[order])
    _, vals, _ = read_all(split, block_rows=23)
    np.testing.assert_array_equal(vals, loss[order])
    assert split.checkpoint_table.column("epoch").to_pylist() == [0, 1, 2, 3]


def test_checkpoint_writer_rejects_incomplete_unknown_duplicate_and_relabelled(tmp_path):
    loss, labels, ids = make_arrays(30, 2, 3)
    lake = Lake.create(tmp_path / "lake")
    with SplitWriter(lake, "train") as w:
        ck = w.checkpoint(0)
        ck.add(ids, loss[:, 0], labels=labels)
        ck.commit()
        ck = w.checkpoint(1)
        with pytest.raises(BadInputError, match="not in split"):
            ck.add([999999], [1.0])
        with pytest.raises(BadInputError, match="differs from its stored label"):
            ck.add(ids[:1], loss[:1, 1], labels=(labels[:1] + 1) % 3)
        ck.add(ids[:10], loss[:10, 1])
        with pytest.raises(BadInputError, match="given twice"):
            ck.add(ids[:1], loss[:1, 1])
        with pytest.raises(BadInputError, match="no values for 20"):
            ck.commit()
        ck.add(ids[10:], loss[10:, 1])
        ck.commit()
        with pytest.raises(CheckpointExistsError):
            w.checkpoint(1)
    assert open_lake(lake.path).split("train").num_checkpoints == 2


def test_duplicates_first_keeps_one_value_per_sample(tmp_path):
    lake = Lake.create(tmp_path / "lake")
    ids = np.arange(10)
    with SplitWriter(lake, "train") as w:
        ck = w.checkpoint(0, duplicates="first")
        ck.add(ids, np.arange(10.0), labels=ids % 2)
        ck.add(ids[:3], np.arange(3.0), labels=ids[:3] % 2)  # DistributedSampler padding
        ck.commit()
    _, vals, _ = read_all(open_lake(lake.path).split("train"))
    np.testing.assert_array_equal(vals[:, 0], np.arange(10.0))


def test_tiered_compaction_keeps_values_and_bounds_segments(tmp_path):
    rng = np.random.default_rng(0)
    n, t = 70, 20
    loss = rng.random((n, t)).astype(np.float32)
    lake = Lake.create(tmp_path / "lake")
    with SplitWriter(lake, "train", row_chunk=16) as w:
        for c in range(t):
            ck = w.checkpoint(c)
            ck.add(np.arange(n), loss[:, c], labels=np.arange(n) % 4)
            ck.commit()
        split = w.split
        assert len(split.segment_names()) == 2 + 4  # 8 + 8 merged, 4 single
        _, vals, _ = read_all(split, block_rows=9)
        np.testing.assert_array_equal(vals, loss)
        assert w.compact(full=True) == 1
        assert len(w.split.segment_names()) == 1
        w.gc(grace_seconds=0)
    split = open_lake(lake.path).split("train")
    _, vals, _ = read_all(split, block_rows=16)
    np.testing.assert_array_equal(vals, loss)
    segdir = split.path / "segments"
    assert sorted(p.name for p in segdir.iterdir()) == split.segment_names()
    assert verify_lake(open_lake(lake.path)).ok


def test_declare_samples_and_annotate(tmp_path):
    lake = Lake.create(tmp_path / "lake", num_classes=3)
    ids = np.arange(5) * 10
    with SplitWriter(lake, "train") as w:
        w.declare_samples(
            ids,
            np.array([0, 1, 2, 0, 1]),
            metadata={"noisy": np.array([True, False, False, True, False])},
        )
        w.annotate_samples({"clean_label": np.array([1, 1, 2, 2, 1])})
        ck = w.checkpoint(0)
        ck.add(ids[::-1], np.arange(5.0))
        ck.commit()
    split = open_lake(lake.path).split("train")
    assert split.samples_table.column_names == ["sample_id", "label", "noisy", "clean_label"]
    _, vals, _ = read_all(split)
    np.testing.assert_array_equal(vals[:, 0], np.arange(5.0)[::-1])


def test_missing_split_and_bad_window(tmp_path, npy_files):
    import_npy(tmp_path / "lake", "train", npy_files["loss"], npy_files["labels"])
    lake = open_lake(tmp_path / "lake")
    with pytest.raises(SplitNotFoundError, match="no split 'val'"):
        lake.split("val")
    with pytest.raises(BadInputError, match="START:STOP"):
        lake.split("train").select_checkpoints("a:b")
    assert lake.split("train").select_checkpoints("::2").tolist() == [0, 2, 4, 6]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(1, 60),
    t=st.integers(1, 9),
    row_chunk=st.sampled_from([1, 4, 16, 1024]),
    block_rows=st.integers(1, 70),
    data=st.data(),
)
def test_round_trip_property(tmp_path_factory, n, t, row_chunk, block_rows, data):
    tmp = tmp_path_factory.mktemp("prop")
    values = data.draw(
        st.lists(
            st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=n * t, max_size=n * t
        )
    )
    loss = np.array(values, dtype=np.float32).reshape(n, t)
    labels = np.array(data.draw(st.lists(st.integers(0, 4), min_size=n, max_size=n)))
    ids = np.array(
        data.draw(st.lists(st.integers(-(10**6), 10**6), min_size=n, max_size=n, unique=True))
    )
    for name, arr in dict(loss=loss, labels=labels, ids=ids).items():
        np.save(tmp / f"{name}.npy", arr)
    import_npy(
        tmp / "lake",
        "train",
        tmp / "loss.npy",
        tmp / "labels.npy",
        sample_ids=tmp / "ids.npy",
        row_chunk=row_chunk,
    )
    split = open_lake(tmp / "lake").split("train")
    got_ids, vals, _ = read_all(split, block_rows=block_rows)
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(vals, loss)
    assert split.nonfinite_losses() == int((~np.isfinite(loss)).sum())


def test_directly_written_chunks_are_plain_zarr_arrays(tmp_path):
    """The writer bypasses Zarr's codec pipeline for its own layout: Zarr must read the result."""
    import zarr

    rng = np.random.default_rng(3)
    n = 100  # not a multiple of the chunk rows: the edge chunk is padded like Zarr does
    loss = rng.random((n, 3)).astype(np.float32)
    correct = rng.random((n, 3)) > 0.5
    lake = Lake.create(tmp_path / "lake")
    with SplitWriter(
        lake, "train", row_chunk=32, channels={"loss": "float32", "correct": "bool"}
    ) as w:
        for t in range(3):
            ck = w.checkpoint(t)
            ck.add(np.arange(n), loss[:, t], labels=np.arange(n) % 2, correct=correct[:, t])
            ck.commit()
        w.compact()
    split = open_lake(lake.path).split("train")
    (segment,) = split.segment_names()
    group = zarr.open_group(str(split.path / "segments" / segment), mode="r")
    np.testing.assert_array_equal(group["loss"][:], loss)
    np.testing.assert_array_equal(group["correct"][:], correct)
    _, vals, _ = read_all(split, block_rows=13)
    np.testing.assert_array_equal(vals, loss)


@pytest.mark.parametrize("where", ["local", "memory"])
@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_blocks_read_ahead_at_any_depth_yield_every_row_in_order(
    tmp_path, monkeypatch, where, depth
):
    import uuid

    from cld_lake.storage import FsspecStore, LocalStore

    loss, labels, ids = make_arrays(1000, 6, 3, seed=5)
    np.save(tmp_path / "loss.npy", loss)
    np.save(tmp_path / "labels.npy", labels)
    np.save(tmp_path / "ids.npy", ids)
    lake = tmp_path / "lake" if where == "local" else f"memory://{uuid.uuid4().hex[:8]}/lake"
    import_npy(lake, "train", tmp_path / "loss.npy", tmp_path / "labels.npy",
               sample_ids=tmp_path / "ids.npy", row_chunk=256)  # fmt: skip
    monkeypatch.setattr(LocalStore, "parallel_reads", depth)  # the read-ahead depth
    monkeypatch.setattr(FsspecStore, "parallel_reads", depth)
    split = open_lake(lake).split("train")
    for block_rows in (100, 256, 999, 1000, 5000):  # 10, 4, 2, 1 and 1 blocks
        blocks = list(split.blocks(block_rows=block_rows))
        assert [b.start for b in blocks] == list(range(0, 1000, block_rows))
        np.testing.assert_array_equal(np.concatenate([b.loss for b in blocks]), loss)
        np.testing.assert_array_equal(np.concatenate([b.sample_ids for b in blocks]), ids)
