"""The training dynamics sections: mean loss (and accuracy) curves of every split, per-class
loss curves of the CLD groups against validation (the CLD paper's Figure 1), the data map."""

from __future__ import annotations

import numpy as np

from cld_lake.lake.store import Lake
from cld_lake.report import _plots as plots
from cld_lake.report._data import TrainData
from cld_lake.report._html import figure
from cld_lake.report._stats import SplitScan, curve_groups, pick_classes, scan_split

CURVE_CLASSES = 4  # classes drawn in the per-class loss curves
GROUP_SHARE = 0.1  # share of a class in each CLD group of those curves


def curve_stats(lake: Lake, split_name: str) -> dict[str, np.ndarray]:
    """Mean finite loss (and accuracy, if recorded) per checkpoint, streamed over row blocks."""
    scan = scan_split(lake.split(split_name))
    out = {"checkpoint": scan.checkpoints, "mean_loss": scan.mean_loss}
    if scan.accuracy is not None:
        out["accuracy"] = scan.accuracy
    return out


def dynamics_sections(lake: Lake, data: TrainData, cld: str | None) -> list[str]:
    """Mean curves of every split, the per-class CLD curves and the data map."""
    out: list[str] = []
    train = data.train
    classes = np.zeros(0, np.int64)
    groups: tuple[np.ndarray, np.ndarray] | None = None
    names: list[tuple[int, str, int]] = []
    member_stride = 1
    if train is not None and "loss" in train.channels:
        classes = pick_classes(np.flatnonzero(train.label_counts()), CURVE_CLASSES)
        if cld is not None:
            column = data.read(lake, cld, classes=classes)
            assert column.members is not None
            rows, values, labels = column.members
            group, names = curve_groups(values, labels, classes, GROUP_SHARE)
            inside = group >= 0
            groups = (rows[inside], group[inside].astype(np.int64))
            member_stride = column.member_stride
            del column, rows, values, labels, group
    scans: dict[str, SplitScan] = {}
    for name in lake.splits():
        split = train if name == "train" and train is not None else lake.split(name)
        if "loss" not in split.channels:
            continue
        if name == "train":
            scans[name] = scan_split(
                split, classes=classes, row_groups=groups, n_groups=len(names), stride=data.stride
            )
        else:
            scans[name] = scan_split(split, classes=classes if name == "val" else ())
    curves = {f"{n} mean loss": (s.checkpoints, s.mean_loss) for n, s in scans.items()}
    accs = {
        f"{n} accuracy": (s.checkpoints, s.accuracy)
        for n, s in scans.items()
        if s.accuracy is not None
    }
    if curves:
        out += [
            "<h2>Training dynamics</h2>",
            figure(plots.training_curves(curves, accs), "mean loss per checkpoint"),
        ]
    t = scans.get("train")
    if t is not None and len(classes):
        group_names = lake.group_names()
        out += [
            f"<h3>Per-{'class' if group_names is None else 'group'} loss curves</h3>",
            _class_curves(t, scans.get("val"), names, cld, member_stride, group_names),
        ]
    if t is not None and len(t.sample_rows):
        color = data.samples.get(cld) if cld else None
        out += [
            "<h3>Data map</h3>",
            figure(
                plots.data_map(t.confidence, t.variability, color, cld or ""),
                "data map: confidence vs variability",
                f"p_true = exp(-loss) per checkpoint; confidence = its mean, variability = its "
                f"standard deviation. Points: {data.sample_words()} "
                f"({len(t.sample_rows):,} of {train.num_samples if train else 0:,} samples)"
                + (f", coloured by {cld}" if color is not None else "")
                + "; rows without a finite loss are left out.",
            ),
        ]
    return out


def _class_curves(
    t: SplitScan,
    v: SplitScan | None,
    names: list[tuple[int, str, int]],
    cld: str | None,
    member_stride: int = 1,
    group_names: tuple[str, ...] | None = None,
) -> str:
    """The per-class curves figure; a lake of named groups shows each group by its name."""
    kind = "class" if group_names is None else "group"

    def shown(c: int) -> str:
        return str(c) if group_names is None else group_names[c]

    panels = []
    for i, c in enumerate(t.classes):
        panel: dict[str, object] = {
            "label": int(c),
            "title": f"{kind} {shown(int(c))}",
            "kind": kind,
            "train": (t.checkpoints, t.class_mean[i]),
            "val": None,
            "groups": {},
        }
        if v is not None and v.class_count[i] > 0:
            panel["val"] = (v.checkpoints, v.class_mean[i])
        for g, (label, group, size) in enumerate(names):
            if label == int(c):
                panel["groups"][group] = (t.checkpoints, t.group_mean[g], size)  # type: ignore[index]
        panels.append(panel)
    sizes = sorted({size for *_, size in names})
    bands = "Groups" if group_names is None else "CLD bands"
    caption = (
        f"{kind.title()}{'es' if kind == 'class' else 's'} "
        f"{', '.join(shown(int(c)) for c in t.classes)} (spread over the {kind}"
        f"{'es' if kind == 'class' else 's'} present). "
        + (
            f"{bands}: the {GROUP_SHARE:.0%} of each {kind} with the highest, nearest-zero and "
            f"lowest (most negative) {cld} ({', '.join(map(str, sizes))} samples each); "
            "curves average the finite losses at each checkpoint over every sample of a group."
            + (
                f" {bands} are taken from every {member_stride:,}th training row of these "
                f"{kind}{'es' if kind == 'class' else 's'} (a uniform sample: they hold more "
                "rows than the report ranks in memory)."
                if member_stride > 1
                else ""
            )
            if names
            else f"No CLD score stored: {kind} means only (compute one with cld-lake score)."
        )
    )
    return figure(plots.class_curves(panels), "per-class loss curves by CLD group", caption)
