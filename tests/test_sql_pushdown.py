"""Property test of filter pushdown into the ``losses`` scan.

Random predicates over ``sample_id``, ``label`` and ``checkpoint`` using every operator the scan
accepts, with constants drawn inside the real value ranges and at their edges (so ``>`` versus
``>=`` or a wrong NULL rule changes the answer), must give exactly the rows of the same query
over a materialised copy of the view (read by a full scan, nothing pushed down).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cld_lake import sql as lake_sql
from cld_lake.lake import Lake
from tests.conftest import import_arrays

N, T, C = 240, 5, 4
IDS = np.random.default_rng(7).choice(np.arange(100, 2000, 3), N, replace=False)  # gaps, shuffled
COLUMNS = "sample_id, label, checkpoint, loss"


def _edges(values: np.ndarray) -> list[int]:
    lo, hi = int(values.min()), int(values.max())
    return [lo - 1, lo, lo + 1, hi - 1, hi, hi + 1]


CONSTANTS = {
    "sample_id": st.one_of(st.sampled_from(sorted(IDS.tolist())), st.sampled_from(_edges(IDS))),
    "label": st.integers(-1, C),
    "checkpoint": st.integers(-1, T),
}


@st.composite
def comparisons(draw: st.DrawFn) -> str:
    column = draw(st.sampled_from(sorted(CONSTANTS)))
    value = CONSTANTS[column]
    kind = draw(st.sampled_from(["cmp", "between", "in", "null"]))
    if kind == "cmp":
        op = draw(st.sampled_from([">", ">=", "<", "<=", "=", "!=", "<>"]))
        return f"{column} {op} {draw(value)}"
    if kind == "between":
        a, b = draw(value), draw(value)
        return f"{column} BETWEEN {min(a, b)} AND {max(a, b)}"
    if kind == "in":
        return f"{column} IN ({', '.join(map(str, draw(st.lists(value, min_size=1, max_size=4))))})"
    return f"{column} IS {draw(st.sampled_from(['', 'NOT ']))}NULL"


predicates = st.recursive(
    comparisons(),
    lambda inner: st.one_of(
        st.builds(lambda p: f"NOT ({p})", inner),
        st.builds(lambda a, b: f"({a}) AND ({b})", inner, inner),
        st.builds(lambda a, b: f"({a}) OR ({b})", inner, inner),
    ),
    max_leaves=5,
)


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    """One connection: ``losses`` (pushdown, blocks of 16 rows) and ``full_copy`` (no pushdown)."""
    d = tmp_path_factory.mktemp("pushdown")
    rng = np.random.default_rng(8)
    loss = rng.random((N, T)).astype(np.float32)
    labels = rng.integers(0, C, N)
    import_arrays(d, d / "lake", loss=loss, labels=labels, sample_ids=IDS, row_chunk=32)
    connection = lake_sql.connect(Lake(d / "lake"), block_rows=16)
    connection.execute(f"CREATE TABLE full_copy AS SELECT {COLUMNS} FROM losses")
    assert connection.sql("SELECT count(*) FROM full_copy").fetchall() == [(N * T,)]
    yield connection
    connection.close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(where=predicates)
def test_pushdown_equals_a_full_scan(con, where):
    got = con.sql(f"SELECT {COLUMNS} FROM losses WHERE {where} ORDER BY ALL").fetchall()
    want = con.sql(f"SELECT {COLUMNS} FROM full_copy WHERE {where} ORDER BY ALL").fetchall()
    assert got == want, where
