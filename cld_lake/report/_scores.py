"""The scores sections: the scores table, score distributions, noisy-label detection (whole
columns, or streamed with the bound the page states), score correlations and the rank
stability of CLD windows."""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from cld_lake.diagnostics import FINE_BINS, DetectionTally, detection, spearman
from cld_lake.lake.scores import score_direction
from cld_lake.lake.store import Lake
from cld_lake.report import _plots as plots
from cld_lake.report._data import Column, TrainData, run_pairs
from cld_lake.report._html import figure, table
from cld_lake.report._stats import binned_counts, histogram_edges, range_edges


def score_sections(lake: Lake, stored: dict[str, dict[str, Any]], data: TrainData) -> list[str]:
    shown = ("method", "direction", "range", "engine", "checkpoints", "nan", "degenerate")
    out = [
        "<h2>Scores</h2>",
        table(
            [
                {"score": k, **{f: v.get(f, "") for f in shown}}
                | {"direction": score_direction(v), "range": range_text(v.get("range"))}
                | {"created_at": v.get("created_at", "")}
                for k, v in stored.items()
            ]
        ),
    ]
    hists: list[dict[str, object]] = []
    detections: list[dict[str, Any]] = []
    lowest_tables: list[str] = []
    bounds: list[float] = []
    approximate: list[str] = []
    paired = {n for pair in run_pairs(stored) for n in pair}
    for name, prov in stored.items():
        direction = score_direction(prov)
        wide = not data.whole and name in paired
        column = data.read(lake, name, whole=data.whole, wide=wide)
        if column.whole is not None:  # small: the exact figures, from the whole column
            values = column.whole
            noisy = data.noisy_of(np.arange(len(values))) if data.has_noisy else None
            edges = histogram_edges(values)
            counts = binned_counts(values, edges, noisy) if edges is not None else []
            found = detection(values, noisy, direction) if noisy is not None else None
            del values, noisy
        else:
            edges = range_edges(column.lo, column.hi)
            counts, found = _streamed_stats(lake, data, name, edges, direction, column)
        del column
        if edges is not None:
            names = ["all samples"] if not data.has_noisy else ["clean labels", "noisy labels"]
            groups = dict(zip(names, counts, strict=True))
            hists.append({"name": name, "edges": edges, "groups": groups, "direction": direction})
        if found is not None:
            row, by_fraction = found
            bounds.append(float(row.pop("auroc_bound", 0.0)))
            approximate += [f"{name}: {what}" for what in row.pop("approximate", [])]
            detections.append({"score": name, "direction": direction} | row)
            which = "lowest" if direction == "higher_keep" else "highest"
            lowest_tables += [
                f"<h4>{html.escape(name)}: noisy labels among the {which}-scored samples</h4>",
                table([_headed_by(row, which) for row in by_fraction]),
            ]
    if hists:
        out.append(
            figure(
                plots.score_histograms(hists),
                "score distributions",
                "Share of samples per bin over every training sample with a finite score"
                + (", clean and noisy labels apart." if data.has_noisy else "."),
            )
        )
    if detections:
        out += [
            "<h3>Noisy-label detection</h3>",
            "<p class='note'>Each score ranks samples from most to least suspicious: lowest "
            "first for higher_keep scores (CLD), highest first for higher_harder ones. AUROC: "
            "the chance that a noisy sample ranks above a clean one (0.5 = chance); precision "
            "at the noise rate: the share of noisy labels among as many top-ranked samples as "
            "there are noisy ones. Samples with a non-finite score are left out."
            + (
                ""
                if data.whole
                else _streamed_note(max(bounds, default=0.0), approximate, data.exact_rows)
            )
            + "</p>",
            table(detections),
            *lowest_tables,
        ]
    out += _correlation_sections(stored, data)
    return out


def range_text(value: Any) -> str:
    """A score's recorded range for a reader: ``[0, 1]``, ``[0, +inf)``, ``unbounded`` when it
    has no bound at either end, ``""`` when none was recorded (a score of an older version)."""
    if not isinstance(value, list | tuple) or len(value) != 2:
        return ""
    low, high = value
    if low is None and high is None:
        return "unbounded"
    left = "(-inf" if low is None else f"[{low:g}"
    right = "+inf)" if high is None else f"{high:g}]"
    return f"{left}, {right}"


def _headed_by(row: dict[str, Any], which: str) -> dict[str, Any]:
    """A detection row with its noisy share headed by the end it lists (``noisy_share_highest``
    for a higher_harder score, whose most suspicious samples are its highest)."""
    return {(f"noisy_share_{which}" if k == "noisy_share_lowest" else k): v for k, v in row.items()}


def _streamed_stats(
    lake: Lake, data: TrainData, name: str, edges: np.ndarray | None, direction: str,
    column: Column,
) -> tuple[list[np.ndarray], tuple[dict[str, Any], list[dict[str, Any]]] | None]:  # fmt: skip
    """Histogram counts and detection figures of a score too long to hold, from two more
    streamed reads (the second only with noisy flags)."""
    bins = len(edges) - 1 if edges is not None else 0
    counts = [np.zeros(bins, np.int64) for _ in range(2 if data.has_noisy else 1)]
    tally = DetectionTally(column.lo, column.hi, direction) if data.has_noisy else None
    for rows, _, values in data.batches(lake, [name]):
        v = values[name]
        noisy = data.noisy_of(rows) if data.has_noisy else None
        if edges is not None:
            for total, part in zip(counts, binned_counts(v, edges, noisy), strict=True):
                total += part
        if tally is not None:
            tally.add(v, noisy)  # type: ignore[arg-type]
    if tally is None:
        return counts, None
    if tally.cuts():
        for rows, _, values in data.batches(lake, [name]):
            tally.add_cut(values[name], data.noisy_of(rows))
    return counts, tally.result()


def _streamed_note(bound: float, approximate: list[str], exact_rows: int) -> str:
    """What the streamed detection figures are (more training rows than held whole)."""
    text = (
        f" With more than {exact_rows:,} training rows the scores are streamed: AUROC "
        f"comes from a {FINE_BINS:,}-bin histogram of each score, where a noisy-clean pair "
        "in one bin holding different values counts one half, so each AUROC is within "
        f"{bound:.1e} of the exact value"
        + (" (exact here)" if bound == 0 else "")
        + "; the top-ranked figures are exact (ties in row order)."
    )
    if approximate:
        text += (
            " Split in proportion within one histogram bin (too many rows to hold): "
            + ", ".join(approximate)
            + "."
        )
    return html.escape(text)


def _correlation_sections(stored: dict[str, dict[str, Any]], data: TrainData) -> list[str]:
    names = [n for n in stored if n in data.samples]
    sample_note = (
        f"On {data.sample_words()} ({len(data.sample_rows):,} samples), rows where both scores "
        "are finite."
    )
    out: list[str] = []
    if len(names) >= 2:
        matrix = np.eye(len(names))
        for i, a in enumerate(names):
            for j in range(i + 1, len(names)):
                rho, _ = spearman(data.samples[a], data.samples[names[j]])
                matrix[i, j] = matrix[j, i] = rho
        out += [
            "<h3>Score correlations</h3>",
            figure(
                plots.correlation_matrix(names, matrix), "Spearman correlation matrix", sample_note
            ),
        ]
    clds = [n for n in names if stored[n].get("method", n if n == "cld" else None) == "cld"]
    out.append("<h3>Rank stability of CLD</h3>")
    if len(clds) < 2:
        out.append(
            "<p class='note'>One CLD score stored: store CLD over other windows to compare, "
            "e.g. <code>cld-lake score LAKE --checkpoints 0:45 --name cld_first45</code>.</p>"
        )
        return out
    rows = []
    for i, a in enumerate(clds):
        for b in clds[i + 1 :]:
            rho, n = spearman(data.samples[a], data.samples[b])
            rows.append(
                {
                    "score a": a,
                    "checkpoints a": stored[a].get("checkpoints", ""),
                    "score b": b,
                    "checkpoints b": stored[b].get("checkpoints", ""),
                    "spearman": rho,
                    "top 10% overlap": _top_overlap(data.samples[a], data.samples[b], 0.1),
                    "rows": n,
                }
            )
    out += [table(rows), f"<p class='note'>{html.escape(sample_note)} Top 10% overlap: "
            "the share of the highest-CLD 10% of one score that is in the other's.</p>"]  # fmt: skip
    return out


def _top_overlap(a: np.ndarray, b: np.ndarray, share: float) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    k = int(round(share * int(ok.sum())))
    if k == 0:
        return float("nan")
    rows = np.flatnonzero(ok)
    top_a = rows[np.argsort(-a[ok], kind="stable")[:k]]
    top_b = rows[np.argsort(-b[ok], kind="stable")[:k]]
    return float(len(np.intersect1d(top_a, top_b)) / k)
