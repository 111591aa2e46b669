"""The public streaming API (cld_reference, CLDAccumulator): CLD on arrays, without a lake.

Chunk invariance against the in-memory float64 reference: identical scores at block sizes 1,
n//4 and n+100 (for the validation and the training rows alike), within 1e-9 of
``tests/cld_reference.py``, NaN exactly where it has NaN, the same counts. Then bad input, and
the lake orchestrator giving the same bits as the API it is built on.
"""

from __future__ import annotations

import doctest
import importlib
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import cld_lake
from cld_lake.errors import BadInputError, ScoringError
from cld_lake.score import CLDAccumulator, CLDScores, cld_reference, compute_cld
from tests.cld_reference import MissingClassesError, reference_cld
from tests.strategies import LakeSpec, build_spec, lake_specs, write_lake


def blocks(
    loss: np.ndarray, labels: np.ndarray, rows: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for a in range(0, len(loss), rows):
        yield loss[a : a + rows], labels[a : a + rows]


def stream_cld(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    rows: int,
    fallback: str | None = None,
    train_classes: np.ndarray | None = None,
) -> CLDScores:
    reference = cld_reference(
        blocks(*val, rows), num_classes, fallback=fallback, train_classes=train_classes
    )
    acc = CLDAccumulator(reference)
    returned = [acc.update(loss, labels) for loss, labels in blocks(*train, rows)]
    result = acc.finalise()
    np.testing.assert_array_equal(np.concatenate(returned or [np.zeros(0)]), result.scores)
    return result


def _arrays(spec: LakeSpec) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    ckpts = spec.common_checkpoints
    train = (spec.selected(spec.train, ckpts, stored=False), spec.train.labels)
    val = (spec.selected(spec.val, ckpts, stored=False), spec.val.labels)
    return train, val


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=lake_specs(max_train=80),
    fallback=st.sampled_from([None, "global"]),
    tell_train_classes=st.booleans(),
)
def test_stream_matches_the_reference_at_any_block_size(spec, fallback, tell_train_classes):
    train, val = _arrays(spec)
    train_classes = np.unique(spec.train.labels) if tell_train_classes else None
    n = len(train[0])
    try:
        expected = reference_cld(*train, *val, fallback=fallback)
    except MissingClassesError:
        event("refused")
        # a missing class names the fallback; with the fallback asked for but no finite
        # validation row at all there is no global trajectory either (found by hypothesis)
        with pytest.raises(ScoringError, match="fallback|no sample with finite losses"):
            stream_cld(train, val, spec.num_classes, 1, fallback, train_classes)
        return
    runs = [
        stream_cld(train, val, spec.num_classes, rows, fallback, train_classes)
        for rows in (1, max(1, n // 4), n + 100)
    ]
    event(f"nan={expected['nan'] > 0} degenerate={expected['degenerate'] > 0}")
    first = runs[0]
    np.testing.assert_array_equal(np.isnan(first.scores), np.isnan(expected["scores"]))
    finite = ~np.isnan(expected["scores"])
    np.testing.assert_allclose(first.scores[finite], expected["scores"][finite], rtol=0, atol=1e-9)
    assert (first.nan, first.degenerate, first.fallback) == (
        expected["nan"],
        expected["degenerate"],
        expected["fallback"],
    )
    for other in runs[1:]:  # chunk invariance: bit for bit
        np.testing.assert_array_equal(other.scores, first.scores)
        assert (other.nan, other.degenerate, other.fallback) == (
            first.nan,
            first.degenerate,
            first.fallback,
        )


def test_reference_counts_left_out_validation_rows():
    val = np.array([[3.0, 2.0, 1.0], [np.inf, 1.0, 0.0], [2.0, np.nan, 1.0], [4.0, 2.0, 1.5]])
    reference = cld_reference([(val, [0, 0, 1, 1])], num_classes=2)
    assert reference.val_left_out == 2
    np.testing.assert_array_equal(reference.val_counts, [1, 1])
    np.testing.assert_array_equal(reference.checkpoints, [0, 1, 2])


def test_missing_class_is_refused_where_it_is_known():
    val = (np.array([[3.0, 2.0, 1.0, 0.5]]), np.array([0]))
    with pytest.raises(ScoringError, match="1 class.*: 1;.*fallback='global'"):
        cld_reference([val], 2, train_classes=[0, 1])
    acc = CLDAccumulator(cld_reference([val], 2))  # classes unknown: refused when scored
    acc.update([[1.0, 0.5, 0.4, 0.1]], [0])
    with pytest.raises(ScoringError, match="class.*: 1;.*fallback='global'"):
        acc.update([[1.0, 0.5, 0.4, 0.1]], [1])
    acc = CLDAccumulator(cld_reference([val], 2, fallback="global"))
    acc.update([[1.0, 0.5, 0.4, 0.1]], [1])
    assert acc.finalise().fallback == 1


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: cld_reference([(np.ones((2, 2)), [0, 0])], 1), ScoringError, "at least 3"),
        (lambda: cld_reference([], 1, checkpoints=[0, 5]), ScoringError, "at least 3"),
        (lambda: cld_reference([], 1), BadInputError, "val_blocks is empty"),
        (lambda: cld_reference([(np.ones(4), [0])], 1), BadInputError, "2-D block"),
        (lambda: cld_reference([(np.ones((1, 4)), [2])], 2), BadInputError, "outside 0..1"),
        (lambda: cld_reference([(np.ones((1, 4)), [-1])], 2), BadInputError, "outside 0..1"),
        (lambda: cld_reference([(np.ones((2, 4)), [0])], 1), BadInputError, "expected 2 ints"),
        (lambda: cld_reference([(np.ones((1, 4)), [0.5])], 1), BadInputError, "ints"),
        (lambda: cld_reference([(np.array([["a"] * 4]), [0])], 1), BadInputError, "floats"),
        (
            lambda: cld_reference([(np.ones((1, 4)), [0]), (np.ones((1, 5)), [0])], 1),
            BadInputError,
            "5 columns, expected 4",
        ),
        (lambda: cld_reference([], 1, checkpoints=[[0, 1, 2]]), BadInputError, "1-D"),
        (lambda: cld_reference([], 0, checkpoints=[0, 1, 2]), BadInputError, "num_classes"),
        (lambda: cld_reference([], 1, fallback="nearest"), ScoringError, "'nearest'"),
    ],
)
def test_bad_input_says_what_is_wrong(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_accumulator_checks_blocks_against_its_reference():
    reference = cld_reference([(np.arange(8.0).reshape(2, 4), [0, 1])], 2)
    acc = CLDAccumulator(reference)
    with pytest.raises(BadInputError, match="3 columns, expected 4"):
        acc.update(np.ones((1, 3)), [0])
    with pytest.raises(BadInputError, match="outside 0..1"):
        acc.update(np.ones((1, 4)), [7])
    acc.update(np.zeros((0, 4)), np.zeros(0, np.int64))  # an empty block is fine
    assert acc.finalise().scores.shape == (0,)


def test_integer_losses_and_float16_give_float64_scores():
    val = np.array([[4, 2, 1, 0], [5, 3, 1, 1]])
    reference = cld_reference([(val, [0, 0])], 1)
    rows = np.array([[6, 4, 2, 1], [1, 3, 5, 6]])
    as_int = CLDAccumulator(reference).update(rows, [0, 0])
    as_half = CLDAccumulator(reference).update(rows.astype(np.float16), [0, 0])
    assert as_int.dtype == np.float64
    np.testing.assert_array_equal(as_int, as_half)
    assert as_int[0] > 0.9 and as_int[1] < -0.9


def test_without_keep_only_counts_are_held():
    reference = cld_reference([(np.array([[3.0, 2.0, 1.5, 1.2]]), [0])], 1)
    acc = CLDAccumulator(reference, keep=False)
    part = acc.update([[1.0, np.nan, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]], [0, 0])
    assert np.isnan(part[0]) and part[1] == 0.0
    assert (acc.counts.nan, acc.counts.degenerate) == (1, 1)
    with pytest.raises(ScoringError, match="keep=True"):
        acc.finalise()


def test_compute_cld_gives_the_bits_of_the_streaming_api(tmp_path):
    """The orchestrator runs the API on the lake's blocks: same scores, bit for bit."""
    spec = build_spec(seed=11, n_train=300, n_val=60, n_checkpoints=7, n_classes=5)
    lake = write_lake(tmp_path / "lake", spec, row_chunk=32)
    ckpts = spec.common_checkpoints
    train = (spec.selected(spec.train, ckpts), spec.train.labels)
    val = (spec.selected(spec.val, ckpts), spec.val.labels)
    streamed = stream_cld(train, val, spec.num_classes, 37)
    for engine in ("numpy", "polars"):
        stored = compute_cld(lake, engine=engine, store=False)
        np.testing.assert_array_equal(stored.scores, streamed.scores)
        assert stored.provenance["nan"] == streamed.nan
        assert stored.provenance["degenerate"] == streamed.degenerate


def test_the_docstring_examples_run():
    module = importlib.import_module("cld_lake.score._stream")
    failed, attempted = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert attempted > 0 and failed == 0


def test_the_api_is_public():
    module = importlib.import_module("cld_lake.score")
    for name in ("cld_reference", "CLDAccumulator", "CLDScores", "Reference"):
        assert name in module.__all__
    assert cld_lake.cld_reference is cld_reference and cld_lake.CLDAccumulator is CLDAccumulator


def test_the_example_in_docs_scores_md_runs(capsys):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "scores.md").read_text()
    [code] = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "finalise()" in b]
    exec(compile(code, "docs/scores.md", "exec"), {})
    printed = capsys.readouterr().out.strip()
    assert printed == re.search(r"# (\(1000,\) .*)", code).group(1)
