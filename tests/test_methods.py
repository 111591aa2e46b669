"""Every scoring method against a plain-NumPy reference written from its definition.

One parity contract for all methods (``compute_scores`` on real lakes with loss, correct,
margin and el2n channels): within 1e-9 of the reference (relative, 1e-12 absolute) on the
stored values, NaN exactly where the reference has NaN, and identical bits at block sizes 1,
n//4 and n+100, with the pieces each block is cut into shrunk to 3 rows (the ``tiny_pieces``
fixture) so piece boundaries fall inside blocks. Hypothesis draws shapes, NaN/inf, rows never
or always correct, the early fraction and the window length. CLD runs in the same pass and
must give the bits ``compute_cld`` gives.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cld_lake._types import Direction, choices
from cld_lake._types import MethodName as MethodLiteral
from cld_lake.errors import ScoringError
from cld_lake.lake import Lake
from cld_lake.lake.writer import SplitWriter
from cld_lake.score import METHOD_ENGINES, METHOD_REGISTRY, METHODS, compute_cld, compute_scores
from tests.cld_reference import reference_cld
from tests.conftest import has_scores


# --- the reference: each definition, row by row, in plain NumPy ------------------------------
def _early(k: int, fraction: float) -> int:
    """First max(1, floor(fraction * k)) checkpoints, with exact rational arithmetic."""
    return max(1, math.floor(Fraction(str(fraction)) * k))


def _rowwise(values: np.ndarray, fn) -> np.ndarray:
    out = np.empty(len(values))
    for i, row in enumerate(values.astype(np.float64)):
        out[i] = fn(row) if np.isfinite(row).all() else np.nan
    return out


def _forgetting_row(correct: np.ndarray) -> float:
    if not correct.any():
        return float(len(correct))  # never learned: ranked above every learned sample
    return float(sum(1 for a, b in zip(correct[:-1], correct[1:], strict=True) if a and not b))


def _windows(p: np.ndarray, j: int) -> list[np.ndarray]:
    return [p[k : k + j] for k in range(len(p) - j + 1)]


def reference_scores(
    method: str,
    loss: np.ndarray,
    correct: np.ndarray,
    margin: np.ndarray,
    el2n: np.ndarray,
    early: float | None,
    j: int,
) -> np.ndarray:
    """The score of every row by ``method``'s definition (docs/scores.md)."""
    k = loss.shape[1]
    cut = _early(k, early if early is not None else (0.15 if method == "dual" else 0.1))
    if method == "mean_loss":
        return _rowwise(loss, np.mean)
    if method == "early_loss":
        return _rowwise(loss[:, :cut], np.mean)
    if method == "confidence":
        return _rowwise(loss, lambda r: np.mean(np.exp(-r)))
    if method == "variability":
        return _rowwise(loss, lambda r: np.std(np.exp(-r)))
    if method == "correctness":
        return correct.mean(axis=1)
    if method == "forgetting":
        return np.array([_forgetting_row(row) for row in correct])
    if method == "aum":
        return _rowwise(margin, np.mean)
    if method == "el2n":
        return _rowwise(el2n[:, :cut], np.mean)
    if method == "dynunc":
        return _rowwise(
            loss, lambda r: np.mean([np.std(w, ddof=1) for w in _windows(np.exp(-r), j)])
        )
    if method == "dual":
        return _rowwise(
            loss[:, :cut],
            lambda r: np.mean(
                [np.std(w, ddof=1) * (1 - np.mean(w)) for w in _windows(np.exp(-r), j)]
            ),
        )
    raise AssertionError(method)


# --- lakes with every channel ----------------------------------------------------------------
def make_values(seed: int, n: int, k: int, nonfinite: float) -> dict[str, np.ndarray]:
    """Losses, correct flags (some rows never / always correct), margins and EL2N values."""
    rng = np.random.default_rng(seed)
    loss = rng.gamma(1.5, 0.8, (n, k)) * np.exp(-0.2 * np.arange(k))
    correct = rng.random((n, k)) < rng.uniform(0, 1, (n, 1))
    kind = rng.random(n)
    correct[kind < 0.15] = False
    correct[kind > 0.9] = True
    margin = rng.normal(0.5, 2.0, (n, k))
    el2n = rng.uniform(0, np.sqrt(2), (n, k))
    ties = rng.random(n) < 0.1  # constant rows: zero spread, exactly
    loss[ties] = rng.integers(0, 4, (int(ties.sum()), 1)) / 4.0
    for values in (loss, margin, el2n):
        bad = rng.random((n, k)) < nonfinite
        values[bad] = rng.choice([np.nan, np.inf, -np.inf], int(bad.sum()))
    return {"loss": loss, "correct": correct, "margin": margin, "el2n": el2n}


def write_method_lake(
    path: Path,
    values: dict[str, np.ndarray],
    labels: np.ndarray,
    num_classes: int,
    loss_dtype: str = "float32",
    val_every: int = 1,
    row_chunk: int = 16,
    channels: tuple[str, ...] = ("loss", "correct", "margin", "el2n"),
) -> Lake:
    """Train with ``channels``; val (loss only, 2 rows per class) at every ``val_every``-th
    train checkpoint, so CLD reads other checkpoints than the train-only methods."""
    n, k = values["loss"].shape
    lake = Lake.create(path, num_classes=num_classes)
    dtypes = {"loss": loss_dtype, "correct": "bool", "margin": "float32", "el2n": "float32"}
    with SplitWriter(lake, "train", row_chunk=row_chunk, num_classes=num_classes) as w:
        w.append_columns(
            list(range(k)),
            lambda a, b: {c: values[c][a:b] for c in channels},
            num_rows=n,
            channels={c: dtypes[c] for c in channels},
            new_samples=(np.arange(n, dtype=np.int64) + 100, labels),
        )
    rng = np.random.default_rng(n + k)
    val_ckpts = list(range(0, k, val_every))
    val_labels = np.repeat(np.arange(num_classes), 2)
    val_loss = rng.gamma(2.0, 0.5, (len(val_labels), len(val_ckpts)))
    with SplitWriter(lake, "val", row_chunk=row_chunk, num_classes=num_classes) as w:
        w.append_columns(
            val_ckpts,
            lambda a, b: {"loss": val_loss[a:b]},
            num_rows=len(val_labels),
            channels={"loss": loss_dtype},
            new_samples=(np.arange(len(val_labels), dtype=np.int64), val_labels),
        )
    return lake.reload()


def stored(lake: Lake, channel: str) -> np.ndarray:
    """The train split's values of ``channel`` as stored, widened to float64 (bool kept)."""
    split = lake.split("train")
    blocks = list(split.blocks(channels=[channel]))
    values = np.concatenate([b.values[channel] for b in blocks])
    return values if values.dtype == bool else values.astype(np.float64)


@pytest.fixture
def tiny_pieces(monkeypatch):
    """Methods see pieces of 3 rows: piece boundaries fall inside every block."""
    import importlib

    monkeypatch.setattr(importlib.import_module("cld_lake.score._passes"), "PIECE_ROWS", 3)


def _valid(method: str, k: int, early: float | None, j: int) -> bool:
    if method == "dynunc":
        return k >= j
    if method == "dual":
        return _early(k, early if early is not None else 0.15) >= j
    return True


def check_parity(lake: Lake, methods: list[str], early: float | None, j: int, engine="numpy"):
    n = lake.split("train").num_samples
    ch = {c: stored(lake, c) for c in ("loss", "correct", "margin", "el2n")}
    uses_j = {"dynunc", "dual"} & set(methods)
    runs = [
        compute_scores(
            lake,
            methods,
            engine=engine,
            early=early,
            window_length=j if uses_j else None,
            block_rows=rows,
            store=False,
        )
        for rows in (1, max(1, n // 4), n + 100)
    ]
    for method in methods:
        first = runs[0][method].scores
        for other in runs[1:]:  # chunk invariance: bit for bit
            np.testing.assert_array_equal(other[method].scores, first, err_msg=method)
        if method == "cld":
            np.testing.assert_array_equal(first, compute_cld(lake, store=False).scores)
            continue
        expected = reference_scores(method, *ch.values(), early, j)
        np.testing.assert_array_equal(np.isnan(first), np.isnan(expected), err_msg=method)
        ok = ~np.isnan(expected)
        np.testing.assert_allclose(first[ok], expected[ok], rtol=1e-9, atol=1e-12, err_msg=method)
        assert runs[0][method].provenance["nan"] == int((~ok).sum())


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 70),
    k=st.integers(3, 14),
    nonfinite=st.sampled_from([0.0, 0.02, 0.15]),
    early=st.sampled_from([None, 0.3, 0.5, 1.0]),
    j=st.integers(2, 6),
    loss_dtype=st.sampled_from(["float32", "float16", "float64"]),
    val_every=st.sampled_from([1, 2]),
)
def test_every_method_matches_its_reference_at_any_block_size(
    tmp_path_factory, tiny_pieces, seed, n, k, nonfinite, early, j, loss_dtype, val_every
):
    values = make_values(seed, n, k, nonfinite)
    labels = np.random.default_rng(seed).integers(0, 3, n)
    lake = write_method_lake(
        tmp_path_factory.mktemp("m") / "lake", values, labels, 3, loss_dtype, val_every
    )
    methods = [m for m in METHODS if _valid(m, k, early, j)]
    if len(lake.split("val").checkpoint_ids) < 3:
        methods.remove("cld")
    event(f"methods={len(methods)} nonfinite={nonfinite > 0}")
    check_parity(lake, methods, early, j)


def test_refusals_are_exactly_where_the_window_is_too_short(tmp_path):
    values = make_values(1, 20, 8, 0.0)
    lake = write_method_lake(tmp_path / "lake", values, np.zeros(20, dtype=np.int64), 1)
    # a Python caller is told the Python parameters (the CLI's flags: tests/test_score_defaults)
    with pytest.raises(
        ScoringError, match=r"'dynunc' needs at least 9 checkpoints.*window_length=8"
    ):
        compute_scores(lake, "dynunc", window_length=9)
    # dual's default early window: 15% of 8 = 1 checkpoint, fewer than the default's 3
    with pytest.raises(
        ScoringError, match=r"'dual' needs at least 3 checkpoints; its early window"
    ):
        compute_scores(lake, "dual")
    assert compute_scores(lake, "dual", early=0.5, window_length=4, store=False)["dual"].provenance[
        "parameters"
    ] == {"early": 0.5, "early_checkpoints": 4, "window_length": 4}
    assert not has_scores(lake)


def test_dask_gives_the_numpy_bits(tmp_path, dask_client):
    values = make_values(7, 150, 12, 0.03)
    labels = np.random.default_rng(7).integers(0, 4, 150)
    lake = write_method_lake(tmp_path / "lake", values, labels, 4, val_every=2)
    check_parity(lake, list(METHODS), 0.5, 3, engine="dask")
    numpy = compute_scores(lake, METHODS, early=0.5, window_length=3, store=False)
    dask = compute_scores(lake, METHODS, engine="dask", early=0.5, window_length=3, store=False)
    for name in METHODS:
        np.testing.assert_array_equal(dask[name].scores, numpy[name].scores)


def test_cld_global_reference_is_the_all_class_mean(tmp_path):
    values = make_values(3, 60, 7, 0.0)
    labels = np.random.default_rng(3).integers(0, 3, 60)
    lake = write_method_lake(tmp_path / "lake", values, labels, 3)
    val = lake.split("val")
    (vblock,) = list(val.blocks())
    result = compute_cld(lake, reference="global", store=False)
    expected = reference_cld(
        stored(lake, "loss"),
        np.zeros(60, dtype=np.int64),
        vblock.loss.astype(np.float64),
        np.zeros(len(vblock), dtype=np.int64),
    )
    np.testing.assert_allclose(result.scores, expected["scores"], rtol=0, atol=1e-9)
    assert result.provenance["parameters"]["reference"] == "global"
    assert result.provenance["fallback"] == 0
    # the same in a pass with other methods, and through the CLI's option
    both = compute_scores(lake, "cld,aum", reference="global", store=False)
    np.testing.assert_array_equal(both["cld"].scores, result.scores)
    with pytest.raises(ScoringError, match="reference='nearest'"):
        compute_cld(lake, reference="nearest")


def test_the_registry_is_the_method_literal_and_each_method_declares_itself():
    import inspect
    import typing
    from collections.abc import Iterator

    from cld_lake.score._engines import load_engine
    from cld_lake.score._passes import ScoredChunk

    assert METHODS == choices(MethodLiteral) == tuple(METHOD_REGISTRY)
    for method in METHOD_REGISTRY.values():
        assert method.direction in choices(Direction)
        assert method.citation and method.summary and method.channels
        assert set(method.uses) <= {
            "early",
            "window_length",
            "reference",
            "reference_split",
            "fallback",
        }
    for engine in METHOD_ENGINES:
        compute = load_engine(engine, ["aum"])
        params = list(inspect.signature(compute).parameters.values())
        rest = {p.name: p for p in params[2:]}
        assert rest["block_rows"].default is None and rest["progress"].default is None
        assert typing.get_type_hints(compute)["return"] == Iterator[ScoredChunk]
