"""Several proxy runs (seeds, architectures) in one lake: recording, import, views, scoring
each run and their ensemble (the mean), verify, and one-run lakes left as they were."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import cld_lake
from cld_lake.errors import BadInputError, ScoringError, SplitNotFoundError
from cld_lake.lake import _format as fmt
from cld_lake.lake.check import verify_lake
from cld_lake.lake.importer import import_file
from cld_lake.score import compute_scores
from cld_lake.sql import query
from cld_lake.torch import LossRecorder, WithIndex
from tests.conftest import has_scores, scores_file

N, NV, D, C, T = 96, 40, 5, 3, 5
SEEDS = ("seed0", "seed1")


def _data(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g)
    y = torch.arange(n) % C  # every class in every split
    return x + y[:, None].float(), y


def _record_run(lake: Path, run: str | None, seed: int) -> None:
    """Train a tiny model for T epochs, recording train and val after each (run ``run``)."""
    (x, y), (xv, yv) = _data(0, N), _data(1, NV)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(D, 8), torch.nn.ReLU(), torch.nn.Linear(8, C))
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    train = LossRecorder(lake, "train", run=run)
    val = LossRecorder(lake, "val", run=run)
    for epoch in range(T):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        train.record(model, DataLoader(WithIndex(TensorDataset(x, y)), batch_size=32), epoch)
        val.record(model, DataLoader(WithIndex(TensorDataset(xv, yv)), batch_size=32), epoch)


def _import_run(cli, lake: Path, folder: Path, run: str, nan_row: int | None = None) -> None:
    """A third run through the CLI: the same samples, losses of another proxy."""
    rng = np.random.default_rng(7)
    files = {}
    for split, n in (("train", N), ("val", NV)):
        loss = np.exp(-np.arange(T) / 2.0) * rng.uniform(0.5, 2.0, (n, 1)) + rng.random((n, T))
        if nan_row is not None and split == "train":
            loss[nan_row, 2] = np.nan
        files[split] = (folder / f"{run}_{split}_loss.npy", folder / f"{run}_{split}_y.npy")
        np.save(files[split][0], loss.astype(np.float32))
        np.save(files[split][1], np.arange(n) % C)
    for split, (loss_path, labels_path) in files.items():
        r = cli("import", lake, "--split", split, "--loss", loss_path, "--labels", labels_path,
                "--run", run)  # fmt: skip
        assert r.code == 0 and f"run {run}" in r.out, r.err


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """Two recorded runs (torch, two seeds); tests copy it before changing it."""
    lake = tmp_path_factory.mktemp("runs") / "r.lake"
    for i, run in enumerate(SEEDS):
        _record_run(lake, run, seed=i)
    return lake


@pytest.fixture
def lake(recorded, tmp_path, cli) -> Path:
    """The two recorded runs plus ``imported`` (CLI import, one NaN loss in train row 3)."""
    import shutil

    path = tmp_path / "r.lake"
    shutil.copytree(recorded, path)
    _import_run(cli, path, tmp_path, "imported", nan_row=3)
    return path


def _scores(lake: Path) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    table = pq.read_table(scores_file(lake))
    columns = {
        c: table.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
        for c in table.column_names
    }
    meta = json.loads(table.schema.metadata[b"cld_lake"])
    return columns, meta


def _provenance(lake: Path) -> dict[str, dict]:
    from cld_lake.lake.scores import stored_scores

    return stored_scores(cld_lake.open_lake(lake))


# --- layout and listing ---------------------------------------------------------------------


def test_runs_are_namespaces_of_splits_listed_in_the_root(lake: Path) -> None:
    lk = cld_lake.open_lake(lake)
    assert lk.runs() == ["imported", "seed0", "seed1"]  # no default run: nothing in splits/
    assert lk.splits() == [] and lk.splits("seed0") == ["train", "val"]
    root = json.loads((lake / fmt.ROOT_FILE).read_text())
    assert root["splits"] == [] and sorted(root["runs"]) == ["imported", "seed0", "seed1"]
    assert (lake / "runs" / "seed1" / "splits" / "val" / fmt.CHECKPOINTS_FILE).exists()
    train = lk.split("train", run="seed1")
    assert (train.run, train.num_samples, train.num_checkpoints) == ("seed1", N, T)
    assert lk.with_run("seed1").split("train").path == train.path
    # the same samples in every run, different losses (different seeds)
    s0, s1 = lk.split("train", "seed0"), lk.split("train", "seed1")
    assert s0.ids_digest == s1.ids_digest
    np.testing.assert_array_equal(s0.labels, s1.labels)
    l0, l1 = (next(s.blocks()).loss for s in (s0, s1))
    assert l0.shape == (N, T) and not np.array_equal(l0, l1)
    with pytest.raises(SplitNotFoundError, match="no split 'test' in run 'seed0'"):
        lk.split("test", "seed0")
    with pytest.raises(SplitNotFoundError, match="the lake's runs: imported, seed0, seed1"):
        lk.split("train")  # the default run has no splits here


def test_info_lists_every_run(lake: Path, cli) -> None:
    r = cli("info", lake)
    assert r.code == 0, r.err
    assert "runs: imported, seed0, seed1" in r.out
    assert "run seed0:" in r.out and "run imported:" in r.out
    info = json.loads(cli("info", lake, "--json").out)
    assert info["splits"] == {} and sorted(info["runs"]) == ["imported", "seed0", "seed1"]
    assert info["runs"]["seed1"]["splits"]["train"]["checkpoints"] == T


def test_views_carry_the_run_column(lake: Path) -> None:
    counts = query(lake, "SELECT run, split, count(*) AS n FROM losses GROUP BY ALL ORDER BY ALL")
    assert counts.rows() == [
        (run, split, n * T)
        for run in ("imported", *SEEDS)
        for split, n in (("train", N), ("val", NV))
    ]
    ck = query(lake, "SELECT run, count(*) AS n FROM checkpoints WHERE split = 'val' GROUP BY run")
    assert sorted(ck.rows()) == [("imported", T), ("seed0", T), ("seed1", T)]
    samples = query(lake, "SELECT run, count(*) AS n FROM samples GROUP BY run ORDER BY run")
    assert samples.rows() == [("imported", N + NV), ("seed0", N + NV), ("seed1", N + NV)]
    one = query(lake, "SELECT loss FROM losses WHERE run = 'seed1' AND split = 'train' "
                "AND sample_id = 5 ORDER BY checkpoint")  # fmt: skip
    expected = next(cld_lake.open_lake(lake).split("train", "seed1").blocks()).loss[5]
    np.testing.assert_array_equal(one["loss"].to_numpy(), expected)
    ref = query(lake, "SELECT DISTINCT run FROM val_reference ORDER BY run")
    assert ref["run"].to_list() == ["imported", "seed0", "seed1"]


# --- scoring --------------------------------------------------------------------------------


def test_missing_run_with_several_runs_is_exit_2_naming_them(lake: Path, cli) -> None:
    r = cli("score", lake)
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1
    assert "3 runs (imported, seed0, seed1)" in r.err and "--run" in r.err
    r = cli("score", lake, "--run", "seed9")
    assert r.code == 2 and "no run 'seed9'" in r.err and "imported, seed0, seed1" in r.err
    r = cli("score", lake, "--run", "../x")
    assert r.code == 2 and "run name" in r.err
    assert not has_scores(lake)


@pytest.mark.parametrize("method", ["cld", "mean_loss"])
def test_ensemble_is_the_exact_mean_of_the_runs_scores(lake: Path, cli, method: str) -> None:
    for run in ("seed0", "imported"):
        r = cli("score", lake, "--method", method, "--run", run, "--name", f"{method}_{run}")
        assert r.code == 0, r.err
    r = cli("score", lake, "--method", method, "--run", "seed0", "--run", "imported",
            "--name", f"{method}_ens")  # fmt: skip
    assert r.code == 0 and "mean over runs seed0, imported" in r.out, r.err
    cols, _ = _scores(lake)
    a, b, ens = (cols[f"{method}_{s}"] for s in ("seed0", "imported", "ens"))
    assert np.isnan(b[3]) and not np.isnan(a[3])  # the imported run's NaN loss (row 3)
    np.testing.assert_array_equal(ens, (a + b) / 2)  # NaN where either is NaN
    assert np.isnan(ens[3]) and np.isfinite(np.delete(ens, 3)).all()
    prov = _provenance(lake)
    p = prov[f"{method}_ens"]
    assert p["runs"] == ["seed0", "imported"] and p["ensemble"] == "mean" and p["nan"] == 1
    assert p["method"] == method and set(p["run_provenance"]) == {"seed0", "imported"}
    own = prov[f"{method}_imported"]
    assert p["run_provenance"]["imported"]["checkpoint_ids"] == own["checkpoint_ids"]
    assert own["run"] == "imported" and p["run_provenance"]["imported"]["nan"] == own["nan"] == 1
    assert p["direction"] == own["direction"] and p["range"] == own["range"]


def test_python_api_ensemble_and_two_recorded_seeds(lake: Path) -> None:
    one = {r: compute_scores(lake, "cld", runs=r, store=False)["cld"].scores for r in SEEDS}
    both = compute_scores(lake, "cld", runs=list(SEEDS), store=False)["cld"]
    assert both.scores is not None and not np.array_equal(one["seed0"], one["seed1"])
    np.testing.assert_array_equal(both.scores, (one["seed0"] + one["seed1"]) / 2)
    np.testing.assert_array_equal(both.sample_ids, np.arange(N))
    # a lake opened on a run scores that run without runs=
    via_lake = compute_scores(cld_lake.open_lake(lake).with_run("seed1"), "cld", store=False)
    np.testing.assert_array_equal(via_lake["cld"].scores, one["seed1"])
    with pytest.raises(BadInputError, match="3 runs"):
        compute_scores(lake, "cld", store=False)


def test_runs_with_other_training_samples_are_not_ensembled(lake: Path, tmp_path, cli) -> None:
    loss = np.random.default_rng(0).random((N, T)).astype(np.float32)
    np.save(tmp_path / "l.npy", loss)
    np.save(tmp_path / "y.npy", (np.arange(N) + 1) % C)  # other labels
    np.save(tmp_path / "ids.npy", np.arange(N) + 1)  # other ids
    for run, ids in (("relabelled", []), ("reindexed", ["--sample-ids", tmp_path / "ids.npy"])):
        labels = tmp_path / ("y.npy" if not ids else "y0.npy")
        np.save(tmp_path / "y0.npy", np.arange(N) % C)
        r = cli("import", lake, "--split", "train", "--loss", tmp_path / "l.npy",
                "--labels", labels, "--run", run, *ids)  # fmt: skip
        assert r.code == 0, r.err
        r = cli("score", lake, "--method", "mean_loss", "--run", "seed0", "--run", run)
        assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
        assert f"runs 'seed0' and '{run}' record different training samples" in r.err
    import_file(lake, "val", loss=tmp_path / "l.npy", labels=tmp_path / "y0.npy", run="valonly")
    assert cld_lake.open_lake(lake).splits("valonly") == ["val"]
    with pytest.raises(ScoringError, match="run 'valonly' has no train split"):
        compute_scores(lake, "mean_loss", runs=["seed0", "valonly"], store=False)


# --- verify, compact, one-run lakes ------------------------------------------------------------


def test_verify_checks_every_run(lake: Path, cli) -> None:
    r = cli("verify", lake)
    assert r.code == 0, r.err
    report = verify_lake(cld_lake.open_lake(lake))
    values = (N + NV) * T
    assert report.checked_values == 2 * values * 3 + values  # recorded: 3 channels; imported: 1
    chunk = next((lake / "runs" / "seed1" / "splits" / "train" / "segments").rglob("c/*/*"))
    data = bytearray(chunk.read_bytes())
    data[0] ^= 0x01
    chunk.write_bytes(bytes(data))
    r = cli("verify", lake)
    assert r.code == 1 and "split 'seed1/train' is corrupt" in r.err
    assert "seed0" not in r.err and "imported" not in r.err
    # an unfinished first write in a run is reported as debris
    (lake / "runs" / "seed0" / "splits" / "test").mkdir()
    (lake / "runs" / "seed0" / "splits" / "test" / "samples.parquet").write_bytes(b"x")
    warnings = verify_lake(cld_lake.open_lake(lake), read_data=False).warnings
    assert any("split 'seed0/test': an unfinished first write" in w for w in warnings)


def test_compact_every_run(lake: Path, cli) -> None:
    r = cli("compact", lake)
    assert r.code == 0, r.err
    assert "seed0/train:" in r.out and "imported/val:" in r.out
    lk = cld_lake.open_lake(lake)
    assert all(
        len(lk.split(s, run).segment_names()) == 1 for run in SEEDS for s in ("train", "val")
    )
    assert cli("verify", lake).code == 0


def test_one_run_lake_keeps_its_shape_and_a_second_run_needs_run(tmp_path: Path, cli) -> None:
    lake = tmp_path / "one.lake"
    _record_run(lake, None, seed=0)  # no run: the default run, in splits/
    lk = cld_lake.open_lake(lake)
    assert lk.runs() == ["default"] and lk.splits() == ["train", "val"]
    root = json.loads((lake / fmt.ROOT_FILE).read_text())
    assert "runs" not in root and (lake / "splits" / "train").is_dir()
    assert not (lake / "runs").exists()
    cols = query(lake, "SELECT * FROM losses LIMIT 1").columns
    assert "run" not in cols and "run" not in query(lake, "SELECT * FROM val_reference").columns
    assert "runs" not in json.loads(cli("info", lake, "--json").out)
    r = cli("score", lake)
    assert r.code == 0 and "mean over runs" not in r.out, r.err
    single, _ = _scores(lake)
    assert "run" not in _provenance(lake)["cld"]
    # a second run: the default one is then named, and scoring needs --run
    _import_run(cli, lake, tmp_path, "other")
    assert cld_lake.open_lake(lake).runs() == ["default", "other"]
    r = cli("score", lake, "--name", "again")
    assert r.code == 2 and "2 runs (default, other)" in r.err
    assert cli("score", lake, "--run", "default", "--name", "again").code == 0
    both, _ = _scores(lake)
    np.testing.assert_array_equal(both["again"], single["cld"])
    assert "run" in query(lake, "SELECT * FROM losses LIMIT 1").columns
    assert "run default:" in cli("info", lake).out


def test_bad_run_names_are_refused_before_writing(tmp_path: Path) -> None:
    for bad in ("", "../up", "a/b", ".hidden"):
        with pytest.raises(BadInputError, match="run name"):
            LossRecorder(tmp_path / "x.lake", "train", run=bad)
    assert not (tmp_path / "x.lake").exists()


def test_runs_have_their_own_writers_and_listings(tmp_path: Path) -> None:
    from cld_lake.errors import LakeLockedError
    from cld_lake.lake import Lake, SplitWriter

    lk = Lake.create(tmp_path / "w.lake")
    ids, labels = np.arange(10), np.arange(10) % C
    with SplitWriter(lk, "train", run="a") as wa, SplitWriter(lk, "train", run="b") as wb:
        with pytest.raises(LakeLockedError, match="split 'train' of run 'a' is being written"):
            SplitWriter(lk, "train", run="a")
        wa.declare_samples(ids, labels)
        assert lk.runs() == ["a"] and lk.splits("b") == []  # b is not committed yet
        wb.declare_samples(ids[::-1].copy(), labels[::-1].copy())
    assert lk.runs() == ["a", "b"]
    np.testing.assert_array_equal(lk.split("train", "b").sample_ids, ids[::-1])
    root = json.loads((lk.path / fmt.ROOT_FILE).read_text())
    assert root["runs"] == {"a": ["train"], "b": ["train"]} and root["splits"] == []
    assert verify_lake(lk).ok


def test_a_lake_recorded_only_under_a_named_run_scores_selects_exports_and_reports(tmp_path, cli):
    """select, export and report read the only run of a lake that has no default run."""
    from tests.conftest import make_arrays

    loss, labels, ids = make_arrays(60, 5, 3, seed=4)
    vloss, vlabels, _ = make_arrays(15, 5, 3, seed=5)
    for name, arr in {"l": loss, "y": labels, "i": ids, "vl": vloss, "vy": vlabels}.items():
        np.save(tmp_path / f"{name}.npy", arr)
    lake = tmp_path / "lake"
    common = ("--run", "seed0")
    assert cli("import", lake, "--split", "train", "--loss", tmp_path / "l.npy", "--labels",
               tmp_path / "y.npy", "--sample-ids", tmp_path / "i.npy", *common).code == 0  # fmt: skip
    assert cli("import", lake, "--split", "val", "--loss", tmp_path / "vl.npy", "--labels",
               tmp_path / "vy.npy", *common).code == 0  # fmt: skip
    assert cli("score", lake).code == 0
    r = cli("select", lake, "--score", "cld", "--fraction", "0.5", "--out", tmp_path / "m.parquet")
    assert r.code == 0, r.err
    m = cld_lake.load_manifest(tmp_path / "m.parquet")
    assert len(m) == 30 and set(m.sample_ids) <= set(ids.tolist())
    r = cli("export", lake, "--out", tmp_path / "t.parquet")
    assert r.code == 0, r.err
    r = cli("report", lake, "--out", tmp_path / "r.html")
    assert r.code == 0, r.err
