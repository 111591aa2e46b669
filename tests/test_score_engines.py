"""Engine parity: every engine equals the independent float64 reference on real lakes.

One contract, run by each engine (parametrised): within 1e-9 of ``cld_reference`` on the stored
values, NaN exactly where the reference has NaN, the same NaN / degenerate / fallback counts,
identical scores at block sizes 1, an odd size and more than N; and within 1e-5 of the
reference on the original float64 values when stored as float32.
"""

from __future__ import annotations

import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cld_lake.errors import ScoringError
from cld_lake.lake import parse_window
from cld_lake.score import ENGINES, compute_cld
from tests.cld_reference import MissingClassesError, reference_cld
from tests.strategies import LakeSpec, build_spec, lake_specs, write_lake

WINDOWS = [None, None, None, "::2", "1:", "0:-1", "1::3"]


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


@pytest.fixture(scope="module", params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    if request.param == "dask":
        request.getfixturevalue("dask_client")  # the engine uses the active client
    return request.param


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


def assert_scores_match(actual: np.ndarray, expected: np.ndarray, atol: float) -> None:
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), "NaN positions differ")
    finite = ~np.isnan(expected)
    if finite.any():
        worst = np.max(np.abs(actual[finite] - expected[finite]))
        assert worst <= atol, f"max |engine - reference| = {worst:.3g} > {atol}"


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
            assert not (lake.path / "scores.parquet").exists()
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
        assert_scores_match(first.scores, original["scores"], atol=1e-5)


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
