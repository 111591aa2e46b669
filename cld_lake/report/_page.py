"""The page: where it goes (:func:`report_path`) and how its sections are put together
(:func:`build_report`)."""

from __future__ import annotations

import datetime as _dt
import html
import os
import warnings
from pathlib import Path
from typing import Any

from cld_lake._io import atomic_output, check_output_path, is_inside
from cld_lake.errors import BadInputError
from cld_lake.lake.check import lake_info
from cld_lake.lake.scores import stale_scores, stored_scores
from cld_lake.lake.store import Lake
from cld_lake.report._compare import compare_series, load_compare
from cld_lake.report._data import (
    EXACT_ROWS,
    MAX_POINTS,
    TrainData,
    cld_name,
    release_arrow_memory,
)
from cld_lake.report._diagnostics import diagnostics_sections
from cld_lake.report._dynamics import dynamics_sections
from cld_lake.report._html import columns_table, document
from cld_lake.report._scores import score_sections


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
    if is_inside(out, lake.root):  # the lake, a file or a directory in it: refused as given
        return check_output_path(out, lake.root, what="--out", overwrite=force)
    if not html_file:
        if out.exists() and not out.is_dir():
            raise BadInputError(
                f"--out {out}: is a file, not a directory; give an .html file or a directory"
            )
        if not out.exists():
            if not create:  # nothing there to overwrite; the directory comes later
                return target
            out.mkdir(parents=True)
    return check_output_path(target, lake.root, what="--out", overwrite=force)


LARGEST_GROUPS = 5  # groups named per split in the splits table


def _split_row(split: dict[str, Any]) -> dict[str, Any]:
    """A split's column of the splits table: its ``info``, its largest groups named."""
    row = {c: v for c, v in split.items() if c not in ("metadata_columns", "groups")}
    if "groups" in split:
        del row["groups_not_shown"]
        shown = split["groups"][:LARGEST_GROUPS]
        more = split["classes_present"] - len(shown)
        row["largest groups"] = ", ".join(f"{g['name']} ({g['samples']:,})" for g in shown) + (
            f", ... ({more:,} more)" if more else ""
        )
    return row


def build_report(
    lake: Lake | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    force: bool = False,
    max_points: int = MAX_POINTS,
    compare: str | os.PathLike[str] | None = None,
    exact_rows: int = EXACT_ROWS,
) -> Path:
    """Write the HTML report to ``out`` (a ``.html`` file, or a directory to hold
    ``report.html``, created if missing) and return its path.

    ``out`` may not be inside the lake; an existing report is replaced only with ``force``.
    Stale scores (see :func:`cld_lake.lake.scores.stale_scores`) are reported with a
    ``UserWarning`` and a note in the report. ``max_points`` bounds the strided sample of
    training rows drawn in the data map and used for the score correlations. Up to
    ``exact_rows`` training rows every figure is exact (score columns held whole, 8 bytes per
    sample); above, the scores are streamed in bounded memory and the few figures that need
    every value at once are computed as the page says (AUROC from a fine histogram, within a
    stated bound; rank stability between runs and the per-class curve groups on uniform
    samples of at most ``exact_rows`` rows). ``compare``
    (the comparison harness's OUT directory or its ``results.json``) adds the coreset accuracy
    plot to the diagnostics.
    """
    lake = (lake if isinstance(lake, Lake) else Lake(lake)).resolve_run()
    for what, value in (("max_points", max_points), ("exact_rows", exact_rows)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadInputError(f"{what} {value}: must be an integer >= 1")
    report_path(lake, out, force=force)  # refuse before the (long) computation
    results = load_compare(compare) if compare is not None else None
    if results is not None:
        compare_series(results)  # a results.json without accuracy rows: refused now
    info = lake_info(lake)
    release_arrow_memory()
    named = "groups" in info
    classes = f"{info['num_classes']} named groups" if named else f"{info['num_classes']} classes"
    sections = [
        f"<h1>cld_lake report</h1><p>{html.escape(str(lake.root))} · lake {info['lake_id']} · "
        f"{classes} · generated {_dt.datetime.now().isoformat(timespec='seconds')}</p>",
        "<h2>Splits</h2>",
        columns_table({k: _split_row(s) for k, s in info["splits"].items()}, "split"),
    ]
    stored = stored_scores(lake)
    for name, reason in stale_scores(lake).items():
        warnings.warn(f"score {name}: {reason}", UserWarning, stacklevel=2)
        sections.append(f"<p><b>Stale score {html.escape(name)}</b>: {html.escape(reason)}</p>")
    data = TrainData.load(lake, stored, max_points, exact_rows)
    sections += dynamics_sections(lake, data, cld_name(stored))
    if stored:
        sections += score_sections(lake, stored, data)
    sections += diagnostics_sections(lake, stored, results, data)
    target = report_path(lake, out, force=force, create=True)
    with atomic_output(target) as tmp:
        tmp.write_text(document(sections), encoding="utf-8")
    return target
