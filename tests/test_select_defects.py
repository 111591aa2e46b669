"""Selection and report regressions (issue 9): one test per defect, named after it."""
# ruff: noqa: F811  (the scored_lake fixture is imported from tests.test_select)

from __future__ import annotations

import json
import warnings
from fractions import Fraction

import numpy as np
import pytest

import cld_lake
from cld_lake.errors import BadInputError
from cld_lake.lake import Lake
from cld_lake.lake.scores import stale_scores
from cld_lake.select import class_quotas, select_rows, target_size
from tests.conftest import import_arrays, lake_hash, make_arrays
from tests.test_select import scored_lake  # noqa: F401  (fixture)


def _one_line_error(r, code: int = 2) -> str:
    assert r.code == code, r.out + r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err, r.err
    return r.err


# --- --out / --force ---------------------------------------------------------------------
def test_select_out_existing_file_is_not_overwritten_without_force(cli, scored_lake, tmp_path):
    lake, *_ = scored_lake
    out = tmp_path / "m.parquet"
    out.write_bytes(b"precious")
    r = cli("select", lake.path, "--score", "cld", "--count", "5", "--out", out)
    assert "exists" in _one_line_error(r) and "--force" in r.err
    assert out.read_bytes() == b"precious"
    with pytest.raises(BadInputError, match="exists"):
        cld_lake.select(lake, "cld", count=5, out=out)
    r = cli("select", lake.path, "--score", "cld", "--count", "5", "--out", out, "--force")
    assert r.code == 0, r.err
    assert len(cld_lake.load_manifest(out)) == 5


def test_select_into_missing_manifests_dir_failing_leaves_no_dir(cli, scored_lake):
    lake, *_ = scored_lake
    out = lake.path / "manifests" / "m.parquet"
    r = cli("select", lake.path, "--score", "nope", "--count", "5", "--out", out)
    _one_line_error(r)
    assert not (lake.path / "manifests").exists()


def test_report_out_existing_file_is_not_overwritten_without_force(cli, scored_lake, tmp_path):
    lake, *_ = scored_lake
    out = tmp_path / "r.html"
    out.write_text("precious")
    r = cli("report", lake.path, "--out", out)
    assert "exists" in _one_line_error(r)
    assert out.read_text() == "precious"
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "report.html").write_text("precious")
    _one_line_error(cli("report", lake.path, "--out", tmp_path / "dir"))
    assert (tmp_path / "dir" / "report.html").read_text() == "precious"
    assert cli("report", lake.path, "--out", out, "--force").code == 0
    assert '<img src="data:image/png;base64,' in out.read_text()  # a matplotlib figure


@pytest.mark.parametrize(
    "where", ["LAKE", "LAKE/cld_lake.json", "LAKE/splits/r.html", "LAKE/new/dir"]
)
def test_report_out_onto_a_lake_file_or_inside_the_lake_is_refused(cli, scored_lake, where):
    lake, *_ = scored_lake
    out = lake.path / where.removeprefix("LAKE").lstrip("/")
    before = lake_hash(lake.path)
    names = sorted(p.relative_to(lake.path) for p in lake.path.rglob("*"))
    r = cli("report", lake.path, "--out", out, "--force")
    assert "inside the lake" in _one_line_error(r)
    assert lake_hash(lake.path) == before
    assert sorted(p.relative_to(lake.path) for p in lake.path.rglob("*")) == names


# --- one-line errors instead of tracebacks / nonsense -------------------------------------
def test_query_returning_a_string_score_is_a_one_line_error(cli, scored_lake, tmp_path):
    lake, *_ = scored_lake
    q = "SELECT sample_id, 'x' AS score FROM scores"
    r = cli("select", lake.path, "--query", q, "--count", "3", "--out", tmp_path / "m.parquet")
    assert "score column is string" in _one_line_error(r) or "not a number" in r.err
    with pytest.raises(BadInputError, match="not a number"):
        cld_lake.select(lake, count=3, query="SELECT sample_id, '1.5' AS score FROM scores")


def test_count_1e30_says_it_exceeds_the_training_samples(cli, scored_lake, tmp_path):
    lake, *_ = scored_lake
    r = cli(
        "select", lake.path, "--score", "cld", "--count", 10**30, "--out", tmp_path / "m.parquet"
    )
    err = _one_line_error(r)
    assert "exceeds the 400 training samples" in err and "4611686018427387904" not in err
    with pytest.raises(BadInputError, match="exceeds the 200 rows of --query"):
        cld_lake.select(lake, "cld", count=201, query="SELECT sample_id FROM scores LIMIT 200")


@pytest.mark.parametrize("name", ["sample_id", "label"])
def test_score_sample_id_says_it_is_not_a_score_and_lists_the_scores(
    cli, scored_lake, tmp_path, name
):
    lake, *_ = scored_lake
    r = cli("select", lake.path, "--score", name, "--count", "3", "--out", tmp_path / "m.parquet")
    err = _one_line_error(r)
    assert "not scores" in err and "cld, loss_mean" in err and "--name" not in err


def test_invalid_score_name_does_not_suggest_a_name_score_refuses(cli, scored_lake, tmp_path):
    lake, *_ = scored_lake
    r = cli("select", lake.path, "--score", "a b", "--count", "3", "--out", tmp_path / "m.parquet")
    assert "--name" not in _one_line_error(r)


@pytest.mark.parametrize(
    "ids",
    [
        np.arange(400, dtype=np.float64) + 0.7,  # float ids: refused, not truncated
        np.arange(400, dtype=np.float64),
        np.array([str(i) for i in range(400)]),
        [None] * 400,
        [[1, 2], [3]],
    ],
)
def test_subset_bad_ids_raise_bad_input_not_type_or_value_error(scored_lake, tmp_path, ids):
    torch = pytest.importorskip("torch")
    from torch.utils.data import TensorDataset

    from cld_lake.torch import subset

    lake, *_ = scored_lake
    m = cld_lake.select(lake, "cld", count=5)
    ds = TensorDataset(torch.arange(400))
    with pytest.raises(BadInputError, match="sample_ids"):
        subset(ds, m, sample_ids=ids)
    ds.sample_ids = ids
    with pytest.raises(BadInputError, match="dataset.sample_ids"):
        subset(ds, m)
    with pytest.raises(BadInputError, match="expected a path"):
        subset(ds, None)
    with pytest.raises(BadInputError, match="map-style dataset"):
        subset(None, m)


# --- stale scores ------------------------------------------------------------------------
@pytest.fixture
def appended_lake(tmp_path):
    """A scored lake (5 checkpoints) whose train and val then get 3 more checkpoints."""
    pytest.importorskip("cld_lake.score")
    loss, labels, ids = make_arrays(120, 8, 3, seed=41)
    vloss, vlabels, _ = make_arrays(40, 8, 3, seed=42)
    lk = tmp_path / "lk"
    import_arrays(tmp_path, lk, loss=loss[:, :5], labels=labels, sample_ids=ids)
    import_arrays(tmp_path, lk, "val", loss=vloss[:, :5], labels=vlabels)
    cld_lake.score(lk)
    cld_lake.score(lk, checkpoints="0:4", name="cld_first4")
    more = {"checkpoint_ids": np.arange(5, 8)}
    import_arrays(tmp_path, lk, loss=loss[:, 5:], labels=labels, sample_ids=ids, **more)
    import_arrays(tmp_path, lk, "val", loss=vloss[:, 5:], labels=vlabels, **more)
    return Lake(lk)


def test_stale_score_after_appending_checkpoints_is_detected(appended_lake):
    stale = stale_scores(appended_lake)
    assert list(stale) == ["cld"]  # the window 0:4 still picks the same 4 checkpoints
    assert "5 checkpoints (0..4)" in stale["cld"] and "8 checkpoints (0..7)" in stale["cld"]
    assert "cld-lake score" in stale["cld"] and "\n" not in stale["cld"]


def test_select_with_stale_score_warns_one_line_and_still_selects(cli, appended_lake, tmp_path):
    r = cli(
        "select",
        appended_lake.path,
        "--score",
        "cld",
        "--count",
        "6",
        "--out",
        tmp_path / "m.parquet",
    )
    assert r.code == 0, r.err
    warning = [line for line in r.err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "--score cld" in warning[0] and "8 checkpoints" in warning[0]
    m = cld_lake.load_manifest(tmp_path / "m.parquet")
    assert len(m) == 6 and "5 checkpoints" in m.metadata["score_stale"]
    r = cli(
        "select",
        appended_lake.path,
        "--score",
        "cld_first4",
        "--count",
        "6",
        "--out",
        tmp_path / "f.parquet",
    )
    assert r.code == 0 and "warning" not in r.err
    assert cld_lake.load_manifest(tmp_path / "f.parquet").metadata["score_stale"] is None
    with pytest.warns(UserWarning, match="--score cld: computed over 5 checkpoints"):
        cld_lake.select(appended_lake, "cld", count=3)


def test_report_with_stale_score_warns_one_line(cli, appended_lake, tmp_path):
    r = cli("report", appended_lake.path, "--out", tmp_path / "r.html")
    assert r.code == 0, r.err
    warning = [line for line in r.err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "score cld:" in warning[0]
    assert "Stale score cld" in (tmp_path / "r.html").read_text()


def test_fresh_scores_give_no_stale_warning(cli, scored_lake, tmp_path):
    lake, *_ = scored_lake  # provenance: checkpoints 0..4, the lake has 0..4 (train only)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cld_lake.select(lake, "cld", count=3)
    assert stale_scores(lake) == {}


# --- rounding of exact halves ------------------------------------------------------------
def test_half_rows_round_up_not_to_even():
    # total: round(F x N) with halves up, for the decimal F as written
    assert target_size(5, 0.5, None) == 3  # 2.5 -> 3 (half-even: 2)
    assert target_size(10, 0.25, None) == 3  # 2.5 -> 3 (half-even: 2)
    assert target_size(50, 0.29, None) == 15  # 14.5 exactly; binary 0.29 x 50 = 14.4999...
    assert 0.29 * 50 < 14.5 and Fraction("0.29") * 50 == Fraction(29, 2)
    # per class: shares 0.5 and 2.5 (sizes 1 and 5, fraction 0.5 -> 3 rows); the one row left
    # after flooring goes to the tie's smaller label, and the total stays exact
    labels = np.array([0] + [1] * 5)
    assert class_quotas(labels, 3, "proportional") == {0: 1, 1: 2}  # half-even: {0: 0, 1: 2}
    # shares 2.5 and 2.5 -> 3 and 2 (half-even per class: 2 and 2; half-up: 3 and 3)
    p = select_rows(np.arange(10), np.repeat([0, 1], 5), np.linspace(0, 1, 10), fraction=0.5)
    assert p.quotas == {0: 3, 1: 2} and len(p.rows) == 5


def test_info_flags_a_stale_score_in_text_and_json(cli, appended_lake):
    """issue 9: after checkpoints are appended, info says which score is stale (not refused)."""
    r = cli("info", appended_lake.path, "--json")
    assert r.code == 0
    stale = json.loads(r.out)["stale_scores"]
    assert list(stale) == ["cld"] and "8 checkpoints" in stale["cld"]
    r = cli("info", appended_lake.path)
    lines = [line for line in r.out.splitlines() if "STALE" in line]
    assert r.code == 0 and len(lines) == 1 and "score cld:" in lines[0]
