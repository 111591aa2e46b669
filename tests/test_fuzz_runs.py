"""Fuzz: random sequences of ``cld-lake score`` over a lake with several runs, some sharing the
default run's training samples and one holding other samples.

Whatever the sequence: a command either stores what it names (exit 0) and leaves every other
stored score bit for bit as it was, or refuses in one line (exit 2) and leaves the lake
byte-identical; never exit 1, never a traceback; ``verify`` passes after every step. This is
the surface where scoring one run once turned every earlier score into NULL.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cld_lake.lake import import_file
from tests.conftest import lake_hash, make_arrays

N, T, C = 120, 8, 3
CASES, STEPS = 25, 5
METHODS = ("cld", "mean_loss", "forgetting", "confidence")
WINDOWS = (None, "0:6", "2:8", "::2", "0:20")
pytestmark = pytest.mark.timeout(300)


def _build(folder: Path) -> Path:
    lake = folder / "lake"
    folder.mkdir()
    loss, labels, ids = make_arrays(N, T, C, seed=1)
    correct = np.random.default_rng(2).random((N, T)) < 0.7
    vloss, vlabels, _ = make_arrays(30, T, C, seed=3)
    arrays = {"labels": labels, "correct": correct, "vlabels": vlabels}
    for run, shift, sample_ids in (
        (None, 0.0, ids),
        ("same", 0.3, ids),  # other losses, the same training samples
        ("other", 0.1, ids + 100_000),  # another sample set: its scores have no table here
    ):
        arrays |= {"loss": loss + shift, "vloss": vloss + shift, "ids": sample_ids}
        files = {k: folder / f"{k}.npy" for k in arrays}
        for k, v in arrays.items():
            np.save(files[k], v)
        import_file(lake, "train", loss=files["loss"], labels=files["labels"],
                    sample_ids=files["ids"], correct=files["correct"], run=run)  # fmt: skip
        import_file(lake, "val", loss=files["vloss"], labels=files["vlabels"], run=run)
    return lake


def _scores(lake: Path) -> dict[str, np.ndarray]:
    from cld_lake.lake import open_lake, scores_path

    path = scores_path(open_lake(lake))
    if path is None:
        return {}
    table = pq.read_table(path.local_path)
    return {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}


def _command(rng: random.Random, lake: Path) -> list[str]:
    args = ["score", str(lake)]
    method = rng.choice(METHODS)
    if rng.random() < 0.7:
        args += ["--method", method]
    runs = rng.choice(
        [[], ["default"], ["same"], ["other"], ["default", "same"], ["same", "other"]]
    )
    for run in runs:
        args += ["--run", run]
    if rng.random() < 0.6:
        args += ["--name", rng.choice(["a", "b", "c", method])]
    window = rng.choice(WINDOWS)
    if window is not None:
        args += ["--checkpoints", window]
    if rng.random() < 0.4:
        args.append("--force")
    return args


def test_scoring_runs_in_any_order_never_loses_or_changes_another_score(cli, tmp_path):
    rng = random.Random(7)
    counts = {"commands": 0, "stored": 0, "refused": 0}
    for case in range(CASES):
        lake = _build(tmp_path / f"case{case}")
        for _ in range(STEPS):
            args = _command(rng, lake)
            before, before_hash = _scores(lake), lake_hash(lake)
            result = cli(*args)
            counts["commands"] += 1
            assert "Traceback" not in result.err, (args, result.err)
            assert result.code in (0, 2), (args, result.code, result.err)
            after = _scores(lake)
            if result.code == 2:
                counts["refused"] += 1
                assert len(result.err.strip().splitlines()) == 1, (args, result.err)
                assert lake_hash(lake) == before_hash, args
                continue
            counts["stored"] += 1
            named = args[args.index("--name") + 1] if "--name" in args else None
            written = {named} if named else set(after) - {"sample_id", "label"}
            if named is None:  # the method's own name: the one column it writes
                method = args[args.index("--method") + 1] if "--method" in args else "cld"
                written = {method}
            for column, values in before.items():
                if column not in written:
                    np.testing.assert_array_equal(after[column], values, err_msg=str(args))
            assert written <= set(after), (args, sorted(after))
            assert cli("verify", lake).code == 0, args
    print(f"\nruns fuzz: {counts}")
    assert counts["stored"] > 20 and counts["refused"] > 20
