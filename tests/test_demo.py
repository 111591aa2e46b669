"""A small smoke run of the demo (the full one is `make demo`): every step runs, the report
holds measured numbers that agree with the lake and manifests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

import cld_lake
from pipelines.demo import DemoConfig, run_demo


def test_demo_smoke(tmp_path: Path) -> None:
    cfg = DemoConfig(
        out=tmp_path / "demo",
        num_samples=1000,
        fractions=(0.3,),
        seeds=1,
        proxy_epochs=3,
        epochs=2,
        progress=False,
    )
    report = run_demo(cfg)
    saved = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert saved["table"] == json.loads(json.dumps(report["table"]))
    assert "| fraction |" in (tmp_path / "demo" / "report.md").read_text()
    assert "noisy labels among the lowest-scored" in (tmp_path / "demo" / "report.html").read_text()
    lake = cld_lake.open_lake(report["paths"]["lake"])
    assert "cld" in pq.read_schema(lake.path / "scores.parquet").names
    train = lake.split("train")
    noisy = np.asarray(train.samples_table.column("noisy"))
    rows = {r["method"]: r for r in report["table"]}
    assert set(rows) == {"CLD top-k", "CLD lowest-k", "random", "full data"}
    assert rows["full data"]["noisy_labels"] == noisy.sum() == round(0.2 * train.num_samples)
    # the noisy counts of the table are those of the manifests on disk
    top = cld_lake.load_manifest(Path(report["paths"]["manifests"]) / "cld_top_0.3.parquet")
    in_top = noisy[train.rows_of(top.sample_ids)].sum()
    assert rows["CLD top-k"]["noisy_labels"] == in_top and rows["CLD top-k"]["samples"] == len(top)
    for r in report["table"]:
        assert 0.0 <= r["final_test_acc_mean"] <= 1.0 and r["seeds"] == 1
    assert len(report["runs"]) == 4
