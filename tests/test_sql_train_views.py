"""The views make the right query the easy one (issue 22, trap 4).

``samples`` holds every split, and with default ids the validation ids collide with the
training ids, so joining ``scores`` with ``samples`` on ``sample_id`` counted validation rows
too. ``scores`` now carries the training samples' metadata (no join needed) and
``train_samples`` is the training split alone; ``samples`` and ``losses`` keep every split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import cld_lake
from cld_lake.lake import SplitWriter, open_lake
from tests.conftest import import_arrays, make_arrays, write_scores_table

N, V = 400, 120


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Path:
    """Train and val with default ids (0..N-1 and 0..V-1: they collide), ``noisy`` and
    ``clean_label`` metadata on both, CLD scored."""
    d = tmp_path_factory.mktemp("views")
    loss, labels, _ = make_arrays(N, 5, 4, seed=31)
    vloss, vlabels, _ = make_arrays(V, 5, 4, seed=32)
    import_arrays(d, d / "lake", "train", loss=loss, labels=labels)
    import_arrays(d, d / "lake", "val", loss=vloss, labels=vlabels)
    rng = np.random.default_rng(33)
    lk = open_lake(d / "lake")
    for split, n in (("train", N), ("val", V)):
        with SplitWriter(lk, split) as w:
            w.annotate_samples({"noisy": rng.random(n) < 0.3, "clean_label": rng.integers(0, 4, n)})
    cld_lake.score(d / "lake")
    return d / "lake"


def _train_noisy(lake: Path) -> np.ndarray:
    table = open_lake(lake).split("train").samples_table
    return np.asarray(table.column("noisy"), dtype=bool)


def test_the_readme_aggregate_counts_each_training_sample_once(lake):
    """Regression (22, trap 4): the README's join gave N + V rows for N scores."""
    got = cld_lake.query(lake, "SELECT noisy, avg(cld) AS m, count(*) AS n FROM scores GROUP BY 1")
    assert got["n"].sum() == N
    noisy = _train_noisy(lake)
    counts = dict(zip(got["noisy"].to_list(), got["n"].to_list(), strict=True))
    assert counts == {True: int(noisy.sum()), False: int((~noisy).sum())}
    cld = cld_lake.query(lake, "SELECT sample_id, cld FROM scores")
    for flag in (True, False):  # the means are those of the training rows with that flag
        want = np.mean(cld["cld"].to_numpy()[noisy == flag])
        assert got.filter(got["noisy"] == flag)["m"][0] == pytest.approx(want)


def test_the_join_written_with_train_samples_counts_each_sample_once(lake):
    sql = (
        "SELECT s.noisy, count(*) AS n FROM scores c JOIN train_samples s USING (sample_id) "
        "GROUP BY 1"
    )
    assert cld_lake.query(lake, sql)["n"].sum() == N
    # the trap itself is still there for whoever joins every split: samples keeps them all
    every = "SELECT count(*) AS n FROM scores c JOIN samples s USING (sample_id)"
    assert cld_lake.query(lake, every)["n"][0] == N + V


def test_views_keep_every_split_where_they_did(lake):
    q = cld_lake.query
    assert q(lake, "SELECT count(*) AS n FROM samples")["n"][0] == N + V
    assert q(lake, "SELECT count(*) AS n FROM train_samples")["n"][0] == N
    assert set(q(lake, "SELECT DISTINCT split FROM train_samples")["split"]) == {"train"}
    assert q(lake, "SELECT count(*) AS n FROM losses WHERE sample_id = 42")["n"][0] == 2 * 5


def test_scores_rows_are_the_table_rows_in_order_with_their_metadata(lake):
    df = cld_lake.query(lake, "SELECT * FROM scores")
    assert df.columns == ["sample_id", "label", "cld", "noisy", "clean_label"]
    train = open_lake(lake).split("train")
    np.testing.assert_array_equal(df["sample_id"].to_numpy(), train.sample_ids)
    np.testing.assert_array_equal(df["noisy"].to_numpy(), _train_noisy(lake))
    clean = np.asarray(train.samples_table.column("clean_label"))
    np.testing.assert_array_equal(df["clean_label"].to_numpy(), clean)


def test_a_table_without_the_fingerprint_is_joined_on_sample_id_in_its_order(tmp_path):
    """A scores table that does not record its split's ids (another tool wrote it, rows in
    another order, a score column named like a metadata column) still gets the metadata of
    its own rows, in the table's order, and the score keeps its name."""
    loss, labels, ids = make_arrays(300, 4, 3, seed=41)
    import_arrays(tmp_path, tmp_path / "lk", "train", loss=loss, labels=labels, sample_ids=ids)
    lk = open_lake(tmp_path / "lk")
    flags = np.arange(300) % 3 == 0
    with SplitWriter(lk, "train") as w:
        w.annotate_samples({"noisy": flags, "group": np.arange(300) % 7})
    order = np.random.default_rng(42).permutation(300)
    table = pa.table(
        {
            "sample_id": pa.array(ids[order], pa.int64()),
            "label": pa.array(labels[order], pa.int64()),
            "cld": pa.array(np.linspace(-1, 1, 300)),
            "group": pa.array(np.full(300, -5.0)),  # a score named like a metadata column
        }
    )
    write_scores_table(tmp_path / "lk" / "scores.parquet", table)

    df = cld_lake.query(tmp_path / "lk", "SELECT * FROM scores")
    assert df.columns == ["sample_id", "label", "cld", "group", "noisy"]
    np.testing.assert_array_equal(df["sample_id"].to_numpy(), ids[order])
    np.testing.assert_array_equal(df["noisy"].to_numpy(), flags[order])
    assert (df["group"].to_numpy() == -5.0).all()
