"""Selection: exact sets on hand-built tables, balance rules, NaN, ties, random, SQL pools, CLI."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cld_lake
from cld_lake.errors import BadInputError
from cld_lake.lake import Lake
from cld_lake.select import class_quotas, select_rows
from cld_lake.sql import query as lake_query
from tests.conftest import import_arrays, lake_hash, make_arrays, scores_file
from tests.test_sql import write_scores


def chosen(ids, labels, scores, **kw) -> list[int]:
    p = select_rows(np.array(ids), np.array(labels), np.array(scores, dtype=float), **kw)
    return np.array(ids)[p.rows].tolist()


# --- hand-built tables -------------------------------------------------------------------
def test_proportional_imbalanced_classes_largest_remainder():
    # class 0: 10 samples, class 1: 5, class 2: 1; fraction 0.5 -> 8 rows.
    # exact shares 5, 2.5, 0.5: floors 5, 2, 0; the one extra row goes to the largest
    # remainder, a tie between classes 1 and 2 -> the smaller label.
    labels = [0] * 10 + [1] * 5 + [2]
    ids = list(range(100, 116))
    scores = [float(i) for i in range(16)]
    assert class_quotas(np.array(labels), 8, "proportional") == {0: 5, 1: 3, 2: 0}
    assert chosen(ids, labels, scores, fraction=0.5) == [109, 108, 107, 106, 105, 114, 113, 112]


def test_ties_go_to_the_smaller_sample_id_and_ranks():
    ids = [9, 3, 7, 5, 1]
    labels = [0, 0, 0, 0, 0]
    scores = [0.5, 0.9, 0.9, 0.1, 0.9]
    p = select_rows(np.array(ids), np.array(labels), np.array(scores), count=3)
    assert np.array(ids)[p.rows].tolist() == [1, 3, 7]
    assert p.ranks.tolist() == [1, 2, 3]
    low = chosen(ids, labels, [0.5, 0.1, 0.1, 0.1, 0.9], count=2, lowest=True)
    assert low == [3, 5]


def test_nan_never_selected_and_shortfall_reported():
    ids = [1, 2, 3, 4, 5, 6]
    labels = [0, 0, 0, 1, 1, 1]
    scores = [np.nan, 0.2, np.nan, np.nan, np.nan, 0.7]
    p = select_rows(np.array(ids), np.array(labels), np.array(scores), count=4)
    assert np.array(ids)[p.rows].tolist() == [2, 6]
    assert p.quotas == {0: 2, 1: 2} and p.shortfall == {0: 1, 1: 1}
    # NaN samples count in the class sizes: the quotas follow the data's class balance
    q = select_rows(np.array(ids), np.array(labels), np.array(scores), fraction=1.0)
    assert q.quotas == {0: 3, 1: 3} and sum(q.shortfall.values()) == 4
    # lowest-first also skips NaN
    assert chosen(ids, labels, scores, count=2, lowest=True) == [2, 6]


def test_equal_tiny_class_gives_all_it_has():
    labels = [0] * 6 + [1] * 2 + [2] * 5
    ids = list(range(13))
    scores = list(np.linspace(0, 1, 13))
    p = select_rows(np.array(ids), np.array(labels), np.array(scores), count=9, balance="equal")
    assert p.quotas == {0: 3, 1: 3, 2: 3}
    assert p.shortfall == {1: 1}
    assert np.array(ids)[p.rows].tolist() == [5, 4, 3, 7, 6, 12, 11, 10]
    # the remainder of total // C goes to the first classes by label
    assert class_quotas(np.array(labels), 10, "equal") == {0: 4, 1: 3, 2: 3}


def test_none_is_a_global_top_k_sorted_by_class_then_rank():
    ids = [10, 11, 12, 13, 14, 15]
    labels = [0, 0, 0, 1, 1, 2]
    scores = [0.1, 0.95, 0.3, 0.9, 0.8, np.nan]
    p = select_rows(np.array(ids), np.array(labels), np.array(scores), count=3, balance="none")
    assert np.array(ids)[p.rows].tolist() == [11, 13, 14]
    assert p.ranks.tolist() == [1, 1, 2]
    assert select_rows(
        np.array(ids), np.array(labels), np.array(scores), count=6, balance="none"
    ).shortfall == {-1: 1}


def test_count_is_split_exactly_over_classes():
    labels = np.repeat([0, 1, 2], [7, 7, 7])
    ids = np.arange(21)
    for k in range(1, 22):
        p = select_rows(ids, labels, np.linspace(0, 1, 21), count=k)
        assert len(p.rows) == k
        assert max(p.quotas.values()) - min(p.quotas.values()) <= 1


def test_random_is_seeded_balanced_and_independent_of_row_order():
    rng = np.random.default_rng(0)
    ids = rng.permutation(1000) + 50
    labels = rng.integers(0, 4, 1000)
    scores = np.full(1000, np.nan)
    ok = np.ones(1000, bool)
    a = select_rows(ids, labels, scores, fraction=0.2, seed=7, selectable=ok)
    perm = rng.permutation(1000)
    b = select_rows(ids[perm], labels[perm], scores[perm], fraction=0.2, seed=7, selectable=ok)
    c = select_rows(ids, labels, scores, fraction=0.2, seed=8, selectable=ok)
    assert ids[a.rows].tolist() == ids[perm][b.rows].tolist()
    assert set(ids[a.rows]) != set(ids[c.rows])
    sizes = np.bincount(labels)
    got = np.bincount(labels[a.rows], minlength=4)
    assert got.sum() == 200 and np.all(np.abs(got - 0.2 * sizes) < 1)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"fraction": 1.5}, "--fraction"),
        ({"fraction": 0.0}, "--fraction"),
        ({"fraction": -0.1}, "--fraction"),
        ({"fraction": float("nan")}, "--fraction"),
        ({"count": 0}, "--count"),
        ({"count": 11}, "--count"),
        ({"fraction": 0.1, "count": 2}, "exactly one"),
        ({}, "exactly one"),
        ({"fraction": 0.01}, "selects 0"),
        ({"count": 2, "balance": "weird"}, "--balance"),
    ],
)
def test_bad_arguments(kw, match):
    with pytest.raises(BadInputError, match=match):
        select_rows(np.arange(10), np.zeros(10, int), np.ones(10), **kw)


# --- properties --------------------------------------------------------------------------
@st.composite
def tables(draw):
    n = draw(st.integers(1, 60))
    c = draw(st.integers(1, 5))
    labels = np.array(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    ids = np.array(draw(st.permutations(range(n)))) * 3 + 1
    pool = st.one_of(st.sampled_from([0.0, 0.5, 1.0, np.nan]), st.floats(-1, 1))
    scores = np.array(draw(st.lists(pool, min_size=n, max_size=n)), dtype=float)
    return ids, labels, scores


@settings(max_examples=150, deadline=None)
@given(
    tables(),
    st.floats(0.01, 1.0),
    st.sampled_from(["proportional", "equal", "none"]),
    st.booleans(),
)
def test_selection_properties(table, fraction, balance, lowest):
    ids, labels, scores = table
    if np.floor(fraction * len(ids) + 0.5) < 1:
        return
    p = select_rows(ids, labels, scores, fraction=fraction, balance=balance, lowest=lowest)
    total = int(np.floor(fraction * len(ids) + 0.5))
    rows = p.rows
    assert len(rows) + sum(p.shortfall.values()) == total
    assert not np.isnan(scores[rows]).any()
    assert len(set(rows.tolist())) == len(rows)
    sign = 1 if lowest else -1
    groups = [None] if balance == "none" else np.unique(labels)
    for g in groups:
        mask = np.ones(len(ids), bool) if g is None else labels == g
        sel = np.zeros(len(ids), bool)
        sel[rows] = True
        taken = sel & mask
        left = ~sel & mask & ~np.isnan(scores)
        if taken.any() and left.any():  # nothing left behind beats something taken
            worst = max(zip(sign * scores[taken], ids[taken], strict=True))
            best_left = min(zip(sign * scores[left], ids[left], strict=True))
            assert worst < best_left
    # manifest order: by label, ranks 1..k within each class
    assert np.all(np.diff(labels[rows]) >= 0)
    for g in np.unique(labels[rows]):
        assert p.ranks[labels[rows] == g].tolist() == list(
            range(1, int((labels[rows] == g).sum()) + 1)
        )


# --- through a lake ----------------------------------------------------------------------
@pytest.fixture
def scored_lake(tmp_path):
    loss, labels, ids = make_arrays(400, 5, 4, seed=21)
    import_arrays(tmp_path, tmp_path / "lk", loss=loss, labels=labels, sample_ids=ids)
    rng = np.random.default_rng(22)
    cld = rng.uniform(-1, 1, 400)
    cld[:7] = np.nan
    prov = {
        "cld": {
            "method": "cld",
            "engine": "numpy",
            "checkpoints": "0..4 (5)",
            "checkpoint_ids": [0, 1, 2, 3, 4],
        }
    }
    write_scores(tmp_path / "lk", ids, labels, {"cld": cld, "loss_mean": loss.mean(axis=1)}, prov)
    return Lake(tmp_path / "lk"), ids, labels, cld


def test_select_reads_scores_parquet_and_records_provenance(scored_lake, tmp_path):
    lake, ids, labels, cld = scored_lake
    m = cld_lake.select(lake, "cld", fraction=0.25, out=tmp_path / "m.parquet")
    expect = select_rows(ids, labels, cld, fraction=0.25)
    assert sorted(m.sample_ids.tolist()) == sorted(ids[expect.rows].tolist())
    assert len(m) == 100
    meta = m.metadata
    assert meta["score"] == "cld" and meta["method"] == "cld"
    assert meta["checkpoints"] == [0, 1, 2, 3, 4]
    assert meta["score_provenance"]["engine"] == "numpy"
    assert meta["selection"]["balance"] == "proportional" and meta["fraction"] == 0.25
    assert meta["lake"]["lake_id"] == lake.lake_id and meta["nan_scores"] == 7
    assert meta["cld_lake_version"] == cld_lake.__version__ and meta["created_at"]


def test_query_pool_and_query_score(scored_lake):
    lake, ids, labels, cld = scored_lake
    m = cld_lake.select(
        lake,
        "cld",
        count=20,
        query="SELECT sample_id FROM samples WHERE split = 'train' AND label < 2",
    )
    pool = labels < 2
    expect = select_rows(ids[pool], labels[pool], cld[pool], count=20)
    assert m.sample_ids.tolist() == ids[pool][expect.rows].tolist()
    m2 = cld_lake.select(
        lake, count=10, balance="none", query="SELECT sample_id, -loss_mean AS score FROM scores"
    )
    loss_mean = np.asarray(pq.read_table(scores_file(lake))["loss_mean"])
    order = np.lexsort((ids, loss_mean))  # highest -loss_mean = lowest loss_mean first
    assert sorted(m2.sample_ids.tolist()) == sorted(ids[order[:10]].tolist())
    assert m2.metadata["score"] == "query"
    assert np.allclose(np.sort(m2.scores), np.sort(-loss_mean[order[:10]]))
    with pytest.raises(BadInputError, match="duplicate"):
        cld_lake.select(
            lake,
            "cld",
            count=3,
            query="SELECT sample_id FROM samples UNION ALL SELECT sample_id FROM samples",
        )
    with pytest.raises(BadInputError, match="not training samples"):
        cld_lake.select(lake, "cld", count=3, query="SELECT 5 AS sample_id")


def test_random_baseline_same_balance_as_the_coreset(scored_lake):
    lake, ids, labels, cld = scored_lake
    top = cld_lake.select(lake, "cld", fraction=0.1)
    rnd = cld_lake.select(lake, "cld", fraction=0.1, random=True, seed=3)
    assert top.class_counts() == rnd.class_counts()
    assert not np.isnan(rnd.scores).any()  # same pool: NaN-score samples left out
    again = cld_lake.select(lake, fraction=0.1, random=True, seed=3)
    assert again.metadata["selection"]["seed"] == 3 and again.metadata["score"] is None
    assert len(again) == 40


def test_manifest_into_lake_manifests_dir_is_allowed(scored_lake):
    lake, *_ = scored_lake
    m = cld_lake.select(lake, "cld", count=5, out=lake.path / "manifests" / "top5.parquet")
    assert m.path.exists() and len(cld_lake.load_manifest(m.path)) == 5


@pytest.mark.parametrize(
    "args",
    [
        ["--score", "cld", "--fraction", "1.5"],
        ["--score", "cld", "--fraction", "0"],
        ["--score", "cld", "--count", "0"],
        ["--score", "nope", "--fraction", "0.1"],
        ["--score", "cld", "--fraction", "0.1", "--count", "3"],
        ["--score", "cld", "--fraction", "0.1", "--out-dir-missing"],
        ["--score", "cld", "--fraction", "0.1", "--out-inside-lake"],
        ["--score", "cld", "--fraction", "0.1", "--lowest", "--random"],
        ["--fraction", "0.1"],
        ["--score", "cld", "--fraction", "0.1", "--query", "SELEC"],
    ],
)
def test_cli_bad_input(cli, scored_lake, tmp_path, args):
    lake, *_ = scored_lake
    out = tmp_path / "out" / "m.parquet"
    (tmp_path / "out").mkdir()
    if "--out-dir-missing" in args:
        args.remove("--out-dir-missing")
        out = tmp_path / "missing" / "m.parquet"
    if "--out-inside-lake" in args:
        args.remove("--out-inside-lake")
        out = lake.path / "splits" / "m.parquet"
    before = lake_hash(lake.path)
    r = cli("select", lake.path, *args, "--out", out)
    assert r.code == 2, r.out + r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    assert lake_hash(lake.path) == before
    assert not out.exists() and list((tmp_path / "out").iterdir()) == []


def test_cli_select_and_shortfall_message(cli, scored_lake, tmp_path):
    lake, ids, labels, cld = scored_lake
    r = cli(
        "select", lake.path, "--score", "cld", "--fraction", "0.1", "--out", tmp_path / "m.parquet"
    )
    assert r.code == 0, r.err
    assert pq.read_table(tmp_path / "m.parquet").num_rows == 40
    r = cli(
        "select",
        lake.path,
        "--score",
        "cld",
        "--count",
        "400",
        "--balance",
        "equal",
        "--out",
        tmp_path / "e.parquet",
    )
    assert r.code == 0 and "shortfall" in r.err
    assert cld_lake.load_manifest(tmp_path / "e.parquet").metadata["shortfall"]["total"] > 0


def test_score_then_select_end_to_end(cli, tmp_path):
    pytest.importorskip("cld_lake.score")
    loss, labels, ids = make_arrays(300, 6, 3, seed=31)
    vloss, vlabels, _ = make_arrays(60, 6, 3, seed=32)
    for k, v in {"l": loss, "y": labels, "i": ids, "vl": vloss, "vy": vlabels}.items():
        np.save(tmp_path / f"{k}.npy", v)
    lk = tmp_path / "lk"
    assert (
        cli(
            "import",
            lk,
            "--split",
            "train",
            "--loss",
            tmp_path / "l.npy",
            "--labels",
            tmp_path / "y.npy",
            "--sample-ids",
            tmp_path / "i.npy",
        ).code
        == 0
    )
    assert (
        cli(
            "import",
            lk,
            "--split",
            "val",
            "--loss",
            tmp_path / "vl.npy",
            "--labels",
            tmp_path / "vy.npy",
        ).code
        == 0
    )
    r = cli("score", lk)
    assert r.code == 0, r.err
    r = cli("select", lk, "--score", "cld", "--fraction", "0.1", "--out", tmp_path / "m.parquet")
    assert r.code == 0, r.err
    m = cld_lake.load_manifest(tmp_path / "m.parquet")
    scores = lake_query(Lake(lk), "SELECT sample_id, label, cld FROM scores")
    expect = select_rows(
        scores["sample_id"].to_numpy(),
        scores["label"].to_numpy(),
        scores["cld"].to_numpy(),
        fraction=0.1,
    )
    assert m.sample_ids.tolist() == scores["sample_id"].to_numpy()[expect.rows].tolist()
    assert m.metadata["method"] == "cld" and m.metadata["checkpoints"]
