"""`--strategy ccs`: Coverage-Centric Coreset Selection against a plain-Python reference of the
same rule (prune the hardest share, equal-width strata, least-filled bin first, seeded draw)."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cld_lake
from cld_lake.errors import BadInputError
from cld_lake.select import ccs_bin_budgets, ccs_rows, class_quotas
from tests.conftest import lake_hash
from tests.test_select import scored_lake  # noqa: F401  (fixture)
from tests.test_sql import write_scores


def ccs_reference(ids, labels, scores, total, balance, prune, bins, seed, direction):
    """The CCS rule written out with loops: the chosen ids in manifest order, and per-group
    quotas. Quotas are the top-k rule's (``class_quotas``), tested on their own."""
    n = len(ids)
    key = {}
    perm = np.random.default_rng(seed).permutation(n)
    for rank, i in enumerate(sorted(range(n), key=lambda i: ids[i])):
        key[i] = int(perm[rank])
    sign = 1.0 if direction == "higher_keep" else -1.0
    if balance == "none":
        groups = {0: list(range(n))}
        quota = {0: total}
    else:
        groups = {int(c): [i for i in range(n) if labels[i] == c] for c in np.unique(labels)}
        quota = class_quotas(np.asarray(labels), total, balance)
    chosen = []
    for g, members in groups.items():
        scored = sorted(
            (i for i in members if not math.isnan(scores[i])),
            key=lambda i: (sign * scores[i], ids[i]),
        )
        hard = math.floor(Fraction(str(prune)) * len(scored))
        pool = scored[hard:]
        if not pool:
            continue
        lo, hi = min(scores[i] for i in pool), max(scores[i] for i in pool)
        strata = {b: [] for b in range(bins)}
        for i in pool:
            b = 0 if hi == lo else min(math.floor((scores[i] - lo) / (hi - lo) * bins), bins - 1)
            strata[b].append(i)
        left = quota[g]
        for j, b in enumerate(sorted(range(bins), key=lambda b: (len(strata[b]), b))):
            take = min(len(strata[b]), left // (bins - j))
            left -= take
            chosen += sorted(strata[b], key=lambda i: key[i])[:take]
    chosen.sort(key=lambda i: (labels[i], -sign * scores[i], ids[i]))
    return [int(ids[i]) for i in chosen], quota


@st.composite
def tables(draw):
    n = draw(st.integers(1, 70))
    c = draw(st.integers(1, 4))
    labels = np.array(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    ids = np.array(draw(st.permutations(range(n)))) * 7 + 3
    pool = st.one_of(st.sampled_from([0.0, 0.25, 1.0, -1.0, np.nan]), st.floats(-5, 5))
    scores = np.array(draw(st.lists(pool, min_size=n, max_size=n)), dtype=float)
    return ids, labels, scores


@settings(max_examples=250, deadline=None)
@given(
    tables(),
    st.floats(0.05, 1.0),
    st.sampled_from(["proportional", "equal", "none"]),
    st.sampled_from([0.0, 0.1, 0.25, 0.5]),
    st.integers(1, 7),
    st.integers(0, 3),
    st.sampled_from(["higher_keep", "higher_harder"]),
)
def test_ccs_matches_the_reference(table, fraction, balance, prune, bins, seed, direction):
    ids, labels, scores = table
    total = int(np.floor(fraction * len(ids) + 0.5))
    if total < 1:
        return
    kw = dict(fraction=fraction, balance=balance, prune=prune, bins=bins, seed=seed)
    hard = sum(
        math.floor(Fraction(str(prune)) * int((~np.isnan(scores[labels == c])).sum()))
        for c in np.unique(labels)
    )
    if balance == "none":
        hard = math.floor(Fraction(str(prune)) * int((~np.isnan(scores)).sum()))
    if total > len(ids) - hard:
        with pytest.raises(BadInputError, match="--ccs-prune"):
            ccs_rows(ids, labels, scores, direction=direction, **kw)
        return
    p = ccs_rows(ids, labels, scores, direction=direction, **kw)
    expect, quotas = ccs_reference(
        ids, labels, scores, total, balance, prune, bins, seed, direction
    )
    assert ids[p.rows].tolist() == expect
    assert len(p.rows) + sum(p.shortfall.values()) == total
    if balance != "none":
        assert p.quotas == quotas
    for g in np.unique(labels[p.rows]):  # ranks 1..k within each class
        k = int((labels[p.rows] == g).sum())
        assert p.ranks[labels[p.rows] == g].tolist() == list(range(1, k + 1))


def test_exact_counts_per_class_and_hardest_share_never_selected():
    rng = np.random.default_rng(5)
    n = 3000
    labels = rng.integers(0, 7, n)
    ids = rng.permutation(n) + 100
    scores = rng.normal(size=n)
    for balance in ("proportional", "equal"):
        p = ccs_rows(ids, labels, scores, fraction=0.3, balance=balance, prune=0.2, seed=1)
        got = np.bincount(labels[p.rows], minlength=7)
        want = class_quotas(labels, 900, balance)
        assert got.tolist() == [want[c] for c in range(7)] and not p.shortfall
        for c in range(7):  # the lowest 20% of each class (higher_keep) is never taken
            members = np.flatnonzero(labels == c)
            hardest = members[np.argsort(scores[members], kind="stable")][: int(0.2 * len(members))]
            assert not np.isin(hardest, p.rows).any()
            assert scores[p.rows][labels[p.rows] == c].min() >= scores[hardest].max()
    q = ccs_rows(ids, labels, scores, fraction=0.3, prune=0.2, direction="higher_harder")
    for c in range(7):  # higher_harder: the highest 20% go
        members = np.flatnonzero(labels == c)
        hardest = members[np.argsort(-scores[members], kind="stable")][: int(0.2 * len(members))]
        assert not np.isin(hardest, q.rows).any()


def test_ccs_covers_the_score_range_where_topk_does_not():
    rng = np.random.default_rng(2)
    scores = rng.uniform(-1, 1, 5000)
    ids, labels = np.arange(5000), np.zeros(5000, int)
    p = ccs_rows(ids, labels, scores, fraction=0.1, prune=0.1, bins=10, seed=0)
    pool = np.sort(scores)[500:]  # the lowest 10% pruned
    edges = np.linspace(pool[0], pool[-1], 11)
    # every bin holds more than 500 / 10 samples: each gives exactly 50
    assert np.histogram(pool, edges)[0].min() > 50
    assert np.histogram(scores[p.rows], edges)[0].tolist() == [50] * 10
    top = ccs_rows(ids, labels, scores, fraction=0.1, prune=0.0, bins=1, seed=0)
    assert len(top.rows) == 500  # one bin: a plain random draw over the whole range


def test_deterministic_per_seed_independent_of_row_order_and_seeds_differ():
    rng = np.random.default_rng(3)
    n = 2000
    ids = rng.permutation(n) * 2 + 11
    labels = rng.integers(0, 5, n)
    scores = np.round(rng.normal(size=n), 2)  # many ties
    a = ccs_rows(ids, labels, scores, count=400, seed=9)
    again = ccs_rows(ids, labels, scores, count=400, seed=9)
    perm = rng.permutation(n)
    shuffled = ccs_rows(ids[perm], labels[perm], scores[perm], count=400, seed=9)
    other = ccs_rows(ids, labels, scores, count=400, seed=10)
    assert ids[a.rows].tolist() == ids[again.rows].tolist() == ids[perm][shuffled.rows].tolist()
    assert a.ranks.tolist() == shuffled.ranks.tolist()
    assert set(ids[a.rows]) != set(ids[other.rows])
    assert np.bincount(labels[a.rows]).tolist() == np.bincount(labels[other.rows]).tolist()


def test_bin_budgets_least_filled_first():
    # sizes 5, 1, 0, 10 and 9 rows: bin 2 gets 0, bin 1 min(1, 9 // 3) = 1, bin 0
    # min(5, 8 // 2) = 4, bin 3 the remaining 4
    budgets = ccs_bin_budgets(np.array([[5, 1, 0, 10], [2, 2, 2, 2]]), np.array([9, 5]))
    assert budgets.tolist() == [[4, 1, 0, 4], [1, 1, 1, 2]]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"prune": 1.0}, "--ccs-prune"),
        ({"prune": -0.1}, "--ccs-prune"),
        ({"prune": float("nan")}, "--ccs-prune"),
        ({"prune": 0.95}, "--ccs-prune"),  # 10 asked, 5% of 100 left
        ({"bins": 0}, "--ccs-bins"),
        ({"bins": 2.5}, "--ccs-bins"),
        ({"seed": -1}, "--seed"),
        ({"direction": "up"}, "direction"),
    ],
)
def test_bad_ccs_arguments(kw, match):
    with pytest.raises(BadInputError, match=match):
        ccs_rows(np.arange(100), np.zeros(100, int), np.linspace(0, 1, 100), count=10, **kw)


# --- through the lake and the CLI ----------------------------------------------------------
def test_select_ccs_records_strategy_and_parameters(scored_lake, tmp_path):  # noqa: F811
    lake, ids, labels, cld = scored_lake
    m = cld_lake.select(
        lake, "cld", fraction=0.2, strategy="ccs", ccs_prune=0.25, ccs_bins=8, seed=4,
        out=tmp_path / "m.parquet",
    )  # fmt: skip
    expect = ccs_rows(ids, labels, cld, fraction=0.2, prune=0.25, bins=8, seed=4)
    assert m.sample_ids.tolist() == ids[expect.rows].tolist()
    assert m.ranks.tolist() == expect.ranks.tolist()
    sel = cld_lake.load_manifest(tmp_path / "m.parquet").metadata["selection"]
    assert sel["strategy"] == "ccs" and sel["rule"] == "ccs" and sel["seed"] == 4
    assert sel["ccs"]["prune"] == 0.25 and sel["ccs"]["bins"] == 8
    assert sel["ccs"]["direction"] == "higher_keep"
    default = cld_lake.select(lake, "cld", fraction=0.2, strategy="ccs")
    ccs = default.metadata["selection"]["ccs"]
    assert (ccs["prune"], ccs["bins"], default.metadata["selection"]["seed"]) == (0.1, 50, 0)
    top = cld_lake.select(lake, "cld", fraction=0.2)
    assert top.metadata["selection"]["strategy"] == "topk"


def test_select_ccs_reads_the_direction_from_the_provenance(scored_lake):  # noqa: F811
    lake, ids, labels, cld = scored_lake
    prov = {"forget": {"method": "forgetting", "direction": "higher_harder", "range": [0, 4]}}
    write_scores(lake.path, ids, labels, {"forget": cld}, prov)
    m = cld_lake.select(lake, "forget", fraction=0.5, strategy="ccs", ccs_prune=0.3)
    assert m.metadata["selection"]["ccs"]["direction"] == "higher_harder"
    for c in np.unique(labels):  # the highest 30% of each class are the hardest: never taken
        finite = (labels == c) & ~np.isnan(cld)
        cut = np.sort(cld[finite])[::-1][int(0.3 * finite.sum()) - 1]
        assert (m.scores[m.labels == c] < cut).all()
    assert m.ranks[m.labels == labels[0]][0] == 1
    first = m.scores[m.labels == labels[0]]
    assert np.all(np.diff(first) >= 0)  # rank 1 = most useful = lowest for higher_harder


@pytest.mark.parametrize(
    "args",
    [
        ["--strategy", "ccs", "--ccs-prune", "1"],
        ["--strategy", "ccs", "--ccs-prune", "-0.2"],
        ["--strategy", "ccs", "--ccs-prune", "nan"],
        ["--strategy", "ccs", "--ccs-prune", "0.95"],
        ["--strategy", "ccs", "--ccs-bins", "0"],
        ["--strategy", "ccs", "--seed", "-3"],
        ["--strategy", "ccs", "--lowest"],
        ["--strategy", "ccs", "--random"],
        ["--strategy", "topk", "--ccs-prune", "0.2"],
        ["--ccs-bins", "10"],
        ["--strategy", "knn"],
        ["--strategy", "ccs", "--no-score"],
    ],
)
def test_cli_bad_ccs_input_is_one_line_exit_2(cli, scored_lake, tmp_path, args):  # noqa: F811
    lake, *_ = scored_lake
    out = tmp_path / "m.parquet"
    score = [] if "--no-score" in args else ["--score", "cld"]
    args = [a for a in args if a != "--no-score"]
    before = lake_hash(lake.path)
    r = cli("select", lake.path, *score, "--fraction", "0.1", *args, "--out", out)
    assert r.code == 2, r.out + r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    assert lake_hash(lake.path) == before and not out.exists()


def test_cli_ccs_writes_the_manifest(cli, scored_lake, tmp_path):  # noqa: F811
    lake, ids, labels, cld = scored_lake
    out = tmp_path / "c.parquet"
    r = cli(
        "select", lake.path, "--score", "cld", "--count", "60", "--strategy", "ccs",
        "--ccs-prune", "0.2", "--ccs-bins", "5", "--seed", "2", "--balance", "equal", "--out", out,
    )  # fmt: skip
    assert r.code == 0, r.err
    assert "ccs" in r.out and "seed 2" in r.out
    expect = ccs_rows(ids, labels, cld, count=60, balance="equal", prune=0.2, bins=5, seed=2)
    table = pq.read_table(out)
    assert table.column("sample_id").to_pylist() == ids[expect.rows].tolist()
    meta = json.loads(table.schema.metadata[b"cld_lake"])
    assert meta["selection"]["ccs"]["bins"] == 5 and meta["selection"]["balance"] == "equal"
