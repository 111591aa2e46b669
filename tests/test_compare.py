"""`python -m pipelines.compare` end to end on a tiny configuration: the printed tables and
results.json hold numbers measured in the run (each accuracy is a real run's, reproduced by
training again; AUROC is cld_lake.diagnostics.noise_detection's)."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import cld_lake
from cld_lake import diagnostics
from cld_lake.errors import BadInputError
from cld_lake.lake.scores import read_scores
from cld_lake.torch import subset
from pipelines import compare
from pipelines.datasets import load_dataset
from pipelines.train_subset import train_model, training_pool

METHODS = "cld,forgetting,aum,confidence,dynunc,dual"
TINY = ["--num-samples", "500", "--proxy-epochs", "4", "--epochs", "2", "--seeds", "1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("compare")
    argv = ["--out", str(out), "--noise", "0.2", "--methods", METHODS, "--fractions", "0.3"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert compare.main([*argv, *TINY, "--no-progress"]) == 0
    return out, json.loads((out / "results.json").read_text()), printed.getvalue()


def test_tables_rows_and_accuracies_are_the_runs(tiny):
    out, results, printed = tiny
    rows = {(r["method"], r["fraction"]): r for r in results["accuracy"]}
    expected = [(m, 0.3) for m in METHODS.split(",")] + [("random", 0.3), ("full", 1.0)]
    assert list(rows) == expected
    runs = {(r["method"], r["fraction"]): r for r in results["runs"]}
    test_size = 100  # 20% of the 500 generated samples
    for key, row in rows.items():
        acc = runs[key]["final_test_acc"]
        assert row["mean"] == row["min"] == row["max"] == acc and row["seeds"] == 1
        assert 0 <= acc <= 1 and math.isclose(acc * test_size, round(acc * test_size))
    lake = cld_lake.open_lake(results["lake"])
    train = lake.split("train")
    assert rows[("full", 1.0)]["samples"] == train.num_samples
    # 5 checkpoints: windows of J = 2; dual's early window stretched to 2.5 / 5 of them
    assert results["score_parameters"] == {
        "dynunc": {"window_length": 2},
        "dual": {"window_length": 2, "early": 0.5},
    }
    assert (
        cld_lake.score(lake, method="dual", window_length=2, early=0.5, store=False)[
            "score"
        ].to_list()
        == read_scores(lake, ["dual"]).column("dual").to_pylist()
    )
    assert rows[("cld", 0.3)]["samples"] == round(0.3 * train.num_samples)
    for line in (
        "| method | 0.3 | full data |",
        f"| cld | {compare._acc(rows[('cld', 0.3)])} | {compare._acc(rows[('full', 1.0)])} |",
        f"| random | {compare._acc(rows[('random', 0.3)])} |",
    ):
        assert line in printed


def test_an_accuracy_is_reproduced_by_training_the_manifest_again(tiny):
    out, results, _ = tiny
    lake = cld_lake.open_lake(results["lake"])
    manifest = cld_lake.load_manifest(out / "manifests" / "aum_0.3.parquet")
    # the manifest is aum's top-k (every method keeps its highest scores)
    again = cld_lake.select(lake, "aum", fraction=0.3)
    np.testing.assert_array_equal(manifest.sample_ids, again.sample_ids)
    data = load_dataset("mnist1d", out / "data", num_samples=500)
    train_set, _ = training_pool(data, lake)
    torch.set_num_threads(1)
    res = train_model(
        data, subset(train_set, manifest), compare.subset_recipe(2), seed=0,
        device=torch.device("cpu"),
    )  # fmt: skip
    run = next(r for r in results["runs"] if r["method"] == "aum")
    assert res.final_test_acc == run["final_test_acc"]
    noisy = np.asarray(lake.split("train").samples_table.column("noisy"), dtype=bool)
    rows = lake.split("train").rows_of(manifest.sample_ids)
    assert run["noisy_share"] == pytest.approx(noisy[rows].mean())


def test_auroc_is_diagnostics_noise_detection(tiny):
    out, results, printed = tiny
    lake = cld_lake.open_lake(results["lake"])
    mine = diagnostics.noise_detection(lake, METHODS.split(","))
    assert results["noise_detection"] == json.loads(json.dumps(mine))
    assert [r["score"] for r in mine] == METHODS.split(",")
    assert all(0 <= r["auroc"] <= 1 for r in mine)
    for r in mine:
        assert f"| {r['score']} | {r['direction']} | {r['auroc']:.3f} |" in printed
    cld = next(r for r in results["runs"] if r["method"] == "cld")
    m = cld_lake.load_manifest(out / "manifests" / "cld_0.3.parquet")
    assert cld["mean_cld"] == pytest.approx(diagnostics.selection_alignment(lake, m)["mean"])


def test_reuses_a_lake_and_refuses_bad_settings(tiny, tmp_path):
    _, results, _ = tiny
    lake_id = cld_lake.open_lake(results["lake"]).lake_id
    cfg = compare.CompareConfig(
        out=tmp_path / "again", lake=Path(results["lake"]), num_samples=500, methods=("cld",),
        fractions=(0.1,), seeds=1, epochs=1, progress=False,
    )  # fmt: skip
    again = compare.run_compare(cfg)
    assert cld_lake.open_lake(results["lake"]).lake_id == lake_id
    assert [(r["method"], r["fraction"]) for r in again["accuracy"]] == [
        ("cld", 0.1),
        ("random", 0.1),
        ("full", 1.0),
    ]
    assert again["proxy_epochs"] is None and not (tmp_path / "again" / "mnist1d.lake").exists()
    for bad in ({"methods": ("nope",)}, {"fractions": (1.5,)}, {"seeds": 0}):
        with pytest.raises(BadInputError):
            compare.run_compare(compare.CompareConfig(**{**cfg.__dict__, **bad}))
