"""The report's figures, drawn by matplotlib and embedded as base64 PNG ``<img>`` tags.

Figures are built from :class:`matplotlib.figure.Figure` directly (no pyplot, no global
backend switch: PNG output goes through the Agg canvas), with the constrained layout and
legends placed outside the axes, so that no label or legend covers the data.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# colour-blind friendly (Okabe-Ito) colours for the CLD groups and splits
GROUP_COLORS = {"highest": "#009E73", "near zero": "#E69F00", "lowest": "#D55E00"}
SPLIT_COLORS = ["#0072B2", "#000000", "#CC79A7", "#56B4E9"]
DPI = 100


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def to_img(fig: Figure, alt: str) -> str:
    """The figure as an ``<img>`` tag with a base64 PNG (the page stays one file)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    width, height = (int(round(v)) for v in fig.get_size_inches() * DPI)
    return (
        f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" '
        f'width="{width}" height="{height}">'
    )


def training_curves(
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    accuracy: dict[str, tuple[np.ndarray, np.ndarray]],
) -> Figure:
    """Mean loss (and accuracy) per checkpoint of each split."""
    fig = _figure(10, 3.6)
    axes = fig.subplots(1, 2 if accuracy else 1, squeeze=False)[0]
    for ax, series, what in zip(
        axes,
        (curves, accuracy),
        ("mean loss per checkpoint", "accuracy per checkpoint"),
        strict=False,
    ):
        for i, (name, (x, y)) in enumerate(series.items()):
            style = "-" if name.startswith("train") else "--"  # equal curves stay visible
            ax.plot(x, y, color=SPLIT_COLORS[i % len(SPLIT_COLORS)], lw=1.8, ls=style, label=name)
        ax.set_title(what)
        ax.set_xlabel("checkpoint")
        ax.set_ylabel("mean loss" if what.startswith("mean") else "accuracy")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9)
    return fig


def class_curves(
    panels: Sequence[dict[str, object]],
) -> Figure:
    """Per class: the mean validation loss curve next to the mean training-loss curves of the
    class and of its highest, near-zero and lowest (most negative) CLD groups (CLD paper,
    Figure 1).

    Each panel: ``{"label": int, "val": (x, y) | None, "train": (x, y), "groups":
    {name: (x, y, size)}}``, optionally ``"title"`` (default ``class <label>``) and
    ``"kind"`` (``class``, or ``group`` for a lake of named groups).
    """
    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    fig = _figure(10, 3.2 * rows + 0.6)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, panel in zip(axes, panels, strict=False):
        val = panel.get("val")
        kind = panel.get("kind", "class")
        if val is not None:
            x, y = val  # type: ignore[misc]
            ax.plot(x, y, color="black", lw=2.2, ls="--", label=f"validation ({kind} mean)")
        x, y = panel["train"]  # type: ignore[misc]
        ax.plot(x, y, color="#7f7f7f", lw=1.5, label=f"training ({kind} mean)")
        for name, (gx, gy, size) in panel["groups"].items():  # type: ignore[attr-defined]
            ax.plot(
                gx,
                gy,
                color=GROUP_COLORS[name],
                lw=1.8,
                label=f"training, {name} CLD" + (" (most negative)" if name == "lowest" else ""),
            )
            del size
        ax.set_title(str(panel.get("title", f"class {panel['label']}")), fontsize=10)
        ax.set_xlabel("checkpoint")
        ax.set_ylabel("mean loss")
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    _shared_legend(fig, axes[: len(panels)])  # a panel may have a group the first lacks
    fig.suptitle("mean loss curves: validation vs training samples by CLD", fontsize=11)
    return fig


def _shared_legend(
    fig: Figure, axes: Sequence[Axes], key: Callable[[str], str] = lambda label: label
) -> None:
    """One legend below the panels: each entry once (by ``key`` of its label), in panel order."""
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if key(lab) not in labels:
                handles.append(h)
                labels.append(key(lab))
    fig.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False, fontsize=9)


def score_histograms(
    hists: Sequence[dict[str, object]],
) -> Figure:
    """One panel per score: the share of samples per bin, clean and noisy labels apart when
    known. Each item: ``{"name", "edges", "groups": {name: counts}, "direction"}``."""
    cols = min(3, len(hists))
    rows = -(-len(hists) // cols)
    fig = _figure(10, 2.8 * rows + 0.5)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    colors = {"all samples": "#0072B2", "clean labels": "#0072B2", "noisy labels": "#D55E00"}
    for ax, item in zip(axes, hists, strict=False):
        edges = item["edges"]
        for name, counts in item["groups"].items():  # type: ignore[attr-defined]
            total = max(int(np.sum(counts)), 1)
            outline = name == "noisy labels"  # drawn as a line: both groups stay visible
            ax.stairs(
                np.asarray(counts) / total,
                edges,  # type: ignore[arg-type]
                fill=not outline,
                alpha=1.0 if outline else 0.45,
                lw=1.6 if outline else 0,
                color=colors.get(name, "#7f7f7f"),
                label=f"{name} (n={total:,})",
            )
        ax.set_title(f"{item['name']} ({item['direction']})", fontsize=10)
        ax.set_xlabel(str(item["name"]))
        ax.set_ylabel("share of samples")
        ax.grid(alpha=0.3)
    for ax in axes[len(hists) :]:
        ax.set_visible(False)
    _shared_legend(fig, axes[: len(hists)], key=lambda label: label.split(" (n=")[0])
    fig.suptitle("score distributions", fontsize=11)
    return fig


def data_map(
    confidence: np.ndarray, variability: np.ndarray, color: np.ndarray | None, color_name: str
) -> Figure:
    """Confidence vs variability of ``p_true`` over checkpoints, one point per sampled row."""
    fig = _figure(8, 5.5)
    ax = fig.subplots()
    ok = np.isfinite(confidence) & np.isfinite(variability)
    size = 4 if ok.sum() < 20_000 else 1
    if color is not None:
        ok &= np.isfinite(color)
        order = np.argsort(np.abs(color[ok]))  # extreme values drawn last, on top
        c = color[ok][order]
        lim = float(np.max(np.abs(c))) if len(c) else 1.0
        points = ax.scatter(
            variability[ok][order],
            confidence[ok][order],
            c=c,
            cmap="coolwarm_r",
            vmin=-lim or -1,
            vmax=lim or 1,
            s=size,
            linewidths=0,
            rasterized=True,
        )
        fig.colorbar(points, ax=ax, label=color_name, shrink=0.9)
    else:
        ax.scatter(variability[ok], confidence[ok], s=size, color="#0072B2", linewidths=0)
    ax.set_xlabel("variability (std of p_true over checkpoints)")
    ax.set_ylabel("confidence (mean p_true)")
    ax.set_title(f"data map ({int(ok.sum()):,} sampled training samples)", fontsize=11)
    ax.grid(alpha=0.3)
    return fig


def correlation_matrix(names: Sequence[str], matrix: np.ndarray) -> Figure:
    """Spearman correlations between scores as a heat map with the values written in."""
    k = len(names)
    side = min(2.5 + 0.7 * k, 10)
    fig = _figure(side + 1.2, side)
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="RdBu", vmin=-1, vmax=1)
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    if k <= 12:
        for i in range(k):
            for j in range(k):
                v = matrix[i, j]
                text = "n/a" if not np.isfinite(v) else f"{v:.2f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="white" if np.isfinite(v) and abs(v) > 0.6 else "black")  # fmt: skip
    fig.colorbar(image, ax=ax, label="Spearman correlation", shrink=0.8)
    ax.set_title("rank correlation between scores", fontsize=11)
    return fig


def class_shares(
    labels: Sequence[int | str], shares: Sequence[float], score: str, kind: str = "class"
) -> Figure:
    """Per class (``kind``: or group, ``labels`` then names), the share of scored samples with
    ``score <= 0`` (a bar per class)."""
    fig = _figure(10, 2.8)
    ax = fig.subplots()
    ax.bar(np.arange(len(labels)), np.nan_to_num(np.asarray(shares, float)), color="#0072B2")
    if len(labels) <= 40:  # more classes: ticks would overlap, the axis counts positions
        ax.set_xticks(np.arange(len(labels)), [str(c) for c in labels], fontsize=8)
    ax.set_xlabel(kind)
    ax.set_ylabel(f"share with {score} <= 0")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3, axis="y")
    return fig


def accuracy_vs_fraction(
    methods: dict[str, list[tuple[float, float, float, float]]],
    full: tuple[float, float, float] | None,
) -> Figure:
    """Accuracy (mean, min-max error bars) against the kept fraction, one line per method.

    ``methods`` maps a method to ``(fraction, mean, min, max)`` rows (``random`` drawn grey
    and dashed); ``full`` is the full-data ``(mean, min, max)``, a horizontal line and band.
    """
    fig = _figure(10, 3.8)
    ax = fig.subplots()
    colors = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]
    others = [m for m in methods if m != "random"]
    for i, name in enumerate(others + (["random"] if "random" in methods else [])):
        rows = sorted(methods[name])
        x, mean, lo, hi = (np.array(v, dtype=float) for v in zip(*rows, strict=True))
        is_random = name == "random"
        ax.errorbar(
            x,
            mean,
            yerr=[mean - lo, hi - mean],
            label=name,
            capsize=3,
            marker="o",
            ms=4,
            lw=1.6,
            ls="--" if is_random else "-",
            color="#7f7f7f" if is_random else colors[i % len(colors)],
        )
    if full is not None:
        ax.axhline(full[0], color="#000000", lw=1.2, ls=":", label="full data")
        ax.axhspan(full[1], full[2], color="#000000", alpha=0.08)
    ax.set_xlim(0, 1.02)  # fractions live in (0, 1]: one scale whatever was run
    ax.set_xlabel("fraction of the training pool kept")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", frameon=False, fontsize=9)
    return fig
