"""Run, split and score names are checked before anything is written (issue 16.3: a 300-character
run name gave exit 1 "File name too long" and left an empty ``runs/`` directory): one line
naming the argument and the rule, exit 2, the lake byte-identical. Every CLI command and
Python entry that takes such a name; one owner (``cld_lake/lake/_validate.py``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

import cld_lake
from cld_lake.errors import BadInputError, CldLakeError, ScoringError
from cld_lake.export import export_trajectories
from cld_lake.lake import Lake, SplitWriter, import_file
from cld_lake.score import compute_scores

N, T, C = 40, 6, 3
MAX_NAME_LENGTH = 64  # cld_lake.lake.MAX_NAME_LENGTH
BAD_PATH_NAMES = ["r" * 300, "r" * (MAX_NAME_LENGTH + 1), "", ".", "..", "../x", "a/b", "-x",
                  ".hidden", "a b", "caf\u00e9", "x\ny"]  # fmt: skip
BAD_SCORE_NAMES = ["s" * 300, "s" * (MAX_NAME_LENGTH + 1), "", "1st", "a-b", "a b", "x.y",
                   "sample_id", "LABEL"]  # fmt: skip


def tree(path: Path) -> str:
    """Every entry under ``path`` (directories too: an empty ``runs/`` counts) and every file's
    bytes, lock files aside."""
    h = hashlib.sha256()
    if not path.exists():
        return "absent"
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file() and not p.name.endswith(".lock"):
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    files = {}
    for split, n in (("train", N), ("val", 12)):
        files[f"{split}_loss"] = d / f"{split}_loss.npy"
        files[f"{split}_labels"] = d / f"{split}_labels.npy"
        np.save(files[f"{split}_loss"], rng.gamma(1.5, 1.0, (n, T)).astype("float32"))
        np.save(files[f"{split}_labels"], np.arange(n) % C)
    return files


@pytest.fixture
def lake(tmp_path, inputs) -> Path:
    path = tmp_path / "lake"
    for split in ("train", "val"):
        import_file(path, split, loss=inputs[f"{split}_loss"], labels=inputs[f"{split}_labels"])
    compute_scores(path, "cld")
    return path


def _one_line_exit_2(r, *parts: str) -> None:
    assert r.code == 2, r.err
    assert len(r.err.strip().splitlines()) == 1, r.err
    for part in parts:
        assert part in r.err, (part, r.err)


# --- the command line --------------------------------------------------------------------
@pytest.mark.parametrize("name", BAD_PATH_NAMES)
def test_cli_run_and_split_names(cli, lake, inputs, name) -> None:
    before = tree(lake)
    load = ["--loss", inputs["train_loss"], "--labels", inputs["train_labels"]]
    r = cli("import", lake, "--split", "train", *load, "--run", name)
    _one_line_exit_2(r, "--run", "a run name is 1 to 64 characters")
    r = cli("score", lake, "--run", name)
    _one_line_exit_2(r, "--run", "a run name is 1 to 64 characters")
    r = cli("export", lake, "--split", name, "--out", lake.parent / "e.parquet")
    _one_line_exit_2(r, "--split", "a split name is 1 to 64 characters")
    assert tree(lake) == before and not (lake.parent / "e.parquet").exists()
    # a new lake: nothing created at all
    r = cli("import", lake.parent / "new", "--split", "train", *load, "--run", name)
    _one_line_exit_2(r, "--run")
    assert not (lake.parent / "new").exists()


def test_a_long_name_is_shown_cut_with_its_length(cli, lake, inputs) -> None:
    r = cli("import", lake, "--split", "train", "--loss", inputs["train_loss"], "--labels",
            inputs["train_labels"], "--run", "r" * 300)  # fmt: skip
    assert f"--run {'r' * 32}... (300 characters): a run name is 1 to 64 characters" in r.err
    assert "r" * 33 not in r.err and "File name too long" not in r.err


@pytest.mark.parametrize("name", BAD_SCORE_NAMES)
def test_cli_score_names(cli, lake, name) -> None:
    before = tree(lake)
    reserved = name.lower() in ("sample_id", "label")
    rule = "are columns of the scores table" if reserved else "a score name is 1 to 64 characters"
    _one_line_exit_2(cli("score", lake, "--name", name), "--name", rule)
    out = lake.parent / "m.parquet"
    r = cli("select", lake, "--score", name, "--fraction", "0.5", "--out", out)
    _one_line_exit_2(r, "--score", *([] if reserved else [rule]))  # select: the stored scores
    assert tree(lake) == before and not out.exists()


# --- Python ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BAD_PATH_NAMES)
def test_python_run_and_split_names(lake, inputs, name) -> None:
    from cld_lake.torch import LossRecorder

    before = tree(lake)
    load = {"loss": inputs["train_loss"], "labels": inputs["train_labels"]}
    calls = {
        "run=": [
            lambda: import_file(lake, "train", run=name, **load),
            lambda: LossRecorder(lake, "train", run=name),
            lambda: SplitWriter(Lake(lake), "train", run=name),
            lambda: Lake(lake, run=name),
            lambda: Lake(lake).split("train", run=name),
            lambda: compute_scores(lake, "cld", runs=[name]),
        ],
        "split=": [
            lambda: import_file(lake, name, **load),
            lambda: LossRecorder(lake, name),
            lambda: SplitWriter(Lake(lake), name),
            lambda: Lake(lake).split(name),
            lambda: export_trajectories(lake, name, lake.parent / "e.parquet"),
        ],
    }
    for param, refused in calls.items():
        for call in refused:
            with pytest.raises(BadInputError) as err:
                call()
            message = str(err.value)
            assert message.startswith(param) and "name is 1 to 64 characters" in message, message
            assert "--" not in message.split(":")[0]
    assert tree(lake) == before


@pytest.mark.parametrize("name", BAD_SCORE_NAMES)
def test_python_score_names(lake, name) -> None:
    before = tree(lake)
    for param, call in (
        ("name=", lambda: cld_lake.score(lake, name=name)),
        ("name=", lambda: compute_scores(lake, "cld", names=[name])),
        ("score=", lambda: cld_lake.select(lake, name, fraction=0.5)),
    ):
        with pytest.raises((ScoringError, BadInputError)) as err:
            call()
        reserved = name.lower() in ("sample_id", "label")  # select lists the stored scores
        assert reserved or str(err.value).startswith(param), str(err.value)
    assert tree(lake) == before


def test_names_of_64_characters_are_fine(lake, inputs, cli) -> None:
    assert cld_lake.lake.MAX_NAME_LENGTH == MAX_NAME_LENGTH
    run, score = "r" * MAX_NAME_LENGTH, "s" * MAX_NAME_LENGTH
    load = {"loss": inputs["train_loss"], "labels": inputs["train_labels"]}
    import_file(lake, "train", run=run, **load)
    assert run in Lake(lake).runs()
    assert cli("score", lake, "--run", "default", "--name", score).code == 0
    assert score in cld_lake.lake.stored_scores(Lake(lake))


# --- names that differ only in case ------------------------------------------------------
def test_names_differing_only_in_case_are_refused(cli, lake, inputs) -> None:
    """Two such runs or splits would share a directory on a case-insensitive file system,
    two such scores one SQL column (DuckDB renamed the second ``CLD_1``)."""
    load = ["--loss", inputs["train_loss"], "--labels", inputs["train_labels"]]
    assert cli("import", lake, "--split", "train", *load, "--run", "seed1").code == 0
    before = tree(lake)
    r = cli("import", lake, "--split", "train", *load, "--run", "SEED1")
    _one_line_exit_2(r, "--run SEED1: the lake already has the run 'seed1'")
    r = cli("import", lake, "--split", "train", *load, "--run", "Default")
    _one_line_exit_2(r, "the run 'default'")
    with pytest.raises(BadInputError, match="split='Train': the lake already has the split 'tr"):
        SplitWriter(Lake(lake), "Train")
    r = cli("score", lake, "--run", "default", "--method", "mean_loss", "--name", "CLD")
    _one_line_exit_2(r, "--name CLD: the lake already has the score 'cld'")
    assert tree(lake) == before
    # the same name, same case, is the same run: it imports (new checkpoint ids)
    np.save(lake.parent / "ids.npy", np.arange(T, 2 * T))
    r = cli("import", lake, "--split", "train", *load, "--run", "seed1", "--checkpoint-ids",
            lake.parent / "ids.npy")  # fmt: skip
    assert r.code == 0, r.err


def test_every_refusal_is_a_cld_lake_error_with_exit_2() -> None:
    from cld_lake.lake import check_run_name, check_score_name, check_split_name

    for check, name in ((check_run_name, ".."), (check_split_name, "a/b"), (check_score_name, "")):
        with pytest.raises(CldLakeError) as err:
            check(name)
        assert err.value.exit_code == 2
