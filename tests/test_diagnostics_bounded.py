"""Noise detection and rank stability past ``exact_rows`` (issue 11): streamed (flags as bits,
scores a row group at a time), equal to the whole-column figures where those are exact and
within the reported AUROC bound otherwise, in memory that does not grow with the scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from cld_lake import diagnostics as dg
from cld_lake.errors import BadInputError
from cld_lake.lake import Lake, open_lake
from cld_lake.lake.scores import store_score
from cld_lake.lake.writer import SplitWriter
from tests._memory import grown_mb


def build_lake(path: Path, rows: int, *, noisy: bool = True, ids_step: int = 2) -> Lake:
    """``rows`` train samples (increasing ids when ``ids_step`` > 0), a 20% noisy flag, two
    float16 checkpoints of constant loss (the scores are stored, not computed)."""
    lake = Lake.create(path, num_classes=100)
    rng = np.random.default_rng(0)
    ids = np.arange(rows, dtype=np.int64) * abs(ids_step) + 1
    if ids_step < 0:
        ids = ids[::-1].copy()
    meta = {"noisy": rng.random(rows) < 0.2} if noisy else None
    with SplitWriter(lake, "train", channels={"loss": "float16"}) as w:
        w.declare_samples(ids, rng.integers(0, 100, rows), metadata=meta)
        w.append_columns(
            [0, 1],
            lambda a, b: {"loss": np.full((b - a, 2), 0.5, np.float16)},
            num_rows=rows,
            channels={"loss": "float16"},
        )
    return open_lake(path)


def store(lake: Lake, name: str, values: np.ndarray, direction: str = "higher_keep") -> Lake:
    store_score(lake, lake.split("train"), name, values, {"method": name, "direction": direction})
    return open_lake(lake.path)


def _by_score(rows: list[dict]) -> dict[str, dict]:
    return {r["score"]: r for r in rows}


@pytest.mark.parametrize("ids_step", [3, -1])
def test_streamed_detection_equals_the_exact_one_within_its_bound(tmp_path, ids_step):
    """Continuous scores (AUROC within the bound, precision exact), a score of few values with
    ties and nulls (every figure exact: each bin holds one value), both directions."""
    n = 5000
    lake = build_lake(tmp_path / "lake", n, ids_step=ids_step)
    rng = np.random.default_rng(1)
    flags = lake.split("train").samples_table.column("noisy").to_numpy(zero_copy_only=False)
    smooth = rng.normal(size=n) - 0.8 * flags
    coarse = np.round(smooth, 0)
    coarse[rng.random(n) < 0.05] = np.nan
    lake = store(lake, "smooth", smooth)
    lake = store(lake, "coarse", coarse)
    lake = store(lake, "harder", -coarse, "higher_harder")
    exact = _by_score(dg.noise_detection(lake))
    streamed = _by_score(dg.noise_detection(lake, exact_rows=n - 1))
    for name in ("smooth", "coarse", "harder"):
        e, s = exact[name], streamed[name]
        assert "streamed" not in e and s["streamed"] is True
        for key in ("score", "direction", "scored", "null", "noisy", "noise_rate"):
            assert s[key] == e[key], (name, key)
        assert abs(s["auroc"] - e["auroc"]) <= s["auroc_bound"] + 1e-12, name
        assert s["approximate"] == [] and s["infinite"] == 0
        if ids_step > 0:  # ties by row order are ties by smaller id
            assert s["precision_at_rate"] == e["precision_at_rate"], name
            assert "ties" not in s
        else:
            assert s["ties"] == "row order"
    assert streamed["coarse"]["auroc_bound"] == 0.0  # one value per bin: exact
    assert streamed["coarse"]["auroc"] == pytest.approx(exact["coarse"]["auroc"], abs=1e-12)
    assert streamed["smooth"]["auroc_bound"] < 1e-3  # and the bound can be nonzero
    assert streamed["harder"]["auroc"] == pytest.approx(streamed["coarse"]["auroc"], abs=1e-12)


def test_streamed_detection_refuses_a_lake_without_a_noisy_flag(tmp_path):
    lake = store(build_lake(tmp_path / "lake", 50, noisy=False), "cld", np.linspace(0, 1, 50))
    with pytest.raises(BadInputError, match="noisy"):
        dg.noise_detection(lake, exact_rows=10)


def test_sampled_rank_stability_is_the_spearman_of_every_sth_row(tmp_path):
    n = 3001
    lake = build_lake(tmp_path / "lake", n)
    rng = np.random.default_rng(2)
    a = rng.normal(size=n)
    b = np.round(a + rng.normal(size=n), 1)
    b[rng.random(n) < 0.1] = np.nan
    lake = store(store(lake, "a", a), "b", b)
    whole = dg.rank_stability(lake, "a", "b")
    assert "sampled_every" not in whole
    sampled = dg.rank_stability(lake, "a", "b", exact_rows=1000)
    every = sampled["sampled_every"]
    assert every == 4 and sampled["pairs"] == whole["pairs"] == int(np.isfinite(b).sum())
    ok = np.isfinite(b[::every])
    expected = stats.spearmanr(a[::every][ok], b[::every][ok]).statistic
    assert sampled["sample_pairs"] == int(ok.sum())
    assert sampled["spearman"] == pytest.approx(expected, abs=1e-12)
    assert abs(sampled["spearman"] - whole["spearman"]) < 0.1


# --- peak memory --------------------------------------------------------------------------------

MEASURE = """
import json, sys
from cld_lake import diagnostics as dg
from cld_lake.lake import open_lake

def status(key):  # VmHWM, not ru_maxrss: that one keeps the forking parent's size
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith(key + ":"))

def step(lake, limit):
    lake = open_lake(lake)
    if sys.argv[1] == "stability":
        dg.rank_stability(lake, "cld", "loss", exact_rows=limit)
    else:
        dg.noise_detection(lake, exact_rows=limit)

limit = 10**12 if sys.argv[1] == "whole" else 200_000  # stability: a 200K-row sample
step(sys.argv[3], 10)  # imports and caches everything on a tiny lake first (streamed path)
before = status("VmRSS")
step(sys.argv[2], limit)
print(json.dumps({"before": before, "peak": status("VmHWM")}))
"""

ROWS = 3_000_000
BOUND_MB = 64  # bytes over the process's size before the step


def _grown_mb(step: str, lake: Path, tiny: Path) -> float:
    return grown_mb(MEASURE, step, lake, tiny)


@pytest.mark.timeout(300)
@pytest.mark.slow
def test_streamed_detection_and_stability_stay_within_a_bound_the_whole_read_exceeds(tmp_path):
    rng = np.random.default_rng(3)
    lakes = {}
    for name, rows in (("big", ROWS), ("tiny", 100)):
        lake = build_lake(tmp_path / name, rows)
        lake = store(lake, "cld", rng.uniform(-1, 1, rows))
        store(lake, "loss", rng.uniform(-1, 1, rows), "higher_harder")
        lakes[name] = tmp_path / name
    whole = _grown_mb("whole", lakes["big"], lakes["tiny"])
    assert whole > 2 * BOUND_MB, whole  # the bound can fail: whole columns exceed it
    for step in ("detection", "stability"):
        assert _grown_mb(step, lakes["big"], lakes["tiny"]) < BOUND_MB, step
