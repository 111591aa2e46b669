"""A small run of the demo (the full one is `make demo`): every step runs, the report holds
measured numbers that agree with the lake and manifests, and the numbers show what the demo
claims (CLD top-k keeps fewer noisy labels than random, lowest-k more; models beat chance)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

import cld_lake
from pipelines.demo import DemoConfig, run_demo
from tests.conftest import scores_file


def test_demo_smoke(tmp_path: Path) -> None:
    cfg = DemoConfig(
        out=tmp_path / "demo",
        num_samples=1500,
        fractions=(0.3,),
        seeds=1,
        proxy_epochs=8,
        epochs=3,
        progress=False,
        compare_fractions=(0.1, 0.3),
    )
    report = run_demo(cfg)
    saved = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert saved["table"] == json.loads(json.dumps(report["table"]))
    assert "| fraction |" in (tmp_path / "demo" / "report.md").read_text()
    page = (tmp_path / "demo" / "report.html").read_text()
    assert "noisy labels among the lowest-scored" in page
    # the demo's coresets live in LAKE/manifests/, so the report shows each one's mean CLD, and
    # its comparison is drawn (both were missing when the manifests sat outside the lake)
    assert "cld_top_0.3.parquet" in page and "random_0.3_seed0.parquet" in page
    assert "<h3>Coreset accuracy</h3>" in page
    lake = cld_lake.open_lake(report["paths"]["lake"])
    assert "cld" in pq.read_schema(scores_file(lake)).names
    train = lake.split("train")
    noisy = np.asarray(train.samples_table.column("noisy"))
    rows = {r["method"]: r for r in report["table"]}
    assert set(rows) == {"CLD top-k", "CLD lowest-k", "random", "full data"}
    assert rows["full data"]["noisy_labels"] == noisy.sum() == round(0.2 * train.num_samples)
    # the noisy counts of the table are those of the manifests on disk
    top = cld_lake.load_manifest(Path(report["paths"]["manifests"]) / "cld_top_0.3.parquet")
    in_top = noisy[train.rows_of(top.sample_ids)].sum()
    assert rows["CLD top-k"]["noisy_labels"] == in_top and rows["CLD top-k"]["samples"] == len(top)
    assert len(report["runs"]) == 4 and all(r["seeds"] == 1 for r in report["table"])
    runs = {u["method"]: u for u in report["runs"]}  # one seed: the table holds each run's values
    for key, title in (("cld_top", "CLD top-k"), ("random", "random"), ("full", "full data")):
        assert rows[title]["final_test_acc_mean"] == runs[key]["final_test_acc"]
    # values measured with these settings: noisy labels top-k 22, random 67, lowest-k 135 of 324;
    # proxy test accuracy 0.42, full data 0.32 (chance: 0.1)
    assert (
        rows["random"]["samples"] == rows["CLD top-k"]["samples"] == round(0.3 * train.num_samples)
    )
    assert 15 < rows["random"]["noisy_pct"] < 25  # a random subset keeps the 20% noise rate
    assert rows["CLD top-k"]["noisy_labels"] < 0.5 * rows["random"]["noisy_labels"]
    assert rows["CLD lowest-k"]["noisy_labels"] > 1.5 * rows["random"]["noisy_labels"]
    assert report["proxy"]["test_accuracy"] > 0.3
    assert rows["full data"]["final_test_acc_mean"] > 0.2
    # the short comparison: CLD, forgetting, AUM and random at 10% and 30%, one seed each
    comparison = report["comparison"]
    assert saved["comparison"] == json.loads(json.dumps(comparison))
    pairs = [(r["method"], r["fraction"]) for r in comparison["accuracy"]]
    assert pairs == [(m, f) for f in (0.1, 0.3) for m in ("cld", "forgetting", "aum", "random")]
    runs_by_key = {(u["method"], u["fraction"]): u for u in comparison["runs"]}
    for row in comparison["accuracy"]:
        assert row["seeds"] == 1
        assert row["mean"] == runs_by_key[(row["method"], row["fraction"])]["final_test_acc"]
    detection = {r["score"]: r for r in comparison["noise_detection"]}
    assert set(detection) == {"cld", "forgetting", "aum"}
    assert detection["cld"]["auroc"] > 0.6  # measured 0.76: CLD ranks flipped labels low
    top = cld_lake.load_manifest(Path(report["paths"]["compare"]) / "manifests" / "cld_0.3.parquet")
    assert set(top.sample_ids) == set(
        cld_lake.load_manifest(
            Path(report["paths"]["manifests"]) / "cld_top_0.3.parquet"
        ).sample_ids
    )
