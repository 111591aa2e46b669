"""cld_lake.diagnostics against hand and NumPy/SciPy computations on a tiny real lake."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from cld_lake import diagnostics as dg
from cld_lake import select
from cld_lake.errors import BadInputError, ScoringError
from cld_lake.lake import Lake
from cld_lake.lake.scores import read_scores, store_score
from cld_lake.lake.writer import SplitWriter

N, T, C = 40, 8, 3


def _lake(tmp_path, noisy: bool = True) -> Lake:
    """40 train samples (ids 100.., labels i % 3, noisy = i % 5 == 0), val 2 per class; T = 8
    checkpoints of decaying loss with per-sample noise."""
    lake = Lake.create(tmp_path / "lake", num_classes=C)
    rng = np.random.default_rng(3)
    ids, labels = np.arange(N) + 100, np.arange(N) % C
    meta = {"noisy": np.arange(N) % 5 == 0} if noisy else None
    with SplitWriter(lake, "train", row_chunk=16) as w:
        w.declare_samples(ids, labels, metadata=meta)
        for t in range(T):
            ck = w.checkpoint(t)
            ck.add(ids, np.exp(-t / 3) + 0.3 * rng.random(N))
            ck.commit()
    vids, vlabels = np.arange(2 * C), np.repeat(np.arange(C), 2)
    with SplitWriter(lake, "val", row_chunk=16) as w:
        w.declare_samples(vids, vlabels)
        for t in range(T):
            ck = w.checkpoint(t)
            ck.add(vids, np.exp(-t / 3) + 0.01 * rng.random(2 * C))
            ck.commit()
    return lake.reload()


def _store(lake: Lake, name: str, values: np.ndarray, direction: str = "higher_keep") -> None:
    store_score(lake, lake.split("train"), name, values, {"method": name, "direction": direction})


def test_class_nonpositive_share_by_hand(tmp_path):
    lake = _lake(tmp_path)
    values = np.linspace(-1, 1, N)  # rows 0..19 negative, 20..39 positive
    values[[0, 4]] = np.nan  # class 0 and class 1 each lose one
    _store(lake, "cld", values)
    rows = dg.class_nonpositive_share(lake)
    labels = np.arange(N) % C
    for c, row in enumerate(rows):
        mine = values[labels == c]
        scored = mine[~np.isnan(mine)]
        assert row == {
            "label": c,
            "samples": int((labels == c).sum()),
            "null": int(np.isnan(mine).sum()),
            "nonpositive": int((scored <= 0).sum()),
            "share": pytest.approx((scored <= 0).mean()),
        }
    # class 0: rows 0,3,...,39 (14), row 0 null; nonpositive rows 3..18 -> 6 of 13
    assert rows[0]["null"] == 1 and rows[0]["nonpositive"] == 6 and rows[0]["samples"] == 14
    with pytest.raises(ScoringError, match="not stored"):
        dg.class_nonpositive_share(lake, "aum")


def test_selection_alignment_is_the_mean_score_of_the_manifest(tmp_path):
    lake = _lake(tmp_path)
    values = np.arange(N, dtype=float) / N
    values[39] = np.nan
    _store(lake, "cld", values)
    m = select(lake, "cld", fraction=0.25)
    out = dg.selection_alignment(lake, m)
    rows = m.sample_ids - 100
    assert out["selected"] == len(m) == 10 and out["null"] == 0
    assert out["mean"] == pytest.approx(values[rows].mean())
    assert out["pool_mean"] == pytest.approx(np.nanmean(values))
    assert out["mean"] > out["pool_mean"]  # top-k keeps the high end
    path = select(lake, "cld", fraction=0.25, lowest=True, out=tmp_path / "low.parquet").path
    assert dg.selection_alignment(lake.path, path)["mean"] < out["pool_mean"]


def test_selection_alignment_refuses_a_manifest_of_another_lake(tmp_path):
    lake = _lake(tmp_path)
    _store(lake, "cld", np.linspace(0, 1, N))
    other = Lake.create(tmp_path / "other", num_classes=C)
    with SplitWriter(other, "train", row_chunk=16) as w:
        w.declare_samples(np.arange(N) + 5000, np.arange(N) % C)
        ck = w.checkpoint(0)
        ck.add(np.arange(N) + 5000, np.ones(N))
        ck.commit()
    other = other.reload()
    _store(other, "cld", np.linspace(0, 1, N))
    with pytest.raises(BadInputError, match="no score for"):
        dg.selection_alignment(lake, select(other, "cld", fraction=0.5))


def test_rank_stability_matches_scipy_with_ties_and_nulls(tmp_path):
    lake = _lake(tmp_path)
    rng = np.random.default_rng(0)
    a = np.round(rng.normal(size=N), 1)  # ties
    b = a + rng.normal(scale=0.5, size=N)
    a[3], b[7] = np.nan, np.nan
    _store(lake, "a", a)
    _store(lake, "b", b, "higher_harder")
    out = dg.rank_stability(lake, "a", "b")
    ok = ~np.isnan(a) & ~np.isnan(b)
    assert out["pairs"] == N - 2
    assert out["spearman"] == pytest.approx(stats.spearmanr(a[ok], b[ok]).statistic, abs=1e-12)
    assert dg.rank_stability(lake, "a", "a")["spearman"] == pytest.approx(1.0)


def test_spearman_and_auroc_edge_cases():
    assert np.isnan(dg.spearman(np.array([1.0]), np.array([2.0]))[0])
    assert np.isnan(dg.spearman(np.ones(5), np.arange(5.0))[0])  # a constant side
    assert np.isnan(dg.auroc(np.arange(3.0), np.zeros(3, bool)))
    assert dg.auroc(np.ones(4), np.array([1, 0, 1, 0], bool)) == 0.5  # all tied: one half
    assert dg.auroc(np.array([3.0, 2, 1, 0]), np.array([1, 1, 0, 0], bool)) == 1.0
    np.testing.assert_array_equal(dg.average_ranks(np.array([5.0, 1, 5, 2])), [3.5, 1, 3.5, 2])


def _pairwise_auroc(s: np.ndarray, pos: np.ndarray) -> float:
    """The definition: P(positive more suspect than negative) + 1/2 P(tie), every pair."""
    diff = s[pos][:, None] - s[~pos][None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def test_noise_detection_orients_by_direction(tmp_path):
    lake = _lake(tmp_path)
    noisy = np.arange(N) % 5 == 0
    rng = np.random.default_rng(1)
    keep = np.round(rng.normal(size=N) - 1.5 * noisy, 1)  # low = suspect, with ties
    keep[11] = np.nan
    _store(lake, "cld", keep)
    _store(lake, "loss", -keep, "higher_harder")  # the same ranking, other direction
    rows = {r["score"]: r for r in dg.noise_detection(lake)}
    ok = ~np.isnan(keep)
    expected = _pairwise_auroc(-keep[ok], noisy[ok])
    u = stats.mannwhitneyu(-keep[ok][noisy[ok]], -keep[ok][~noisy[ok]]).statistic
    assert expected == pytest.approx(u / (noisy[ok].sum() * (~noisy[ok]).sum()))
    for name in ("cld", "loss"):
        r = rows[name]
        assert r["auroc"] == pytest.approx(expected, abs=1e-12)
        assert (r["scored"], r["null"], r["noisy"]) == (N - 1, 1, 8)
        assert r["noise_rate"] == pytest.approx(8 / 39)
    # precision at the noise rate: the 8 lowest of `keep` (ties: smaller id), by hand
    order = np.lexsort((np.arange(N)[ok], keep[ok]))[:8]
    assert rows["cld"]["precision_at_rate"] == pytest.approx(noisy[ok][order].mean())
    assert (
        rows["cld"]["direction"] == "higher_keep" and rows["loss"]["direction"] == "higher_harder"
    )
    assert dg.noise_detection(lake, ["loss"])[0]["score"] == "loss"


def test_noise_detection_needs_a_noisy_flag(tmp_path):
    lake = _lake(tmp_path, noisy=False)
    _store(lake, "cld", np.linspace(0, 1, N))
    with pytest.raises(BadInputError, match="noisy"):
        dg.noise_detection(lake)


def test_cld_windows_store_two_scores_for_rank_stability(tmp_path):
    lake = _lake(tmp_path)
    import cld_lake

    full = cld_lake.score(lake)
    half, stride = dg.cld_windows(lake)
    ref = cld_lake.score(lake, checkpoints="0:4", store=False)["score"].to_numpy()
    got = read_scores(lake, [half]).column(half).to_numpy()
    np.testing.assert_array_equal(got, ref)
    for name in (half, stride):
        out = dg.rank_stability(lake, "cld", name)
        assert out["pairs"] == N and -1 <= out["spearman"] <= 1
    assert len(full) == N
