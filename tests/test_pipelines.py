"""Pipelines: proxy training with recording (digits, CIFAR and ImageFolder on tiny on-disk
copies the tests write), label noise, holdout, train_subset, and bad input."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import cld_lake
from cld_lake.errors import BadInputError, CldLakeError
from pipelines._common import check_model_output, holdout_split, symmetric_noise
from pipelines.datasets import load_dataset
from pipelines.train_proxy import ProxyConfig, record_epochs, train_proxy
from pipelines.train_subset import main as subset_main
from pipelines.train_subset import manifest_ids, pool_labels, train_on_ids

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
    data = load_dataset("digits")
    pool, labels = pool_labels(data, lake)
    np.testing.assert_array_equal(
        labels[pool], lake.split("train").labels
    )  # noisy labels as recorded
    ids = manifest_ids(tmp_path / "top.parquet", lake, pool)
    np.testing.assert_array_equal(np.sort(ids), np.sort(manifest.sample_ids))
    from pipelines._common import recipe_for

    res = train_on_ids(
        data, ids, labels, recipe_for("digits", epochs=2), seed=0, device=torch.device("cpu")
    )
    assert (
        res.num_samples == len(manifest) and 0.0 <= res.final_test_acc <= res.best_test_acc <= 1.0
    )

    out = tmp_path / "r.json"
    argv = [
        "--dataset",
        "digits",
        "--lake",
        str(lake_path),
        "--epochs",
        "2",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert subset_main([*argv, "--manifest", str(tmp_path / "top.parquet")]) == 0
    got = json.loads(out.read_text())
    assert got["num_samples"] == len(manifest) and got["final_test_acc"] == pytest.approx(
        res.final_test_acc
    )
    assert subset_main([*argv, "--random", "0.2", "--seed", "1"]) == 0
    assert json.loads(out.read_text())["num_samples"] == len(manifest)
    assert subset_main([*argv, "--full"]) == 0
    assert json.loads(out.read_text())["num_samples"] == lake.split("train").num_samples

    # a manifest naming held-out validation ids (or any id outside the pool) is refused
    val_ids = lake.split("val").sample_ids
    with pytest.raises(BadInputError, match="not in the training pool"):
        manifest_ids_from(tmp_path, val_ids, lake, pool)
    other = tmp_path / "other.lake"
    train_proxy(ProxyConfig(dataset="digits", lake=other, epochs=3, progress=False))
    with pytest.raises(BadInputError, match="was selected from lake"):
        manifest_ids(tmp_path / "top.parquet", cld_lake.open_lake(other), pool)


def manifest_ids_from(
    tmp_path: Path, ids: np.ndarray, lake: cld_lake.Lake, pool: np.ndarray
) -> np.ndarray:
    from cld_lake.manifest import manifest_table, write_manifest

    table = manifest_table(
        ids, np.zeros(len(ids), np.int64), np.zeros(len(ids)), np.ones(len(ids), np.int64)
    )
    path = write_manifest(tmp_path / "bad.parquet", table, {"score": "x"})
    return manifest_ids(path, lake, pool)
