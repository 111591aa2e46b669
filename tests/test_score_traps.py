"""Scoring steps that gave wrong results without a word (issue 22, traps 1 to 3).

1. ``select --score forgetting`` on a lake without it hinted ``score --name forgetting``, which
   stores CLD under that name: the hint names ``--method``.
2. ``score`` replaced a stored score of the same name silently (``--reference global`` over the
   default ``cld``): a stored name needs ``--force``; ``info`` shows each score's method,
   reference and window.
3. ``--checkpoints 0:45`` on a lake of 8 checkpoints scored 0..7 under a name that says 45: a
   window beyond the lake is refused.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import cld_lake
from cld_lake.errors import ScoringError
from cld_lake.lake import open_lake
from cld_lake.lake.scores import stored_scores
from cld_lake.score import compute_cld, compute_scores
from tests.conftest import lake_hash
from tests.strategies import build_spec, write_lake

K = 8  # checkpoints of the lake


@pytest.fixture
def lake(tmp_path):
    spec = build_spec(seed=3, n_train=120, n_val=40, n_checkpoints=K, n_classes=4)
    return write_lake(tmp_path / "lake", spec)


def _one_line_exit_2(r) -> None:
    assert r.code == 2, r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err, r.err


# --- 2. a stored name needs --force ---------------------------------------------------------
def test_rescoring_a_stored_name_is_refused_without_force(lake, cli):
    assert cli("score", lake.path).code == 0
    before = lake_hash(lake.path)
    for args in ([], ["--reference", "global"], ["--fallback", "global"],
                 ["--method", "mean_loss,cld"], ["--checkpoints", "0:4", "--name", "cld"]):  # fmt: skip
        r = cli("score", lake.path, *args)
        _one_line_exit_2(r)
        assert (
            "score cld exists (cld, reference group, window all); pass --force to replace it "
            "or --name NEW" in r.err
        ), r.err
    assert lake_hash(lake.path) == before
    r = cli("score", lake.path, "--reference", "global", "--force")
    assert r.code == 0, r.err
    prov = stored_scores(open_lake(lake.path))["cld"]
    assert prov["parameters"]["reference"] == "global"
    r = cli("score", lake.path, "--checkpoints", "0:4", "--name", "cld")
    assert "score cld exists (cld, reference global, window all)" in r.err


def test_the_python_api_needs_force_too(lake):
    cld_lake.score(lake, checkpoints="0:6", name="early6")
    before = lake_hash(lake.path)
    calls = [
        lambda **kw: cld_lake.score(lake, name="early6", **kw),
        lambda **kw: compute_cld(lake, name="early6", **kw),
        lambda **kw: compute_scores(lake, "mean_loss", names="early6", **kw),
    ]
    for call in calls:
        with pytest.raises(ScoringError, match=r"score early6 exists \(cld, reference group, "
                           r"window 0:6\); pass --force"):  # fmt: skip
            call()
        assert lake_hash(lake.path) == before
    compute_scores(lake, "mean_loss", names="early6", force=True)
    assert stored_scores(open_lake(lake.path))["early6"]["method"] == "mean_loss"
    assert cld_lake.score(lake, name="fresh", store=True) is not None  # a new name needs none
    compute_cld(lake, name="early6", store=False)  # computing without storing needs none


def test_info_shows_each_scores_method_reference_and_window(lake, cli):
    assert cli("score", lake.path, "--reference", "global").code == 0
    assert cli("score", lake.path, "--checkpoints", "0:6", "--name", "cld6").code == 0
    assert cli("score", lake.path, "--method", "mean_loss", "--checkpoints", "2:").code == 0
    out = cli("info", lake.path).out
    assert "score cld: method=cld, reference=global, reference_split=val, window=all, " in out
    assert "score cld6: method=cld, reference=group, reference_split=val, window=0:6, " in out
    assert "score mean_loss: method=mean_loss, window=2:, " in out
    info = json.loads(cli("info", lake.path, "--json").out)
    assert info["score_settings"] == {
        "cld": {"method": "cld", "reference": "global", "reference_split": "val", "window": "all"},
        "cld6": {"method": "cld", "reference": "group", "reference_split": "val", "window": "0:6"},
        "mean_loss": {
            "method": "mean_loss",
            "reference": None,
            "reference_split": None,
            "window": "2:",
        },
    }


def test_the_stale_score_hint_replaces_with_force(lake, cli):
    from cld_lake.lake.scores import stale_scores
    from cld_lake.lake.writer import SplitWriter

    assert cli("score", lake.path, "--reference", "global").code == 0
    for split in ("train", "val"):
        s = open_lake(lake.path).split(split)
        with SplitWriter(open_lake(lake.path), split) as w:
            w.append_columns([99], lambda a, b: {"loss": np.ones((b - a, 1), np.float32)},
                             num_rows=s.num_samples, channels=s.channels)  # fmt: skip
    hint = stale_scores(open_lake(lake.path))["cld"]
    command = hint.split("recompute it: ")[1]
    assert command.endswith("--reference global --force"), command
    assert cli(*command.split()[1:]).code == 0  # the hint runs as written
    assert not stale_scores(open_lake(lake.path))


# --- 3. a window beyond the lake ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("window", "bound"),
    [
        ("0:45", "STOP 45"),
        ("45:", "START 45"),
        (f"{K}:", f"START {K}"),
        ("-45:", "START -45"),
        (":-45", "STOP -45"),
        ("0:45:2", "STOP 45"),
    ],  # fmt: skip
)
def test_a_window_beyond_the_lake_is_refused(lake, cli, window, bound):
    before = lake_hash(lake.path)
    r = cli("score", lake.path, "--checkpoints", window, "--name", "cld_first45")
    _one_line_exit_2(r)
    assert f"--checkpoints {window}: {bound} lies beyond the lake" in r.err, r.err
    assert re.search(rf"{bound} lies beyond the lake, which holds {K} checkpoints committed in "
                     rf"both train and val \(positions 0\.\.{K - 1}\)", r.err), r.err  # fmt: skip
    assert f"e.g. --checkpoints 0:{K}" in r.err
    r = cli("score", lake.path, "--method", "mean_loss", "--checkpoints", window)
    _one_line_exit_2(r)
    assert f"committed in train (positions 0..{K - 1})" in r.err, r.err
    with pytest.raises(ScoringError, match="lies beyond the lake"):
        cld_lake.score(lake, checkpoints=slice(0, 45), name="x")
    assert lake_hash(lake.path) == before


@pytest.mark.parametrize("window", [f"0:{K}", "0:4", "::2", f"-{K}:", "-3:", ":-1", f"{K - 1}:"])
def test_a_window_within_the_lake_scores_as_before(lake, window):
    ids = open_lake(lake.path).split("train").checkpoint_ids
    start, stop, *step = (int(p) if p else None for p in window.split(":"))
    expected = ids[slice(start, stop, *step)]
    if len(expected) < 3:
        with pytest.raises(ScoringError, match="CLD needs at least 3"):
            compute_cld(lake, checkpoints=window, store=False)
        return
    result = compute_cld(lake, checkpoints=window, store=False)
    assert result.provenance["checkpoint_ids"] == expected.tolist()


# --- 1. select's hint names --method -------------------------------------------------------
def test_selects_hint_for_a_method_name_computes_that_method(lake, cli, tmp_path):
    out = tmp_path / "m.parquet"
    r = cli("select", lake.path, "--score", "forgetting", "--fraction", "0.5", "--out", out)
    _one_line_exit_2(r)  # no scores yet
    assert f"`cld-lake score {lake.path} --method forgetting`" in r.err, r.err
    assert cli("score", lake.path).code == 0
    r = cli("select", lake.path, "--score", "mean_loss", "--fraction", "0.5", "--out", out)
    _one_line_exit_2(r)
    assert f"compute it with `cld-lake score {lake.path} --method mean_loss`" in r.err, r.err
    assert "--name" not in r.err
    # doing what the hint says stores that method, and the selection ranks by it
    assert cli("score", lake.path, "--method", "mean_loss").code == 0
    assert stored_scores(open_lake(lake.path))["mean_loss"]["method"] == "mean_loss"
    assert cli("select", lake.path, "--score", "mean_loss", "--fraction", "0.5",
               "--out", out).code == 0  # fmt: skip


def test_selects_hint_for_another_name_says_how_to_store_under_it(lake, cli, tmp_path):
    assert cli("score", lake.path).code == 0
    r = cli("select", lake.path, "--score", "my_score", "--fraction", "0.5",
            "--out", tmp_path / "m.parquet")  # fmt: skip
    _one_line_exit_2(r)
    assert (
        f"store a score under that name with `cld-lake score {lake.path} --method METHOD "
        "--name my_score` (methods: cld, " in r.err
    ), r.err
