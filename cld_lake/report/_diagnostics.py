"""The diagnostics sections: the per-class share of CLD <= 0, the mean CLD of each manifest
in ``LAKE/manifests/``, rank stability between runs and, given the comparison harness's
results, test accuracy vs fraction kept."""

from __future__ import annotations

from typing import Any

import numpy as np

from cld_lake.diagnostics import (
    class_nonpositive_share,
    rank_stability,
    selection_alignment,
    spearman,
)
from cld_lake.errors import CldLakeError
from cld_lake.lake.store import Lake
from cld_lake.report import _plots as plots
from cld_lake.report._compare import compare_series
from cld_lake.report._data import TrainData, run_pairs
from cld_lake.report._html import figure, table
from cld_lake.select import MANIFESTS_DIR


def diagnostics_sections(
    lake: Lake,
    stored: dict[str, dict[str, Any]],
    compare: dict[str, Any] | None,
    data: TrainData,
) -> list[str]:
    out: list[str] = []
    if "cld" in stored:
        rows = class_nonpositive_share(lake, "cld")
        scored = sum(r["samples"] - r["null"] for r in rows)
        overall = sum(r["nonpositive"] for r in rows) / scored if scored else float("nan")
        names = lake.group_names()
        kind = "class" if names is None else "group"
        if names is not None:  # each row its group's name after its id
            rows = [{"label": r["label"], "group": names[r["label"]]} | r for r in rows]
        ticks = [r["label"] if names is None else r["group"] for r in rows]
        out += [
            f"<h3>{'Classes' if names is None else 'Groups'}: share of CLD &lt;= 0</h3>",
            figure(
                plots.class_shares(ticks, [r["share"] for r in rows], "cld", kind),
                f"per-{kind} share of cld <= 0",
                f"Per {kind}, the share of scored training samples whose cld is <= 0 (their loss "
                f"does not fall with their {kind}'s validation loss); {overall:.1%} over all "
                f"{scored:,} scored samples. Samples without a score are left out.",
            ),
            table(
                sorted(rows, key=lambda r: (-np.nan_to_num(r["share"], nan=-1), r["label"]))[:10]
            ),
        ]
        alignment = _manifest_alignment(lake)
        if alignment:
            out += [
                "<h3>Coreset alignment</h3>",
                "<p class='note'>The mean cld of each manifest in LAKE/manifests/ (its "
                "samples with a score), next to the mean over every scored training sample.</p>",
                table(alignment),
            ]
    pairs = run_pairs(stored)
    if pairs:
        if data.whole:
            rows = [rank_stability(lake, a, b) for a, b in pairs]
            over = "over every sample both define"
        else:  # ranks of N values cannot be held: a uniform sample of at most exact_rows
            rows = []
            for a, b in pairs:
                rho, n = spearman(data.wide[a], data.wide[b])
                rows.append({"a": a, "b": b, "spearman": rho, "pairs": n})
            over = (
                f"over every {data.wide_stride:,}th training row (a uniform sample of at most "
                f"{data.exact_rows:,} rows), where both are defined"
            )
        out += [
            "<h3>Rank stability between runs</h3>",
            "<p class='note'>Spearman's rank correlation between scores computed on different "
            f"proxy runs, {over}.</p>",
            table(
                [{"run a": stored[r["a"]]["run"], "run b": stored[r["b"]]["run"]} | r for r in rows]
            ),
        ]
    if compare is not None:
        methods, full = compare_series(compare)
        out += [
            "<h3>Coreset accuracy</h3>",
            figure(
                plots.accuracy_vs_fraction(methods, full),
                "test accuracy vs fraction kept",
                f"From the comparison harness ({compare.get('dataset', '?')}, "
                f"{compare.get('seeds', '?')} seed(s)): mean test accuracy, error bars from the "
                "lowest to the highest seed; random subsets dashed, full data dotted (band: its "
                "seed range).",
            ),
        ]
    return (["<h2>Diagnostics</h2>", *out]) if out else []


def _manifest_alignment(lake: Lake) -> list[dict[str, Any]]:
    folder = (lake.root / MANIFESTS_DIR).local_path  # manifests are local files
    rows = []
    for path in sorted(folder.glob("*.parquet")) if folder and folder.is_dir() else []:
        try:
            row = selection_alignment(lake, path, "cld")
        except CldLakeError as e:  # another lake's manifest, a damaged file: said, not fatal
            rows.append({"manifest": path.name, "selected": "", "mean": "", "note": str(e)})
            continue
        rows.append(
            {"manifest": path.name, "selected": row["selected"], "mean": row["mean"],
             "pool mean": row["pool_mean"], "null": row["null"]}
        )  # fmt: skip
    return rows
