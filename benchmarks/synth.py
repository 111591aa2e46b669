"""Seeded synthetic loss trajectories, written straight into a lake in row blocks.

ImageNet-like by default: 1.28M train and 12.8K val samples (1%, class balanced), 1000
classes, 90 checkpoints (epochs). Curves decay from about ln(C) towards a per-sample floor at a
per-sample rate, with drops at the learning-rate steps (epochs 30 and 60) and multiplicative
noise; a share of samples is never learned (loss stays high and noisy); class difficulty
scales the floor. Rows are generated in fixed blocks of ``GEN_ROWS`` from
``SeedSequence([seed, split, block])``, so the data do not depend on how the writer reads
them, and memory stays at one block.

Optional channels derived from each loss (``--channels loss,correct,margin,el2n``): with
``p = exp(-loss)`` the labelled class's probability and the largest other class holding a
random share ``f`` of the rest, ``margin = log p - log(f (1 - p))`` (the logit margin),
``correct = margin > 0`` and ``el2n`` the norm of that probability vector minus the one-hot
(the rest spread evenly). Adding channels does not change the losses.

    python -m benchmarks.synth LAKE [--train 1280000] [--val 12800] [--checkpoints 90]
                                    [--classes 1000] [--seed 0] [--non-learned 0.15]
                                    [--channels loss,correct,margin]
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from benchmarks._args import ArgumentParser
from cld_lake.lake import Lake, SampleBlocks, SplitWriter

GEN_ROWS = 65536
PREFETCH = 2  # blocks generated ahead, in background threads
SPLIT_CODES = {"train": 0, "val": 1}


@dataclass(frozen=True)
class SynthConfig:
    train: int = 1_280_000
    val: int = 12_800
    checkpoints: int = 90
    classes: int = 1000
    seed: int = 0
    non_learned: float = 0.15
    dtype: str = "float32"
    channels: tuple[str, ...] = ("loss",)


def labels_for(config: SynthConfig, split: str) -> np.ndarray:
    """Train: uniform random classes; val: class balanced (``val / classes`` per class)."""
    rng = np.random.default_rng([config.seed, SPLIT_CODES[split], 2**31])
    if split == "val":
        return rng.permutation(np.arange(config.val) % config.classes).astype(np.int64)
    return rng.integers(0, config.classes, config.train).astype(np.int64)


def class_difficulty(config: SynthConfig) -> np.ndarray:
    rng = np.random.default_rng([config.seed, 2**32 - 1])
    return rng.uniform(0.4, 1.6, config.classes)


def generate_block(config: SynthConfig, split: str, block: int, labels: np.ndarray) -> np.ndarray:
    """Losses (rows x checkpoints, float64) of rows ``[block * GEN_ROWS, ...)``."""
    rng = np.random.default_rng([config.seed, SPLIT_CODES[split], block])
    n, t = len(labels), config.checkpoints
    epochs = np.arange(t, dtype=np.float64)
    start = np.log(config.classes) * rng.uniform(0.9, 1.1, (n, 1))
    floor = class_difficulty(config)[labels][:, None] * rng.gamma(2.0, 0.15, (n, 1))
    rate = rng.uniform(0.02, 0.12, (n, 1))
    # learning-rate steps of the ImageNet schedule pull the loss down further
    steps = sum(np.clip(epochs - s, 0, None) > 0 for s in (t / 3, 2 * t / 3)).astype(np.float64)
    # level + (start - level) * exp(-rate * epochs), in place: three (n, t) arrays, not six
    # (each operation is the same IEEE operation as the plain expression: same bits)
    level = floor * (1.0 - 0.25 * steps[None, :] / 2)
    scratch = np.multiply(-rate, epochs)
    np.exp(scratch, out=scratch)
    loss = np.subtract(start, level)
    loss *= scratch
    loss += level
    del level
    hard = rng.random(n) < config.non_learned
    loss[hard] = start[hard] * (0.85 + 0.15 * np.exp(-0.01 * epochs))[None, :]
    noise = np.where(hard[:, None], 0.15, 0.05)
    rng.standard_normal(out=scratch)
    scratch *= noise
    loss *= np.exp(scratch, out=scratch)
    return loss


def derived_channels(
    config: SynthConfig, split: str, block: int, loss: np.ndarray
) -> dict[str, np.ndarray]:
    """``correct``, ``margin`` and ``el2n`` consistent with ``loss`` (see the module docstring),
    from their own random stream (the losses stay the same with or without them)."""
    rng = np.random.default_rng([config.seed, SPLIT_CODES[split], block, 1])
    p = np.clip(np.exp(-loss), 1e-12, 1 - 1e-7)
    rest = 1.0 - p
    top = rng.uniform(0.3, 1.0, loss.shape) * rest  # the largest other class
    spread = (rest - top) ** 2 / max(config.classes - 2, 1)  # the others, evenly
    margin = np.log(p) - np.log(top)
    return {
        "correct": margin > 0,
        "margin": margin,
        "el2n": np.sqrt(rest**2 + top**2 + spread),
    }


class RowSource:
    """``read_rows(a, b)`` for SplitWriter.append_columns, generating fixed blocks on demand.

    ``labels`` is the split's whole label array, or None to draw the labels block by block
    (the same values, see :func:`label_blocks`). Read in order, as the writer does, the next
    ``PREFETCH`` blocks are generated in background threads (NumPy releases the GIL) while
    the writer checks and writes the earlier ones.
    """

    def __init__(self, config: SynthConfig, split: str, labels: np.ndarray | None = None) -> None:
        self.config, self.split, self.labels = config, split, labels
        self.num_rows = config.train if split == "train" else config.val
        self._dtypes = _channel_dtypes(config)
        self._labels = label_blocks(config, split) if labels is None else None
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: dict[int, Future[dict[str, np.ndarray]]] = {}
        self._next_label_block = 0
        self._cached: tuple[int, dict[str, np.ndarray]] | None = None

    def _block_labels(self, index: int) -> np.ndarray:
        if self.labels is not None:
            return self.labels[index * GEN_ROWS : (index + 1) * GEN_ROWS]
        if index != self._next_label_block:
            raise RuntimeError(f"streamed labels are drawn in order: block {index} requested")
        self._next_label_block += 1
        return next(self._labels)

    def _generate(self, index: int, labels: np.ndarray) -> dict[str, np.ndarray]:
        loss = generate_block(self.config, self.split, index, labels)
        values = {"loss": loss}
        if set(self.config.channels) - {"loss"}:
            values |= derived_channels(self.config, self.split, index, loss)
        # stored dtypes at once: a float16 block in flight is a quarter of its float64 one
        return {c: values[c].astype(self._dtypes[c]) for c in self.config.channels}

    def _schedule(self, first: int) -> None:
        """Blocks ``first .. first + PREFETCH - 1`` queued (labels drawn in order here)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(PREFETCH, thread_name_prefix="synth-gen")
        blocks = -(-self.num_rows // GEN_ROWS)
        for index in range(first, min(first + PREFETCH, blocks)):
            if index not in self._ahead and index >= self._next_label_block:
                labels = self._block_labels(index)
                self._ahead[index] = self._pool.submit(self._generate, index, labels)

    def _block(self, index: int) -> dict[str, np.ndarray]:
        if self._cached is None or self._cached[0] != index:
            self._schedule(index)
            if index not in self._ahead:
                raise RuntimeError(f"synthetic block {index} requested after it was dropped")
            values = self._ahead.pop(index).result()
            self._cached = (index, values)
            self._schedule(index + 1)
        return self._cached[1]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __call__(self, a: int, b: int) -> dict[str, np.ndarray]:
        first, last = a // GEN_ROWS, (b - 1) // GEN_ROWS
        if first == last:  # the writer's blocks are the generator's: no copy
            lo = a - first * GEN_ROWS
            return {c: v[lo : lo + b - a] for c, v in self._block(first).items()}
        parts: dict[str, list[np.ndarray]] = {c: [] for c in self.config.channels}
        for index in range(first, last + 1):
            lo = max(a, index * GEN_ROWS) - index * GEN_ROWS
            hi = min(b, (index + 1) * GEN_ROWS) - index * GEN_ROWS
            for channel, values in self._block(index).items():
                parts[channel].append(values[lo:hi])
        return {c: np.concatenate(v) for c, v in parts.items()}


def label_blocks(config: SynthConfig, split: str) -> Iterator[np.ndarray]:
    """The labels of :func:`labels_for`, ``GEN_ROWS`` at a time, never the whole array for
    train (NumPy's bounded integers drawn in parts continue the same stream)."""
    if split == "val":
        labels = labels_for(config, split)
        for a in range(0, len(labels), GEN_ROWS):
            yield labels[a : a + GEN_ROWS]
        return
    rng = np.random.default_rng([config.seed, SPLIT_CODES[split], 2**31])
    for a in range(0, config.train, GEN_ROWS):
        yield rng.integers(0, config.classes, min(GEN_ROWS, config.train - a)).astype(np.int64)


def _channel_dtypes(config: SynthConfig) -> dict[str, str]:
    dtypes = {"loss": config.dtype, "correct": "bool", "margin": "float32", "el2n": "float32"}
    unknown = set(config.channels) - set(dtypes)
    if unknown or "loss" not in config.channels:
        raise ValueError(f"channels {config.channels}: loss and any of correct, margin, el2n")
    return {c: dtypes[c] for c in config.channels}


def sample_blocks(config: SynthConfig, split: str) -> SampleBlocks:
    """The split's sample ids (``0..n-1``) and labels, ``GEN_ROWS`` at a time."""

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        a = 0
        for labels in label_blocks(config, split):
            yield np.arange(a, a + len(labels), dtype=np.int64), labels
            a += len(labels)

    return SampleBlocks(blocks, num_rows=config.train if split == "train" else config.val)


def synth_lake(path: str | os.PathLike[str], config: SynthConfig | None = None) -> Lake:
    """Write train and val splits of ``config`` into a new lake at ``path`` (memory: a few
    row blocks, whatever the number of samples)."""
    config = config or SynthConfig()
    lake = Lake.create(path, num_classes=config.classes)
    for split, rows in (("train", config.train), ("val", config.val)):
        values = RowSource(config, split)
        try:
            with SplitWriter(lake, split) as writer:
                writer.append_columns(
                    list(range(config.checkpoints)),
                    values,
                    num_rows=rows,
                    channels=_channel_dtypes(config),
                    new_samples=sample_blocks(config, split),
                )
        finally:
            values.close()
    return lake.reload()


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lake")
    defaults = SynthConfig()
    parser.add_argument("--train", type=int, default=defaults.train)
    parser.add_argument("--val", type=int, default=defaults.val)
    parser.add_argument("--checkpoints", type=int, default=defaults.checkpoints)
    parser.add_argument("--classes", type=int, default=defaults.classes)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--non-learned", type=float, default=defaults.non_learned)
    parser.add_argument(
        "--dtype", default=defaults.dtype, choices=["float32", "float16", "float64"]
    )
    parser.add_argument(
        "--channels",
        default=",".join(defaults.channels),
        help="stored channels: loss and any of correct, margin, el2n (comma-separated)",
    )
    args = parser.parse_args(argv)
    config = SynthConfig(
        args.train,
        args.val,
        args.checkpoints,
        args.classes,
        args.seed,
        args.non_learned,
        args.dtype,
        tuple(c.strip() for c in args.channels.split(",")),
    )
    started = time.perf_counter()
    lake = synth_lake(args.lake, config)
    print(f"wrote {lake.root}: {config} in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
