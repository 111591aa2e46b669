"""``cld-lake score --method``: one pass for several methods, the stored columns and their
provenance, and every refusal as one line (exit 2) with the lake unchanged."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from cld_lake.lake.scores import stale_scores
from cld_lake.lake.writer import SplitWriter
from cld_lake.score import METHOD_REGISTRY, METHODS
from tests.conftest import lake_hash, scores_file
from tests.test_methods import make_values, stored, write_method_lake

ALL = ",".join(METHODS)


@pytest.fixture
def lake(tmp_path):
    values = make_values(5, 90, 20, 0.02)
    labels = np.random.default_rng(5).integers(0, 3, 90)
    return write_method_lake(tmp_path / "lake", values, labels, 3)


def _provenance(lake) -> dict:
    return json.loads(pq.read_schema(scores_file(lake)).metadata[b"cld_lake"])["scores"]


def test_all_methods_in_one_pass_each_its_column(cli, lake):
    res = cli("score", lake.path, "--method", ALL, "--early", "0.5", "--window-length", "4")
    assert res.code == 0, res.err
    lines = res.out.strip().splitlines()
    assert len(lines) == len(METHODS)
    assert lines[0].startswith("scored 90 samples over checkpoints 0..19 (20) with numpy")
    assert re.search(
        r"by el2n over checkpoints 0\.\.9 \(10\) .* early=0\.5 early_checkpoints=10", lines[-1]
    )
    table = pq.read_table(scores_file(lake))
    assert table.column_names == ["sample_id", "label", *METHODS]
    prov = _provenance(lake)
    for name in METHODS:
        p = prov[name]
        method = METHOD_REGISTRY[name]
        assert p["method"] == name and p["engine"] == "numpy"
        assert p["direction"] == method.direction in ("higher_keep", "higher_harder")
        assert len(p["range"]) == 2 and p["citation"] == method.citation
        assert p["computed_with"] == list(METHODS)
        assert p["splits"] == (["train", "val"] if name == "cld" else ["train"])
        assert p["checkpoint_ids"] == list(range(20))
        column = table.column(name).to_numpy(zero_copy_only=False)
        assert p["nan"] == int(np.isnan(column).sum())
        low, high = (-np.inf if p["range"][0] is None else p["range"][0]), p["range"][1]
        finite = column[~np.isnan(column)]
        assert (finite >= low).all() and (high is None or (finite <= high).all()), name
    assert prov["forgetting"]["range"] == [0.0, 20.0]
    assert prov["dynunc"]["parameters"] == {"window_length": 4}
    assert prov["dual"]["used_checkpoints"] == "0..9 (10)"
    assert prov["cld"]["parameters"] == {
        "reference": "group",
        "reference_split": "val",
        "fallback": None,
    }


def test_cld_alone_is_the_cld_of_a_shared_pass(cli, lake):
    assert cli("score", lake.path, "--name", "alone").code == 0
    assert cli("score", lake.path, "--method", "aum,cld", "--name", "a,shared").code == 0
    table = pq.read_table(scores_file(lake))
    assert table.column_names == ["sample_id", "label", "alone", "a", "shared"]
    np.testing.assert_array_equal(
        table.column("alone").to_numpy(), table.column("shared").to_numpy()
    )
    prov = _provenance(lake)
    assert prov["alone"]["direction"] == "higher_keep" and prov["alone"]["range"] == [-1.0, 1.0]
    # replacing one column of a pass keeps the others
    assert (
        cli(
            "score", lake.path, "--method", "aum", "--name", "a", "--checkpoints", "0:5", "--force"
        ).code
        == 0
    )
    after = pq.read_table(scores_file(lake))
    np.testing.assert_array_equal(
        after.column("shared").to_numpy(), table.column("shared").to_numpy()
    )
    margin = stored(lake, "margin")[:, :5]
    expected = np.where(np.isfinite(margin).all(axis=1), margin.mean(axis=1), np.nan)
    np.testing.assert_allclose(after.column("a").to_numpy(), expected, rtol=1e-12, equal_nan=True)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (
            ["--method", "aum", "--engine", "duckdb"],
            r"--engine duckdb runs --method cld alone; .* numpy or dask",
        ),
        (["--method", "aum,spark"], r"'spark' is not one of"),
        (["--method", "aum,aum"], r"aum given twice"),
        (
            ["--method", "mean_loss", "--early", "0.2"],
            r"--early applies to --method early_loss / dual / el2n",
        ),
        (["--method", "aum", "--reference", "global"], r"--reference applies to --method cld"),
        (["--method", "aum", "--fallback", "global"], r"--fallback applies to --method cld"),
        (["--method", "dynunc", "--window-length", "30"], r"dynunc needs at least 30 checkpoints"),
        (["--method", "aum,forgetting", "--name", "x"], r"1 name\(s\) for 2 method\(s\)"),
        (["--method", "aum,forgetting", "--name", "x,x"], r"x given twice"),
        (["--method", "early_loss", "--early", "0"], r"0<x<=1|0 < x <= 1|range"),
        (
            ["--method", "aum", "--checkpoints", "5:5"],
            r"aum needs at least 1 checkpoint; 0 are selected",
        ),
    ],
)
def test_refusals_are_one_line_and_write_nothing(cli, lake, args, match):
    before = lake_hash(lake.path)
    res = cli("score", lake.path, *args)
    assert res.code == 2 and re.search(match, res.err), res.err
    assert len(res.err.strip().splitlines()) == 1 or "Usage" in res.err
    assert lake_hash(lake.path) == before


@pytest.mark.parametrize(
    ("channels", "method", "channel", "fix"),
    [
        (("loss", "margin", "el2n"), "forgetting", "correct", "--correct FILE.npy"),
        (("loss", "margin", "el2n"), "correctness", "correct", "LossRecorder"),
        (("loss", "correct", "el2n"), "aum", "margin", "--margin FILE.npy"),
        (
            ("loss", "correct", "margin"),
            "el2n",
            "el2n",
            "channels=('loss', 'correct', 'margin', 'el2n')",
        ),
    ],
)
def test_a_missing_channel_is_named_with_how_to_record_it(
    cli, tmp_path, channels, method, channel, fix
):
    values = make_values(2, 10, 5, 0.0)
    lake = write_method_lake(
        tmp_path / "lake", values, np.zeros(10, dtype=np.int64), 1, channels=channels
    )
    before = lake_hash(lake.path)
    res = cli("score", lake.path, "--method", f"mean_loss,{method}")
    assert res.code == 2
    assert len(res.err.strip().splitlines()) == 1
    assert f"--method {method} needs the {channel!r} channel" in res.err and fix in res.err
    assert lake_hash(lake.path) == before


def test_train_only_methods_do_not_need_val_and_go_stale_with_train(cli, tmp_path):
    values = make_values(4, 30, 6, 0.0)
    lake = write_method_lake(tmp_path / "lake", values, np.zeros(30, dtype=np.int64), 1)
    assert cli("score", lake.path, "--method", "aum,correctness").code == 0
    assert stale_scores(lake) == {}
    with SplitWriter(lake, "train") as writer:  # one more train checkpoint, none in val
        buffer = writer.checkpoint(6)
        ids = lake.split("train").sample_ids
        buffer.add(
            ids, np.ones(30), correct=np.ones(30, bool), margin=np.ones(30), el2n=np.ones(30)
        )
        buffer.commit()
    stale = stale_scores(lake.reload())
    assert set(stale) == {"aum", "correctness"}
    assert "--method aum --name aum" in stale["aum"]


def test_help_lists_every_method(cli):
    res = cli("score", "--help")
    assert res.code == 0
    text = " ".join(res.out.split())
    for name in METHODS:
        assert name in text
    assert "--window-length" in text and "--early" in text and "--reference" in text
