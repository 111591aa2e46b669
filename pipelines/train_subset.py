"""Train a fresh model on a manifest's samples (or a random subset, or all data) and report
test accuracy.

    python -m pipelines.train_subset --lake runs/x.lake --manifest m.parquet
    python -m pipelines.train_subset --lake runs/x.lake --random 0.1 --seed 1
    python -m pipelines.train_subset --dataset cifar100 --root data/cifar100 --manifest m.parquet

A lake recorded by ``train_proxy`` names its data: ``--dataset``, ``--root``, ``--num-samples``
and ``--image-size`` default to the settings it saved next to the lake (``X.models/config.json``
for ``X.lake``), and a flag that contradicts them is refused; a lake whose labels are not the
dataset's is refused too (another ``--num-samples`` draws other MNIST-1D samples).

With ``--lake`` the training pool is the lake's ``train`` split with the labels recorded there
(noisy labels stay noisy: the coreset is trained on what the proxy saw) and the held-out
validation samples are never trained on. Without it, the pool is the dataset's whole training
set with its own labels. Test accuracy is measured after every epoch; the report gives the
final epoch's (``final_test_acc``) and the best epoch's (``best_test_acc``, an optimistic
number: it picks the epoch on the test set).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

import cld_lake
from cld_lake.errors import BadInputError
from cld_lake.torch import subset
from pipelines._common import (
    OptimizerName,
    Recipe,
    accuracy,
    check_model_output,
    make_loader,
    make_optimizer,
    progress_bar,
    recipe_for,
    resolve_device,
    run_cli,
    train_epochs,
)
from pipelines._config import build_parser as build_config_parser
from pipelines._config import option, parse_config
from pipelines.datasets import DataBundle, DatasetName, Relabeled, load_dataset
from pipelines.models import ModelName, build_model
from pipelines.train_proxy import recorded_settings


@dataclass
class SubsetConfig:
    """One training run on a subset; one command-line flag per field (see ``--help``)."""

    dataset: DatasetName | None = option(
        None, help="default: the dataset --lake was recorded from (train_proxy's settings)"
    )
    root: Path | None = option(
        None, help="dataset directory (cifar*, imagefolder; cache for mnist1d)"
    )
    lake: Path | None = option(None, help="the lake: training pool and (noisy) labels as recorded")
    manifest: Path | None = option(
        None, help="a manifest written by cld-lake select", one_of="source"
    )
    random: float | None = option(
        None,
        help="class-balanced random fraction (needs --lake)",
        metavar="F",
        one_of="source",
    )
    full: bool = option(False, help="all of the training pool", one_of="source")
    seed: int = option(0, help="model init, epoch shuffles, random subset")
    model: ModelName | None = None
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: OptimizerName | None = None
    lr: float | None = None
    num_samples: int | None = option(
        None, help="mnist1d: samples generated (default: the lake's, as recorded)"
    )
    image_size: int | None = None
    device: str | None = None
    workers: int = 0
    threads: int | None = None
    out: Path | None = option(None, help="write the result as JSON")
    progress: bool = True


@dataclass
class SubsetResult:
    """Outcome of one training run on a subset."""

    source: str
    num_samples: int
    seed: int
    epochs: int
    final_test_acc: float
    best_test_acc: float
    best_epoch: int
    wall_seconds: float


def train_model(
    data: DataBundle,
    train_set: Dataset,
    recipe: Recipe,
    *,
    seed: int,
    device: torch.device,
    source: str = "",
    eval_batch_size: int = 1024,
    workers: int = 0,
    on_epoch: Callable[[int, float], None] | None = None,
) -> SubsetResult:
    """Train a fresh ``recipe.model`` on ``train_set`` and measure test accuracy every epoch.

    Returns final and best test accuracy; ``on_epoch(epoch, test_acc)`` is called after each
    epoch.
    """
    started = time.perf_counter()
    if len(train_set) == 0:  # type: ignore[arg-type]
        raise BadInputError(f"{source or 'subset'}: no samples to train on")
    torch.manual_seed(seed)
    model = build_model(recipe.model, data.num_classes, data.input_shape).to(device)
    check_model_output(model, data.train[0][0], data.num_classes, device)
    opt, sched = make_optimizer(recipe, model)
    test_loader = make_loader(data.test, eval_batch_size, shuffle=False, workers=workers)
    accs: list[float] = []

    def epoch_end(epoch: int, _train_loss: float) -> None:
        accs.append(accuracy(model, test_loader, device))
        if on_epoch is not None:
            on_epoch(epoch, accs[-1])

    train_epochs(
        model, train_set, recipe, opt, sched, seed=seed, device=device, workers=workers,
        on_epoch_end=epoch_end,
    )  # fmt: skip
    best_epoch = int(np.argmax(accs)) + 1  # the first epoch reaching the best accuracy
    return SubsetResult(
        source=source,
        num_samples=len(train_set),  # type: ignore[arg-type]
        seed=seed,
        epochs=recipe.epochs,
        final_test_acc=accs[-1],
        best_test_acc=accs[best_epoch - 1],
        best_epoch=best_epoch,
        wall_seconds=time.perf_counter() - started,
    )


SETTINGS = ("dataset", "root", "num_samples", "image_size")


def with_recorded_settings(cfg: SubsetConfig) -> SubsetConfig:
    """``cfg`` with the data settings of the proxy run that recorded ``--lake`` filled in."""
    found = recorded_settings(cfg.lake) if cfg.lake is not None else None
    if found is None:
        if cfg.dataset is None:
            where = f" (none saved next to --lake {cfg.lake})" if cfg.lake is not None else ""
            raise BadInputError(f"--dataset is required: which data to train on{where}")
        return cfg
    path, settings = found
    updates: dict[str, Any] = {}
    for key in SETTINGS:
        given, recorded = getattr(cfg, key), settings.get(key)
        if given is None:
            updates[key] = Path(recorded) if key == "root" and recorded else recorded
        elif recorded is not None and _setting(key, given) != _setting(key, recorded):
            flag = "--" + key.replace("_", "-")
            raise BadInputError(
                f"{flag} {given}: --lake {cfg.lake} was recorded with {flag} {recorded} ({path}); "
                f"leave {flag} out to use the lake's"
            )
    return dataclasses.replace(cfg, **updates)


def _setting(key: str, value: Any) -> Any:
    return str(Path(value).resolve()) if key == "root" else value


def training_pool(data: DataBundle, lake: cld_lake.Lake | None) -> tuple[Dataset, np.ndarray]:
    """(the training set as trained on, the pool's sample ids).

    Item ``i`` of the training set is sample id ``i`` with training transforms. With a lake,
    the pool is its train split and those samples carry the labels recorded there (noisy labels
    stay noisy: a coreset is trained on what the proxy saw); without one, the pool is the whole
    training set with the dataset's labels."""
    labels = data.train_labels.copy()
    if lake is None:
        return Relabeled(data.train_aug, labels), np.arange(len(labels), dtype=np.int64)
    split = lake.split("train")
    ids = split.sample_ids
    if ids.size and (ids.min() < 0 or ids.max() >= len(labels)):
        raise BadInputError(
            f"--lake {lake.root}: its train sample ids go up to {int(ids.max())} but --dataset "
            f"{data.name} has {len(labels)} training samples; is it the dataset the lake was recorded from?"
        )
    table = split.samples_table
    clean = table.column("clean_label" if "clean_label" in table.column_names else "label")
    differ = int((np.asarray(clean) != labels[ids]).sum())
    if differ:
        raise BadInputError(
            f"--lake {lake.root}: the labels it recorded differ from --dataset {data.name}'s for "
            f"{differ} of {len(ids)} samples: not the data it was recorded from (pass the "
            "--num-samples, --root or --image-size it was recorded with)"
        )
    labels[ids] = split.labels
    return Relabeled(data.train_aug, labels), ids


def manifest_subset(
    manifest: Path | cld_lake.Manifest,
    train_set: Dataset,
    pool: np.ndarray,
    lake: cld_lake.Lake | None = None,
) -> Subset:
    """The manifest's samples of ``train_set`` (``cld_lake.torch.subset``), in manifest order.

    Refuses a manifest selected from another lake than ``lake``, or naming ids outside the
    pool (e.g. held-out validation samples)."""
    m = cld_lake.load_manifest(manifest)
    where = f"--manifest {m.path}" if m.path is not None else "the manifest"
    recorded = (m.metadata.get("lake") or {}).get("lake_id")
    if lake is not None and recorded is not None and recorded != lake.lake_id:
        raise BadInputError(
            f"{where} was selected from lake {recorded}, not from --lake {lake.root} "
            f"({lake.lake_id}); pass the lake it came from"
        )
    outside = ~np.isin(m.sample_ids, pool)
    if outside.any():
        raise BadInputError(
            f"{where}: {int(outside.sum())} sample ids (e.g. {m.sample_ids[outside][:5].tolist()}) are not in "
            "the training pool; is it the dataset (and lake) the manifest was selected from?"
        )
    return subset(train_set, m)


def train_subset(cfg: SubsetConfig) -> SubsetResult:
    """Train a fresh model on the subset ``cfg`` names (see the module docstring)."""
    cfg = with_recorded_settings(cfg)
    assert cfg.dataset is not None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    recipe = recipe_for(
        cfg.dataset,
        model=cfg.model,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        optimizer=cfg.optimizer,
        lr=cfg.lr,
    )
    device = resolve_device(cfg.device)
    sources = sum((cfg.manifest is not None, cfg.random is not None, cfg.full))
    if sources != 1:
        raise BadInputError("give exactly one of --manifest, --random, --full")
    if cfg.random is not None and cfg.lake is None:
        raise BadInputError(
            "--random needs --lake (the pool and class sizes come from its train split)"
        )
    if cfg.random is not None and not 0.0 < cfg.random <= 1.0:
        raise BadInputError(f"--random {cfg.random}: must be in (0, 1]")
    lake = cld_lake.open_lake(cfg.lake) if cfg.lake is not None else None
    if cfg.manifest is not None:
        cld_lake.load_manifest(cfg.manifest)  # a bad manifest fails before data are loaded
    data = load_dataset(
        cfg.dataset, cfg.root, num_samples=cfg.num_samples, image_size=cfg.image_size
    )
    train_set, pool = training_pool(data, lake)
    if cfg.manifest is not None:
        chosen, source = (
            manifest_subset(cfg.manifest, train_set, pool, lake),
            f"manifest {cfg.manifest}",
        )
    elif cfg.random is not None:
        assert lake is not None
        picked = cld_lake.select(lake, random=True, fraction=cfg.random, seed=cfg.seed)
        chosen, source = subset(train_set, picked), f"random {cfg.random:g} (seed {cfg.seed})"
    else:
        chosen, source = Subset(train_set, pool.tolist()), "full"
    with progress_bar(cfg.progress) as bar:
        task = bar.task("training (epochs)", recipe.epochs)

        def on_epoch(epoch: int, acc: float) -> None:
            bar.advance(task, 1)
            bar.info(task, f"test acc {acc:.3f}")

        result = train_model(
            data, chosen, recipe, seed=cfg.seed, device=device, source=source,
            workers=cfg.workers, on_epoch=on_epoch,
        )  # fmt: skip
    if cfg.out is not None:
        cfg.out.parent.mkdir(parents=True, exist_ok=True)
        cfg.out.write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result


def build_parser() -> argparse.ArgumentParser:
    return build_config_parser(
        SubsetConfig,
        prog="python -m pipelines.train_subset",
        description="Train a fresh model on a manifest's samples (or random / full data); report test accuracy.",
    )


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(SubsetConfig, build_parser(), argv)
    result = train_subset(cfg)
    print(f"source:          {result.source}")
    print(f"samples:         {result.num_samples}")
    print(f"final_test_acc:  {result.final_test_acc:.4f} (epoch {result.epochs})")
    print(
        f"best_test_acc:   {result.best_test_acc:.4f} (epoch {result.best_epoch}; chosen on the test set)"
    )
    if cfg.out is not None:
        print(f"result:          {cfg.out}")
    return 0


if __name__ == "__main__":
    run_cli(main, prog="train_subset")
