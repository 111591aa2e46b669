"""The Polars engine in memory flat in N (issue 11): it reads a block only once the scorer took
the sums of the blocks before it, so a slow consumer cannot make it hold the split.

Both tests fail on the engine this replaced (one streaming query over a source of every batch:
Polars pulled the source ahead of a slower consumer; at 250K vs 2M x 48 below its peak RSS grew
1.3x). The second measures peak RSS in a subprocess at N and 8N samples, consumer slowed.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from cld_lake.lake import Lake, open_lake
from cld_lake.lake.writer import SplitWriter
from cld_lake.score import cld_reference, compute_cld
from cld_lake.score._polars import sums
from tests._memory import run_child
from tests.strategies import build_spec, write_lake


def test_polars_reads_no_block_ahead_of_the_sums_it_handed_back(tmp_path):
    spec = build_spec(seed=7, n_train=6000, n_val=200, n_checkpoints=9, n_classes=5)
    lake = write_lake(tmp_path / "lake", spec, row_chunk=512)
    train, val = lake.split("train"), lake.split("val")
    ckpts = spec.common_checkpoints
    ref = cld_reference(
        ((b.loss, b.labels) for b in val.blocks(checkpoints=ckpts)), 5, checkpoints=ckpts
    )
    handed_out: list[int] = []  # rows of each block whose batches all went to Polars
    taken, ahead, sizes = 0, [], []
    for chunk in sums(train, ref, progress=handed_out.append, batch_rows=100):
        time.sleep(0.002)  # a consumer slower than the engine
        sizes.append(len(chunk.labels))
        taken += len(chunk.labels)
        ahead.append(sum(handed_out) - taken)
    assert taken == 6000 and max(sizes) <= 100
    assert max(ahead) <= 0, max(ahead)  # never a block beyond the batch being handed back


MEASURE = """
import json, resource, sys, time
import numpy as np
from cld_lake.lake import open_lake
from cld_lake.score import cld_reference
from cld_lake.score._polars import sums

def current_rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()

def score(path, seconds_per_row):
    lake = open_lake(path)
    train, val = lake.split("train"), lake.split("val")
    ref = cld_reference(((b.loss, b.labels) for b in val.blocks()), lake.num_classes)
    for chunk in sums(train, ref):  # a scorer slower than the engine (a loaded machine)
        time.sleep(len(chunk.labels) * seconds_per_row)

score(sys.argv[2], 0)  # imports and caches everything on a tiny lake first
before = current_rss()
score(sys.argv[1], float(sys.argv[3]))
print(json.dumps({"before": before, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def _synthetic_lake(path: Path, rows: int, checkpoints: int = 48, classes: int = 50) -> Path:
    """Random float32 trajectories written straight into a lake (train and a small val)."""
    lake = Lake.create(path, num_classes=classes)
    rng = np.random.default_rng(rows)
    for split, n in (("train", rows), ("val", 2000)):
        with SplitWriter(lake, split) as w:
            w.append_columns(
                list(range(checkpoints)),
                lambda a, b: {"loss": rng.random((b - a, checkpoints), dtype=np.float32)},
                num_rows=n,
                channels={"loss": "float32"},
                new_samples=(np.arange(n, dtype=np.int64), rng.integers(0, classes, n)),
            )
    return path


def _peak_mib(lake: Path, tiny: Path) -> float:
    return run_child(MEASURE, lake, tiny, "3e-6")["peak"] / 1024


@pytest.mark.slow
def test_polars_peak_rss_is_flat_in_the_number_of_samples(tmp_path):
    tiny = _synthetic_lake(tmp_path / "tiny", 3000)
    small = _synthetic_lake(tmp_path / "small", 250_000)
    big = _synthetic_lake(tmp_path / "big", 2_000_000)
    lake = open_lake(small)  # the scores measured are the numpy engine's
    polars = compute_cld(lake, engine="polars", store=False).scores
    numpy = compute_cld(lake, engine="numpy", store=False).scores
    np.testing.assert_allclose(polars, numpy, rtol=0, atol=1e-9)
    peak_small, peak_big = _peak_mib(small, tiny), _peak_mib(big, tiny)
    assert peak_big <= 1.2 * peak_small, (peak_small, peak_big)
