"""`cld-lake report`: an HTML file with the lake's splits, curves and score distributions."""

from __future__ import annotations

import numpy as np

from cld_lake.diagnostics import noisy_among_lowest
from cld_lake.lake import Lake, open_lake
from cld_lake.lake.scores import store_score
from cld_lake.lake.writer import SplitWriter
from cld_lake.report import curve_stats


def _lake(tmp_path):
    lake = Lake.create(tmp_path / "lake", num_classes=3)
    rng = np.random.default_rng(0)
    n = 60
    with SplitWriter(
        lake, "train", row_chunk=16, channels={"loss": "float32", "correct": "bool"}
    ) as w:
        w.declare_samples(np.arange(n), np.arange(n) % 3, metadata={"noisy": np.arange(n) < 6})
        for t in range(4):
            ck = w.checkpoint(t)
            loss = np.full(n, 2.0 - t * 0.5)
            loss[0] = np.nan
            ck.add(np.arange(n), loss, correct=rng.random(n) > 0.5)
            ck.commit()
    return lake


def test_curve_stats_streams_finite_means(tmp_path):
    lake = _lake(tmp_path)
    stats = curve_stats(lake, "train")
    np.testing.assert_allclose(stats["mean_loss"], [2.0, 1.5, 1.0, 0.5])
    rng = np.random.default_rng(0)  # the draws of _lake: correct = rng.random(60) > 0.5
    expected = [float((rng.random(60) > 0.5).mean()) for _ in range(4)]
    np.testing.assert_allclose(stats["accuracy"], expected)


def test_noise_detection_counts_noisy_among_lowest():
    scores = np.array([-1.0, -0.9, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, np.nan, 0.2])
    noisy = np.array([1, 1, 0, 0, 0, 0, 0, 0, 1, 0], bool)
    rows = noisy_among_lowest(scores, noisy, fractions=(0.2,))
    assert rows[0]["noisy_share_lowest"] == 1.0  # the 2 lowest of 9 finite are both noisy
    assert rows[0]["recall"] == 1.0


def test_report_noise_table_values_match_a_hand_computation(tmp_path, cli):
    """60 samples, noisy = ids 0..5; ids 0-2 score lowest, 3-5 high, 50-59 NaN (50 finite).

    Lowest 5%: round(2.5) = 3 samples (halves up, as select counts) = ids 0-2: share 3/3,
    recall 3/6. Lowest 10%: 5 samples, 3 noisy: 0.6, 0.5. Lowest 20%: 10, 3 noisy: 0.3, 0.5.
    Base rate 6/50 = 0.12 throughout.
    """
    lake = _lake(tmp_path)
    ids = np.arange(60)
    cld = np.full(60, np.nan)
    cld[:6] = [-1.0, -0.9, -0.8, 0.9, 0.95, 0.99]
    cld[6:50] = np.linspace(-0.5, 0.5, 44)
    store_score(lake, lake.split("train"), "cld", cld, {"method": "cld"})
    rows = noisy_among_lowest(cld, ids < 6)
    assert rows == [
        {"fraction": 0.05, "noisy_share_lowest": 1.0, "recall": 0.5, "base_rate": 0.12},
        {"fraction": 0.1, "noisy_share_lowest": 0.6, "recall": 0.5, "base_rate": 0.12},
        {"fraction": 0.2, "noisy_share_lowest": 0.3, "recall": 0.5, "base_rate": 0.12},
    ]
    assert cli("report", lake.path, "--out", tmp_path / "r.html").code == 0
    text = (tmp_path / "r.html").read_text()
    table = text[text.index("cld: noisy labels among the lowest-scored") :]
    for row in ("0.05</td><td>1</td><td>0.5", "0.1</td><td>0.6</td><td>0.5", "0.2</td><td>0.3"):
        assert f"<tr><td>{row}</td><td>" in table
    assert table.count("<td>0.12</td>") == 3


def test_report_cli_writes_html(tmp_path, cli):
    lake = _lake(tmp_path)
    train = open_lake(lake.path).split("train")
    store_score(lake, train, "cld", np.linspace(-1, 1, train.num_samples), {"method": "cld"})
    r = cli("report", lake.path, "--out", tmp_path / "out")
    assert r.code == 0, r.err
    text = (tmp_path / "out" / "report.html").read_text()
    assert '<img src="data:image/png;base64,' in text and "mean loss per checkpoint" in text
    assert "noisy labels" in text
    r = cli("report", lake.path, "--out", tmp_path / "missing" / "r.html")
    assert r.code == 2 and "does not exist" in r.err
