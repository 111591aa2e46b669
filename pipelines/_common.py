"""Shared pieces of the pipelines: recipes, splits, label noise, training loop, progress, errors."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cld_lake.errors import BadInputError, CldLakeError

OptimizerName = Literal["sgd", "adam"]


@dataclass(frozen=True)
class Recipe:
    """Model and optimisation recipe of one dataset."""

    model: str
    epochs: int
    batch_size: int
    optimizer: OptimizerName = "sgd"  # sgd (momentum, optional Nesterov) or adam
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1


# cifar100/cifar10: the paper's CIFAR-100 recipe (SGD, Nesterov, lr 0.1, momentum 0.9, wd 5e-4,
# batch 128, 164 epochs, lr x0.1 at epochs 81 and 121). imagefolder: the usual ImageNet one.
RECIPES: dict[str, Recipe] = {
    # mnist1d: the MNIST-1D reference training (Adam, lr 1e-2, batch 100), decayed at 2/3
    "mnist1d": Recipe("cnn1d", 30, 100, "adam", lr=1e-2, weight_decay=0.0, milestones=(20,)),
    "digits": Recipe("mlp", 30, 64, "adam", lr=3e-3, weight_decay=0.0, milestones=(20,)),
    "cifar10": Recipe("resnet18", 164, 128, milestones=(81, 121)),
    "cifar100": Recipe("resnet18", 164, 128, milestones=(81, 121)),
    "imagefolder": Recipe("resnet18", 90, 256, weight_decay=1e-4, milestones=(30, 60)),
}


def recipe_for(dataset: str, **overrides: Any) -> Recipe:
    """The dataset's recipe with the given fields replaced (``None`` values are ignored)."""
    if dataset not in RECIPES:
        raise BadInputError(f"--dataset {dataset!r}: choose one of {', '.join(RECIPES)}")
    recipe = dataclasses.replace(
        RECIPES[dataset], **{k: v for k, v in overrides.items() if v is not None}
    )
    if recipe.epochs < 1:
        raise BadInputError(f"--epochs {recipe.epochs}: must be at least 1")
    if recipe.batch_size < 1:
        raise BadInputError(f"--batch-size {recipe.batch_size}: must be at least 1")
    if not recipe.lr > 0:
        raise BadInputError(f"--lr {recipe.lr}: must be positive")
    if recipe.optimizer not in get_args(OptimizerName):
        raise BadInputError(f"--optimizer {recipe.optimizer!r}: choose sgd or adam")
    return recipe


def make_optimizer(recipe: Recipe, model: torch.nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    if recipe.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(
            model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay
        )
    else:
        opt = torch.optim.SGD(
            model.parameters(),
            lr=recipe.lr,
            momentum=recipe.momentum,
            nesterov=recipe.nesterov and recipe.momentum > 0,
            weight_decay=recipe.weight_decay,
        )
    sched = torch.optim.lr_scheduler.MultiStepLR(
        opt, milestones=list(recipe.milestones), gamma=recipe.gamma
    )
    return opt, sched


# --- splits and noise ------------------------------------------------------------------------
def holdout_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class held-out validation ids: ``round(fraction * n_c)`` of each class, at least 1
    (classes with a single sample stay in train). Returns sorted (train_ids, val_ids)."""
    if not 0.0 < fraction < 1.0:
        raise BadInputError(f"--val-fraction {fraction}: must be between 0 and 1 (e.g. 0.1)")
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = min(max(1, int(round(fraction * len(members)))), len(members) - 1)
        val.append(rng.choice(members, size=k, replace=False))
    val_ids = np.sort(np.concatenate(val)).astype(np.int64)
    train_ids = np.setdiff1d(np.arange(len(labels)), val_ids).astype(np.int64)
    return train_ids, val_ids


def symmetric_noise(
    labels: np.ndarray, fraction: float, num_classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Flip ``round(fraction * n)`` labels, chosen uniformly, each to a uniformly chosen
    *other* class. Returns (noisy_labels, flipped mask); every flipped label really changed."""
    if not 0.0 <= fraction < 1.0:
        raise BadInputError(
            f"--noise {fraction}: must be in [0, 1) (e.g. 0.2 for 20% noisy labels)"
        )
    labels = np.asarray(labels, np.int64)
    rng = np.random.default_rng(seed)
    flipped = np.zeros(len(labels), bool)
    flipped[rng.choice(len(labels), size=int(round(fraction * len(labels))), replace=False)] = True
    shift = rng.integers(1, num_classes, size=len(labels))
    noisy = np.where(flipped, (labels + shift) % num_classes, labels)
    return noisy, flipped


# --- training --------------------------------------------------------------------------------
def seed_epoch(seed: int, epoch: int) -> torch.Generator:
    """Seed everything an epoch draws from, from (seed, epoch) alone: a resumed run replays the
    same shuffles and augmentations as an uninterrupted one."""
    torch.manual_seed(seed * 1_000_003 + epoch)
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    workers: int = 0,
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
    )


def train_epoch(
    model: torch.nn.Module, loader: DataLoader, opt: torch.optim.Optimizer, device: torch.device
) -> float:
    """One epoch of plain cross-entropy training; returns the mean training loss."""
    model.train()
    total = torch.zeros((), device=device)
    seen = 0
    for batch in loader:
        x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        total += loss.detach() * len(y)
        seen += len(y)
    return float(total) / max(seen, 1)


def train_epochs(
    model: torch.nn.Module,
    dataset: Dataset,
    recipe: Recipe,
    opt: torch.optim.Optimizer,
    sched: Any,
    *,
    seed: int,
    device: torch.device,
    start: int = 1,
    workers: int = 0,
    on_epoch_end: Callable[[int, float], None] | None = None,
) -> None:
    """Train epochs ``start..recipe.epochs`` on ``dataset`` (shuffled, ``recipe.batch_size``).

    The scheduler steps once per epoch; ``on_epoch_end(epoch, mean_train_loss)`` runs after
    each. Every epoch is seeded from (seed, epoch) alone (:func:`seed_epoch`), so a run resumed
    at ``start`` trains exactly as an uninterrupted one.
    """
    for epoch in range(start, recipe.epochs + 1):
        gen = seed_epoch(seed, epoch)
        loader = make_loader(
            dataset, recipe.batch_size, shuffle=True, generator=gen, workers=workers
        )
        loss = train_epoch(model, loader, opt, device)
        sched.step()
        if on_epoch_end is not None:
            on_epoch_end(epoch, loss)


@torch.no_grad()
def accuracy(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> float:
    """Top-1 accuracy in eval mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for batch in loader:
        x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        correct += (model(x).argmax(1) == y).sum()
        seen += len(y)
    model.train(was_training)
    return float(correct) / max(seen, 1)


def check_model_output(
    model: torch.nn.Module, sample: Any, num_classes: int, device: torch.device
) -> None:
    """Refuse a model whose output width is not the number of classes (before training)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.as_tensor(sample)[None].to(device))
    model.train(was_training)
    if out.ndim != 2 or out.shape[1] != num_classes:
        raise BadInputError(
            f"the model outputs shape {tuple(out.shape)} per batch but the dataset has {num_classes} classes; "
            f"its last layer must have {num_classes} outputs"
        )


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise BadInputError(f"--device {name!r}: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError(
            f"--device {name}: CUDA is not available on this machine; use --device cpu"
        )
    return device


# --- files -----------------------------------------------------------------------------------
def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temp file, fsync, rename: a crash never leaves a half file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def fault_point(name: str, epoch: int) -> None:
    """Fault injection for the crash tests: ``CLD_LAKE_FAULT=name:epoch`` kills this process
    with SIGKILL at that point (no cleanup runs, like a power cut)."""
    if os.environ.get("CLD_LAKE_FAULT") == f"{name}:{epoch}":
        os.kill(os.getpid(), signal.SIGKILL)


# --- progress and CLI ------------------------------------------------------------------------
@contextlib.contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Any]:
    """A rich progress display (or a silent stand-in) with ``task(description, total)``."""
    if not enabled:
        yield _SilentProgress()
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description:<26}"),
        BarColumn(bar_width=16),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # logs: no live bar, only the final state; give it room
        console = Console(width=140)
    with Progress(*columns, console=console, transient=False) as prog:
        yield _RichProgress(prog)


class _RichProgress:
    def __init__(self, prog: Any) -> None:
        self.prog = prog

    def task(self, description: str, total: int) -> Any:
        return self.prog.add_task(description, total=total, info="")

    def advance(self, task: Any, n: int = 1) -> None:
        self.prog.advance(task, n)

    def info(self, task: Any, text: str) -> None:
        self.prog.update(task, info=text)

    def log(self, text: str) -> None:
        self.prog.console.print(text)


class _SilentProgress:
    def task(self, description: str, total: int) -> int:
        return 0

    def advance(self, task: Any, n: int = 1) -> None:
        pass

    def info(self, task: Any, text: str) -> None:
        pass

    def log(self, text: str) -> None:
        print(text, flush=True)


def run_cli(
    main: Callable[[list[str] | None], int], argv: list[str] | None = None, prog: str = "pipelines"
) -> None:
    """Run a pipeline's main: a cld_lake error becomes one line on stderr and exit 2."""
    try:
        code = main(argv)
    except CldLakeError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; committed checkpoints are intact", file=sys.stderr)
        code = 130
    sys.exit(code)
