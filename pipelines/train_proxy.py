"""Proxy training with recording: train a model and record train/val loss trajectories.

    python -m pipelines.train_proxy --dataset mnist1d --lake runs/x.lake [--noise 0.2] ...

Holds out a per-class validation split of the training set (``--val-fraction``; the paper uses
10% on CIFAR-100 and 1% on ImageNet), optionally flips a fraction of the remaining training
labels (symmetric noise, seeded; flipped ids go to the ``noisy`` / ``clean_label`` columns of
the lake's ``samples`` table), trains, and records the ``train`` and ``val`` splits at
checkpoint 0 (the initial model) and after every ``--record-every``-th epoch (checkpoint id =
epoch). Sample ids are indices into the dataset's training set, so manifests index it directly.

Crash safety and resume: after each epoch the model checkpoint is saved atomically *before*
that epoch is recorded. Run the same command again after a crash: it resumes from the last
saved model checkpoint, records that epoch if the crash came before its commit, and goes on.
A crash mid-epoch loses that epoch's training only; committed checkpoints are never touched.
Each epoch's shuffle and augmentation are seeded from (seed, epoch), so a resumed run records
the same trajectories as an uninterrupted one (on the same hardware and thread count).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Subset

import cld_lake
from cld_lake.errors import BadInputError
from cld_lake.lake import DEFAULT_RUN, SplitWriter
from cld_lake.torch import LossRecorder, WithIndex
from pipelines._common import (
    RECIPES,
    OptimizerName,
    Recipe,
    atomic_torch_save,
    check_model_output,
    fault_point,
    holdout_split,
    make_loader,
    make_optimizer,
    progress_bar,
    recipe_for,
    resolve_device,
    run_cli,
    symmetric_noise,
    train_epochs,
)
from pipelines._common import accuracy as test_accuracy
from pipelines._config import build_parser as build_config_parser
from pipelines._config import option, parse_config
from pipelines.datasets import DATASETS, DataBundle, DatasetName, Relabeled, load_dataset
from pipelines.models import MODELS, ModelName, build_model

CONFIG_FILE = "config.json"
RESULT_FILE = "result.json"


@dataclass
class ProxyConfig:
    """Everything a proxy run depends on; one command-line flag per field (see ``--help``)."""

    dataset: DatasetName
    lake: Path = option(help="lake directory (created if missing)")
    root: Path | None = option(
        None, help="dataset directory (cifar*, imagefolder; cache for mnist1d)"
    )
    run: str | None = option(
        None, help="name of this proxy run in the lake (runs, e.g. seeds, can share one lake)"
    )
    models_dir: Path | None = option(
        None, help="model checkpoints (default: LAKE with .models, plus /RUN for a named run)"
    )
    val_fraction: float = option(0.1, help="per-class held-out validation fraction")
    noise: float = option(0.0, help="symmetric label noise fraction of train")
    noise_seed: int = 0
    seed: int = option(0, help="model init, holdout split and epoch shuffles")
    model: ModelName | None = option(None, help="default: the dataset's recipe")
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: OptimizerName | None = None
    lr: float | None = None
    weight_decay: float | None = None
    milestones: tuple[int, ...] | None = option(
        None, help="epochs where lr is multiplied by 0.1, e.g. 81,121"
    )
    record_every: int = option(1, help="record every k-th epoch (0 and last always)")
    record_batch_size: int = 512
    record_test: bool = option(False, help="also record the test split")
    margin_dtype: Literal["float32", "float16"] = "float32"
    keep_checkpoints: int = option(2, help="model checkpoints kept on disk")
    num_samples: int | None = option(None, help="mnist1d: samples to generate (80%% train)")
    image_size: int | None = option(None, help="imagefolder: crop size (default 224)")
    device: str | None = option(None, help="cpu, cuda, cuda:1... (default: cuda if available)")
    workers: int = option(0, help="DataLoader worker processes")
    threads: int | None = option(None, help="torch CPU threads")
    progress: bool = True

    def identity(self) -> dict[str, Any]:
        """The fields a resumed run must share with the run it resumes."""
        keys = (
            "dataset", "root", "val_fraction", "noise", "noise_seed", "seed", "record_every",
            "num_samples", "image_size", "margin_dtype", "record_test", "run",
        )  # fmt: skip
        out = {k: getattr(self, k) for k in keys}
        out["root"] = None if self.root is None else str(Path(self.root).resolve())
        out["recipe"] = dataclasses.asdict(self.recipe())
        return json.loads(json.dumps(out))

    def recipe(self) -> Recipe:
        return recipe_for(
            self.dataset,
            model=self.model,
            epochs=self.epochs,
            batch_size=self.batch_size,
            optimizer=self.optimizer,
            lr=self.lr,
            weight_decay=self.weight_decay,
            milestones=self.milestones,
        )

    def resolved_models_dir(self) -> Path:
        if self.models_dir is not None:
            return Path(self.models_dir)
        return default_models_dir(self.lake, self.run)


@dataclass
class ProxyResult:
    lake: Path
    models_dir: Path
    epochs: int
    resumed_from: int | None
    test_accuracy: float
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_seconds: float = 0.0


@dataclass
class _Run:
    """The prepared run: data, splits, labels and loaders' datasets."""

    cfg: ProxyConfig
    data: DataBundle
    train_ids: np.ndarray
    val_ids: np.ndarray
    noisy_labels: np.ndarray  # labels of the whole pool as trained on (val ids keep clean ones)
    flipped: np.ndarray  # per train id


def default_models_dir(lake: str | Path, run: str | None = None) -> Path:
    """Where a run's model checkpoints and settings go unless ``--models-dir`` says otherwise:
    ``LAKE`` with ``.models`` for ``.lake``, plus ``/RUN`` for a named run."""
    lake = Path(lake)
    models = lake.with_name(lake.name.removesuffix(".lake") + ".models")
    return models / run if run else models


def recorded_settings(
    lake: str | Path, run: str | None = None
) -> tuple[Path, dict[str, Any]] | None:
    """The settings (``config.json``) of the proxy run that recorded ``lake``, when it sits in
    its default models directory; None otherwise. ``train_subset --lake`` takes its dataset
    from here, so training on a coreset uses the data the lake was recorded from."""
    path = default_models_dir(lake, run) / CONFIG_FILE
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return (path, settings) if isinstance(settings, dict) else None


def check_config(cfg: ProxyConfig) -> None:
    """Validate arguments that need no data (before anything is loaded or written)."""
    if cfg.dataset not in DATASETS:
        raise BadInputError(f"--dataset {cfg.dataset!r}: choose one of {', '.join(DATASETS)}")
    if cfg.model is not None and cfg.model not in MODELS:
        raise BadInputError(f"--model {cfg.model!r}: choose one of {', '.join(MODELS)}")
    if cfg.record_every < 1:
        raise BadInputError(f"--record-every {cfg.record_every}: must be at least 1")
    if cfg.keep_checkpoints < 1:
        raise BadInputError(f"--keep-checkpoints {cfg.keep_checkpoints}: must be at least 1")
    if cfg.record_batch_size < 1:
        raise BadInputError(f"--record-batch-size {cfg.record_batch_size}: must be at least 1")
    if not 0.0 < cfg.val_fraction < 1.0:
        raise BadInputError(
            f"--val-fraction {cfg.val_fraction}: must be between 0 and 1 (e.g. 0.1)"
        )
    if not 0.0 <= cfg.noise < 1.0:
        raise BadInputError(
            f"--noise {cfg.noise}: must be in [0, 1) (e.g. 0.2 for 20% noisy labels)"
        )
    cfg.recipe()  # checks the recipe's overrides


def record_epochs(epochs: int, every: int) -> list[int]:
    """Checkpoint ids recorded: 0 (the initial model), every ``every``-th epoch, and the last."""
    return sorted({0, epochs, *range(every, epochs + 1, every)})


def prepare(cfg: ProxyConfig) -> _Run:
    """Load the data and draw the holdout split and label noise (deterministic in the config)."""
    data = load_dataset(
        cfg.dataset, cfg.root, num_samples=cfg.num_samples, image_size=cfg.image_size
    )
    labels = data.train_labels
    if len(labels) == 0:
        raise BadInputError(f"--dataset {cfg.dataset}: the training set is empty")
    if labels.min() < 0 or labels.max() >= data.num_classes:
        raise BadInputError(f"--dataset {cfg.dataset}: labels outside 0..{data.num_classes - 1}")
    train_ids, val_ids = holdout_split(labels, cfg.val_fraction, cfg.seed)
    noisy_train, flipped = symmetric_noise(
        labels[train_ids], cfg.noise, data.num_classes, cfg.noise_seed
    )
    noisy_labels = labels.copy()
    noisy_labels[train_ids] = noisy_train
    return _Run(cfg, data, train_ids, val_ids, noisy_labels, flipped)


def _declare_or_check(lake: cld_lake.Lake, run: _Run, channels: dict[str, str]) -> None:
    """Declare the train/val (and test) samples, or check that the lake holds this run's."""
    labels = run.data.train_labels
    wanted = {
        "train": (
            run.train_ids,
            run.noisy_labels[run.train_ids],
            {"noisy": run.flipped, "clean_label": labels[run.train_ids]},
        ),
        "val": (run.val_ids, labels[run.val_ids], None),
    }
    if run.cfg.record_test:
        wanted["test"] = (np.arange(len(run.data.test_labels)), run.data.test_labels, None)
    for name, (ids, split_labels, meta) in wanted.items():
        if lake.has_split(name):
            split = lake.split(name)
            if not (
                np.array_equal(split.sample_ids, ids) and np.array_equal(split.labels, split_labels)
            ):
                raise BadInputError(
                    f"--lake {lake.root}: split {name!r} holds other samples or labels than this run "
                    "(another dataset, seed, --val-fraction or --noise); use a new lake"
                )
            continue
        with SplitWriter(lake, name, channels=channels, num_classes=run.data.num_classes) as w:
            w.declare_samples(ids, split_labels, metadata=meta)


def _checkpoint_path(models_dir: Path, epoch: int) -> Path:
    return models_dir / f"epoch-{epoch:04d}.pt"


def _saved_epochs(models_dir: Path) -> list[int]:
    out = []
    for p in models_dir.glob("epoch-*.pt"):
        try:
            out.append(int(p.stem.split("-")[1]))
        except ValueError:
            continue
    return sorted(out)


def _prepare_dirs(cfg: ProxyConfig, models_dir: Path) -> tuple[bool, list[int]]:
    """Check the models directory and lake agree on a fresh start or a resume."""
    identity = cfg.identity()
    config_path = models_dir / CONFIG_FILE
    lake_path = Path(cfg.lake)
    if config_path.exists():
        saved = json.loads(config_path.read_text())
        diff = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
        if diff:
            raise BadInputError(
                f"--models-dir {models_dir} belongs to a run with other settings ({', '.join(diff)}); "
                "resume with the same arguments, or use a new --lake and --models-dir"
            )
        return True, _saved_epochs(models_dir)
    lake_has_run = (lake_path / "cld_lake.json").exists() and any(
        cld_lake.open_lake(lake_path).has_split(s, cfg.run) for s in ("train", "val")
    )
    if lake_has_run:
        raise BadInputError(
            f"--lake {lake_path} already holds train/val recordings of this run but {models_dir} "
            "has no run to resume; use a new lake or another --run, or pass the --models-dir of "
            "the run that wrote it"
        )
    return False, []


def train_proxy(cfg: ProxyConfig) -> ProxyResult:
    """Run (or resume) a proxy training with recording. See the module docstring."""
    started = time.perf_counter()
    check_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    recipe = cfg.recipe()
    device = resolve_device(cfg.device)
    models_dir = cfg.resolved_models_dir()
    resuming, saved = _prepare_dirs(cfg, models_dir)
    run = prepare(cfg)
    data = run.data

    torch.manual_seed(cfg.seed)
    model = build_model(recipe.model, data.num_classes, data.input_shape).to(device)
    check_model_output(model, data.train[0][0], data.num_classes, device)
    opt, sched = make_optimizer(recipe, model)

    models_dir.mkdir(parents=True, exist_ok=True)
    if not resuming:
        (models_dir / CONFIG_FILE).write_text(
            json.dumps(cfg.identity(), indent=2, sort_keys=True) + "\n"
        )
    channels = {"loss": "float32", "correct": "bool", "margin": cfg.margin_dtype}
    lake = cld_lake.Lake.create(cfg.lake, num_classes=data.num_classes).with_run(cfg.run)
    _declare_or_check(lake, run, channels)

    train_eval = Subset(WithIndex(Relabeled(data.train, run.noisy_labels)), run.train_ids.tolist())
    val_eval = Subset(WithIndex(data.train), run.val_ids.tolist())
    train_fit = Subset(Relabeled(data.train_aug, run.noisy_labels), run.train_ids.tolist())
    targets = {
        "train": train_eval,
        "val": val_eval,
        **({"test": WithIndex(data.test)} if cfg.record_test else {}),
    }
    recorders = {
        s: LossRecorder(cfg.lake, s, data.num_classes, margin_dtype=cfg.margin_dtype, run=cfg.run)
        for s in targets
    }
    to_record = record_epochs(recipe.epochs, cfg.record_every)

    last = saved[-1] if saved else None
    committed = {s: set(lake.split(s).checkpoint_ids.tolist()) for s in targets}
    ahead = sorted(c for s in targets for c in committed[s] if last is None or c > last)
    if ahead:
        raise BadInputError(
            f"--lake {cfg.lake} holds checkpoint(s) {ahead[:5]} beyond the last model checkpoint "
            f"in {models_dir}; use a new lake and models dir"
        )
    if last is not None:
        state = torch.load(
            _checkpoint_path(models_dir, last), map_location=device, weights_only=False
        )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])

    history: list[dict[str, Any]] = []
    test_loader = make_loader(data.test, cfg.record_batch_size, shuffle=False, workers=cfg.workers)
    with progress_bar(cfg.progress) as bar:
        if last is not None:
            bar.log(f"resuming {cfg.lake} from model checkpoint epoch {last} ({models_dir})")
        train_task = bar.task("proxy training (epochs)", recipe.epochs)
        record_task = bar.task("recording (checkpoints)", len(to_record))
        done_records = sum(1 for e in to_record if last is not None and e <= last)
        bar.advance(train_task, 0 if last is None else last)
        bar.advance(record_task, done_records)

        def record(epoch: int) -> dict[str, Any]:
            row: dict[str, Any] = {"epoch": epoch}
            for split, dataset in targets.items():
                if epoch in committed[split]:
                    continue
                loader = make_loader(
                    dataset, cfg.record_batch_size, shuffle=False, workers=cfg.workers
                )
                summary = recorders[split].record(model, loader, checkpoint=epoch, epoch=epoch)
                committed[split].add(epoch)
                row[f"{split}_loss"], row[f"{split}_acc"] = summary.mean_loss, summary.accuracy
                fault_point(f"after_{split}_commit", epoch)
            bar.advance(record_task, 1)
            bar.info(record_task, _fmt_row(row))
            return row

        def save(epoch: int) -> None:
            state = {
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
            }
            atomic_torch_save(state, _checkpoint_path(models_dir, epoch))
            for old in _saved_epochs(models_dir)[: -cfg.keep_checkpoints]:
                _checkpoint_path(models_dir, old).unlink(missing_ok=True)
            fault_point("after_save", epoch)

        def epoch_end(epoch: int, train_loss: float) -> None:
            save(epoch)
            bar.advance(train_task, 1)
            bar.info(train_task, f"epoch {epoch} train loss {train_loss:.3f}")
            if epoch in to_record:
                history.append({"train_fit_loss": train_loss, **record(epoch)})

        if last is None:
            save(0)
            last = 0
        if last in to_record and any(last not in committed[s] for s in targets):
            history.append(record(last))
        train_epochs(
            model, train_fit, recipe, opt, sched, seed=cfg.seed, device=device, start=last + 1,
            workers=cfg.workers, on_epoch_end=epoch_end,
        )  # fmt: skip
        acc = test_accuracy(model, test_loader, device)
    # a tidy lake: one segment per split, and nothing left in compaction's grace period (no
    # reader but this process has seen the lake: the replaced segments can go at once)
    cld_lake.compact(cfg.lake, splits=list(targets), runs=[cfg.run or DEFAULT_RUN], prune=True)

    result = ProxyResult(
        lake=Path(cfg.lake),
        models_dir=models_dir,
        epochs=recipe.epochs,
        resumed_from=saved[-1] if saved else None,
        test_accuracy=acc,
        history=history,
        wall_seconds=time.perf_counter() - started,
    )
    (models_dir / RESULT_FILE).write_text(json.dumps(_jsonable(result), indent=2) + "\n")
    return result


def _fmt_row(row: dict[str, Any]) -> str:
    parts = [f"ckpt {row['epoch']}"]
    for split in ("train", "val"):
        if f"{split}_acc" in row:
            parts.append(f"{split} acc {row[f'{split}_acc']:.3f}")
    return " ".join(parts)


def _jsonable(result: ProxyResult) -> dict[str, Any]:
    out = dataclasses.asdict(result)
    out["lake"], out["models_dir"] = str(result.lake), str(result.models_dir)
    return out


def build_parser() -> argparse.ArgumentParser:
    return build_config_parser(
        ProxyConfig,
        prog="python -m pipelines.train_proxy",
        description="Train a proxy model and record train/val loss trajectories into a lake (resumable).",
        epilog="Recipes: " + "; ".join(f"{k}: {v}" for k, v in RECIPES.items()),
    )


def main(argv: list[str] | None = None) -> int:
    result = train_proxy(parse_config(ProxyConfig, build_parser(), argv))
    print(f"lake:        {result.lake}")
    print(f"models:      {result.models_dir}")
    print(f"test acc:    {result.test_accuracy:.4f} (final epoch {result.epochs})")
    print(f"wall time:   {result.wall_seconds:.1f} s")
    return 0


if __name__ == "__main__":
    run_cli(main, prog="train_proxy")
