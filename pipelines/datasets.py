"""Datasets of the pipelines, all local (nothing is downloaded).

Every loader returns a :class:`DataBundle`: the training pool with eval transforms (item ``i``
is sample id ``i``), the same pool with training transforms, the test set, the pool's labels
and the input shape.

- ``mnist1d``: generated offline by ``mnist1d.data.make_dataset`` with a fixed seed;
- ``digits``: scikit-learn's bundled 8x8 scans, a fixed seeded 80/20 train/test split;
- ``cifar10`` / ``cifar100``: the on-disk python-pickle format under ``--root``
  (``cifar-10-batches-py/`` or ``cifar-100-python/``);
- ``imagefolder``: ImageNet-style ``ROOT/train/<class>/*`` and ``ROOT/val/<class>/*``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from cld_lake.errors import BadInputError, InputFileNotFoundError

DatasetName = Literal["mnist1d", "digits", "cifar10", "cifar100", "imagefolder"]
DATASETS: tuple[str, ...] = get_args(DatasetName)

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DataBundle:
    """A dataset ready for the pipelines (see the module docstring)."""

    name: str
    train: Dataset
    train_aug: Dataset
    test: Dataset
    train_labels: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]


class Transformed(Dataset):
    """Apply ``transform`` to the input of each ``(input, label)`` item and cast the label."""

    def __init__(self, base: Dataset, transform: Any = None) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        x, y = self.base[index]
        return (self.transform(x) if self.transform is not None else x), int(y)


class Relabeled(Dataset):
    """Replace the label of item ``i`` by ``labels[i]`` (e.g. the noisy labels of a run)."""

    def __init__(self, base: Dataset, labels: np.ndarray) -> None:
        if len(labels) != len(base):  # type: ignore[arg-type]
            raise BadInputError(f"{len(labels)} labels for a dataset of {len(base)} items")  # type: ignore[arg-type]
        self.base = base
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.base[index][0], int(self.labels[index])


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    num_samples: int | None = None,
    image_size: int | None = None,
) -> DataBundle:
    """Load a dataset by name (see the module docstring); errors before any training starts.

    Parameters
    ----------
    name : one of ``DATASETS``
    root : directory of the on-disk files (cifar*, imagefolder); optional cache dir for mnist1d
    num_samples : mnist1d only: samples to generate (train + test, 80/20; default 5000)
    image_size : imagefolder only: crop size (default 224; 32 uses ResNet-18's CIFAR stem)
    """
    if name == "mnist1d":
        return _mnist1d(root, num_samples or 5000)
    if name == "digits":
        return _digits()
    if name in ("cifar10", "cifar100"):
        return _cifar(name, _need_root(name, root))
    if name == "imagefolder":
        return _imagefolder(_need_root(name, root), image_size or 224)
    raise BadInputError(f"--dataset {name!r}: choose one of {', '.join(DATASETS)}")


def _need_root(name: str, root: str | os.PathLike[str] | None) -> Path:
    if root is None:
        raise BadInputError(
            f"--dataset {name} needs --root DIR (the local copy; nothing is downloaded)"
        )
    path = Path(root)
    if not path.is_dir():
        raise InputFileNotFoundError(
            f"--root {path}: no such directory; point it at the local {name} copy"
        )
    return path


def _tensor_bundle(
    name: str, x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray, num_classes: int
) -> DataBundle:
    train = TensorDataset(
        torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)
    )
    test = TensorDataset(
        torch.as_tensor(xt, dtype=torch.float32), torch.as_tensor(yt, dtype=torch.long)
    )
    return DataBundle(
        name,
        train,
        train,
        test,
        np.asarray(y, np.int64),
        np.asarray(yt, np.int64),
        num_classes,
        tuple(x.shape[1:]),
    )


def _mnist1d(root: str | os.PathLike[str] | None, num_samples: int) -> DataBundle:
    cache = Path(root) / f"mnist1d-{num_samples}.npz" if root is not None else None
    if cache is not None and cache.exists():
        d = np.load(cache)
        x, y, xt, yt = d["x"], d["y"], d["x_test"], d["y_test"]
    else:
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.num_samples = int(num_samples)
        state = np.random.get_state()  # make_dataset seeds numpy's global generator
        try:
            d = make_dataset(args)  # local generation with args.seed (42): never downloads
        finally:
            np.random.set_state(state)
        x, y, xt, yt = d["x"], d["y"], d["x_test"], d["y_test"]
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.name}.tmp-{os.getpid()}.npz")
            np.savez(tmp, x=x, y=y, x_test=xt, y_test=yt)
            os.replace(tmp, cache)
    return _tensor_bundle("mnist1d", x[:, None, :], y, xt[:, None, :], yt, 10)


def _digits() -> DataBundle:
    data, target = _digits_arrays()
    order = np.random.default_rng(0).permutation(len(target))
    cut = int(0.8 * len(order))
    x = (data / 16.0).astype(np.float32)
    tr, te = order[:cut], order[cut:]
    return _tensor_bundle("digits", x[tr], target[tr], x[te], target[te], 10)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled ``digits.csv.gz``, read directly: importing sklearn (and scipy)
    would cost seconds per process; ``load_digits`` is the fallback."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.submodule_search_locations:
        path = (
            Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
        )
        if path.is_file():
            table = np.loadtxt(path, delimiter=",")
            return table[:, :-1], table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data, d.target.astype(np.int64)


def _local_cifar_class(name: str) -> Any:
    """torchvision's CIFAR class without md5 checks, so trimmed copies (and the tests' tiny
    files) load too; a missing file is still refused. Module-level, so workers can pickle it."""
    from torchvision import datasets

    cls_name = f"_Local{name.upper()}"
    if cls_name not in globals():
        base = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        attrs = {
            "__module__": __name__,
            "__qualname__": cls_name,
            "train_list": [(f, None) for f, _ in base.train_list],
            "test_list": [(f, None) for f, _ in base.test_list],
            "meta": dict(base.meta, md5=None),
        }
        globals()[cls_name] = type(cls_name, (base,), attrs)
    return globals()[cls_name]


def _cifar(name: str, root: Path) -> DataBundle:
    from torchvision import transforms

    base_cls = _local_cifar_class(name)
    folder = root / base_cls.base_folder
    files = [f for f, _ in base_cls.train_list + base_cls.test_list] + [base_cls.meta["filename"]]
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise InputFileNotFoundError(
            f"--root {root}: {name} needs {base_cls.base_folder}/ with {', '.join(missing)}; "
            "extract the python version of the dataset there (nothing is downloaded)"
        )
    try:
        train_base = base_cls(str(root), train=True, download=False)
        test_base = base_cls(str(root), train=False, download=False)
    except Exception as exc:  # unreadable pickle: say which root
        raise BadInputError(f"--root {root}: cannot read {name} ({exc})") from exc
    norm = transforms.Normalize(CIFAR_MEAN, CIFAR_STD)
    eval_tf = transforms.Compose([transforms.ToTensor(), norm])
    aug_tf = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            norm,
        ]
    )
    num_classes = 10 if name == "cifar10" else 100
    return DataBundle(
        name,
        Transformed(train_base, eval_tf),
        Transformed(train_base, aug_tf),
        Transformed(test_base, eval_tf),
        np.asarray(train_base.targets, np.int64),
        np.asarray(test_base.targets, np.int64),
        num_classes,
        (3, 32, 32),
    )


def _imagefolder(root: Path, size: int) -> DataBundle:
    from torchvision import datasets, transforms

    for sub in ("train", "val"):
        if not (root / sub).is_dir():
            raise InputFileNotFoundError(
                f"--root {root}: imagefolder needs {root / sub}/<class>/<image> folders (ImageNet layout)"
            )
    try:
        train_base = datasets.ImageFolder(str(root / "train"))
        test_base = datasets.ImageFolder(str(root / "val"))
    except (FileNotFoundError, RuntimeError) as exc:
        raise BadInputError(f"--root {root}: {exc}") from exc
    if test_base.class_to_idx != train_base.class_to_idx:
        raise BadInputError(f"--root {root}: train/ and val/ must hold the same class folders")
    norm = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    resize = max(size, int(round(size * 256 / 224)))
    eval_tf = transforms.Compose(
        [transforms.Resize(resize), transforms.CenterCrop(size), transforms.ToTensor(), norm]
    )
    aug_tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            norm,
        ]
    )
    return DataBundle(
        "imagefolder",
        Transformed(train_base, eval_tf),
        Transformed(train_base, aug_tf),
        Transformed(test_base, eval_tf),
        np.asarray(train_base.targets, np.int64),
        np.asarray(test_base.targets, np.int64),
        len(train_base.classes),
        (3, size, size),
    )
