"""Train a fresh model on a manifest's samples (or a random subset, or all data) and report
test accuracy.

    python -m pipelines.train_subset --dataset mnist1d --lake runs/x.lake --manifest m.parquet
    python -m pipelines.train_subset --dataset mnist1d --lake runs/x.lake --random 0.1 --seed 1
    python -m pipelines.train_subset --dataset mnist1d --lake runs/x.lake --full

With ``--lake`` the training pool is the lake's ``train`` split with the labels recorded there
(noisy labels stay noisy: the coreset is trained on what the proxy saw) and the held-out
validation samples are never trained on. Without it, the pool is the dataset's whole training
set with its own labels. Test accuracy is measured after every epoch; the report gives the
final epoch's (``final_test_acc``) and the best epoch's (``best_test_acc``, an optimistic
number: it picks the epoch on the test set).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

import cld_lake
from cld_lake.errors import BadInputError
from pipelines._common import (
    Recipe,
    accuracy,
    check_model_output,
    make_loader,
    make_optimizer,
    progress_bar,
    recipe_for,
    resolve_device,
    run_cli,
    seed_epoch,
    train_epoch,
)
from pipelines.datasets import DATASETS, DataBundle, Relabeled, load_dataset
from pipelines.models import MODELS, build_model


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


def train_on_ids(
    data: DataBundle,
    ids: np.ndarray,
    labels: np.ndarray,
    recipe: Recipe,
    *,
    seed: int,
    device: torch.device,
    source: str = "",
    eval_batch_size: int = 1024,
    workers: int = 0,
    on_epoch: Callable[[int, float], None] | None = None,
) -> SubsetResult:
    """Train a fresh ``recipe.model`` on the pool items ``ids`` with ``labels[ids]``.

    ``labels`` covers the whole training pool (index = sample id). Returns final and best
    test accuracy; ``on_epoch(epoch, test_acc)`` is called after each epoch.
    """
    started = time.perf_counter()
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size == 0:
        raise BadInputError(f"{source or 'subset'}: no samples to train on")
    if ids.min() < 0 or ids.max() >= len(labels):
        raise BadInputError(
            f"{source or 'subset'}: sample ids outside the training set (0..{len(labels) - 1})"
        )
    if len(np.unique(ids)) != len(ids):
        raise BadInputError(f"{source or 'subset'}: sample ids repeat")
    torch.manual_seed(seed)
    model = build_model(recipe.model, data.num_classes, data.input_shape).to(device)
    check_model_output(model, data.train[0][0], data.num_classes, device)
    opt, sched = make_optimizer(recipe, model)
    train_set = torch.utils.data.Subset(Relabeled(data.train_aug, labels), ids.tolist())
    test_loader = make_loader(data.test, eval_batch_size, shuffle=False, workers=workers)
    best, best_epoch, acc = -1.0, 0, 0.0
    for epoch in range(1, recipe.epochs + 1):
        gen = seed_epoch(seed, epoch)
        loader = make_loader(
            train_set, recipe.batch_size, shuffle=True, generator=gen, workers=workers
        )
        train_epoch(model, loader, opt, device)
        sched.step()
        acc = accuracy(model, test_loader, device)
        if acc > best:
            best, best_epoch = acc, epoch
        if on_epoch is not None:
            on_epoch(epoch, acc)
    return SubsetResult(
        source=source,
        num_samples=len(ids),
        seed=seed,
        epochs=recipe.epochs,
        final_test_acc=acc,
        best_test_acc=best,
        best_epoch=best_epoch,
        wall_seconds=time.perf_counter() - started,
    )


def pool_labels(data: DataBundle, lake: cld_lake.Lake | None) -> tuple[np.ndarray, np.ndarray]:
    """(pool sample ids, labels of the whole training set as trained on).

    With a lake: its train split's ids and recorded labels (others keep the dataset's)."""
    labels = data.train_labels.copy()
    if lake is None:
        return np.arange(len(labels), dtype=np.int64), labels
    split = lake.split("train")
    ids = split.sample_ids
    if ids.size and (ids.min() < 0 or ids.max() >= len(labels)):
        raise BadInputError(
            f"--lake {lake.path}: its train sample ids go up to {int(ids.max())} but --dataset "
            f"{data.name} has {len(labels)} training samples; is it the dataset the lake was recorded from?"
        )
    labels[ids] = split.labels
    return ids, labels


def manifest_ids(path: Path, lake: cld_lake.Lake | None, pool: np.ndarray) -> np.ndarray:
    """The manifest's sample ids, checked against the lake (identity) and the pool."""
    manifest = cld_lake.load_manifest(path)
    ids = np.asarray(manifest.sample_ids, dtype=np.int64)
    recorded = (manifest.metadata.get("lake") or {}).get("lake_id")
    if lake is not None and recorded is not None and recorded != lake.lake_id:
        raise BadInputError(
            f"--manifest {path} was selected from lake {recorded}, not from --lake {lake.path} "
            f"({lake.lake_id}); pass the lake it came from"
        )
    outside = ~np.isin(ids, pool)
    if outside.any():
        raise BadInputError(
            f"--manifest {path}: {int(outside.sum())} sample ids (e.g. {ids[outside][:5].tolist()}) are not in "
            "the training pool; is it the dataset (and lake) the manifest was selected from?"
        )
    return ids


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.train_subset",
        description="Train a fresh model on a manifest's samples (or random / full data); report test accuracy.",
    )
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument(
        "--root", type=Path, help="dataset directory (cifar*, imagefolder; cache for mnist1d)"
    )
    p.add_argument(
        "--lake", type=Path, help="the lake: training pool and (noisy) labels as recorded"
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--manifest", type=Path, help="a manifest written by cld-lake select")
    what.add_argument(
        "--random", type=float, metavar="F", help="class-balanced random fraction (needs --lake)"
    )
    what.add_argument("--full", action="store_true", help="all of the training pool")
    p.add_argument("--seed", type=int, default=0, help="model init, epoch shuffles, random subset")
    p.add_argument("--model", choices=MODELS)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--optimizer", choices=("sgd", "adam"))
    p.add_argument("--lr", type=float)
    p.add_argument(
        "--num-samples", type=int, help="mnist1d: samples generated (must match the lake's)"
    )
    p.add_argument("--image-size", type=int)
    p.add_argument("--device")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int)
    p.add_argument("--out", type=Path, help="write the result as JSON")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = recipe_for(
        args.dataset,
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
    )
    device = resolve_device(args.device)
    if args.random is not None and args.lake is None:
        raise BadInputError(
            "--random needs --lake (the pool and class sizes come from its train split)"
        )
    if args.random is not None and not 0.0 < args.random <= 1.0:
        raise BadInputError(f"--random {args.random}: must be in (0, 1]")
    lake = cld_lake.open_lake(args.lake) if args.lake is not None else None
    if args.manifest is not None:
        cld_lake.load_manifest(args.manifest)  # a bad manifest fails before data are loaded
    data = load_dataset(
        args.dataset, args.root, num_samples=args.num_samples, image_size=args.image_size
    )
    pool, labels = pool_labels(data, lake)
    if args.manifest is not None:
        ids, source = manifest_ids(args.manifest, lake, pool), f"manifest {args.manifest}"
    elif args.random is not None:
        assert lake is not None
        ids = cld_lake.select(lake, random=True, fraction=args.random, seed=args.seed).sample_ids
        source = f"random {args.random:g} (seed {args.seed})"
    else:
        ids, source = pool, "full"
    with progress_bar(not args.no_progress) as bar:
        task = bar.task("training (epochs)", recipe.epochs)

        def on_epoch(epoch: int, acc: float) -> None:
            bar.advance(task, 1)
            bar.info(task, f"test acc {acc:.3f}")

        result = train_on_ids(
            data,
            ids,
            labels,
            recipe,
            seed=args.seed,
            device=device,
            source=source,
            workers=args.workers,
            on_epoch=on_epoch,
        )
    print(f"source:          {result.source}")
    print(f"samples:         {result.num_samples}")
    print(f"final_test_acc:  {result.final_test_acc:.4f} (epoch {result.epochs})")
    print(
        f"best_test_acc:   {result.best_test_acc:.4f} (epoch {result.best_epoch}; chosen on the test set)"
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(asdict(result), indent=2) + "\n")
        print(f"result:          {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main, prog="train_subset")
