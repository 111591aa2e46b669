"""A self-contained HTML report of a lake: splits, loss curves, score distributions, and, when
the samples table marks noisy labels, how well each score finds them.

Everything is computed in one streaming pass per split (sums per checkpoint), so the report
of a 10M-sample lake needs no more memory than that of a small one. Charts are inline SVG:
the file opens anywhere, offline.
"""

from __future__ import annotations

import datetime as _dt
import html
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cld_lake._io import atomic_path, check_output_path, is_inside, remove_dead_temps
from cld_lake.errors import BadInputError
from cld_lake.lake.inspect import lake_info
from cld_lake.lake.scores import read_scores, stale_scores
from cld_lake.lake.store import Lake
from cld_lake.select import fraction_size

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def curve_stats(lake: Lake, split_name: str) -> dict[str, np.ndarray]:
    """Mean finite loss (and accuracy, if recorded) per checkpoint, streamed over row blocks."""
    split = lake.split(split_name)
    k = split.num_checkpoints
    loss_sum, loss_n, acc_sum = np.zeros(k), np.zeros(k), np.zeros(k)
    channels = ["loss"] + (["correct"] if "correct" in split.channels else [])
    for block in split.blocks(channels=channels):
        loss = block.loss.astype(np.float64)
        finite = np.isfinite(loss)
        loss_sum += np.where(finite, loss, 0.0).sum(axis=0)
        loss_n += finite.sum(axis=0)
        if "correct" in block.values:
            acc_sum += block.values["correct"].sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {"checkpoint": split.checkpoint_ids, "mean_loss": loss_sum / loss_n}
        if "correct" in split.channels:
            out["accuracy"] = acc_sum / max(split.num_samples, 1)
    return out


def noise_detection(
    scores: np.ndarray, noisy: np.ndarray, fractions: Sequence[float] = (0.05, 0.1, 0.2)
) -> list[dict[str, float]]:
    """Share of noisy labels among the lowest-scored fraction, next to the base rate.

    The lowest ``fraction`` of the finite scores are ``round(fraction x n)`` samples, halves
    up (at least one), as ``cld-lake select --lowest --balance none`` counts them.
    """
    ok = np.isfinite(scores)
    s, y = scores[ok], noisy[ok].astype(bool)
    order = np.argsort(s, kind="stable")
    rows = []
    for f in fractions:
        k = min(max(1, fraction_size(f, len(s))), len(s))
        lowest = y[order[:k]]
        rows.append(
            {
                "fraction": f,
                "noisy_share_lowest": float(lowest.mean()) if k else float("nan"),
                "recall": float(lowest.sum() / max(y.sum(), 1)),
                "base_rate": float(y.mean()) if len(y) else float("nan"),
            }
        )
    return rows


# --- tiny SVG charts ---------------------------------------------------------------------
def _svg_lines(
    series: dict[str, tuple[np.ndarray, np.ndarray]],
    title: str,
    width: int = 560,
    height: int = 260,
) -> str:
    pad_l, pad_b, pad_t, pad_r = 50, 30, 24, 12
    xs = np.concatenate([x for x, _ in series.values()]) if series else np.zeros(1)
    ys = np.concatenate([y[np.isfinite(y)] for _, y in series.values()]) if series else np.zeros(1)
    if ys.size == 0:
        ys = np.zeros(1)
    x0, x1 = float(xs.min()), float(xs.max()) or 1.0
    y0, y1 = min(0.0, float(ys.min())), float(ys.max()) or 1.0
    sx = lambda v: pad_l + (v - x0) / ((x1 - x0) or 1) * (width - pad_l - pad_r)  # noqa: E731
    sy = lambda v: height - pad_b - (v - y0) / ((y1 - y0) or 1) * (height - pad_b - pad_t)  # noqa: E731
    parts = [
        f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg" font-size="11">',
        f'<text x="{pad_l}" y="14" font-weight="bold">{html.escape(title)}</text>',
        f'<line x1="{pad_l}" y1="{height - pad_b}" x2="{width - pad_r}" y2="{height - pad_b}" stroke="#999"/>',
        f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{height - pad_b}" stroke="#999"/>',
        f'<text x="4" y="{sy(y1) + 4:.0f}">{y1:.3g}</text><text x="4" y="{sy(y0):.0f}">{y0:.3g}</text>',
        f'<text x="{pad_l}" y="{height - 8}">{x0:.0f}</text><text x="{width - pad_r - 20}" y="{height - 8}">{x1:.0f}</text>',
    ]
    for i, (name, (x, y)) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        pts = " ".join(
            f"{sx(a):.1f},{sy(b):.1f}" for a, b in zip(x, y, strict=True) if np.isfinite(b)
        )
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>')
        parts.append(
            f'<text x="{width - pad_r - 150}" y="{pad_t + 14 * i + 10}" fill="{color}">{html.escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _svg_hist(
    groups: dict[str, np.ndarray], title: str, bins: int = 40, width: int = 560, height: int = 220
) -> str:
    finite = [g[np.isfinite(g)] for g in groups.values()]
    allv = np.concatenate(finite) if finite else np.zeros(0)
    if allv.size == 0:
        return f"<p>{html.escape(title)}: no finite values</p>"
    edges = np.linspace(float(allv.min()), float(allv.max()) + 1e-12, bins + 1)
    counts = {
        k: np.histogram(v, edges)[0] / max(len(v), 1) for k, v in zip(groups, finite, strict=True)
    }
    top = max(float(c.max()) for c in counts.values()) or 1.0
    pad_l, pad_b = 40, 24
    bw = (width - pad_l - 10) / bins
    parts = [
        f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg" font-size="11">',
        f'<text x="{pad_l}" y="14" font-weight="bold">{html.escape(title)}</text>',
    ]
    for i, (name, c) in enumerate(counts.items()):
        color = COLORS[i % len(COLORS)]
        for j, v in enumerate(c):
            h = v / top * (height - pad_b - 24)
            parts.append(
                f'<rect x="{pad_l + j * bw:.1f}" y="{height - pad_b - h:.1f}" width="{bw - 1:.1f}" '
                f'height="{h:.1f}" fill="{color}" fill-opacity="0.5"/>'
            )
        parts.append(
            f'<text x="{width - 160}" y="{28 + 14 * i}" fill="{color}">{html.escape(name)} (n={len(finite[i]):,})</text>'
        )
    parts.append(
        f'<text x="{pad_l}" y="{height - 6}">{edges[0]:.3g}</text>'
        f'<text x="{width - 50}" y="{height - 6}">{edges[-1]:.3g}</text></svg>'
    )
    return "".join(parts)


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r.values()) + "</tr>"
        for r in rows
    )
    return f"<div class='wide'><table><tr>{head}</tr>{body}</table></div>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    return str(v)


def report_path(
    lake: Lake, out: str | os.PathLike[str], *, force: bool = False, create: bool = False
) -> Path:
    """The file the report goes to: ``out`` (``.html``) or ``out/report.html``, guarded.

    Refused: a path inside the lake, a missing parent directory of an ``.html`` file, a file
    that is not ``.html`` given as the directory, an existing report unless ``force``. With
    ``create`` a missing directory ``out`` is created (after the checks).
    """
    out = Path(out)
    html_file = out.suffix.lower() in (".html", ".htm")
    target = out if html_file else out / "report.html"
    if is_inside(out, lake.path):  # the lake, a file or a directory in it: refused as given
        return check_output_path(out, lake.path, what="--out", overwrite=force)
    if not html_file:
        if out.exists() and not out.is_dir():
            raise BadInputError(
                f"--out {out}: is a file, not a directory; give an .html file or a directory"
            )
        if not out.exists():
            if not create:  # nothing there to overwrite; the directory comes later
                return target
            out.mkdir(parents=True)
    return check_output_path(target, lake.path, what="--out", overwrite=force)


def build_report(
    lake: Lake | str | os.PathLike[str], out: str | os.PathLike[str], *, force: bool = False
) -> Path:
    """Write the HTML report to ``out`` (a ``.html`` file, or a directory to hold
    ``report.html``, created if missing) and return its path.

    ``out`` may not be inside the lake; an existing report is replaced only with ``force``.
    Stale scores (see :func:`cld_lake.lake.scores.stale_scores`) are reported with a
    ``UserWarning`` and a note in the report.
    """
    if not isinstance(lake, Lake):
        lake = Lake(lake)
    report_path(lake, out, force=force)  # refuse before the (long) computation
    info = lake_info(lake)
    sections = [
        f"<h1>cld_lake report</h1><p>{html.escape(str(lake.path))} · lake {info['lake_id']} · "
        f"{info['num_classes']} classes · generated {_dt.datetime.now().isoformat(timespec='seconds')}</p>",
        "<h2>Splits</h2>",
        _table(
            [
                {"split": k, **{c: v for c, v in s.items() if c not in ("metadata_columns",)}}
                for k, s in info["splits"].items()
            ]
        ),
    ]
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    accs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in lake.splits():
        stats = curve_stats(lake, name)
        curves[f"{name} mean loss"] = (stats["checkpoint"], stats["mean_loss"])
        if "accuracy" in stats:
            accs[f"{name} accuracy"] = (stats["checkpoint"], stats["accuracy"])
    if curves:
        sections += ["<h2>Training dynamics</h2>", _svg_lines(curves, "mean loss per checkpoint")]
    if accs:
        sections.append(_svg_lines(accs, "accuracy per checkpoint"))
    scores = read_scores(lake)
    if scores is not None:
        sections.append("<h2>Scores</h2>")
        for name, reason in stale_scores(lake).items():
            warnings.warn(f"score {name}: {reason}", UserWarning, stacklevel=2)
            sections.append(f"<p><b>Stale score {html.escape(name)}</b>: {html.escape(reason)}</p>")
        shown = (
            "method",
            "engine",
            "checkpoints",
            "nan",
            "degenerate",
            "fallback",
            "val_left_out",
            "created_at",
        )
        sections.append(
            _table(
                [
                    {"score": k, **{f: v.get(f, "") for f in shown}}
                    for k, v in info["scores"].items()
                ]
            )
        )
        noisy = _noisy_flags(lake, scores.column("sample_id").to_numpy())
        for col in [c for c in scores.column_names if c not in ("sample_id", "label")]:
            values = scores.column(col).to_numpy(zero_copy_only=False).astype(np.float64)
            if noisy is not None:
                groups = {"clean labels": values[~noisy], "noisy labels": values[noisy]}
                sections.append(_svg_hist(groups, f"{col}: distribution (share of each group)"))
                sections.append(
                    f"<h3>{html.escape(col)}: noisy labels among the lowest-scored samples</h3>"
                )
                sections.append(_table(noise_detection(values, noisy)))
            else:
                sections.append(_svg_hist({col: values}, f"{col}: distribution"))
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1000px}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
        "font-size:13px;text-align:right}th{background:#f3f3f3}svg{display:block;margin:1em 0}"
        ".wide{overflow-x:auto}"
    )
    doc = f"<!doctype html><html><head><meta charset='utf-8'><title>cld_lake report</title><style>{style}</style></head><body>{''.join(sections)}</body></html>"
    target = report_path(lake, out, force=force, create=True)
    remove_dead_temps(target)
    with atomic_path(target) as tmp:
        tmp.write_text(doc)
    return target


def _noisy_flags(lake: Lake, sample_ids: np.ndarray) -> np.ndarray | None:
    if not lake.has_split("train"):
        return None
    samples = lake.split("train").samples_table
    if "noisy" not in samples.column_names:
        return None
    split = lake.split("train")
    rows = split.rows_of(sample_ids)
    flags = samples.column("noisy").to_numpy(zero_copy_only=False).astype(bool)
    return np.where(rows >= 0, flags[np.maximum(rows, 0)], False)
