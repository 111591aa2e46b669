"""benchmarks.synth: the streamed generator writes the same lake as the plain whole-array way,
and its memory does not grow with the number of samples."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import synth
from benchmarks.synth import GEN_ROWS, SynthConfig, labels_for, synth_lake
from cld_lake.lake import Lake, open_lake
from cld_lake.lake.writer import SplitWriter

REPO = Path(__file__).resolve().parents[1]


def plain_block(config: SynthConfig, split: str, block: int, labels: np.ndarray) -> np.ndarray:
    """The generator as one plain expression per step (what the in-place version must equal)."""
    rng = np.random.default_rng([config.seed, synth.SPLIT_CODES[split], block])
    n, t = len(labels), config.checkpoints
    epochs = np.arange(t, dtype=np.float64)
    start = np.log(config.classes) * rng.uniform(0.9, 1.1, (n, 1))
    floor = synth.class_difficulty(config)[labels][:, None] * rng.gamma(2.0, 0.15, (n, 1))
    rate = rng.uniform(0.02, 0.12, (n, 1))
    steps = sum(np.clip(epochs - s, 0, None) > 0 for s in (t / 3, 2 * t / 3)).astype(np.float64)
    level = floor * (1.0 - 0.25 * steps[None, :] / 2)
    loss = level + (start - level) * np.exp(-rate * epochs)
    hard = rng.random(n) < config.non_learned
    loss[hard] = start[hard] * (0.85 + 0.15 * np.exp(-0.01 * epochs))[None, :]
    noise = np.where(hard[:, None], 0.15, 0.05)
    return loss * np.exp(noise * rng.standard_normal((n, t)))


def plain_lake(path: Path, config: SynthConfig) -> Lake:
    """The lake written through SplitWriter from whole arrays (ids, labels, values)."""
    lake = Lake.create(path, num_classes=config.classes)
    for split, rows in (("train", config.train), ("val", config.val)):
        labels = labels_for(config, split)
        blocks = [
            plain_block(config, split, i, labels[a : a + GEN_ROWS])
            for i, a in enumerate(range(0, rows, GEN_ROWS))
        ]
        values = np.concatenate(blocks).astype(config.dtype)
        with SplitWriter(lake, split) as writer:
            writer.append_columns(
                list(range(config.checkpoints)),
                lambda a, b, values=values: {"loss": values[a:b]},
                num_rows=rows,
                channels={"loss": config.dtype},
                new_samples=(np.arange(rows, dtype=np.int64), labels),
            )
    return lake.reload()


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_streamed_lake_equals_the_whole_array_lake(tmp_path: Path, dtype: str) -> None:
    config = SynthConfig(train=2 * GEN_ROWS + 1234, val=700, checkpoints=7, classes=13, seed=5)
    config = SynthConfig(**{**config.__dict__, "dtype": dtype})
    streamed = synth_lake(tmp_path / "streamed.lake", config)
    plain = plain_lake(tmp_path / "plain.lake", config)
    for name in ("train", "val"):
        got, want = streamed.split(name), plain.split(name)
        for table in ("samples.parquet", "classes.parquet"):  # the very same files
            assert (got.path / table).read_bytes() == (want.path / table).read_bytes(), table
        for key in ("num_samples", "ids_sha1", "samples", "classes", "channels", "row_chunk"):
            assert got.meta[key] == want.meta[key], key
        for a, b in zip(got.blocks(), want.blocks(), strict=True):
            assert np.array_equal(a.sample_ids, b.sample_ids)
            assert np.array_equal(a.labels, b.labels)
            assert a.loss.dtype == np.dtype(dtype)
            assert np.array_equal(a.loss, b.loss)


def test_label_blocks_continue_one_stream() -> None:
    config = SynthConfig(train=3 * GEN_ROWS - 5, classes=1000, seed=2)
    parts = list(synth.label_blocks(config, "train"))
    assert [len(p) for p in parts] == [GEN_ROWS, GEN_ROWS, GEN_ROWS - 5]
    assert np.array_equal(np.concatenate(parts), labels_for(config, "train"))


CHILD = """
import resource, runpy, sys
sys.argv = ["synth", *sys.argv[1:]]
runpy.run_module("benchmarks.synth", run_name="__main__")
print("peak_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _synth_peak_rss_mb(path: Path, train: int) -> float:
    """Peak RSS of ``python -m benchmarks.synth`` in a fresh process (its own ru_maxrss)."""
    args = [str(path), "--train", str(train), "--val", "1000", "--checkpoints", "2"]
    args += ["--classes", "10", "--dtype", "float16"]
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *args], check=True, cwd=REPO, capture_output=True, text=True
    )
    return int(proc.stdout.split("peak_kb")[-1]) / 1024


def test_memory_does_not_grow_with_samples(tmp_path: Path) -> None:
    """5M samples cost what 64K do: the whole-array way holds ids and labels (int64) and
    copies of them, about 160 MB more at 5M."""
    small = _synth_peak_rss_mb(tmp_path / "small.lake", GEN_ROWS)
    large = _synth_peak_rss_mb(tmp_path / "large.lake", 5_000_000)
    assert open_lake(tmp_path / "large.lake").split("train").num_samples == 5_000_000
    assert large < small + 40, (small, large)


def test_row_source_with_given_labels_equals_streamed_one() -> None:
    """bench_report hands RowSource the whole label array: same rows as the streamed way,
    for the writer's aligned blocks and for ranges across generator blocks."""
    config = SynthConfig(train=2 * GEN_ROWS + 99, checkpoints=4, classes=7, seed=3, dtype="float16")
    given = synth.RowSource(config, "train", labels_for(config, "train"))
    streamed = synth.RowSource(config, "train")
    try:
        cuts = [0, 1000, GEN_ROWS + 5, 2 * GEN_ROWS, config.train]
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            x, y = given(a, b)["loss"], streamed(a, b)["loss"]
            assert x.shape == (b - a, 4) and x.dtype == np.float16
            assert np.array_equal(x, y)
    finally:
        given.close()
        streamed.close()
