"""An undefined score is null in the scores table: SQL orderings put it last, aggregates skip it.

NumPy keeps NaN (``ScoreResult.scores``, the streaming API); the table, the DataFrame of
``cld_lake.score`` and SQL see null; readers that need NumPy get NaN back.
"""

from __future__ import annotations

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import cld_lake
from cld_lake import sql as lake_sql
from cld_lake.lake.scores import read_scores
from cld_lake.score import compute_cld
from tests.conftest import plant_legacy_scores, scores_file
from tests.strategies import build_spec, write_lake


@pytest.fixture
def scored(tmp_path):
    spec = build_spec(
        seed=8, n_train=200, n_val=40, n_checkpoints=6, n_classes=3, p={"nonfinite": 0.03}
    )
    lake = write_lake(tmp_path / "lake", spec, row_chunk=64)
    result = compute_cld(lake)
    undefined = np.isnan(result.scores)
    assert 0 < undefined.sum() == result.provenance["nan"]
    return lake, result, undefined


def test_the_table_stores_null_not_nan(scored):
    lake, result, undefined = scored
    column = pq.read_table(scores_file(lake)).column("cld")
    assert column.null_count == undefined.sum()
    assert pc.sum(pc.is_nan(column)).as_py() == 0
    np.testing.assert_array_equal(column.is_null().to_numpy(zero_copy_only=False), undefined)
    back = read_scores(lake, ["cld"]).column("cld").to_numpy()  # what readers do: NaN again
    np.testing.assert_array_equal(back, result.scores)


def test_the_dataframe_has_null_and_numpy_keeps_nan(scored):
    lake, result, undefined = scored
    df = cld_lake.score(lake, store=False)
    assert df["score"].null_count() == undefined.sum() and df["score"].is_nan().sum() == 0
    np.testing.assert_array_equal(df["score"].to_numpy(), result.scores)  # null -> NaN


def test_duckdb_orders_undefined_last_and_skips_it_in_aggregates(scored):
    lake, result, undefined = scored
    path = str(scores_file(lake)).replace("'", "''")
    rows = duckdb.sql(f"SELECT cld FROM read_parquet('{path}') ORDER BY cld DESC").fetchall()
    k = int(undefined.sum())
    assert all(v is None for (v,) in rows[-k:]) and all(v is not None for (v,) in rows[:-k])
    [(avg, count)] = duckdb.sql(
        f"SELECT avg(cld), count(cld) FROM read_parquet('{path}')"
    ).fetchall()
    assert count == (~undefined).sum()
    assert avg == pytest.approx(np.nanmean(result.scores), abs=1e-12)


def test_the_sql_view_orders_undefined_last(scored):
    lake, result, undefined = scored
    df = lake_sql.query(lake, "SELECT sample_id, cld FROM scores ORDER BY cld DESC, sample_id")
    k = int(undefined.sum())
    assert df["cld"].tail(k).is_null().all() and df["cld"].head(len(df) - k).null_count() == 0
    means = lake_sql.query(lake, "SELECT avg(cld) AS m FROM scores")
    assert means["m"][0] == pytest.approx(np.nanmean(result.scores), abs=1e-12)


def test_polars_puts_null_last_and_skips_it(scored):
    """NaN would sort above every number; null goes last with ``nulls_last=True``."""
    lake, result, undefined = scored
    df = pl.read_parquet(scores_file(lake))
    ordered = df.sort("cld", descending=True, nulls_last=True)["cld"]
    k = int(undefined.sum())
    assert ordered.tail(k).is_null().all() and ordered.head(len(df) - k).null_count() == 0
    assert df["cld"].mean() == pytest.approx(np.nanmean(result.scores), abs=1e-12)
    in_sql = df.sql("SELECT cld FROM self ORDER BY cld DESC NULLS LAST")["cld"]
    assert in_sql.tail(k).is_null().all()


def test_select_never_picks_an_undefined_score(scored, tmp_path):
    lake, result, undefined = scored
    m = cld_lake.select(lake, "cld", fraction=0.99, out=tmp_path / "m.parquet")
    bad_ids = set(lake.split("train").sample_ids[undefined].tolist())
    assert not bad_ids & set(m.sample_ids.tolist())
    assert m.metadata["nan_scores"] == undefined.sum()


def test_old_nan_columns_become_null_when_the_table_is_rewritten(scored):
    """A table written by an older version (NaN values) is normalised on the next store."""
    lake, result, undefined = scored
    table = pq.read_table(scores_file(lake))
    legacy = pa.array(np.where(undefined, np.nan, 0.5))
    plant_legacy_scores(
        lake.path,
        table.append_column("old", legacy).replace_schema_metadata(table.schema.metadata),
    )
    compute_cld(lake, name="again")
    stored = pq.read_table(scores_file(lake))
    assert stored.column("old").null_count == undefined.sum()
    assert pc.sum(pc.is_nan(stored.column("old"))).as_py() == 0
    assert stored.column("again").null_count == undefined.sum()


def test_realigned_tables_keep_null(scored, tmp_path):
    """Scores carried over by sample_id (train rows changed) stay null where undefined."""
    lake, result, undefined = scored
    table = pq.read_table(scores_file(lake)).replace_schema_metadata(None)  # another tool's
    other_order = table.take(pa.array(np.arange(table.num_rows)[::-1]))
    plant_legacy_scores(lake.path, other_order)
    compute_cld(lake, name="again")
    stored = pq.read_table(scores_file(lake))
    np.testing.assert_array_equal(
        stored.column("sample_id").to_numpy(), lake.split("train").sample_ids
    )
    for name in ("cld", "again"):
        np.testing.assert_array_equal(
            stored.column(name).is_null().to_numpy(zero_copy_only=False), undefined
        )
