"""Hypothesis strategies for small lakes, shared by the test modules.

``lake_specs()`` draws a :class:`LakeSpec`: train and val trajectories (random shapes, classes,
NaN/inf, constant rows, exact ties, linear rows, classes missing from validation, train-only
checkpoints, shuffled sample ids, stored dtype); ``write_lake(path, spec)`` writes it as a real
lake with tiny chunks so row blocks cross chunk boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

from cld_lake.lake import Lake
from cld_lake.lake.writer import SplitWriter


@dataclass(frozen=True)
class SplitSpec:
    sample_ids: np.ndarray  # (N,) int64, unique
    labels: np.ndarray  # (N,) int64
    loss: np.ndarray  # (N, T) float64: the original values
    checkpoints: np.ndarray  # (T,) int64, ascending

    def stored(self, dtype: str) -> np.ndarray:
        """The values as the lake stores them, widened to float64."""
        return self.loss.astype(dtype).astype(np.float64)


@dataclass(frozen=True)
class LakeSpec:
    train: SplitSpec
    val: SplitSpec
    num_classes: int
    dtype: str  # stored loss dtype

    @property
    def common_checkpoints(self) -> np.ndarray:
        return np.intersect1d(self.train.checkpoints, self.val.checkpoints)

    def selected(
        self, split: SplitSpec, checkpoints: np.ndarray, stored: bool = True
    ) -> np.ndarray:
        """Columns of ``split`` at ``checkpoints`` (stored or original values)."""
        cols = np.searchsorted(split.checkpoints, checkpoints)
        values = split.stored(self.dtype) if stored else split.loss
        return values[:, cols]


def _trajectories(rng: np.random.Generator, n: int, t: int, p: dict[str, float]) -> np.ndarray:
    """Decaying curves plus noise, with special rows mixed in."""
    steps = np.arange(t)
    start = rng.uniform(0.5, 5.0, (n, 1))
    rate = rng.uniform(0.05, 1.0, (n, 1))
    loss = start * np.exp(-rate * steps) + rng.normal(0, 0.3, (n, t))
    kind = rng.random(n)
    edges = np.cumsum([p["constant"], p["ties"], p["linear"]])
    const = kind < edges[0]
    loss[const] = rng.integers(0, 8, (int(const.sum()), 1)) / 4.0
    ties = (kind >= edges[0]) & (kind < edges[1])  # few distinct, exactly representable values
    loss[ties] = rng.integers(0, 4, (int(ties.sum()), t)) / 4.0
    linear = (kind >= edges[1]) & (kind < edges[2])  # exactly constant differences
    loss[linear] = (8 - steps)[None, :] * rng.integers(1, 4, (int(linear.sum()), 1)) / 8.0
    bad = rng.random((n, t)) < p["nonfinite"]
    loss[bad] = rng.choice([np.nan, np.inf, -np.inf], int(bad.sum()))
    return loss


def build_spec(
    seed: int,
    n_train: int,
    n_val: int,
    n_checkpoints: int,
    n_classes: int,
    p: dict[str, float] | None = None,
    dtype: str = "float32",
    extra_train_checkpoints: int = 0,
    missing_classes: int = 0,
    constant_val_class: bool = False,
    id_offset: int = 0,
) -> LakeSpec:
    """A deterministic small lake; ``p`` gives the shares of special rows (``constant``,
    ``ties``, ``linear``) and of non-finite values (``nonfinite``)."""
    p = {"constant": 0.1, "ties": 0.1, "linear": 0.05, "nonfinite": 0.02, **(p or {})}
    rng = np.random.default_rng(seed)
    c, n, t = n_classes, n_train, n_checkpoints
    m = max(n_val, c)
    # checkpoint ids: the common ones, plus a few the train split alone has
    common = np.sort(rng.choice(np.arange(3 * t), t, replace=False))
    train_only = np.setdiff1d(np.arange(3 * t + 3), common)[:extra_train_checkpoints]
    train_ckpts = np.sort(np.concatenate([common, train_only]))
    train_labels = rng.integers(0, c, n)
    val_labels = np.concatenate([np.arange(c), rng.integers(0, c, m - c)])
    gone = rng.choice(c, min(missing_classes, c - 1), replace=False)
    val_labels = rng.permutation(val_labels[~np.isin(val_labels, gone)])
    val = _trajectories(rng, len(val_labels), t, p)
    if constant_val_class:  # a class whose validation rows are all constant: u_c constant
        rows = val_labels == val_labels[0]
        val[rows] = rng.integers(0, 8, (int(rows.sum()), 1)) / 4.0
    train = _trajectories(rng, n, len(train_ckpts), p)
    return LakeSpec(
        train=SplitSpec(
            rng.permutation(n).astype(np.int64) + id_offset, train_labels, train, train_ckpts
        ),
        val=SplitSpec(np.arange(len(val_labels), dtype=np.int64), val_labels, val, common),
        num_classes=c,
        dtype=dtype,
    )


@st.composite
def lake_specs(
    draw: st.DrawFn,
    max_train: int = 60,
    max_val: int = 30,
    min_checkpoints: int = 3,
    max_checkpoints: int = 9,
    max_classes: int = 5,
    dtypes: tuple[str, ...] = ("float32", "float64", "float16"),
    allow_missing_classes: bool = True,
) -> LakeSpec:
    """A random small lake (see the module docstring)."""
    c = draw(st.integers(1, max_classes))
    return build_spec(
        seed=draw(st.integers(0, 2**32 - 1)),
        n_train=draw(st.integers(1, max_train)),
        n_val=draw(st.integers(c, max(c, max_val))),
        n_checkpoints=draw(st.integers(min_checkpoints, max_checkpoints)),
        n_classes=c,
        p={
            "constant": draw(st.sampled_from([0.0, 0.1, 0.3])),
            "ties": draw(st.sampled_from([0.0, 0.1, 0.3])),
            "linear": draw(st.sampled_from([0.0, 0.1])),
            "nonfinite": draw(st.sampled_from([0.0, 0.02, 0.1])),
        },
        dtype=draw(st.sampled_from(dtypes)),
        extra_train_checkpoints=draw(st.integers(0, 2)),
        missing_classes=min(c - 1, draw(st.sampled_from([0, 0, 0, 1, 2])))
        if allow_missing_classes
        else 0,
        constant_val_class=draw(st.booleans()),
        id_offset=draw(st.sampled_from([0, 1000])),
    )


def write_split(lake: Lake, name: str, spec: SplitSpec, dtype: str, row_chunk: int = 16) -> None:
    """Write ``spec`` as split ``name`` in one bulk commit."""
    with SplitWriter(lake, name, row_chunk=row_chunk, num_classes=lake.num_classes) as writer:
        writer.append_columns(
            spec.checkpoints.tolist(),
            lambda a, b: {"loss": spec.loss[a:b]},
            num_rows=len(spec.sample_ids),
            channels={"loss": dtype},
            new_samples=(spec.sample_ids, spec.labels),
        )


def write_lake(path: str | Path, spec: LakeSpec, row_chunk: int = 16, val: bool = True) -> Lake:
    """A real lake on disk holding ``spec`` (train, and val unless ``val=False``)."""
    lake = Lake.create(path, num_classes=spec.num_classes)
    write_split(lake, "train", spec.train, spec.dtype, row_chunk)
    if val and len(spec.val.sample_ids):
        write_split(lake, "val", spec.val, spec.dtype, row_chunk)
    return lake.reload()


@st.composite
def target_split_specs(draw: st.DrawFn, spec: LakeSpec, max_rows: int = 25) -> SplitSpec:
    """A reference split for ``spec`` (``test`` or a target): its own rows, groups (all, some
    or one of the lake's: groups of train may be missing), NaN/inf, constant rows and ties,
    and checkpoints that are a random subset of train's (sometimes fewer than 3 in common)
    plus a few train does not have."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    train_ckpts = spec.train.checkpoints
    fewer = draw(st.integers(0, 5)) == 0  # sometimes fewer than 3 checkpoints in common
    common = 2 if fewer else draw(st.integers(3, len(train_ckpts)))
    chosen = rng.choice(train_ckpts, common, replace=False)
    beyond = train_ckpts.max() + 1 + np.arange(draw(st.integers(0, 2)))
    ckpts = np.sort(np.concatenate([chosen, beyond])).astype(np.int64)
    n = draw(st.integers(1, max_rows))
    some = draw(st.integers(0, 2)) == 0  # sometimes groups of train without a sample here
    kept = draw(st.integers(1, spec.num_classes)) if some else spec.num_classes
    groups = rng.permutation(spec.num_classes)[:kept]
    labels = rng.choice(groups, n).astype(np.int64)
    p = {
        "constant": draw(st.sampled_from([0.0, 0.2])),
        "ties": draw(st.sampled_from([0.0, 0.2])),
        "linear": draw(st.sampled_from([0.0, 0.1])),
        "nonfinite": draw(st.sampled_from([0.0, 0.05, 0.2])),
    }
    loss = _trajectories(rng, n, len(ckpts), p)
    ids = (rng.permutation(n) + 10_000).astype(np.int64)
    return SplitSpec(ids, labels, loss, ckpts)
