"""CLD's reference (issue 17, item 3): ``--reference group|class|global|split:NAME`` and
``--reference-split NAME``, on every engine, against a plain float64 NumPy computation of the
definitions (``tests/cld_reference.py``).

Property tests (hypothesis) draw a lake and a reference split ``test`` with its own rows,
groups (some groups of train missing from it), NaN/inf, constant rows, ties and checkpoints
(a random subset of train's, sometimes fewer than 3 in common); the val split is sometimes
left out, to prove a reference split other than val never reads it. Each engine (numpy with
the compiled kernel and with the NumPy kernel, duckdb, polars, dask) must match the
definition within 1e-9, NaN exactly where it has NaN, with the same counts and identical bits
at block sizes 1, 7 and N + 5. Then: runs and ensembles, windows, one-line refusals, stale
flags, provenance and ``info``, scores stored before references could be chosen, and the
worked example of ``docs/scores.md``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import cld_lake
from cld_lake.errors import ScoringError
from cld_lake.lake import Lake, Split, parse_window
from cld_lake.lake.scores import stale_scores, store_scores, stored_scores
from cld_lake.lake.writer import SplitWriter
from cld_lake.score import ENGINES, CLDAccumulator, cld_reference, compute_cld, compute_scores
from cld_lake.score._kernel import kernel_name
from tests import _examples as ex
from tests.cld_reference import MissingClassesError, pooled_reference_cld, reference_cld
from tests.conftest import REPO, has_scores, lake_hash
from tests.strategies import (
    LakeSpec,
    SplitSpec,
    build_spec,
    lake_specs,
    target_split_specs,
    write_lake,
    write_split,
)

WINDOWS = [None, None, "::2", "1:", "0:-1"]
# (reference, reference_split) as a caller gives them, and the kind the definition computes
REFERENCES = [
    ("split:test", None, "pooled"),
    ("split:test", "test", "pooled"),  # the same split said twice
    ("group", "test", "group"),
    ("class", "test", "group"),
    ("global", "test", "pooled"),
]


@pytest.fixture(scope="module", params=[*ENGINES, "numpy_kernel"])
def engine(request: pytest.FixtureRequest):
    """Each engine; ``numpy_kernel`` is the numpy engine with the compiled kernel switched
    off (what runs where no C compiler was found at install)."""
    if request.param == "dask":
        request.getfixturevalue("dask_client")
    if request.param != "numpy_kernel":
        if request.param == "numpy":
            assert kernel_name() == "fused"
        yield request.param
        return
    from cld_lake.score import _kernel

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_kernel, "_FUSED", False)
        assert kernel_name() == "numpy"
        yield "numpy"


# --- the definition --------------------------------------------------------------------------
def selected(split: SplitSpec, ckpts: np.ndarray, dtype: str) -> np.ndarray:
    """``split``'s losses as the lake stores them, at ``ckpts`` (float64)."""
    cols = np.searchsorted(split.checkpoints, ckpts)
    return split.stored(dtype)[:, cols]


def expected(
    spec: LakeSpec,
    target: SplitSpec,
    kind: str,
    window: str | None,
    fallback: str | None,
) -> tuple[np.ndarray, dict | None]:
    """The checkpoints and the definition's scores (None: the request must be refused)."""
    common = np.intersect1d(spec.train.checkpoints, target.checkpoints)
    if len(common) < 3:
        return common, None
    ckpts = common if window is None else common[parse_window(window)]
    if len(ckpts) < 3:
        return ckpts, None
    train = selected(spec.train, ckpts, spec.dtype)
    ref = selected(target, ckpts, spec.dtype)
    try:
        if kind == "pooled":
            return ckpts, pooled_reference_cld(train, ref)
        return ckpts, reference_cld(train, spec.train.labels, ref, target.labels, fallback)
    except MissingClassesError:
        return ckpts, None


def losses_of(split: Split, checkpoints: np.ndarray | None = None) -> np.ndarray:
    """A split's stored losses (float64), read by name through the Lake API."""
    blocks = split.blocks(checkpoints=checkpoints)
    return np.concatenate([b.loss for b in blocks]).astype(np.float64)


def assert_matches(actual: np.ndarray, wanted: np.ndarray, atol: float = 1e-9) -> None:
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(wanted), "NaN positions differ")
    ok = ~np.isnan(wanted)
    np.testing.assert_allclose(actual[ok], wanted[ok], rtol=0, atol=atol)


def write_reference_lake(
    path: str | Path, spec: LakeSpec, target: SplitSpec, with_val: bool = True
) -> Lake:
    lake = write_lake(path, spec, val=with_val)
    write_split(lake, "test", target, spec.dtype)
    return lake.reload()


# --- every engine against the definition ------------------------------------------------------
@st.composite
def _cases(draw: st.DrawFn):
    spec = draw(lake_specs(max_train=40, max_val=12, max_checkpoints=8, max_classes=4))
    return spec, draw(target_split_specs(spec))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=_cases(),
    reference=st.sampled_from(REFERENCES),
    window=st.sampled_from(WINDOWS),
    fallback=st.sampled_from([None, "global"]),
    with_val=st.booleans(),
)
def test_every_engine_matches_the_definition(engine, case, reference, window, fallback, with_val):
    spec, target = case
    given_reference, given_split, kind = reference
    ckpts, ref = expected(spec, target, kind, window, fallback)
    kwargs = {"reference": given_reference, "reference_split": given_split}
    with tempfile.TemporaryDirectory() as tmp:
        lake = write_reference_lake(f"{tmp}/lake", spec, target, with_val)
        if ref is None:
            event("refused")
            with pytest.raises(ScoringError, match="test"):
                compute_cld(lake, engine=engine, checkpoints=window, fallback=fallback, **kwargs)
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
                **kwargs,
            )
            for rows in (1, 7, n + 5)
        ]
    event(f"{kind}; nan={ref['nan'] > 0} fallback={ref['fallback'] > 0}")
    first = runs[0]
    assert_matches(first.scores, ref["scores"])
    for other in runs[1:]:
        np.testing.assert_array_equal(other.scores, first.scores)
    prov = first.provenance
    assert prov["checkpoint_ids"] == ckpts.tolist()
    assert prov["splits"] == ["train", "test"]
    stored_as = "group" if kind == "group" else given_reference
    assert prov["parameters"]["reference"] == stored_as
    assert prov["parameters"]["reference_split"] == "test"
    for key in ("nan", "degenerate", "fallback"):
        assert prov[key] == ref[key], key
    assert prov["reference_left_out"] == ref["val_left_out"]
    assert "val_left_out" not in prov  # val was not read: nothing of it is reported


def test_split_reference_ignores_the_reference_splits_groups_and_val(tmp_path):
    """``split:NAME`` is one trajectory: the same scores whatever the groups of NAME's samples
    say, and whatever val holds (here: nothing usable for two of three groups)."""
    spec = build_spec(seed=3, n_train=80, n_val=9, n_checkpoints=6, n_classes=3, missing_classes=2)
    target = build_spec(seed=4, n_train=30, n_val=3, n_checkpoints=6, n_classes=3).train
    target = SplitSpec(target.sample_ids, target.labels, target.loss, spec.common_checkpoints)
    lake = write_reference_lake(tmp_path / "a", spec, target)
    relabelled = SplitSpec(
        target.sample_ids, np.zeros_like(target.labels), target.loss, target.checkpoints
    )
    other = write_reference_lake(tmp_path / "b", spec, relabelled)
    a = compute_cld(lake, reference="split:test", store=False).scores
    b = compute_cld(other, reference="split:test", store=False).scores
    np.testing.assert_array_equal(a, b)
    want = pooled_reference_cld(
        selected(spec.train, spec.common_checkpoints, spec.dtype),
        selected(target, spec.common_checkpoints, spec.dtype),
    )
    assert_matches(a, want["scores"])
    with pytest.raises(ScoringError, match="have no validation sample"):
        compute_cld(lake, store=False)  # val lacks two groups: the group reference refuses


def test_any_split_name_is_read_by_name(tmp_path):
    """A reference split is read through the Lake API by its name: ``target`` (any validated
    name the writer accepts), never assumed to be val or test."""
    spec = build_spec(seed=8, n_train=40, n_val=12, n_checkpoints=5, n_classes=2)
    lake = write_lake(tmp_path / "lake", spec, val=False)
    target = SplitSpec(spec.val.sample_ids, spec.val.labels, spec.val.loss, spec.val.checkpoints)
    write_split(lake, "target", target, spec.dtype)
    lake = lake.reload()
    result = compute_cld(lake, reference="split:target", name="cld_target")
    want = pooled_reference_cld(
        selected(spec.train, spec.common_checkpoints, spec.dtype),
        selected(target, spec.common_checkpoints, spec.dtype),
    )
    assert_matches(result.scores, want["scores"])
    assert result.provenance["splits"] == ["train", "target"]
    group = compute_cld(lake, reference_split="target", store=False)
    per_group = reference_cld(
        selected(spec.train, spec.common_checkpoints, spec.dtype),
        spec.train.labels,
        selected(target, spec.common_checkpoints, spec.dtype),
        target.labels,
    )
    assert_matches(group.scores, per_group["scores"])


def test_the_defaults_and_the_class_alias_are_todays_rule(tmp_path):
    """No reference given, ``group`` and ``class`` all give the per-class val rule, bit for
    bit, and store ``group`` of ``val``."""
    spec = build_spec(seed=11, n_train=60, n_val=20, n_checkpoints=6, n_classes=3)
    lake = write_lake(tmp_path / "lake", spec)
    results = [
        compute_cld(lake, store=False),
        compute_cld(lake, reference="group", store=False),
        compute_cld(lake, reference="class", store=False),
        compute_cld(lake, reference="group", reference_split="val", store=False),
        cld_lake.score(lake, reference="class", store=False)["score"].to_numpy(),
    ]
    ckpts = spec.common_checkpoints
    want = reference_cld(
        selected(spec.train, ckpts, spec.dtype),
        spec.train.labels,
        selected(spec.val, ckpts, spec.dtype),
        spec.val.labels,
    )
    for result in results[:4]:
        np.testing.assert_array_equal(result.scores, results[0].scores)
        assert result.provenance["parameters"]["reference"] == "group"
        assert result.provenance["parameters"]["reference_split"] == "val"
        assert result.provenance["splits"] == ["train", "val"]
        assert result.provenance["val_left_out"] == result.provenance["reference_left_out"]
    np.testing.assert_array_equal(
        np.nan_to_num(results[4], nan=9), np.nan_to_num(results[0].scores, nan=9)
    )
    assert_matches(results[0].scores, want["scores"])


# --- runs --------------------------------------------------------------------------------------
def _write_run(lake: Lake, run: str | None, splits: dict[str, SplitSpec], dtype: str) -> None:
    for name, split in splits.items():
        with SplitWriter(lake, name, row_chunk=16, run=run) as writer:
            writer.append_columns(
                split.checkpoints.tolist(),
                lambda a, b, s=split: {"loss": s.loss[a:b]},
                num_rows=len(split.sample_ids),
                channels={"loss": dtype},
                new_samples=(split.sample_ids, split.labels),
            )


def _run_specs(seed: int) -> tuple[LakeSpec, SplitSpec]:
    spec = build_spec(seed=seed, n_train=50, n_val=10, n_checkpoints=6, n_classes=3)
    target = build_spec(seed=seed + 100, n_train=20, n_val=3, n_checkpoints=6, n_classes=3).train
    return spec, SplitSpec(target.sample_ids, target.labels, target.loss, spec.common_checkpoints)


@pytest.mark.parametrize(("reference", "split"), [("split:test", None), ("group", "test")])
def test_each_run_uses_its_own_reference_split_and_an_ensemble_their_mean(
    tmp_path, reference, split
):
    lake = Lake.create(tmp_path / "lake", num_classes=3)
    expected_runs = []
    base, _ = _run_specs(20)
    for i, run in enumerate(("seedA", "seedB")):
        spec, target = _run_specs(20 + i)
        # every run holds the same training samples (an ensemble's rule), its own losses
        train = SplitSpec(
            base.train.sample_ids, base.train.labels, spec.train.loss, spec.train.checkpoints
        )
        _write_run(lake, run, {"train": train, "test": target}, "float64")
        ckpts = np.intersect1d(train.checkpoints, target.checkpoints)
        if reference.startswith("split:"):
            want = pooled_reference_cld(
                selected(train, ckpts, "float64"), selected(target, ckpts, "float64")
            )
        else:
            want = reference_cld(
                selected(train, ckpts, "float64"),
                train.labels,
                selected(target, ckpts, "float64"),
                target.labels,
            )
        expected_runs.append(want["scores"])
        one = compute_scores(
            lake.reload(), "cld", reference=reference, reference_split=split, runs=run, store=False
        )
        assert_matches(one["cld"].scores, want["scores"])
    lake = lake.reload()
    mean = compute_scores(
        lake,
        "cld",
        reference=reference,
        reference_split=split,
        runs=["seedA", "seedB"],
        names="ens",
    )["ens"]
    assert_matches(mean.scores, (expected_runs[0] + expected_runs[1]) / 2)
    assert mean.provenance["parameters"]["reference_split"] == "test"
    assert mean.provenance["splits"] == ["train", "test"]


def test_a_run_without_the_reference_split_is_refused_naming_run_and_split(tmp_path, cli):
    lake = Lake.create(tmp_path / "lake", num_classes=3)
    spec, target = _run_specs(30)
    _write_run(lake, "seedA", {"train": spec.train, "test": target}, "float32")
    _write_run(lake, "seedB", {"train": spec.train, "val": spec.val}, "float32")
    before = lake_hash(tmp_path / "lake")
    r = cli(
        "score", tmp_path / "lake", "--reference", "split:test", "--run", "seedA", "--run", "seedB"
    )
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert "--reference split:test needs a test split in run 'seedB'" in r.err
    assert f"cld-lake import {tmp_path / 'lake'} --split test --run seedB" in r.err
    assert lake_hash(tmp_path / "lake") == before


# --- windows -----------------------------------------------------------------------------------
def test_the_reference_splits_checkpoints_must_cover_the_window(tmp_path, cli):
    spec = build_spec(seed=5, n_train=30, n_val=10, n_checkpoints=8, n_classes=2)
    lake = write_lake(tmp_path / "lake", spec)
    train_ckpts = spec.train.checkpoints
    short = SplitSpec(spec.val.sample_ids, spec.val.labels, spec.val.loss[:, :4], train_ckpts[:4])
    write_split(lake, "test", short, spec.dtype)
    before = lake_hash(lake.path)
    for args, message in [
        (
            ["--checkpoints", "0:6"],
            "STOP 6 lies beyond the lake, which holds 4 checkpoints committed in both train and test",
        ),
        (
            ["--checkpoints", "::2"],
            "selects 2 of the 4 checkpoints committed in both train and test",
        ),
    ]:
        for ref in (["--reference", "split:test"], ["--reference-split", "test"]):
            r = cli("score", lake.path, *ref, *args)
            assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1, r.err
            assert lake_hash(lake.path) == before
    # the same window over val (which holds all 8) is fine: the rule follows the reference split
    assert cli("score", lake.path, "--checkpoints", "0:6", "--name", "v").code == 0
    two = SplitSpec(spec.val.sample_ids, spec.val.labels, spec.val.loss[:, :2], train_ckpts[:2])
    lake2 = write_lake(tmp_path / "lake2", spec)
    write_split(lake2, "test", two, spec.dtype)
    r = cli("score", lake2.path, "--reference", "split:test")
    assert r.code == 2, r.err
    assert "CLD needs at least 3 checkpoints committed in both train and test; found 2" in r.err
    assert "of the test split" in r.err
    assert not has_scores(lake2)
    assert lake_hash(lake.path) != before  # the score "v" was stored; the refusals wrote nothing


def test_a_window_selects_the_same_checkpoints_of_train_and_the_reference(tmp_path):
    spec = build_spec(seed=6, n_train=40, n_val=10, n_checkpoints=9, n_classes=2)
    target = SplitSpec(
        spec.val.sample_ids, spec.val.labels, spec.val.loss[:, 1:], spec.val.checkpoints[1:]
    )
    lake = write_reference_lake(tmp_path / "lake", spec, target)
    result = compute_cld(lake, reference="split:test", checkpoints="1::2", store=False)
    common = np.intersect1d(spec.train.checkpoints, target.checkpoints)[1::2]
    assert result.provenance["checkpoint_ids"] == common.tolist()
    want = pooled_reference_cld(
        selected(spec.train, common, spec.dtype), selected(target, common, spec.dtype)
    )
    assert_matches(result.scores, want["scores"])


# --- refusals ----------------------------------------------------------------------------------
@pytest.fixture
def small_lake(tmp_path) -> Lake:
    spec = build_spec(seed=9, n_train=40, n_val=12, n_checkpoints=5, n_classes=3)
    target = SplitSpec(
        spec.val.sample_ids, spec.val.labels % 2, spec.val.loss, spec.val.checkpoints
    )
    return write_reference_lake(tmp_path / "lake", spec, target)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--reference", "split:target"],
            "--reference split:target needs a target split (present: train, val, test); import "
            "or record the target losses first, e.g. cld-lake import LAKE --split target --loss",
        ),
        (
            ["--reference-split", "heldout"],
            "--reference-split heldout needs a heldout split (present: train, val, test)",
        ),
        (
            ["--reference", "split:test", "--reference-split", "val"],
            "--reference split:test and --reference-split val name different reference splits; "
            "--reference split:test already names its split: leave --reference-split out, or "
            "use --reference group --reference-split val",
        ),
        (
            ["--reference", "split:"],
            "Invalid value for '--reference': 'split:': name the split after 'split:'",
        ),
        (
            ["--reference", "split:../x"],
            "Invalid value for '--reference': 'split:../x': '../x' is not a split name",
        ),
        (
            ["--reference", "nearest"],
            "Invalid value for '--reference': 'nearest': use group (its alias: class), global or split:NAME",
        ),
        (["--reference-split", "a/b"], "--reference-split a/b: a split name is"),
        (
            ["--method", "aum", "--reference-split", "test"],
            "--reference-split applies to --method cld",
        ),
        (
            ["--method", "mean_loss", "--reference", "split:test"],
            "--reference applies to --method cld",
        ),
        (
            ["--reference-split", "test"],
            "1 class(es) with training samples have no test sample with finite losses at the "
            "selected checkpoints: 2; add test samples for them or pass --fallback global",
        ),
    ],
)
def test_bad_references_are_one_line_exit_2_and_change_nothing(small_lake, cli, args, message):
    before = lake_hash(small_lake.path)
    r = cli("score", small_lake.path, *args)
    assert r.code == 2, r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err, r.err
    assert message.replace("LAKE", str(small_lake.root)) in r.err, r.err
    assert lake_hash(small_lake.path) == before


def test_the_python_api_spells_its_parameters(small_lake):
    with pytest.raises(
        ScoringError, match=r"reference='split:test' and reference_split='val' name different"
    ):
        cld_lake.score(small_lake, reference="split:test", reference_split="val")
    with pytest.raises(ScoringError, match=r"reference_split='heldout' needs a heldout split"):
        cld_lake.score(small_lake, reference_split="heldout")
    with pytest.raises(ScoringError, match=r"reference='nearest': use group"):
        compute_cld(small_lake, reference="nearest")
    assert not has_scores(small_lake)


def test_an_empty_group_falls_back_to_the_reference_splits_global_trajectory(small_lake):
    """Group 2 has training samples and none in ``test``: with ``fallback='global'`` its rows
    get the mean of all of test (flagged), as val's empty classes get val's."""
    result = compute_cld(small_lake, reference_split="test", fallback="global", store=False)
    train, test = small_lake.split("train"), small_lake.split("test")
    ckpts = np.intersect1d(train.checkpoint_ids, test.checkpoint_ids)
    want = reference_cld(
        losses_of(train, ckpts), train.labels, losses_of(test, ckpts), test.labels, "global"
    )
    assert want["fallback"] > 0
    assert_matches(result.scores, want["scores"])
    assert result.provenance["fallback"] == want["fallback"]
    assert result.provenance["fallback_classes"] == [2]


def test_the_group_reference_accepts_repeating_the_split(small_lake, cli):
    r = cli("score", small_lake.path, "--reference", "split:test", "--reference-split", "test")
    assert r.code == 0, r.err
    assert re.search(r"reference split:test: .* test_left_out=\d+;", r.out), r.out


# --- stale flags, provenance, info --------------------------------------------------------------
def _append_checkpoint(lake: Lake, split: str, checkpoint: int) -> None:
    with SplitWriter(lake, split) as writer:
        buffer = writer.checkpoint(checkpoint)
        ids = lake.split(split).sample_ids
        buffer.add(ids, np.linspace(0.1, 0.9, len(ids)))
        buffer.commit()


def test_scores_go_stale_with_their_own_reference_split_only(small_lake, cli):
    lake = small_lake
    assert cli("score", lake.path, "--name", "on_val").code == 0
    assert cli("score", lake.path, "--reference", "split:test", "--name", "on_target").code == 0
    assert (
        cli(
            "score", lake.path, "--reference-split", "test", "--fallback", "global", "--name", "grp"
        ).code
        == 0
    )
    assert (
        cli(
            "score",
            lake.path,
            "--reference",
            "global",
            "--reference-split",
            "test",
            "--name",
            "pooled",
        ).code
        == 0
    )
    assert stale_scores(lake.reload()) == {}
    nxt = int(lake.split("train").checkpoint_ids.max()) + 1
    _append_checkpoint(lake, "train", nxt)
    _append_checkpoint(lake, "val", nxt)  # train and val move on; test does not
    stale = stale_scores(lake.reload())
    assert set(stale) == {"on_val"}, stale
    _append_checkpoint(lake, "test", nxt)
    stale = stale_scores(lake.reload())
    assert set(stale) == {"on_val", "on_target", "grp", "pooled"}, stale
    assert "now give" in stale["on_target"] and "train and test now give" in stale["on_target"]
    assert stale["on_target"].endswith("--name on_target --reference split:test --force")
    assert stale["grp"].endswith("--name grp --reference-split test --fallback global --force")
    assert stale["pooled"].endswith(
        "--name pooled --reference global --reference-split test --force"
    )
    assert stale["on_val"].endswith("--name on_val --force")
    info = cli("info", lake.path).out
    assert (
        "score on_target: method=cld, reference=split:test, reference_split=test, window=all"
        in info
    )
    assert "score grp: method=cld, reference=group, reference_split=test, window=all" in info
    # the printed command recomputes each score as it was (and makes it fresh)
    for reason in stale.values():
        command = reason.split("recompute it: cld-lake ")[1].split()
        assert cli(*command).code == 0, command
    assert stale_scores(lake.reload()) == {}
    prov = stored_scores(lake.reload())
    assert prov["grp"]["fallback_mode"] == "global" and prov["grp"]["fallback"] > 0


def test_a_score_stored_as_class_reads_as_group_and_stays_fresh(small_lake, cli):
    """Scores stored before references could be chosen record ``reference: class`` and no
    reference split: they are the group rule over val, shown as such, never stale for it."""
    lake = small_lake
    result = compute_cld(lake, store=False)
    old = dict(result.provenance)
    old["parameters"] = {"reference": "class", "fallback": None}
    for key in ("reference_samples_used", "reference_left_out"):
        old.pop(key)
    store_scores(lake, lake.split("train"), {"cld_old": result.scores}, {"cld_old": old})
    lake = lake.reload()
    assert stale_scores(lake) == {}
    info = json.loads(cli("info", lake.path, "--json").out)
    assert info["score_settings"]["cld_old"] == {
        "method": "cld",
        "reference": "group",
        "reference_split": "val",
        "window": "all",
    }
    r = cli("score", lake.path, "--name", "cld_old")
    assert "score cld_old exists (cld, reference group, window all)" in r.err
    assert (
        cli(
            "score", lake.path, "--reference-split", "test", "--fallback", "global", "--name", "t"
        ).code
        == 0
    )
    r = cli("score", lake.path, "--name", "t")
    assert "score t exists (cld, reference group of test, window all)" in r.err
    nxt = int(lake.split("train").checkpoint_ids.max()) + 1
    _append_checkpoint(lake, "test", nxt)  # not a split the old score read
    assert stale_scores(lake.reload()) == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a stale score would warn
        manifest = cld_lake.select(
            lake.reload(), score="cld_old", fraction=0.5, out=lake.path.parent / "m.parquet"
        )
    assert manifest.metadata.get("score_stale") is None


def test_the_score_summary_names_the_reference(small_lake, cli):
    r = cli("score", small_lake.path, "--reference", "split:test", "--name", "x")
    assert r.code == 0 and "with numpy in " in r.out
    assert re.search(
        r"s, reference split:test: nan=\d+ degenerate=\d+ fallback=0 test_left_out=\d+;", r.out
    ), r.out
    r = cli("score", small_lake.path, "--name", "y")
    assert re.search(r"s, reference group of val: .* val_left_out=\d+;", r.out), r.out


# --- the streaming API ---------------------------------------------------------------------------
def test_the_streaming_api_takes_group_and_explains_split_references():
    val = np.array([[3.0, 2.0, 1.5, 1.2], [2.0, 1.0, 0.5, 0.2]])
    rows = np.array([[4.0, 3.0, 2.5, 2.2], [1.0, 2.0, 2.5, 2.75]])
    by_group = CLDAccumulator(cld_reference([(val, [0, 1])], num_classes=2, reference="group"))
    by_class = CLDAccumulator(cld_reference([(val, [0, 1])], num_classes=2, reference="class"))
    np.testing.assert_array_equal(by_group.update(rows, [0, 1]), by_class.update(rows, [0, 1]))
    with pytest.raises(
        ScoringError, match=r"split:target names a split of a lake: without one, pass"
    ):
        cld_reference([(val, [0, 1])], num_classes=2, reference="split:target")
    with pytest.raises(ScoringError, match="have no test sample"):
        cld_reference([(val, [0, 0])], num_classes=2, train_classes=[0, 1], split="test")


# --- the worked example of docs/scores.md --------------------------------------------------------
def _worked_example() -> tuple[ex.Block, ex.Block, ex.Block]:
    text = (REPO / "docs" / "scores.md").read_text(encoding="utf-8")
    start = text.splitlines().index("### A worked example") + 1
    blocks = [b for b in ex.parse(text, "docs/scores.md") if b.line > start]
    code = next(b for b in blocks if b.lang == "python")
    run = next(b for b in blocks if b.lang == "bash" and b.line > code.line)
    output = next(b for b in blocks if b.directive == "output" and b.line > run.line)
    return code, run, output


def test_the_worked_example_runs_and_its_numbers_are_the_definitions(tmp_path):
    code, run, output = _worked_example()
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    (tmp_path / "make.py").write_text(code.code)
    made = subprocess.run(
        [sys.executable, "make.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    scored = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", run.code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert scored.returncode == 0, scored.stderr
    assert ex.printed(ex.expected_lines(output), scored.stdout) == [], scored.stdout
    # every number of the printed table, from the definitions on the lake's own losses
    lake = Lake(tmp_path / "runs" / "worked" / "example.lake")
    load = {s: losses_of(lake.split(s)) for s in ("train", "val", "test")}
    labels = {s: lake.split(s).labels for s in load}
    want = {
        "by_group": reference_cld(load["train"], labels["train"], load["val"], labels["val"])[
            "scores"
        ],
        "pooled": pooled_reference_cld(load["train"], load["val"])["scores"],
        "test_group": reference_cld(load["train"], labels["train"], load["test"], labels["test"])[
            "scores"
        ],
        "target": pooled_reference_cld(load["train"], load["test"])["scores"],
    }
    lines = ex.expected_lines(output)
    header = lines[0].split()
    assert header == ["sample_id", "label", *want]
    for i, line in enumerate(lines[1:]):
        cells = line.split()
        assert int(cells[0]) == lake.split("train").sample_ids[i]
        for name, cell in zip(want, cells[2:], strict=True):
            value = want[name][i]
            assert (cell == "NULL") if np.isnan(value) else float(cell) == round(value, 3), (
                name,
                i,
            )
    assert load["train"].shape == (5, 4)
