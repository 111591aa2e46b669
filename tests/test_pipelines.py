"""Pipelines: proxy training with recording (digits, CIFAR and ImageFolder on tiny on-disk
copies the tests write), label noise, holdout, train_subset, and bad input."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import cld_lake
from cld_lake.errors import BadInputError, CldLakeError
from pipelines import demo as demo_cli
from pipelines import train_proxy as train_proxy_cli
from pipelines import train_subset as train_subset_cli
from pipelines._common import check_model_output, holdout_split, recipe_for, symmetric_noise
from pipelines._config import parse_config
from pipelines.datasets import load_dataset
from pipelines.demo import DemoConfig, run_demo
from pipelines.train_proxy import ProxyConfig, record_epochs, train_proxy
from pipelines.train_subset import SubsetConfig, manifest_subset, train_model, training_pool
from pipelines.train_subset import main as subset_main

REPO = Path(__file__).resolve().parents[1]


def write_cifar(root: Path, name: str, per_batch: int, num_test: int, num_classes: int) -> None:
    """A tiny copy in torchvision's on-disk python-pickle format."""
    rng = np.random.default_rng(0)
    key = "labels" if name == "cifar10" else "fine_labels"

    def batch(n: int) -> dict:
        labels = (np.arange(n) % num_classes).tolist()
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), key: labels}

    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        files = {f"data_batch_{i}": batch(per_batch) for i in range(1, 6)}
        files["test_batch"] = batch(num_test)
        files["batches.meta"] = {"label_names": [f"c{i}" for i in range(num_classes)]}
    else:
        folder = root / "cifar-100-python"
        files = {"train": batch(per_batch), "test": batch(num_test)}
        files["meta"] = {"fine_label_names": [f"c{i}" for i in range(num_classes)]}
    folder.mkdir(parents=True)
    for fname, obj in files.items():
        with open(folder / fname, "wb") as fh:
            pickle.dump(obj, fh)


def write_imagefolder(root: Path, classes: int, per_class: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for sub, n in (("train", per_class), ("val", 2)):
        for c in range(classes):
            d = root / sub / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
                    d / f"{i}.png"
                )


def test_symmetric_noise_flips_exactly_the_fraction_to_other_classes() -> None:
    labels = np.arange(1000) % 7
    noisy, flipped = symmetric_noise(labels, 0.2, 7, seed=3)
    assert flipped.sum() == 200
    assert (noisy[flipped] != labels[flipped]).all() and (noisy[~flipped] == labels[~flipped]).all()
    assert noisy.min() >= 0 and noisy.max() < 7
    again, _ = symmetric_noise(labels, 0.2, 7, seed=3)
    np.testing.assert_array_equal(noisy, again)
    assert not np.array_equal(noisy, symmetric_noise(labels, 0.2, 7, seed=4)[0])
    with pytest.raises(BadInputError, match="--noise"):
        symmetric_noise(labels, 1.0, 7, seed=0)


def test_holdout_is_per_class_disjoint_and_seeded() -> None:
    labels = np.repeat(np.arange(5), [100, 50, 20, 3, 1])
    train, val = holdout_split(labels, 0.1, seed=0)
    assert np.intersect1d(train, val).size == 0 and len(train) + len(val) == len(labels)
    counts = np.bincount(labels[val], minlength=5)
    np.testing.assert_array_equal(
        counts, [10, 5, 2, 1, 0]
    )  # at least 1; a singleton stays in train
    np.testing.assert_array_equal(val, holdout_split(labels, 0.1, seed=0)[1])


def test_record_epochs() -> None:
    assert record_epochs(5, 1) == [0, 1, 2, 3, 4, 5]
    assert record_epochs(7, 3) == [0, 3, 6, 7]


def test_proxy_on_digits_records_every_epoch_with_noise_metadata(tmp_path: Path) -> None:
    cfg = ProxyConfig(
        dataset="digits",
        lake=tmp_path / "d.lake",
        noise=0.2,
        noise_seed=1,
        epochs=3,
        val_fraction=0.1,
        progress=False,
    )
    result = train_proxy(cfg)
    lake = cld_lake.open_lake(tmp_path / "d.lake")
    train, val = lake.split("train"), lake.split("val")
    np.testing.assert_array_equal(train.checkpoint_ids, [0, 1, 2, 3])
    np.testing.assert_array_equal(val.checkpoint_ids, [0, 1, 2, 3])
    assert set(train.channels) == {"loss", "correct", "margin"}
    assert len(train.segment_names()) == len(val.segment_names()) == 1  # compacted after training
    assert lake.num_classes == 10
    assert np.intersect1d(train.sample_ids, val.sample_ids).size == 0
    assert len(train.sample_ids) + len(val.sample_ids) == 1437  # the digits training pool
    samples = train.samples_table
    noisy = samples.column("noisy").to_numpy(zero_copy_only=False)
    clean = samples.column("clean_label").to_numpy()
    assert noisy.sum() == round(0.2 * train.num_samples)
    assert ((train.labels != clean) == noisy).all()
    data = load_dataset("digits")
    np.testing.assert_array_equal(clean, data.train_labels[train.sample_ids])
    np.testing.assert_array_equal(val.labels, data.train_labels[val.sample_ids])  # val stays clean
    assert sorted(p.name for p in result.models_dir.glob("epoch-*.pt")) == [
        "epoch-0002.pt",
        "epoch-0003.pt",
    ]
    assert 0.5 < result.test_accuracy <= 1.0
    # training moved the losses: the mean train loss fell
    (block,) = list(train.blocks())
    assert block.loss[:, -1].mean() < block.loss[:, 0].mean()
    # a second run with other settings refuses to mix into this lake / models dir
    with pytest.raises(BadInputError, match="other settings"):
        train_proxy(
            ProxyConfig(
                dataset="digits", lake=tmp_path / "d.lake", noise=0.3, epochs=3, progress=False
            )
        )


def test_proxy_on_tiny_cifar10_with_resnet18(tmp_path: Path) -> None:
    write_cifar(tmp_path / "data", "cifar10", per_batch=8, num_test=10, num_classes=4)
    cfg = ProxyConfig(
        dataset="cifar10",
        root=tmp_path / "data",
        lake=tmp_path / "c.lake",
        epochs=1,
        batch_size=16,
        val_fraction=0.2,
        record_test=True,
        progress=False,
    )
    train_proxy(cfg)
    lake = cld_lake.open_lake(tmp_path / "c.lake")
    assert lake.splits() == ["train", "val", "test"]
    assert lake.num_classes == 10
    assert lake.split("train").num_samples + lake.split("val").num_samples == 40
    assert lake.split("test").num_samples == 10
    np.testing.assert_array_equal(lake.split("val").checkpoint_ids, [0, 1])


def test_cifar100_loader_reads_the_pickle_format(tmp_path: Path) -> None:
    write_cifar(tmp_path, "cifar100", per_batch=30, num_test=12, num_classes=100)
    data = load_dataset("cifar100", tmp_path)
    assert data.num_classes == 100 and data.input_shape == (3, 32, 32)
    x, y = data.train[7]
    assert x.shape == (3, 32, 32) and y == 7
    assert len(data.test) == 12 and data.train_labels[:3].tolist() == [0, 1, 2]


def test_proxy_on_tiny_imagefolder(tmp_path: Path) -> None:
    write_imagefolder(tmp_path / "imgs", classes=3, per_class=6)
    cfg = ProxyConfig(
        dataset="imagefolder",
        root=tmp_path / "imgs",
        lake=tmp_path / "i.lake",
        model="mlp",
        image_size=16,
        epochs=2,
        batch_size=8,
        lr=0.01,
        val_fraction=0.2,
        progress=False,
    )
    train_proxy(cfg)
    lake = cld_lake.open_lake(tmp_path / "i.lake")
    assert lake.num_classes == 3
    assert lake.split("train").num_samples == 15 and lake.split("val").num_samples == 3
    np.testing.assert_array_equal(lake.split("train").checkpoint_ids, [0, 1, 2])


def test_missing_or_incomplete_dataset_root_fails_before_anything_is_written(
    tmp_path: Path,
) -> None:
    for root in (tmp_path / "nope", tmp_path):
        with pytest.raises(CldLakeError, match="--root"):
            train_proxy(
                ProxyConfig(dataset="cifar10", root=root, lake=tmp_path / "x.lake", progress=False)
            )
    with pytest.raises(BadInputError, match="needs --root"):
        train_proxy(ProxyConfig(dataset="imagefolder", lake=tmp_path / "x.lake", progress=False))
    assert not (tmp_path / "x.lake").exists() and not (tmp_path / "x.models").exists()


def test_model_with_the_wrong_output_width_is_refused() -> None:
    with pytest.raises(BadInputError, match="must have 10 outputs"):
        check_model_output(torch.nn.Linear(64, 9), torch.zeros(64), 10, torch.device("cpu"))


def test_command_lines_of_the_docs_parse_into_the_configs(tmp_path: Path) -> None:
    """Flags are derived from the config dataclasses: the docs' command lines, every kind of
    flag (path, choice, comma list, switch, required group) and the defaults."""

    configs = {train_proxy_cli: ProxyConfig, train_subset_cli: SubsetConfig, demo_cli: DemoConfig}

    def parse(module: Any, argv: str) -> Any:
        return parse_config(configs[module], module.build_parser(), argv.split())

    assert parse(
        train_proxy_cli, "--dataset cifar100 --root data/cifar100 --lake runs/c100.lake"
    ) == ProxyConfig(dataset="cifar100", root=Path("data/cifar100"), lake=Path("runs/c100.lake"))
    assert parse(
        train_proxy_cli, "--dataset mnist1d --lake runs/m1d.lake --noise 0.2 --epochs 30"
    ) == ProxyConfig(dataset="mnist1d", lake=Path("runs/m1d.lake"), noise=0.2, epochs=30)
    assert parse(
        train_proxy_cli,
        "--dataset digits --lake L --model mlp --milestones 81,121 --record-every 3 "
        "--val-fraction 0.05 --record-test --margin-dtype float16 --threads 2 --no-progress",
    ) == ProxyConfig(
        dataset="digits", lake=Path("L"), model="mlp", milestones=(81, 121), record_every=3,
        val_fraction=0.05, record_test=True, margin_dtype="float16", threads=2, progress=False,
    )  # fmt: skip
    assert parse(
        train_subset_cli, "--dataset cifar100 --root data/cifar100 --manifest coreset.parquet"
    ) == SubsetConfig(
        dataset="cifar100", root=Path("data/cifar100"), manifest=Path("coreset.parquet")
    )
    assert parse(train_subset_cli, "--dataset mnist1d --lake L --random 0.1 --seed 1") == (
        SubsetConfig(dataset="mnist1d", lake=Path("L"), random=0.1, seed=1)
    )
    assert parse(train_subset_cli, "--dataset digits --lake L --full --out r.json") == (
        SubsetConfig(dataset="digits", lake=Path("L"), full=True, out=Path("r.json"))
    )
    assert parse(demo_cli, "") == DemoConfig() == parse(demo_cli, "--fractions 0.1,0.3,0.5")
    assert DemoConfig().out == Path("runs/demo") and DemoConfig().threads == 1
    assert parse(demo_cli, "--out o --fractions 0.2,0.4 --seeds 3 --no-progress") == DemoConfig(
        out=Path("o"), fractions=(0.2, 0.4), seeds=3, progress=False
    )
    for module, argv in (
        (train_proxy_cli, "--dataset digits"),  # --lake is required
        (train_proxy_cli, "--dataset mnist2d --lake L"),
        (train_proxy_cli, "--dataset digits --lake L --milestones 8x"),
        (train_proxy_cli, "--dataset digits --lake L --optimizer rmsprop"),
        (train_subset_cli, "--dataset digits"),  # one of --manifest, --random, --full
        (train_subset_cli, "--dataset digits --manifest m.parquet --full"),
        (demo_cli, "--seeds two"),
    ):
        with pytest.raises(SystemExit) as exc:
            parse(module, argv)
        assert exc.value.code == 2, argv
    with pytest.raises(BadInputError, match="--fractions"):
        run_demo(DemoConfig(out=tmp_path / "demo", fractions=(0.3, 1.5), progress=False))
    assert not (tmp_path / "demo").exists()


def test_cli_bad_input_is_one_line_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.train_proxy",
            "--dataset",
            "cifar100",
            "--root",
            str(tmp_path / "none"),
            "--lake",
            str(tmp_path / "x.lake"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "--root" in proc.stderr
    assert not (tmp_path / "x.lake").exists()


def test_train_subset_on_a_manifest_random_and_full(tmp_path: Path) -> None:
    lake_path = tmp_path / "d.lake"
    train_proxy(ProxyConfig(dataset="digits", lake=lake_path, noise=0.2, epochs=3, progress=False))
    cld_lake.score(lake_path)
    manifest = cld_lake.select(lake_path, "cld", fraction=0.2, out=tmp_path / "top.parquet")
    lake = cld_lake.open_lake(lake_path)
    recorded = lake.split("train")
    data = load_dataset("digits")
    train_set, pool = training_pool(data, lake)
    np.testing.assert_array_equal(pool, recorded.sample_ids)

    # a manifest of known ids (10 per class, class-major like every manifest): exactly those
    # samples, in that order, with the labels recorded in the lake (noisy ones included)
    labels = recorded.labels
    rows = np.concatenate([np.flatnonzero(labels == c)[::5][:10] for c in range(10)])
    known = pool[rows]
    chosen = manifest_subset(
        write_ids_manifest(tmp_path, known, labels[rows]), train_set, pool, lake
    )
    assert chosen.indices == known.tolist()
    assert [y for _, y in chosen] == labels[rows].tolist()
    assert (labels[rows] != data.train_labels[known]).sum() > 5  # noisy labels as recorded
    torch.testing.assert_close(chosen[3][0], data.train_aug[int(known[3])][0])

    # the CLD top-20% manifest trains a model clearly above chance (0.1); measured 0.567
    chosen = manifest_subset(tmp_path / "top.parquet", train_set, pool, lake)
    assert chosen.indices == manifest.sample_ids.tolist()
    res = train_model(
        data, chosen, recipe_for("digits", epochs=2), seed=0, device=torch.device("cpu")
    )
    assert res.num_samples == len(manifest) == round(0.2 * recorded.num_samples)
    assert res.final_test_acc > 0.4 and res.best_test_acc >= res.final_test_acc

    out = tmp_path / "r.json"
    argv = ["--dataset", "digits", "--lake", str(lake_path), "--epochs", "2", "--no-progress", "--out", str(out)]  # fmt: skip
    assert subset_main([*argv, "--manifest", str(tmp_path / "top.parquet")]) == 0
    got = json.loads(out.read_text())
    assert got["num_samples"] == len(manifest)
    assert got["final_test_acc"] == pytest.approx(res.final_test_acc)  # same seeds: same model
    assert subset_main([*argv, "--random", "0.2", "--seed", "1"]) == 0
    got = json.loads(out.read_text())
    assert got["num_samples"] == len(manifest) and got["final_test_acc"] > 0.4  # measured 0.503
    assert subset_main([*argv, "--full"]) == 0
    got = json.loads(out.read_text())
    assert got["num_samples"] == recorded.num_samples and got["final_test_acc"] > 0.75  # 0.883

    # a manifest naming held-out validation ids (or any id outside the pool) is refused
    val_ids = lake.split("val").sample_ids
    with pytest.raises(BadInputError, match="not in the training pool"):
        manifest_subset(
            write_ids_manifest(tmp_path, val_ids, np.zeros(len(val_ids))), train_set, pool, lake
        )
    other = tmp_path / "other.lake"
    train_proxy(ProxyConfig(dataset="digits", lake=other, epochs=3, progress=False))
    with pytest.raises(BadInputError, match="was selected from lake"):
        manifest_subset(tmp_path / "top.parquet", train_set, pool, cld_lake.open_lake(other))


def write_ids_manifest(tmp_path: Path, ids: np.ndarray, labels: np.ndarray) -> Path:
    """A manifest of ``ids`` (ranked in the given order within each class)."""
    from cld_lake.manifest import manifest_table, write_manifest

    table = manifest_table(ids, labels, np.zeros(len(ids)), np.arange(len(ids)))
    return write_manifest(tmp_path / "ids.parquet", table, {"score": "x"})


def test_two_proxy_runs_share_one_lake_and_score_as_an_ensemble(tmp_path: Path) -> None:
    """--run: two proxy runs (same samples, two learning rates) record into one lake (kept
    apart per run), then ``score --run a --run b`` stores the mean of the two runs' CLD. (A
    different --seed draws another holdout, so another train split: no ensemble then.)"""
    lake_path = tmp_path / "d.lake"
    for lr, run in ((0.05, "lr_a"), (0.2, "lr_b")):
        cfg = ProxyConfig(
            dataset="digits", lake=lake_path, epochs=3, lr=lr, run=run, progress=False
        )
        train_proxy(cfg)
        assert (tmp_path / "d.models" / run).is_dir()
    lake = cld_lake.open_lake(lake_path)
    assert lake.runs() == ["lr_a", "lr_b"]
    one = cld_lake.score(lake.with_run("lr_a"), name="s0")["score"].to_numpy()
    two = cld_lake.score(lake.with_run("lr_b"), name="s1")["score"].to_numpy()
    assert not np.allclose(one, two, equal_nan=True)  # two seeds, two trajectories
    from cld_lake.score import compute_scores

    compute_scores(lake, runs=["lr_a", "lr_b"], names=["both"])
    both = (
        cld_lake.lake.scores.read_scores(lake, ["both"])
        .column("both")
        .to_numpy(zero_copy_only=False)
    )
    np.testing.assert_allclose(both, (one + two) / 2, rtol=0, atol=1e-12)


def test_a_recorded_lake_names_its_data_for_train_subset_and_is_left_tidy(tmp_path: Path) -> None:
    """train_subset --lake takes the dataset a train_proxy lake was recorded from (MNIST-1D
    needs the same --num-samples: another draws other samples) and refuses a contradiction or
    data whose labels are not the lake's; the recording leaves one segment per split and no
    retired segments for verify to list."""
    from cld_lake.lake.check import verify_lake

    lake_path = tmp_path / "m.lake"
    train_proxy(
        ProxyConfig(
            dataset="mnist1d", lake=lake_path, root=tmp_path / "data", num_samples=600,
            noise=0.2, epochs=3, progress=False,
        )
    )  # fmt: skip
    lake = cld_lake.open_lake(lake_path)
    report = verify_lake(lake)
    assert report.ok and report.warnings == []
    for split in ("train", "val"):
        assert len(lake.split(split).segment_names()) == 1
    cld_lake.score(lake_path)
    cld_lake.select(lake_path, "cld", fraction=0.3, out=tmp_path / "top.parquet")
    out = tmp_path / "r.json"
    argv = ["--lake", str(lake_path), "--manifest", str(tmp_path / "top.parquet"), "--epochs", "1", "--no-progress", "--out", str(out)]  # fmt: skip
    assert subset_main(argv) == 0  # no --dataset: the lake's, with its --num-samples
    assert json.loads(out.read_text())["num_samples"] == round(
        0.3 * lake.split("train").num_samples
    )
    with pytest.raises(
        BadInputError, match="--num-samples 1000: --lake .* was recorded with --num-samples 600"
    ):
        subset_main([*argv, "--num-samples", "1000"])
    with pytest.raises(BadInputError, match="--dataset digits"):
        subset_main([*argv, "--dataset", "digits"])
    # a copy of the lake without its settings: the data must be named, and the wrong
    # MNIST-1D draw is caught by its labels
    copy = tmp_path / "copy" / "m.lake"
    import shutil

    shutil.copytree(lake_path, copy)
    with pytest.raises(BadInputError, match="--dataset is required"):
        subset_main(["--lake", str(copy), "--full", "--epochs", "1", "--no-progress"])
    with pytest.raises(BadInputError, match="labels it recorded differ .* --num-samples"):
        subset_main(["--lake", str(copy), "--dataset", "mnist1d", "--num-samples", "700",
                     "--root", str(tmp_path / "data"), "--full", "--epochs", "1", "--no-progress"])  # fmt: skip
