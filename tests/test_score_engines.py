"""Engine contract and parity: every registered engine, checked the same way.

The contract (:class:`cld_lake.score.EngineCompute`): the registry is the ``Engine`` literal and
the CLI's choices; each engine's ``compute`` has the declared signature and yields scored chunks
that cover every row once. Parity, run by each engine (parametrised): within 1e-9 of
``cld_reference`` on the stored values, NaN exactly where the reference has NaN, the same NaN / degenerate / fallback counts,
identical scores at block sizes 1, an odd size and more than N; and, stored as float32, within
a per-row bound of the reference on the original float64 values (how far the rounding can
turn the vectors CLD correlates: :func:`float32_tolerance`).
"""

from __future__ import annotations

import inspect
import tempfile
import typing
from collections.abc import Iterator, Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cld_lake._types import Engine, Fallback, choices
from cld_lake.errors import ScoringError
from cld_lake.lake import parse_window
from cld_lake.lake.store import Split
from cld_lake.score import ENGINES, METHOD_REGISTRY, METHODS, compute_cld
from cld_lake.score._engines import ENGINE_MODULES, load_engine
from cld_lake.score._method import Plan
from cld_lake.score._passes import ScoredChunk
from cld_lake.score._plan import plan_pass
from tests.cld_reference import MissingClassesError, reference_cld
from tests.conftest import has_scores
from tests.strategies import LakeSpec, build_spec, lake_specs, write_lake

WINDOWS = [None, None, None, "::2", "1:", "0:-1", "1::3"]


@pytest.fixture(scope="module", params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    if request.param == "dask":
        request.getfixturevalue("dask_client")  # the engine uses the active client
    return request.param


# --- the contract ------------------------------------------------------------------------
def test_the_registry_is_the_engine_literal_and_the_cli_choices():
    from cld_lake._cli.score_cmd import score_cmd

    assert ENGINES == choices(Engine) == tuple(ENGINE_MODULES)
    options = {p.name: p for p in score_cmd.params}
    assert tuple(options["engine"].type.choices) == ENGINES
    assert tuple(options["fallback"].type.choices) == choices(Fallback)
    assert tuple(options["method"].type.choices) == METHODS


def test_engine_signature_meets_the_protocol(engine: str) -> None:
    compute = load_engine(engine)
    params = list(inspect.signature(compute).parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    assert [p.kind in positional for p in params[:2]] == [True, True]
    rest = {p.name: p for p in params[2:]}
    for name in ("block_rows", "progress"):
        assert rest[name].kind == inspect.Parameter.KEYWORD_ONLY and rest[name].default is None
    for p in rest.values():  # engine options: keyword-only with a default, or **options
        assert p.kind == inspect.Parameter.VAR_KEYWORD or (
            p.kind == inspect.Parameter.KEYWORD_ONLY and p.default is not p.empty
        ), p.name
    hints = typing.get_type_hints(compute)
    assert hints[params[0].name] is Split and hints[params[1].name] == Sequence[Plan]
    assert hints["return"] == Iterator[ScoredChunk]


def test_engine_chunks_cover_every_row_once(engine: str, tmp_path) -> None:
    spec = build_spec(seed=4, n_train=150, n_val=30, n_checkpoints=5, n_classes=3)
    lake = write_lake(tmp_path / "lake", spec, row_chunk=32)
    train, plans = plan_pass(lake, [METHOD_REGISTRY["cld"]])
    assert plans[0].reference is not None
    assert plans[0].reference.checkpoints.tolist() == spec.common_checkpoints.tolist()
    done: list[int] = []
    seen = np.zeros(train.num_samples, dtype=np.int64)
    for chunk in load_engine(engine)(train, plans, block_rows=50, progress=done.append):
        assert isinstance(chunk, ScoredChunk)
        rows = np.arange(train.num_samples)[chunk.rows]
        np.add.at(seen, rows, 1)
        np.testing.assert_array_equal(chunk.labels, train.labels[rows])
        values = chunk.scores["cld"]
        assert values.dtype == np.float64 and values.shape == rows.shape
        assert chunk.counts["cld"]["nan"] == int(np.isnan(values).sum())
    assert (seen == 1).all() and sum(done) == train.num_samples


# --- parity with the reference ---------------------------------------------------------------
def _expected(spec: LakeSpec, window: str | None, fallback: str | None, stored: bool = True):
    common = spec.common_checkpoints
    ckpts = common if window is None else common[parse_window(window)]
    if len(ckpts) < 3:
        return ckpts, None
    try:
        ref = reference_cld(
            spec.selected(spec.train, ckpts, stored),
            spec.train.labels,
            spec.selected(spec.val, ckpts, stored),
            spec.val.labels,
            fallback=fallback,
        )
    except MissingClassesError:
        ref = None
    return ckpts, ref


def assert_scores_match(actual: np.ndarray, expected: np.ndarray, atol: float | np.ndarray) -> None:
    """NaN where ``expected`` has NaN, elsewhere within ``atol`` (one bound, or one per row)."""
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), "NaN positions differ")
    finite = ~np.isnan(expected)
    if finite.any():
        excess = np.abs(actual - expected) - atol
        worst = int(np.argmax(np.where(finite, excess, -np.inf)))
        bound = np.broadcast_to(atol, expected.shape)[worst]
        assert excess[worst] <= 0, (
            f"row {worst}: |engine - reference| = {abs(actual[worst] - expected[worst]):.3g} "
            f"> {bound:.3g}"
        )


# The largest relative error of rounding a float64 to the nearest float32.
F32_ROUNDING = 2.0**-24


def float32_tolerance(spec: LakeSpec, ckpts: np.ndarray, fallback: str | None) -> np.ndarray:
    """Per training row: how far CLD over the float32-stored values may lie from CLD over the
    float64 originals, from how far the rounding can turn the two vectors it correlates.

    CLD is the cosine of the angle between the centred differences ``d`` of the row and ``u``
    of its class's mean validation losses. Rounding moves each value by at most
    ``F32_ROUNDING`` of its magnitude, so ``d`` by at most ``|e| <= 2 F32_ROUNDING |x|``
    (differencing at most doubles a norm, centring never grows it), and ``u`` likewise from
    the class mean of the magnitudes. A vector ``v`` moved by ``e`` turns by at most
    ``arcsin(|e| / |v|)`` (a half turn when ``|e| >= |v|``), and a cosine moves by at most its
    angle: the bound is the two turns added, plus the float64 slack of the exact check. Rows
    whose centred differences are tiny (near-degenerate) get a wide bound, as they should.
    """
    train = spec.selected(spec.train, ckpts, stored=False)
    val = spec.selected(spec.val, ckpts, stored=False)
    finite_val = np.isfinite(val).all(axis=1)
    val, val_labels = val[finite_val], spec.val.labels[finite_val]

    def turn(values: np.ndarray, magnitude: np.ndarray) -> np.ndarray:
        """Largest angle the centred differences of ``values`` (rows) can turn by."""
        diffs = np.diff(values, axis=-1)
        centred = diffs - diffs.mean(axis=-1, keepdims=True)
        moved = 2 * F32_ROUNDING * np.linalg.norm(magnitude, axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = moved / np.linalg.norm(centred, axis=-1)
        return np.arcsin(np.minimum(np.nan_to_num(ratio, nan=1.0, posinf=1.0), 1.0))

    class_turn = {}
    for c in np.unique(spec.train.labels):
        rows = val[val_labels == c] if (val_labels == c).any() or fallback is None else val
        class_turn[int(c)] = turn(rows.mean(axis=0), np.abs(rows).mean(axis=0)) if len(rows) else 0
    with np.errstate(invalid="ignore"):
        row_turn = turn(train, np.abs(train))
    of_class = np.array([class_turn[int(c)] for c in spec.train.labels])
    return row_turn + of_class + 1e-9


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=lake_specs(),
    window=st.sampled_from(WINDOWS),
    fallback=st.sampled_from([None, "global", "global"]),
)
def test_engine_matches_reference(engine: str, spec: LakeSpec, window, fallback) -> None:
    ckpts, ref = _expected(spec, window, fallback)
    with tempfile.TemporaryDirectory() as tmp:
        lake = write_lake(f"{tmp}/lake", spec)
        if ref is None:  # fewer than 3 checkpoints, or classes missing from val without fallback
            event("refused")
            with pytest.raises(ScoringError):
                compute_cld(lake, engine=engine, checkpoints=window, fallback=fallback)
            assert not has_scores(lake)
            return
        n = len(spec.train.sample_ids)
        runs = [
            compute_cld(
                lake,
                engine=engine,
                checkpoints=window,
                fallback=fallback,
                block_rows=rows,
                store=False,
            )
            for rows in (1, 7, n + 5)
        ]
    first = runs[0]
    event(
        f"scored; nan={ref['nan'] > 0} degenerate={ref['degenerate'] > 0} fallback={ref['fallback'] > 0}"
    )
    np.testing.assert_array_equal(first.sample_ids, spec.train.sample_ids)
    assert first.provenance["checkpoint_ids"] == ckpts.tolist()
    assert_scores_match(first.scores, ref["scores"], atol=1e-9)
    for key in ("nan", "degenerate", "fallback", "val_left_out"):
        assert first.provenance[key] == ref[key], key
    for other in runs[1:]:  # chunk invariance: bit for bit
        np.testing.assert_array_equal(other.scores, first.scores)
    if spec.dtype == "float32":
        _, original = _expected(spec, window, fallback, stored=False)
        tolerance = float32_tolerance(spec, ckpts, fallback)
        assert_scores_match(first.scores, original["scores"], atol=tolerance)


def test_engines_agree_on_a_larger_lake(engine: str, tmp_path) -> None:
    """Several chunks, default block size, the stored scores table."""
    spec = build_spec(
        seed=7, n_train=500, n_val=90, n_checkpoints=12, n_classes=7, missing_classes=1
    )
    lake = write_lake(tmp_path / "lake", spec, row_chunk=64)
    _, ref = _expected(spec, None, "global")
    assert ref["fallback"] > 0 and ref["nan"] > 0 and ref["degenerate"] > 0
    df = compute_cld(lake, engine=engine, fallback="global", name=f"cld_{engine}").to_polars()
    assert df.columns == ["sample_id", "label", "score"]
    assert_scores_match(df["score"].to_numpy(), ref["scores"], atol=1e-9)
