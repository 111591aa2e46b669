"""cld_lake.score: the Python call, the stored scores table, the CLI, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

import cld_lake
from cld_lake.errors import ScoringError
from cld_lake.lake import Lake
from cld_lake.lake.scores import stale_scores
from cld_lake.lake.writer import SplitWriter
from cld_lake.score import compute_cld
from tests.cld_reference import reference_cld
from tests.conftest import has_scores, lake_hash, scores_file
from tests.strategies import build_spec, write_lake, write_split


@pytest.fixture
def spec():
    return build_spec(seed=3, n_train=120, n_val=40, n_checkpoints=8, n_classes=4)


@pytest.fixture
def lake(tmp_path, spec):
    return write_lake(tmp_path / "lake", spec)


def _provenance(lake: Lake) -> dict:
    schema = pq.read_schema(scores_file(lake))
    return json.loads(schema.metadata[b"cld_lake"])["scores"]


def test_score_returns_polars_and_stores_the_column(lake, spec):
    df = cld_lake.score(lake)
    assert df.columns == ["sample_id", "label", "score"]
    assert df["sample_id"].to_list() == spec.train.sample_ids.tolist()
    ref = reference_cld(
        spec.selected(spec.train, spec.common_checkpoints),
        spec.train.labels,
        spec.selected(spec.val, spec.common_checkpoints),
        spec.val.labels,
    )
    np.testing.assert_allclose(df["score"].to_numpy(), ref["scores"], atol=1e-9, equal_nan=True)
    table = pq.read_table(scores_file(lake))
    assert table.column_names == ["sample_id", "label", "cld"]
    np.testing.assert_array_equal(table.column("cld").to_numpy(), df["score"].to_numpy())
    prov = _provenance(lake)["cld"]
    assert prov["method"] == "cld" and prov["engine"] == "numpy"
    assert prov["checkpoint_ids"] == spec.common_checkpoints.tolist()
    assert prov["nan"] == ref["nan"] and prov["degenerate"] == ref["degenerate"]
    assert prov["fallback"] == 0 and prov["val_left_out"] == ref["val_left_out"]
    assert prov["version"] == cld_lake.__version__ and prov["lake_id"] == lake.lake_id
    assert prov["seconds"] >= 0 and prov["created_at"]


def test_columns_are_added_and_replaced(lake):
    first = cld_lake.score(lake, name="cld")
    cld_lake.score(lake, checkpoints="0:4", name="early", engine="duckdb")
    table = pq.read_table(scores_file(lake))
    assert table.column_names == ["sample_id", "label", "cld", "early"]
    np.testing.assert_array_equal(table.column("cld").to_numpy(), first["score"].to_numpy())
    assert (
        _provenance(lake)["early"]["checkpoint_ids"]
        == lake.split("val").checkpoint_ids[:4].tolist()
    )
    cld_lake.score(lake, checkpoints="::2", name="cld", engine="polars", force=True)  # replace
    table = pq.read_table(scores_file(lake))
    assert table.column_names == ["sample_id", "label", "cld", "early"]
    prov = _provenance(lake)
    assert prov["cld"]["engine"] == "polars" and prov["cld"]["window"] == "::2"
    assert prov["early"]["engine"] == "duckdb"
    assert not np.array_equal(table.column("cld").to_numpy(), first["score"].to_numpy())


def test_store_false_writes_nothing(lake):
    before = lake_hash(lake.path)
    df = cld_lake.score(lake, store=False)
    assert len(df) == lake.split("train").num_samples
    assert lake_hash(lake.path) == before


def test_known_values(tmp_path):
    """d proportional to u: +1; opposite: -1; constant d: 0 (degenerate); NaN loss: NaN, even
    though the authors' code would rank it first."""
    val = np.array([[4.0, 2.0, 1.5, 1.4, 1.0]] * 3)
    u = np.diff(val[0])
    rows = np.array(
        [
            np.concatenate([[3.0], 3.0 + np.cumsum(2 * u)]),
            np.concatenate([[3.0], 3.0 - np.cumsum(u)]),
            [5.0, 4.0, 3.0, 2.0, 1.0],
            [1.0, np.nan, 1.0, 1.0, 1.0],
        ]
    )
    lake = Lake.create(tmp_path / "lake", num_classes=1)
    spec_rows = {"train": rows, "val": val}
    for name, loss in spec_rows.items():
        with SplitWriter(lake, name) as w:
            w.append_columns(
                list(range(5)),
                lambda a, b, x=loss: {"loss": x[a:b]},
                num_rows=len(loss),
                channels={"loss": "float64"},
                new_samples=(np.arange(len(loss)), np.zeros(len(loss), np.int64)),
            )
    result = compute_cld(lake, store=False)
    np.testing.assert_allclose(result.scores[:3], [1.0, -1.0, 0.0], atol=1e-12)
    assert np.isnan(result.scores[3])
    assert result.provenance["nan"] == 1 and result.provenance["degenerate"] == 1


def test_fallback_global_flags_rows(tmp_path):
    spec = build_spec(seed=5, n_train=80, n_val=30, n_checkpoints=6, n_classes=4, missing_classes=2)
    lake = write_lake(tmp_path / "lake", spec)
    with pytest.raises(ScoringError, match="fallback='global'"):  # a Python caller's spelling
        cld_lake.score(lake)
    assert not has_scores(lake)
    result = compute_cld(lake, fallback="global")
    missing = np.setdiff1d(np.unique(spec.train.labels), spec.val.labels)
    assert len(missing) == 2
    assert result.provenance["fallback"] == int(np.isin(spec.train.labels, missing).sum())
    assert result.provenance["fallback_classes"] == missing.tolist()


def test_checkpoints_are_the_intersection_of_train_and_val(tmp_path):
    spec = build_spec(
        seed=9, n_train=50, n_val=20, n_checkpoints=6, n_classes=2, extra_train_checkpoints=2
    )
    lake = write_lake(tmp_path / "lake", spec)
    assert len(lake.split("train").checkpoint_ids) == 8
    result = compute_cld(lake, checkpoints="1:", store=False)
    assert result.provenance["checkpoint_ids"] == spec.common_checkpoints[1:].tolist()


def test_a_window_is_recorded_as_written_whether_text_or_slice(tmp_path):
    """Regression: a ``slice`` window was stored as ``slice(1, None, 2)``, which no reader
    parses; it is ``1::2``, as the same window given as text."""
    spec = build_spec(seed=9, n_train=50, n_val=20, n_checkpoints=8, n_classes=2)
    lake = write_lake(tmp_path / "lake", spec)
    text = compute_cld(lake, checkpoints="1::2", store=False)
    sliced = compute_cld(lake, checkpoints=slice(1, None, 2), name="s")
    assert text.provenance["window"] == sliced.provenance["window"] == "1::2"
    np.testing.assert_array_equal(text.scores, sliced.scores)
    assert text.provenance["checkpoint_ids"] == spec.common_checkpoints[1::2].tolist()
    # cld records what every method records: its window and the columns of its pass
    assert sliced.provenance["used_checkpoints"] == sliced.provenance["checkpoints"]
    assert sliced.provenance["computed_with"] == ["s"]
    assert stale_scores(lake.reload()) == {}


def test_val_rows_with_nonfinite_loss_are_left_out_and_counted(tmp_path):
    spec = build_spec(
        seed=2, n_train=40, n_val=60, n_checkpoints=5, n_classes=2, p={"nonfinite": 0.05}
    )
    lake = write_lake(tmp_path / "lake", spec)
    bad_val = int((~np.isfinite(spec.val.stored(spec.dtype))).any(axis=1).sum())
    assert bad_val > 0
    assert compute_cld(lake, store=False).provenance["val_left_out"] == bad_val


# --- bad input: one clear error, nothing written ------------------------------------------
def _train_only(tmp_path, spec):
    lake = Lake.create(tmp_path / "lake", num_classes=spec.num_classes)
    write_split(lake, "train", spec.train, spec.dtype)
    return lake.reload()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"checkpoints": "0:2"}, "selects 2 of the 8"),
        ({"checkpoints": "::5"}, "selects 2 of the 8"),
        ({"checkpoints": "a:b"}, "START:STOP"),
        # a Python caller is told its parameters (the CLI, its flags: test_score_defaults.py)
        ({"engine": "spark"}, "engine='spark'"),
        ({"method": "el2n"}, "method='el2n'"),
        ({"name": "label"}, "name='label'"),
        ({"name": "1x"}, "name='1x'"),
        ({"fallback": "nearest"}, "fallback='nearest'"),
    ],
)
def test_bad_options_raise_and_write_nothing(lake, kwargs, match):
    before = lake_hash(lake.path)
    with pytest.raises(cld_lake.CldLakeError, match=match):
        compute_cld(lake, **kwargs)
    assert lake_hash(lake.path) == before


def test_no_validation_split(tmp_path, spec):
    lake = _train_only(tmp_path, spec)
    with pytest.raises(ScoringError, match="needs a val split"):
        compute_cld(lake)


def test_fewer_than_three_common_checkpoints(tmp_path):
    spec = build_spec(seed=1, n_train=30, n_val=10, n_checkpoints=2, n_classes=2)
    lake = write_lake(tmp_path / "lake", spec)
    with pytest.raises(ScoringError, match="at least 3 checkpoints committed in both"):
        compute_cld(lake)


def test_dask_engine_starts_its_own_local_cluster(lake, spec):
    """Without an active client the engine runs (and closes) a LocalCluster of processes."""
    pytest.importorskip("distributed")
    result = compute_cld(lake, engine="dask", store=False, engine_options={"n_workers": 2})
    expected = compute_cld(lake, engine="numpy", store=False)
    np.testing.assert_array_equal(result.scores, expected.scores)


# --- CLI ---------------------------------------------------------------------------------
def test_cli_score_and_info(cli, lake):
    res = cli("score", lake.path, "--engine", "duckdb", "--checkpoints", "0:6", "--name", "c6")
    assert res.code == 0, res.err
    assert "stored as column 'c6'" in res.out and res.err == ""
    res = cli("info", lake.path)
    assert res.code == 0
    line = next(x for x in res.out.splitlines() if "score c6" in x)
    assert "method=cld" in line and "engine=duckdb" in line and "nan=" in line
    table = pq.read_table(scores_file(lake))
    assert "c6" in table.column_names


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--checkpoints", "0:2"], "--checkpoints 0:2"),
        (["--engine", "spark"], "--engine"),
        (["--name", "sample_id"], "--name"),
    ],
)
def test_cli_bad_input_exit_2_one_line(cli, lake, args, match):
    before = lake_hash(lake.path)
    res = cli("score", lake.path, *args)
    assert res.code == 2
    assert res.err.startswith("cld-lake: error:") and match in res.err
    assert len(res.err.strip().splitlines()) == 1 and "Traceback" not in res.err
    assert lake_hash(lake.path) == before


def test_cli_missing_val_and_missing_classes(cli, tmp_path, spec):
    lake = _train_only(tmp_path, spec)
    res = cli("score", lake.path)
    assert res.code == 2 and "val split" in res.err and len(res.err.strip().splitlines()) == 1
    spec2 = build_spec(
        seed=5, n_train=60, n_val=20, n_checkpoints=5, n_classes=3, missing_classes=1
    )
    lake2 = write_lake(tmp_path / "lake2", spec2)
    before = lake_hash(lake2.path)
    res = cli("score", lake2.path)
    assert res.code == 2 and "--fallback global" in res.err
    assert lake_hash(lake2.path) == before
    assert cli("score", lake2.path, "--fallback", "global").code == 0


def test_scoring_does_not_import_torch(lake):
    path = str(lake.path)
    code = (
        "import sys, cld_lake\n"
        f"cld_lake.score({path!r}, engine='numpy')\n"
        f"cld_lake.score({path!r}, engine='duckdb', name='d')\n"
        f"cld_lake.score({path!r}, engine='polars', name='p')\n"
        "sys.exit(1 if 'torch' in sys.modules else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_import_cld_lake_stays_light():
    code = (
        "import sys, cld_lake; "
        "heavy = [m for m in ('torch', 'polars', 'duckdb', 'dask', 'distributed') if m in sys.modules]; "
        "print(heavy); sys.exit(bool(heavy) or not callable(cld_lake.score))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_store_streams_in_batches_across_row_groups(lake, monkeypatch):
    """Tiny store batches: the copied columns and the new one stay aligned row by row."""
    from cld_lake.lake import scores as _store

    monkeypatch.setattr(_store, "BATCH_ROWS", 7)
    first = cld_lake.score(lake, name="a")
    second = cld_lake.score(lake, checkpoints="::2", name="b")
    monkeypatch.setattr(_store, "BATCH_ROWS", 11)  # old file has row groups of 7
    third = cld_lake.score(lake, checkpoints="1:", name="a", force=True)
    table = pq.read_table(scores_file(lake))
    assert table.column_names == ["sample_id", "label", "a", "b"]
    np.testing.assert_array_equal(table.column("b").to_numpy(), second["score"].to_numpy())
    np.testing.assert_array_equal(table.column("a").to_numpy(), third["score"].to_numpy())
    assert not np.array_equal(first["score"].to_numpy(), third["score"].to_numpy(), equal_nan=True)
    np.testing.assert_array_equal(
        table.column("sample_id").to_numpy(), lake.split("train").sample_ids
    )


def test_scores_follow_sample_ids_when_the_train_rows_change(tmp_path, spec):
    """A scores table written for another row order is re-aligned by sample_id."""
    import pyarrow as pa

    lake = write_lake(tmp_path / "lake", spec)
    ids = lake.split("train").sample_ids
    from tests.conftest import write_scores_table

    old = pa.table(
        {"sample_id": ids[::-1], "label": lake.split("train").labels[::-1], "old": ids[::-1] * 1.0}
    )
    write_scores_table(lake.path / "scores.parquet", old)  # valid, another row order
    cld_lake.score(lake)
    table = pq.read_table(scores_file(lake))
    np.testing.assert_array_equal(table.column("sample_id").to_numpy(), ids)
    np.testing.assert_array_equal(table.column("old").to_numpy(), ids * 1.0)
