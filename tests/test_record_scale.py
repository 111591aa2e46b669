"""The distributed commit at scale: ranks send their values to the writing rank block by block
(no gather of a whole checkpoint). Real 2-rank gloo process groups.

- the lake equals, byte for byte, a single-process recording of the same batches (ranks'
  batches in rank order): ids 0..N-1 and non-consecutive ids, several row blocks, padding and
  local duplicates (the ``first`` rule), missing samples, NaN losses, el2n, float16 margins;
- every refusal (unknown ids, a label that differs, duplicates under ``"error"``, missing
  samples, an existing checkpoint, two labels for one sample of a new split) says what the
  single-process commit says, on both ranks, and leaves no segment behind;
- the writing rank's memory for a commit does not grow with what the other ranks recorded.

Run as a script, this file is one rank of the job (see ``worker``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests import _ranks

WORLD = 2
BATCH = 8192


def _logits(ids: np.ndarray, classes: int, salt: float) -> torch.Tensor:
    """Logits that depend on the sample, the checkpoint and the rank (``salt``): a value a
    rank records differs from another rank's for the same sample, so the ``first`` rule shows."""
    x = np.sin(ids[:, None] * 0.7 + salt + np.arange(classes) * 2.1) * 4.0
    return torch.from_numpy(x.astype(np.float32))


def _sampler_order(n: int, seed: int) -> np.ndarray:
    """DistributedSampler's order: a permutation padded with its first items to a multiple
    of the world size (rank r takes every WORLD-th item from r)."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.concatenate([perm, perm[: (-n) % WORLD]])


# Each case: a lake, a split, the recorder's options, and its commits; a commit's feed gives
# the (ids, labels, nan mask) one rank adds, and what the commit should do.
CASES: dict[str, dict[str, Any]] = {
    "consecutive": {"n": 70_001, "classes": 5, "kw": {}, "ids": lambda i: i},
    "sparse": {
        "n": 70_000,
        "classes": 7,
        "kw": {"channels": ("loss", "correct", "margin", "el2n"), "margin_dtype": "float16"},
        "ids": lambda i: 3 * i + 10,
    },
}


def feed(case: str, ckpt: int, rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sample ids, labels, NaN rows) rank ``rank`` adds at checkpoint ``ckpt``."""
    spec = CASES[case]
    n, classes = spec["n"], spec["classes"]
    order = _sampler_order(n, seed=ckpt)[rank::WORLD]
    if rank == 0:  # a sample this rank sees twice: its first value is kept
        order = np.concatenate([order, order[:3]])
    if ckpt == 2:  # some samples not recorded (allow_missing) and some NaN losses
        order = order[order % 7 != 0]
    ids = spec["ids"](order).astype(np.int64)
    labels = order % classes
    nan = (order % 11 == 0) if ckpt == 2 else np.zeros(len(order), bool)
    return ids, labels, nan


def record(rec: Any, case: str, ckpt: int, ranks: list[int]) -> Any:
    """Add the feeds of ``ranks`` (in order) to ``rec`` in batches and commit ``ckpt``."""
    classes = CASES[case]["classes"]
    for rank in ranks:
        ids, labels, nan = feed(case, ckpt, rank)
        for a in range(0, len(ids), BATCH):
            logits = _logits(ids[a : a + BATCH], classes, salt=ckpt + 0.1 * rank)
            logits[torch.from_numpy(nan[a : a + BATCH])] = float("nan")
            rec.update(ids[a : a + BATCH], logits, torch.from_numpy(labels[a : a + BATCH]))
    return rec.commit(ckpt, epoch=ckpt, step=10 * ckpt, allow_missing=ckpt == 2)


# Refusals: (name, recorder options, commit, what each rank adds); run on a lake whose split
# "train" holds ids 0..999 (labels id % 3) and checkpoint 0, or on a new split ("fresh").
SMALL_N, SMALL_C = 1000, 3


def _small(ids: list[int] | np.ndarray, labels: Any = None) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(ids, np.int64)
    return ids, (ids % SMALL_C) if labels is None else np.asarray(labels, np.int64)


def refusals() -> Iterator[tuple[str, str, dict[str, Any], int, list[tuple[np.ndarray, ...]]]]:
    every = np.arange(SMALL_N)
    half0, half1 = every[:500], every[500:]
    yield "unknown ids", "train", {}, 1, [_small(half0), _small([*half1, 5000, -3, 7000])]
    wrong0 = _small(half0, np.where(half0 == 401, (401 + 1) % SMALL_C, half0 % SMALL_C))
    wrong1 = _small(half1, np.where(half1 == 500, (500 + 1) % SMALL_C, half1 % SMALL_C))
    yield "label differs", "train", {}, 1, [wrong0, wrong1]  # rank 0's comes first
    dup = [_small(half0), _small([*half1, 3, 4])]
    yield "duplicates", "train", {"duplicates": "error"}, 1, dup
    yield "missing", "train", {}, 1, [_small(half0[::2]), _small(half1)]
    yield "exists", "train", {}, 0, [_small(half0), _small(half1)]
    clash = [_small([1, 2, 3], [0, 1, 2]), _small([3, 4], [1, 1])]
    yield "two labels", "fresh", {}, 0, clash
    yield "new duplicates", "fresh", {"duplicates": "error"}, 0, [_small([1, 2]), _small([2, 3])]


def _add(rec: Any, parts: list[tuple[np.ndarray, ...]]) -> None:
    for ids, labels in parts:
        rec.update(ids, _logits(ids, SMALL_C, salt=0.0), torch.from_numpy(labels))


def refusal_messages(lake: Path, parts_of: Any, make: Any) -> dict[str, str]:
    """Each refusal's message (the lake's path replaced by LAKE)."""
    from cld_lake.errors import CldLakeError

    out = {}
    for name, split, kw, ckpt, parts in refusals():
        rec = make(lake, split, kw)
        try:
            _add(rec, parts_of(parts))
            rec.commit(ckpt)
            out[name] = "committed"
        except CldLakeError as exc:
            out[name] = f"{type(exc).__name__}: {exc}".replace(str(lake), "LAKE")
    return out


def worker(root: str) -> None:
    import torch.distributed as dist

    from cld_lake.torch import LossRecorder, _distributed

    _distributed.COMMIT_BLOCK_ROWS = 1  # one chunk (65,536 rows) per block: several blocks
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    out = Path(root)
    summaries = {}
    for case, spec in CASES.items():
        rec = LossRecorder(out / f"{case}.lake", "train", spec["classes"], **spec["kw"])
        for ckpt in (0, 1, 2):
            s = record(rec, case, ckpt, [rank])
            summaries[f"{case}/{ckpt}"] = [s.num_samples, s.mean_loss, s.accuracy]
    lake = out / "small.lake"
    rec = LossRecorder(lake, "train", SMALL_C)
    _add(rec, [_small(np.arange(SMALL_N)[rank::WORLD])])
    rec.commit(0)
    messages = refusal_messages(
        lake,
        lambda parts: [parts[rank]],
        lambda lake, split, kw: LossRecorder(lake, split, SMALL_C, **kw),
    )
    (out / f"rank{rank}.json").write_text(
        json.dumps({"summaries": summaries, "messages": messages})
    )
    dist.destroy_process_group()


def memory_worker(root: str, n: str) -> None:
    """Rank 0 records 1/16 of the samples, rank 1 the rest; rank 0 reports how much its
    resident memory grew during the second commit (an existing split)."""
    import torch.distributed as dist

    from cld_lake.torch import LossRecorder

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    ids = np.arange(int(n))
    mine = ids[ids % 16 == 0] if rank == 0 else ids[ids % 16 != 0]
    rec = LossRecorder(Path(root) / "mem.lake", "train", 10)
    growth = []
    for ckpt in (0, 1):
        for a in range(0, len(mine), 1 << 16):
            part = mine[a : a + (1 << 16)]
            rec.update(part, _logits(part, 10, salt=ckpt), torch.from_numpy(part % 10))
        rec._to_host()  # the recorded values are on the host before the commit starts
        before = _rss_mb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # peak := now
        rec.commit(ckpt)
        growth.append(_rss_mb("VmHWM") - before)
    (Path(root) / f"mem{rank}.json").write_text(json.dumps(growth))
    dist.destroy_process_group()


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def run_ranks(*args: str) -> None:
    _ranks.run_ranks(__file__, *args, world=WORLD, timeout=300)


def _same_lake(got_path: Path, want_path: Path, split: str = "train") -> None:
    import cld_lake

    got, want = (
        cld_lake.open_lake(got_path).split(split),
        cld_lake.open_lake(want_path).split(split),
    )
    np.testing.assert_array_equal(got.sample_ids, want.sample_ids)
    np.testing.assert_array_equal(got.labels, want.labels)
    assert got.channels == want.channels
    assert got.meta["ids_sha1"] == want.meta["ids_sha1"]
    assert (
        got.meta["samples"] == want.meta["samples"] and got.meta["classes"] == want.meta["classes"]
    )
    cols = ["checkpoint", "epoch", "step", "nonfinite"]
    assert got.checkpoint_table.select(cols).equals(want.checkpoint_table.select(cols))
    channels = list(want.channels)
    for bg, bw in zip(got.blocks(channels=channels), want.blocks(channels=channels), strict=True):
        for c in channels:
            a, b = bg.values[c], bw.values[c]
            assert a.dtype == b.dtype and a.shape == b.shape, c
            assert np.array_equal(a.view(np.uint8), b.view(np.uint8)), f"{c} differs"


@pytest.mark.slow  # ~20 s here: two real processes, each paying torch's import
def test_two_ranks_write_what_one_process_writes(tmp_path: Path) -> None:
    import cld_lake
    from cld_lake.torch import LossRecorder

    run_ranks(str(tmp_path))
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    for case, spec in CASES.items():
        ref = tmp_path / f"{case}-ref.lake"
        rec = LossRecorder(ref, "train", spec["classes"], duplicates="first", **spec["kw"])
        for ckpt in (0, 1, 2):
            s = record(rec, case, ckpt, list(range(WORLD)))
            for r in results:
                num, mean, acc = r["summaries"][f"{case}/{ckpt}"]
                assert (num, acc) == (s.num_samples, s.accuracy)
                assert np.isclose(mean, s.mean_loss, rtol=1e-12, equal_nan=True)
        _same_lake(tmp_path / f"{case}.lake", ref)
    nonfinite = _checkpoint_column(tmp_path / "consecutive.lake", "nonfinite")
    assert nonfinite[:2] == [0, 0] and nonfinite[2] > 0  # NaN losses and missing samples

    lake = tmp_path / "small-ref.lake"
    rec = LossRecorder(lake, "train", SMALL_C)
    _add(rec, [_small(np.arange(SMALL_N))])
    rec.commit(0)
    want = refusal_messages(
        lake,
        lambda parts: parts,
        lambda lake, split, kw: LossRecorder(lake, split, SMALL_C, **{"duplicates": "first", **kw}),
    )
    assert "committed" not in want.values(), want
    for r in results:
        assert r["messages"] == want
    # the refused commits left nothing: one segment (checkpoint 0), no split "fresh"
    small = tmp_path / "small.lake"
    assert cld_lake.open_lake(small).splits() == ["train"]
    assert [p.name for p in (small / "splits" / "fresh").iterdir()] == [".writer.lock"]
    assert len(list((small / "splits" / "train" / "segments").iterdir())) == 1


def _checkpoint_column(lake: Path, column: str) -> list[Any]:
    import cld_lake

    return cld_lake.open_lake(lake).split("train").checkpoint_table.column(column).to_pylist()


MEMORY_N = 2_000_000
MEMORY_BOUND_MB = 100  # measured: 30 MB; the gather path grew rank 0 by 253 MB


@pytest.mark.slow  # ~20 s here: two real processes, 2M samples
def test_writing_rank_memory_does_not_grow_with_other_ranks_values(tmp_path: Path) -> None:
    run_ranks(str(tmp_path), "memory", str(MEMORY_N))
    growth = json.loads((tmp_path / "mem0.json").read_text())
    # the second commit (the split exists): a few blocks, not the other rank's 1.9M samples
    assert growth[1] < MEMORY_BOUND_MB, growth


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[2] == "memory":
        memory_worker(sys.argv[1], sys.argv[3])
    else:
        worker(sys.argv[1])
