"""`cld-lake report`: an HTML file with the lake's splits, curves and score distributions."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cld_lake.lake import Lake, open_lake
from cld_lake.lake.writer import SplitWriter
from cld_lake.report import curve_stats, noise_detection


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
    assert stats["accuracy"].shape == (4,)


def test_noise_detection_counts_noisy_among_lowest():
    scores = np.array([-1.0, -0.9, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, np.nan, 0.2])
    noisy = np.array([1, 1, 0, 0, 0, 0, 0, 0, 1, 0], bool)
    rows = noise_detection(scores, noisy, fractions=(0.2,))
    assert rows[0]["noisy_share_lowest"] == 1.0  # the 2 lowest of 9 finite are both noisy
    assert rows[0]["recall"] == 1.0


def test_report_cli_writes_html(tmp_path, cli):
    lake = _lake(tmp_path)
    ids = open_lake(lake.path).split("train").sample_ids
    pq.write_table(
        pa.table({"sample_id": ids, "label": ids % 3, "cld": np.linspace(-1, 1, len(ids))}),
        lake.path / "scores.parquet",
    )
    r = cli("report", lake.path, "--out", tmp_path / "out")
    assert r.code == 0, r.err
    text = (tmp_path / "out" / "report.html").read_text()
    assert "<svg" in text and "mean loss per checkpoint" in text and "noisy labels" in text
    r = cli("report", lake.path, "--out", tmp_path / "missing" / "r.html")
    assert r.code == 2 and "does not exist" in r.err
