"""SampleBlocks: a new split created from blocks of ids and labels is the very split the
whole arrays create (same files, same commit record), at any block size; a block that breaks
a rule commits nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cld_lake.errors import BadInputError
from cld_lake.lake import Lake, SampleBlocks, SplitWriter, open_lake

N, CHUNK, CLASSES = 1000, 64, 7
CHANNELS = {"loss": "float32", "correct": "bool"}
RECORD_KEYS = ("num_samples", "ids_sha1", "samples", "classes", "channels", "row_chunk")


def split_of(n: int = N) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Sorted, non-consecutive ids, their labels and a string and a float metadata column."""
    ids = np.arange(n, dtype=np.int64) * 3 + 5
    labels = (ids * 7) % CLASSES
    metadata = {"path": np.array([f"img/{i}.png" for i in ids]), "weight": ids / 10.0}
    return ids, labels, metadata


def blocks_of(ids, labels, metadata, block):
    def blocks():
        for a in range(0, len(ids), block):
            part = {k: v[a : a + block] for k, v in metadata.items()}
            yield ids[a : a + block], labels[a : a + block], part

    return SampleBlocks(blocks, num_rows=len(ids))


def values(n: int = N, width: int = 3) -> dict[str, np.ndarray]:
    loss = np.linspace(0, 1, n * width, dtype=np.float32).reshape(n, width)
    return {"loss": loss, "correct": loss > 0.5}


def appended(path: Path, new_samples) -> Lake:
    """A lake whose split ``train`` append_columns created with ``new_samples``."""
    lake = Lake.create(path, num_classes=CLASSES)
    v = values()
    with SplitWriter(lake, "train", channels=CHANNELS, row_chunk=CHUNK) as w:
        w.append_columns(
            [0, 1, 2],
            lambda a, b: {c: x[a:b] for c, x in v.items()},
            num_rows=N,
            channels=CHANNELS,
            new_samples=new_samples,
        )
    return lake.reload()


def declared(path: Path, *samples) -> Lake:
    """A lake whose split ``train`` declare_samples(*samples) created."""
    lake = Lake.create(path, num_classes=CLASSES)
    with SplitWriter(lake, "train", channels=CHANNELS, row_chunk=CHUNK) as w:
        w.declare_samples(*samples)
    return lake.reload()


def assert_same_split(got: Lake, want: Lake) -> None:
    a, b = got.split("train"), want.split("train")
    for table in ("samples.parquet", "classes.parquet"):
        assert (a.path / table).read_bytes() == (b.path / table).read_bytes(), table
    for key in RECORD_KEYS:
        assert a.meta[key] == b.meta[key], key
    for x, y in zip(a.blocks(), b.blocks(), strict=True):
        assert np.array_equal(x.sample_ids, y.sample_ids)
        assert np.array_equal(x.labels, y.labels)
        assert np.array_equal(x.loss, y.loss)


@pytest.mark.parametrize("block", [1, 37, CHUNK, 3 * CHUNK, N + 100])
def test_blocks_write_the_split_the_whole_arrays_write(tmp_path: Path, block: int) -> None:
    ids, labels, _ = split_of()
    want = appended(tmp_path / "arrays.lake", (ids, labels))
    got = appended(tmp_path / "blocks.lake", blocks_of(ids, labels, {}, block))
    assert_same_split(got, want)


@pytest.mark.parametrize("block", [1, 37, N + 100])
def test_metadata_columns_in_blocks_equal_whole_columns(tmp_path: Path, block: int) -> None:
    ids, labels, metadata = split_of()
    want = declared(tmp_path / "arrays.lake", ids, labels, metadata)
    got = declared(tmp_path / "blocks.lake", blocks_of(ids, labels, metadata, block))
    assert_same_split(got, want)
    table = got.split("train").samples_table
    assert table.column("path").to_pylist()[:2] == ["img/5.png", "img/8.png"]


def test_a_new_split_from_row_blocks_and_sample_blocks(tmp_path: Path) -> None:
    ids, labels, _ = split_of()
    lake = Lake.create(tmp_path / "lake", num_classes=CLASSES)
    loss = np.arange(N, dtype=np.float32)
    with SplitWriter(lake, "val", channels={"loss": "float32"}, row_chunk=CHUNK) as w:
        blocks = ((a, {"loss": loss[a : a + 2 * CHUNK]}) for a in range(0, N, 2 * CHUNK))
        w.commit_row_blocks(4, blocks, new_samples=blocks_of(ids, labels, {}, 100))
    split = open_lake(lake.path).split("val")
    assert np.array_equal(split.sample_ids, ids) and np.array_equal(split.labels, labels)
    assert split.checkpoint_ids.tolist() == [4]
    assert np.array_equal(np.concatenate([b.loss[:, 0] for b in split.blocks()]), loss)


def test_the_class_count_of_a_new_lake_comes_from_the_blocks(tmp_path: Path) -> None:
    ids, labels, _ = split_of()
    lake = Lake.create(tmp_path / "lake")
    with SplitWriter(lake, "train", channels=CHANNELS, row_chunk=CHUNK) as w:
        w.declare_samples(blocks_of(ids, labels, {}, 300))
    assert open_lake(lake.path).num_classes == int(labels.max()) + 1


def _refused(tmp_path: Path, samples: SampleBlocks, match: str) -> None:
    lake = Lake.create(tmp_path / "lake", num_classes=CLASSES)
    with SplitWriter(lake, "train", channels=CHANNELS, row_chunk=CHUNK) as w:
        with pytest.raises(BadInputError, match=match):
            w.declare_samples(samples)
        assert w.split is None
    assert open_lake(lake.path).splits() == []
    left = sorted(p.name for p in (lake.path / "splits" / "train").iterdir())
    assert left == [".writer.lock"], left


def test_ids_out_of_order_across_blocks_commit_nothing(tmp_path: Path) -> None:
    ids, labels, _ = split_of()
    ids[500] = ids[100]  # a repeat in a later block
    _refused(tmp_path, blocks_of(ids, labels, {}, 100), "must increase strictly")


def test_a_label_beyond_the_classes_commits_nothing(tmp_path: Path) -> None:
    ids, labels, _ = split_of()
    labels[999] = CLASSES
    _refused(tmp_path, blocks_of(ids, labels, {}, 100), "outside the lake's 7 classes")


def test_blocks_that_miss_rows_commit_nothing(tmp_path: Path) -> None:
    ids, labels, _ = split_of()
    samples = blocks_of(ids, labels, {}, 100)
    short = SampleBlocks(samples.blocks, num_rows=N + 1)
    _refused(tmp_path, short, f"hold {N} rows, num_rows says {N + 1}")


def test_blocks_that_change_between_calls_commit_nothing(tmp_path: Path) -> None:
    ids, labels, _ = split_of()
    calls = []

    def blocks():
        calls.append(1)
        shift = len(calls) - 1  # the second call gives other labels
        yield ids, (labels + shift) % CLASSES

    _refused(tmp_path, SampleBlocks(blocks, num_rows=N), "other values on its second call")


def test_sample_blocks_need_a_function_and_a_row_count() -> None:
    with pytest.raises(BadInputError, match="give a function"):
        SampleBlocks([(np.arange(3), np.zeros(3))], num_rows=3)  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match="num_rows"):
        SampleBlocks(lambda: [], num_rows=-1)


@pytest.mark.parametrize("blocks", [[], [(np.zeros(0, np.int64), np.zeros(0, np.int64))]])
def test_no_samples_in_blocks_equal_empty_arrays(tmp_path: Path, blocks: list) -> None:
    empty = np.zeros(0, np.int64)
    want = declared(tmp_path / "arrays.lake", empty, empty)
    got = declared(tmp_path / "blocks.lake", SampleBlocks(lambda: iter(blocks), num_rows=0))
    assert_same_split(got, want)


@pytest.mark.parametrize(
    ("ids", "match"),
    [
        (np.arange(N, dtype=np.float64), "give a 1-D array of integers"),
        (np.arange(N).reshape(1, N), "give a 1-D array of integers"),
        (np.arange(N, dtype=np.uint64) + np.uint64(2**63), "does not fit in int64"),
    ],
)
def test_sample_ids_must_be_integers_that_fit_int64(tmp_path: Path, ids, match: str) -> None:
    labels = np.arange(N) % CLASSES
    _refused(tmp_path, SampleBlocks(lambda: [(ids, labels)], num_rows=N), match)
