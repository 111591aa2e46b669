"""A self-contained HTML report of a lake (``cld-lake report LAKE --out FILE.html``).

The page holds the splits and scores tables; the mean loss curves; per-class loss curves of
validation vs training samples with the highest, near-zero and most negative CLD (the CLD
paper's Figure 1); score distributions (noisy labels apart when the samples table has a
``noisy`` flag); a data map (confidence vs variability of ``p_true = exp(-loss)``, coloured
by CLD); Spearman correlations between the stored scores; a noisy-label detection table
(AUROC and precision at the noise rate, every score oriented by its direction); and the rank
stability of CLD scores of different windows; diagnostics (:mod:`cld_lake.diagnostics`): the
per-class share of ``cld <= 0``, the mean CLD of each manifest in ``LAKE/manifests/``, the rank
stability of scores from different runs and, given the comparison harness's ``results.json``,
test accuracy vs fraction per method. Figures are matplotlib PNGs embedded as base64:
the file opens from disk, offline, with no script, font or style sheet from elsewhere.

Bounded memory and time: one streaming pass per split (sums per checkpoint, per chosen
class and CLD group), and the scores table streamed one row group at a time, a few reads per
score; the points drawn (data map) and correlated (Spearman) come from a strided sample of at
most ``max_points`` training rows, said so on the page. Histograms, detection tables and
curves use every sample. Up to ``exact_rows`` (:data:`EXACT_ROWS`) training rows a score
column is held whole (8 bytes per sample) and every figure is exact, as it always was; above,
memory does not grow with N but for the noisy flags (held as bits, N / 8 bytes): histograms,
counts, the per-class share of ``cld <= 0``, coreset means and every top-ranked detection
figure stay exact (streamed); AUROC comes from a fine histogram, within a bound the page
states; the rank stability between runs and the per-class CLD groups are taken on uniform
strided samples of at most ``exact_rows`` rows, said so on the page. Each manifest in
``LAKE/manifests/`` is loaded whole (its checksum covers the whole file), so the coreset
alignment holds a manifest's rows, one manifest at a time. A scores table that no longer
matches the train rows is mapped by sample id through the split's ids, held whole.
"""

from __future__ import annotations

import datetime as _dt
import html
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cld_lake._io import atomic_path, check_output_path, is_inside, remove_dead_temps
from cld_lake.diagnostics import (
    class_nonpositive_share,
    noisy_bits,
    rank_stability,
    scores_aligned,
    selection_alignment,
    spearman,
)
from cld_lake.errors import BadInputError, CldLakeError
from cld_lake.lake.check import lake_info
from cld_lake.lake.scores import iter_scores, score_direction, stale_scores, stored_scores
from cld_lake.lake.store import Lake, Split
from cld_lake.report import _plots as plots
from cld_lake.report._stats import (
    FINE_BINS,
    DetectionTally,
    SplitScan,
    binned_counts,
    curve_groups,
    detection,
    finite_range,
    histogram_edges,
    noise_detection,
    pick_classes,
    range_edges,
    sample_stride,
    scan_split,
)
from cld_lake.select import MANIFESTS_DIR

__all__ = [
    "EXACT_ROWS",
    "MAX_POINTS",
    "build_report",
    "compare_series",
    "curve_stats",
    "load_compare",
    "noise_detection",
    "report_path",
]

MAX_POINTS = 200_000  # rows of the strided sample behind the data map and the correlations
EXACT_ROWS = 2_000_000  # up to this many training rows, score columns are held whole (exact)
CURVE_CLASSES = 4  # classes drawn in the per-class loss curves
GROUP_SHARE = 0.1  # share of a class in each CLD group of those curves


def curve_stats(lake: Lake, split_name: str) -> dict[str, np.ndarray]:
    """Mean finite loss (and accuracy, if recorded) per checkpoint, streamed over row blocks."""
    scan = scan_split(lake.split(split_name))
    out = {"checkpoint": scan.checkpoints, "mean_loss": scan.mean_loss}
    if scan.accuracy is not None:
        out["accuracy"] = scan.accuracy
    return out


# --- the page ------------------------------------------------------------------------------
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


def _figure(fig: Any, alt: str, caption: str = "") -> str:
    note = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f"<figure>{plots.to_img(fig, alt)}{note}</figure>"


STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1060px;padding:0 1em;"
    "color:#222}table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
    "padding:3px 8px;font-size:13px;text-align:right}th{background:#f3f3f3}"
    "figure{margin:1em 0}figure img{max-width:100%;height:auto;display:block}"
    "figcaption,.note{font-size:13px;color:#555}.wide{overflow-x:auto}"
)


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
    _release_arrow_memory()
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
    stored = stored_scores(lake)
    for name, reason in stale_scores(lake).items():
        warnings.warn(f"score {name}: {reason}", UserWarning, stacklevel=2)
        sections.append(f"<p><b>Stale score {html.escape(name)}</b>: {html.escape(reason)}</p>")
    data = _TrainData.load(lake, stored, max_points, exact_rows)
    sections += _dynamics_sections(lake, data, _cld_name(stored))
    if stored:
        sections += _score_sections(lake, stored, data)
    sections += _diagnostics_sections(lake, stored, results, data)
    doc = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>cld_lake report</title><style>{STYLE}</style></head>"
        f"<body>{''.join(sections)}</body></html>"
    )
    target = report_path(lake, out, force=force, create=True)
    remove_dead_temps(target)
    with atomic_path(target) as tmp:
        tmp.write_text(doc, encoding="utf-8")
    return target


# --- the training split and its scores, in train row order ---------------------------------
def _cld_name(stored: dict[str, dict[str, Any]]) -> str | None:
    """The CLD score the curves and the data map use: ``cld`` if stored, else the first
    score whose method is cld."""
    if "cld" in stored and stored["cld"].get("method", "cld") == "cld":
        return "cld"
    return next((n for n, p in stored.items() if p.get("method") == "cld"), None)


@dataclass
class _Column:
    """What one streamed read of a score column gives (memory independent of N, but for
    ``whole``, which is kept only up to ``exact_rows`` training rows)."""

    lo: float  # smallest finite value (inf when none)
    hi: float  # largest finite value (-inf when none)
    sample: np.ndarray  # values at the strided sample rows (NaN where missing)
    wide: np.ndarray | None = None  # values at every ``wide_stride``-th row, if asked for
    whole: np.ndarray | None = None  # the column in train row order, if asked for
    members: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # rows, values, labels
    member_stride: int = 1  # every member_stride-th row of the classes asked for is a member


@dataclass
class _TrainData:
    """The train split's score columns and noisy flags, streamed one row group of the scores
    table at a time, in train row order.

    Only the flags are held for every row, as bits (N / 8 bytes); a score column is held whole
    only when the split has at most ``exact_rows`` rows. A scores table that no longer matches
    the train rows (samples appended after scoring) is mapped by sample id, which holds the
    split's ids (rescore to get the bounded path back).
    """

    train: Split | None
    stride: int
    sample_rows: np.ndarray
    exact_rows: int = EXACT_ROWS
    aligned: bool = True  # scores-table row i is train row i
    noisy_bits: np.ndarray | None = None
    samples: dict[str, np.ndarray] = field(default_factory=dict)  # score -> sampled values
    wide: dict[str, np.ndarray] = field(default_factory=dict)  # score -> wide-sampled values

    @classmethod
    def load(
        cls, lake: Lake, stored: dict[str, Any], max_points: int, exact_rows: int = EXACT_ROWS
    ) -> _TrainData:
        if not lake.has_split("train"):
            return cls(None, 1, np.zeros(0, np.int64), exact_rows)
        train = lake.split("train")
        stride = sample_stride(train.num_samples, max_points)
        rows = np.arange(0, train.num_samples, stride, dtype=np.int64)
        data = cls(train, stride, rows, exact_rows)
        data.noisy_bits = noisy_bits(train)
        if stored:
            data.aligned = scores_aligned(lake, train)
        return data

    @property
    def has_noisy(self) -> bool:
        return self.noisy_bits is not None

    @property
    def whole(self) -> bool:
        """Small enough for every figure to be computed on whole columns (exactly)."""
        return self.train is not None and self.train.num_samples <= self.exact_rows

    @property
    def wide_stride(self) -> int:
        """Stride of the sample behind rank correlations over every row (above exact_rows)."""
        return sample_stride(self.train.num_samples if self.train else 0, self.exact_rows)

    def sample_words(self) -> str:
        """How the sample was taken, for the page."""
        return "every training row" if self.stride == 1 else f"every {self.stride:,}th training row"

    def noisy_of(self, rows: np.ndarray) -> np.ndarray:
        """The noisy flags of train ``rows``."""
        assert self.noisy_bits is not None
        return ((self.noisy_bits[rows >> 3] >> (7 - (rows & 7)).astype(np.uint8)) & 1).astype(bool)

    def batches(
        self, lake: Lake, names: list[str]
    ) -> Iterator[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]]:
        """``(train rows, labels, {name: values})`` per row group of the scores table (rows of
        the table the train split lacks left out); the columns' checksums are checked once
        the last group is read."""
        assert self.train is not None
        start = 0
        for part in iter_scores(lake, names):
            size = part.num_rows
            labels = part.column("label").to_numpy()
            values = {
                n: part.column(n).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
                for n in names
            }
            if self.aligned:
                rows = np.arange(start, start + size, dtype=np.int64)
            else:
                rows = self.train.rows_of(part.column("sample_id").to_numpy())
                found = rows >= 0
                if not found.all():
                    rows, labels = rows[found], labels[found]
                    values = {n: v[found] for n, v in values.items()}
            del part
            yield rows, labels, values
            start += size

    def read(
        self,
        lake: Lake,
        name: str,
        *,
        whole: bool = False,
        wide: bool = False,
        classes: np.ndarray | None = None,
    ) -> _Column:
        """One streamed read of score ``name``: its finite range and strided sample (kept in
        ``samples``), and as asked: the whole column (train row order, NaN for rows without a
        score), the wide sample (kept in ``wide``), the rows, values and labels of the training
        rows of ``classes`` (every ``s``-th of them, ``s`` such that at most ``exact_rows``
        are kept)."""
        assert self.train is not None
        n = self.train.num_samples
        lo, hi = np.inf, -np.inf
        sample = np.full(len(self.sample_rows), np.nan)
        wide_values = np.full(-(-n // self.wide_stride), np.nan) if wide else None
        column = np.full(n, np.nan) if whole else None
        member_stride, seen = 1, 0
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        if classes is not None:
            counts = self.train.label_counts()
            in_classes = int(counts[classes[classes < len(counts)]].sum())
            member_stride = sample_stride(in_classes, self.exact_rows)
        for rows, labels, values in self.batches(lake, [name]):
            v = values[name]
            batch_lo, batch_hi = finite_range(v)
            lo, hi = min(lo, batch_lo), max(hi, batch_hi)
            at = rows % self.stride == 0
            sample[rows[at] // self.stride] = v[at]
            if wide_values is not None:
                at = rows % self.wide_stride == 0
                wide_values[rows[at] // self.wide_stride] = v[at]
            if column is not None:
                column[rows] = v
            if classes is not None:
                mine = np.flatnonzero(np.isin(labels, classes))
                keep = mine[(seen + np.arange(len(mine))) % member_stride == 0]
                seen += len(mine)
                parts.append((rows[keep], v[keep], labels[keep].astype(np.int64)))
        self.samples[name] = sample
        if wide_values is not None:
            self.wide[name] = wide_values
        members = None
        if classes is not None:
            rows, v, labels = (np.concatenate(p) for p in zip(*parts, strict=True)) if parts else (
                np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64))  # fmt: skip
            order = np.argsort(rows, kind="stable")  # train row order (ties of curve groups)
            members = (rows[order], v[order], labels[order])
        return _Column(lo, hi, sample, wide_values, column, members, member_stride)


def _release_arrow_memory() -> None:
    """Hand the memory of freed Arrow tables back to the system: the Arrow allocator keeps it
    otherwise, and the report reads several N-row tables one after the other."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def _dynamics_sections(lake: Lake, data: _TrainData, cld: str | None) -> list[str]:
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
            _figure(plots.training_curves(curves, accs), "mean loss per checkpoint"),
        ]
    t = scans.get("train")
    if t is not None and len(classes):
        out += [
            "<h3>Per-class loss curves</h3>",
            _class_curves(t, scans.get("val"), names, cld, member_stride),
        ]
    if t is not None and len(t.sample_rows):
        color = data.samples.get(cld) if cld else None
        out += [
            "<h3>Data map</h3>",
            _figure(
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
) -> str:
    panels = []
    for i, c in enumerate(t.classes):
        panel: dict[str, object] = {
            "label": int(c),
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
    caption = (
        f"Classes {', '.join(str(int(c)) for c in t.classes)} (spread over the classes present). "
        + (
            f"Groups: the {GROUP_SHARE:.0%} of each class with the highest, nearest-zero and "
            f"lowest (most negative) {cld} ({', '.join(map(str, sizes))} samples each); "
            "curves average the finite losses at each checkpoint over every sample of a group."
            + (
                f" Groups are taken from every {member_stride:,}th training row of these "
                "classes (a uniform sample: the classes hold more rows than the report ranks "
                "in memory)."
                if member_stride > 1
                else ""
            )
            if names
            else "No CLD score stored: class means only (compute one with cld-lake score)."
        )
    )
    return _figure(plots.class_curves(panels), "per-class loss curves by CLD group", caption)


def _score_sections(lake: Lake, stored: dict[str, dict[str, Any]], data: _TrainData) -> list[str]:
    shown = ("method", "direction", "range", "engine", "checkpoints", "nan", "degenerate")
    out = [
        "<h2>Scores</h2>",
        _table(
            [
                {"score": k, **{f: v.get(f, "") for f in shown}}
                | {"direction": score_direction(v), "created_at": v.get("created_at", "")}
                for k, v in stored.items()
            ]
        ),
    ]
    hists: list[dict[str, object]] = []
    detections: list[dict[str, Any]] = []
    lowest_tables: list[str] = []
    bounds: list[float] = []
    approximate: list[str] = []
    paired = {n for pair in _run_pairs(stored) for n in pair}
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
                _table(by_fraction),
            ]
    if hists:
        out.append(
            _figure(
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
            _table(detections),
            *lowest_tables,
        ]
    out += _correlation_sections(stored, data)
    return out


def _streamed_stats(
    lake: Lake, data: _TrainData, name: str, edges: np.ndarray | None, direction: str,
    column: _Column,
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


def _correlation_sections(stored: dict[str, dict[str, Any]], data: _TrainData) -> list[str]:
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
            _figure(
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
    out += [_table(rows), f"<p class='note'>{html.escape(sample_note)} Top 10% overlap: "
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


# --- diagnostics: CLD <= 0 per class, manifest alignment, rank stability between runs --------
def _diagnostics_sections(
    lake: Lake,
    stored: dict[str, dict[str, Any]],
    compare: dict[str, Any] | None,
    data: _TrainData,
) -> list[str]:
    out: list[str] = []
    if "cld" in stored:
        rows = class_nonpositive_share(lake, "cld")
        scored = sum(r["samples"] - r["null"] for r in rows)
        overall = sum(r["nonpositive"] for r in rows) / scored if scored else float("nan")
        out += [
            "<h3>Classes: share of CLD &lt;= 0</h3>",
            _figure(
                plots.class_shares([r["label"] for r in rows], [r["share"] for r in rows], "cld"),
                "per-class share of cld <= 0",
                f"Per class, the share of scored training samples whose cld is <= 0 (their loss "
                f"does not fall with their class's validation loss); {overall:.1%} over all "
                f"{scored:,} scored samples. Samples without a score are left out.",
            ),
            _table(
                sorted(rows, key=lambda r: (-np.nan_to_num(r["share"], nan=-1), r["label"]))[:10]
            ),
        ]
        alignment = _manifest_alignment(lake)
        if alignment:
            out += [
                "<h3>Coreset alignment</h3>",
                "<p class='note'>The mean cld of each manifest in LAKE/manifests/ (its "
                "samples with a score), next to the mean over every scored training sample.</p>",
                _table(alignment),
            ]
    pairs = _run_pairs(stored)
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
            _table(
                [{"run a": stored[r["a"]]["run"], "run b": stored[r["b"]]["run"]} | r for r in rows]
            ),
        ]
    if compare is not None:
        methods, full = compare_series(compare)
        out += [
            "<h3>Coreset accuracy</h3>",
            _figure(
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
    folder = lake.path / MANIFESTS_DIR
    rows = []
    for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
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


def _run_pairs(stored: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """Pairs of stored scores of the same method computed on different runs."""
    names = [n for n, p in stored.items() if isinstance(p.get("run"), str)]
    return [
        (a, b)
        for i, a in enumerate(names)
        for b in names[i + 1 :]
        if stored[a]["run"] != stored[b]["run"]
        and stored[a].get("method") == stored[b].get("method")
    ]


def load_compare(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The comparison harness's ``results.json`` (``path`` itself, or ``path/results.json``)."""
    import json

    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    try:
        results = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInputError(
            f"--compare {path}: no {file.name} there; give the harness's OUT directory or its "
            "results.json"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInputError(f"--compare {file}: not a readable JSON file ({e})") from None
    if not isinstance(results, dict) or not isinstance(results.get("accuracy"), list):
        raise BadInputError(
            f"--compare {file}: no 'accuracy' list; give a results.json of pipelines/compare.py"
        )
    return results


def compare_series(
    results: dict[str, Any],
) -> tuple[dict[str, list[tuple[float, float, float, float]]], tuple[float, float, float] | None]:
    """``(method -> [(fraction, mean, min, max)], full-data (mean, min, max) or None)`` from a
    results.json's accuracy rows; rows without a mean (no finished run) are left out."""
    methods: dict[str, list[tuple[float, float, float, float]]] = {}
    full = None
    for row in results["accuracy"]:
        try:
            point = tuple(float(row[k]) for k in ("fraction", "mean", "min", "max"))
            method = str(row["method"])
        except (KeyError, TypeError, ValueError):
            continue
        if method == "full":
            full = point[1:]
        else:
            methods.setdefault(method, []).append(point)  # type: ignore[arg-type]
    if not methods and full is None:
        raise BadInputError("--compare: its results.json holds no accuracy row with a mean")
    return methods, full  # type: ignore[return-value]
