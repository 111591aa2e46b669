"""A named-groups import holds a block of ids and names, not N (issue 17, item 1): the process
grows by about the same at 3M rows as at 0.3M (the peak at 10M and 100M is in the report of
the issue)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests._memory import STATUS, grown_mb

CHILD = (
    STATUS
    + """
import json, sys
from cld_lake.lake import import_file
small, big, out = sys.argv[1], sys.argv[2], sys.argv[3]
import_file(out + "/warm", "train", loss=small + "/loss.npy", groups=small + "/groups.npy")
before = status("VmRSS")
import_file(out + "/lake", "train", loss=big + "/loss.npy", groups=big + "/groups.npy")
print(json.dumps({"before": before, "peak": status("VmHWM")}))
"""
)


def _inputs(folder: Path, n: int) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = np.array([f"d{i:04d}" for i in range(1000)])
    np.save(folder / "groups.npy", names[rng.integers(0, 1000, n)])
    np.save(folder / "loss.npy", np.full((n, 1), 0.5, np.float16))
    return folder


def test_a_string_group_import_does_not_hold_its_rows(tmp_path):
    small = _inputs(tmp_path / "small", 1000)
    grown = {}
    for n in (1_000_000, 4_000_000):
        big = _inputs(tmp_path / f"in{n}", n)
        out = tmp_path / f"out{n}"
        out.mkdir()
        grown[n] = grown_mb(CHILD, small, big, out)
    # holding 4M ids and group ids whole (int64) would grow it by 48 MB more than at 1M
    assert grown[4_000_000] < grown[1_000_000] + 16, grown
