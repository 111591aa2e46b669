"""The SQL views stream their Parquet tables: the memory of a query over the scores and
samples views does not grow with the number of samples (issue 11)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cld_lake.lake import Lake, SplitWriter, open_lake
from cld_lake.lake.scores import store_score
from tests._memory import STATUS, run_child

CHILD = (
    STATUS
    + """
import json, sys
import cld_lake

SQL = ("SELECT label, avg(cld) AS m, count(*) AS n FROM scores GROUP BY label "
       "UNION ALL SELECT label, NULL, count(*) FROM samples GROUP BY label")
cld_lake.query(sys.argv[2], SQL)  # imports and caches everything on a tiny lake first
before = status("VmRSS")
rows = cld_lake.query(sys.argv[1], SQL)
print(json.dumps({"before": before, "peak": status("VmHWM"), "rows": rows.height,
                  "n": int(rows["n"].sum())}))
"""
)

ROWS = 3_000_000
# growth over the process's size before the query; reading the samples and scores tables
# whole (as the views did) grows it by about 150 MB at 3M rows
BOUND_MB = 48


def _lake(path: Path, rows: int) -> Path:
    lake = Lake.create(path, num_classes=100)
    rng = np.random.default_rng(0)
    with SplitWriter(lake, "train") as w:
        w.append_columns(
            [0, 1],
            lambda a, b: {"loss": np.full((b - a, 2), 0.5, np.float16)},
            num_rows=rows,
            channels={"loss": "float16"},
            new_samples=(np.arange(rows, dtype=np.int64), rng.integers(0, 100, rows)),
        )
    lake = open_lake(path)
    store_score(lake, lake.split("train"), "cld", rng.uniform(-1, 1, rows), {"method": "cld"})
    return path


@pytest.mark.slow
def test_a_query_over_scores_and_samples_stays_within_a_bound_at_3m_rows(tmp_path):
    big, tiny = _lake(tmp_path / "big", ROWS), _lake(tmp_path / "tiny", 1000)
    got = run_child(CHILD, big, tiny)
    assert got["rows"] == 200 and got["n"] == 2 * ROWS
    growth_mb = (got["peak"] - got["before"]) / 2**20
    assert growth_mb < BOUND_MB, f"query grew the process by {growth_mb:.0f} MB"
