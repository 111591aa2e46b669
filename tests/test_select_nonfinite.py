"""Every selection strategy on +inf, -inf and NaN scores (issue 16.4: CCS over infinite scores
gave "internal error: ValueError: 'list' argument must have no negative elements").

The rule (``cld_lake.select`` docstring, docs/sql.md): +inf and -inf are the largest and
smallest scores and are selectable; NaN (null) is never selected and counts in its class's
size. CCS bins a class's finite scores over their own range and puts -inf in the first bin,
+inf in the last. Each strategy is checked against a plain loop written from that rule, on
tables where whole classes are infinite, mixed or NaN.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cld_lake
from cld_lake.errors import BadInputError
from cld_lake.select import ccs_bin_index, ccs_rows, class_quotas, select_rows
from tests.conftest import lake_hash
from tests.test_select import scored_lake  # noqa: F401  (fixture)

INF = math.inf


def _random_keys(ids, seed):
    perm = np.random.default_rng(seed).permutation(len(ids))
    return {i: int(perm[r]) for r, i in enumerate(sorted(range(len(ids)), key=lambda i: ids[i]))}


def _groups(labels, total, balance):
    n = len(labels)
    if balance == "none":
        return {0: list(range(n))}, {0: total}
    members = {int(c): [i for i in range(n) if labels[i] == c] for c in np.unique(labels)}
    return members, class_quotas(np.asarray(labels), total, balance)


def topk_reference(ids, labels, scores, total, balance, lowest, seed):
    """Top-k (``lowest``: bottom-k; ``seed``: a seeded random order) by loops: per group, the
    non-NaN rows in order, the first ``quota``; the manifest sorted by class, then order."""
    keys = _random_keys(ids, seed) if seed is not None else None

    def order(i):
        if keys is not None:
            return (keys[i], ids[i])
        return (scores[i] if lowest else -scores[i], ids[i])

    groups, quota = _groups(labels, total, balance)
    chosen = []
    for g, members in groups.items():
        chosen += sorted((i for i in members if not math.isnan(scores[i])), key=order)[: quota[g]]
    chosen.sort(key=lambda i: (labels[i], order(i)))
    return [int(ids[i]) for i in chosen]


def ccs_reference(ids, labels, scores, total, balance, prune, bins, seed, direction):
    """CCS by loops, with the rule for infinities written out: the bins span the finite
    scores of the pool; -inf is in bin 0, +inf in the last bin."""
    keys = _random_keys(ids, seed)
    sign = 1.0 if direction == "higher_keep" else -1.0
    groups, quota = _groups(labels, total, balance)
    chosen = []
    for g, members in groups.items():
        scored = sorted(
            (i for i in members if not math.isnan(scores[i])),
            key=lambda i: (sign * scores[i], ids[i]),
        )
        pool = scored[math.floor(Fraction(str(prune)) * len(scored)) :]
        finite = [scores[i] for i in pool if math.isfinite(scores[i])]
        lo, hi = (min(finite), max(finite)) if finite else (0.0, 0.0)
        strata = {b: [] for b in range(bins)}
        for i in pool:
            s = scores[i]
            if s == -INF or hi == lo and math.isfinite(s):
                b = 0
            elif s == INF:
                b = bins - 1
            else:
                b = min(math.floor((s - lo) / (hi - lo) * bins), bins - 1)
            strata[b].append(i)
        left = quota[g]
        for j, b in enumerate(sorted(range(bins), key=lambda b: (len(strata[b]), b))):
            take = min(len(strata[b]), left // (bins - j))
            left -= take
            chosen += sorted(strata[b], key=lambda i: keys[i])[:take]
    chosen.sort(key=lambda i: (labels[i], -sign * scores[i], ids[i]))
    return [int(ids[i]) for i in chosen]


# each class is all +inf, all -inf, both infinities, all NaN, or a mix with finite values
CLASS_KINDS = {
    "inf": st.just(INF),
    "-inf": st.just(-INF),
    "both": st.sampled_from([INF, -INF]),
    "nan": st.just(math.nan),
    "mixed": st.one_of(
        st.sampled_from([INF, -INF, math.nan, 0.0, 1.0, -1.0]), st.floats(-5, 5, width=32)
    ),
}


@st.composite
def tables(draw):
    n = draw(st.integers(1, 60))
    c = draw(st.integers(1, 4))
    labels = np.array(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    kinds = [draw(st.sampled_from(sorted(CLASS_KINDS))) for _ in range(c)]
    scores = np.array([draw(CLASS_KINDS[kinds[label]]) for label in labels], dtype=float)
    ids = np.array(draw(st.permutations(range(n)))) * 5 + 1
    return ids, labels, scores


def _total(fraction, n):
    return math.floor(Fraction(str(float(fraction))) * n + Fraction(1, 2))


@settings(max_examples=300, deadline=None)
@given(
    tables(),
    st.floats(0.05, 1.0),
    st.sampled_from(["proportional", "equal", "none"]),
    st.sampled_from(["top", "lowest", "random"]),
    st.integers(0, 3),
)
def test_topk_lowest_random_match_the_loop(table, fraction, balance, how, seed):
    ids, labels, scores = table
    total = _total(fraction, len(ids))
    if total < 1:
        return
    kw = dict(fraction=fraction, balance=balance)
    random = how == "random"
    p = select_rows(
        ids, labels, scores, lowest=how == "lowest", seed=seed if random else None, **kw
    )
    expect = topk_reference(
        ids, labels, scores, total, balance, how == "lowest", seed if random else None
    )
    assert ids[p.rows].tolist() == expect
    assert not np.isnan(scores[p.rows]).any()
    assert len(p.rows) + sum(p.shortfall.values()) == total


@settings(max_examples=300, deadline=None)
@given(
    tables(),
    st.floats(0.05, 1.0),
    st.sampled_from(["proportional", "equal", "none"]),
    st.sampled_from([0.0, 0.1, 0.25, 0.5]),
    st.integers(1, 7),
    st.integers(0, 3),
    st.sampled_from(["higher_keep", "higher_harder"]),
)
def test_ccs_matches_the_loop(table, fraction, balance, prune, bins, seed, direction):
    ids, labels, scores = table
    total = _total(fraction, len(ids))
    if total < 1:
        return
    kw = dict(fraction=fraction, balance=balance, prune=prune, bins=bins, seed=seed)
    groups, _ = _groups(labels, total, balance)
    hard = sum(
        math.floor(Fraction(str(prune)) * sum(not math.isnan(scores[i]) for i in members))
        for members in groups.values()
    )
    if total > len(ids) - hard:
        with pytest.raises(BadInputError, match="--ccs-prune"):
            ccs_rows(ids, labels, scores, direction=direction, **kw)
        return
    p = ccs_rows(ids, labels, scores, direction=direction, **kw)
    expect = ccs_reference(ids, labels, scores, total, balance, prune, bins, seed, direction)
    assert ids[p.rows].tolist() == expect
    assert not np.isnan(scores[p.rows]).any()
    assert len(p.rows) + sum(p.shortfall.values()) == total


def test_the_rule_on_hand_made_rows() -> None:
    ids = np.arange(8)
    labels = np.zeros(8, dtype=np.int64)
    scores = np.array([INF, -INF, math.nan, 0.0, 1.0, INF, -INF, math.nan])
    top = select_rows(ids, labels, scores, count=3)
    assert ids[top.rows].tolist() == [0, 5, 4]  # +inf first (ties: smaller id), then 1.0
    low = select_rows(ids, labels, scores, count=3, lowest=True)
    assert ids[low.rows].tolist() == [1, 6, 3]
    every = select_rows(ids, labels, scores, count=8)
    assert sorted(ids[every.rows].tolist()) == [0, 1, 3, 4, 5, 6] and every.shortfall == {0: 2}
    # CCS: finite scores binned over [0, 1]; -inf in the first bin, +inf in the last
    assert ccs_bin_index(scores[[1, 3, 4, 0]], np.zeros(4), np.ones(4), 4).tolist() == [0, 0, 3, 3]
    # a class of infinities only: no finite range; -inf first bin, +inf last
    assert ccs_bin_index(np.array([-INF, INF]), np.zeros(2), np.zeros(2), 5).tolist() == [0, 4]
    # all NaN: nothing selectable, the whole quota is shortfall
    nan = ccs_rows(ids[:3], labels[:3], np.full(3, math.nan), count=2, prune=0.0)
    assert len(nan.rows) == 0 and nan.shortfall == {0: 2}


QUERY = (
    "SELECT sample_id, CASE WHEN sample_id%2=0 THEN 'inf'::DOUBLE ELSE '-inf'::DOUBLE END AS "
    "score FROM scores"
)


@pytest.mark.parametrize("strategy", [["--strategy", "ccs"], ["--lowest"], [], ["--random"]])
def test_the_issues_query_selects_with_every_strategy(cli, scored_lake, tmp_path, strategy):  # noqa: F811
    """``select --strategy ccs --query ...inf... / -inf...`` was an internal error, exit 1."""
    lake = scored_lake[0].path
    before = lake_hash(lake)
    out = tmp_path / "m.parquet"
    r = cli("select", lake, "--query", QUERY, "--fraction", "0.5", "--out", out, *strategy)
    assert r.code == 0, r.err
    table = pq.read_table(out)
    scores = table.column("score").to_numpy()
    n = cld_lake.open_lake(lake).split("train").num_samples
    assert table.num_rows == _total(0.5, n) and np.isinf(scores).all()
    high, low = int((scores == INF).sum()), int((scores == -INF).sum())
    if strategy == []:  # the exact rows per class: the loop references above
        assert high > 0.9 * len(scores)
    if strategy == ["--lowest"]:
        assert low > 0.9 * len(scores)
    assert lake_hash(lake) == before


def test_nan_and_null_query_scores_are_never_selected(scored_lake):  # noqa: F811
    query = (
        "SELECT sample_id, CASE WHEN sample_id%3=0 THEN NULL WHEN sample_id%3=1 THEN 'nan'::DOUBLE "
        "ELSE 'inf'::DOUBLE END AS score FROM scores"
    )
    for kw in ({}, {"strategy": "ccs", "ccs_prune": 0.0}, {"lowest": True}, {"random": True}):
        manifest = cld_lake.select(scored_lake[0], query=query, fraction=0.2, **kw)
        ids = manifest.table.column("sample_id").to_numpy()
        assert len(ids) and (ids % 3 == 2).all(), kw
