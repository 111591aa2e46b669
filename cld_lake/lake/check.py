"""``info`` (what is in a lake) and ``verify`` (is every committed byte readable and consistent)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cld_lake._io import parquet_file
from cld_lake._meta import WholeTableChecksum, read_meta, streamed_checksum_problem
from cld_lake.errors import CldLakeError, CorruptLakeError, one_line
from cld_lake.lake import _format as fmt
from cld_lake.lake._compact import GC_GRACE_SECONDS
from cld_lake.lake._groups import check_split_groups, read_names, stray_parts
from cld_lake.lake._validate import MAX_CLASSES, count_duplicates
from cld_lake.lake.scores import (
    check_scores_file,
    score_reference,
    score_reference_split,
    scores_state,
    stale_scores,
    stored_scores,
    strays,
)
from cld_lake.lake.store import Lake, Split, rows_checksum, sample_groups
from cld_lake.storage import StorePath, is_temp_name

#: groups listed per split by ``info`` (the largest first); the lake's names likewise
GROUPS_SHOWN = 1000

__all__ = [
    "GROUPS_SHOWN",
    "SamplesScan",
    "VerifyReport",
    "human_bytes",
    "lake_info",
    "scan_samples",
    "verify_lake",
]


def lake_info(lake: Lake) -> dict[str, Any]:
    """A JSON-ready summary of the lake: splits, samples, classes, checkpoints, channels,
    bytes on disk, NaN/inf loss counts, and the scores present with their provenance.

    A lake of named groups adds ``groups`` (their number and the first :data:`GROUPS_SHOWN`
    names by id) and, per split, ``groups``: the samples of each group present, the largest
    first (at most :data:`GROUPS_SHOWN`, ``groups_not_shown`` counting the rest).

    ``bytes_on_disk`` (of the lake and of each split) counts live data only: what the current
    commit records reference. What a compaction or a newer scores table retired (kept for the
    grace period, for readers that started before) is ``bytes_retired``; what failed or
    killed writes left (deleted by the next writer) is ``bytes_debris``.
    """
    info: dict[str, Any] = {
        "path": str(lake.root),
        "lake_id": lake.lake_id,
        "format_version": lake.meta["format_version"],
        "created_at": lake.meta.get("created_at"),
        "num_classes": lake.num_classes,
        "bytes_on_disk": 0,
        "bytes_retired": 0,
        "bytes_debris": 0,
        "splits": {},
    }
    names = lake.group_names()
    if names is not None:
        info["groups"] = {
            "count": len(names),
            "names": list(names[:GROUPS_SHOWN]),
            "names_not_shown": max(0, len(names) - GROUPS_SHOWN),
        }
    total = lake.root.tree_bytes()
    runs = lake.runs()
    for run in runs:
        of_run = {name: _split_info(lake.split(name, run), names) for name in lake.splits(run)}
        for split in of_run.values():
            info["bytes_retired"] += split["bytes_retired"]
            info["bytes_debris"] += split["bytes_debris"]
        if run == fmt.DEFAULT_RUN:
            info["splits"] = of_run
        else:  # a one-run lake's summary keeps its shape; several runs: each run's splits
            info.setdefault("runs", {})[run] = {"splits": of_run}
    for stray in strays(scores_state(lake)):
        info["bytes_retired" if stray.retired else "bytes_debris"] += stray.size
    for part in stray_parts(lake.root, lake.meta):
        info["bytes_debris"] += part.tree_bytes()
    info["bytes_on_disk"] = total - info["bytes_retired"] - info["bytes_debris"]
    info["scores"] = stored_scores(lake)
    info["score_settings"] = {name: score_settings(p) for name, p in info["scores"].items()}
    # a score computed before checkpoints were appended: flagged, never refused
    info["stale_scores"] = stale_scores(lake) if info["scores"] else {}
    return info


def score_settings(provenance: dict[str, Any]) -> dict[str, Any]:
    """What a stored score was computed with, at a glance: its method, CLD's reference and the
    split it averages (None for other methods) and its checkpoint window (``all`` when
    none)."""
    return {
        "method": provenance.get("method"),
        "reference": score_reference(provenance),
        "reference_split": score_reference_split(provenance),
        "window": provenance.get("window") or "all",
    }


def _split_info(split: Split, names: tuple[str, ...] | None) -> dict[str, Any]:
    """What ``info`` shows of one split (its samples table streamed and checked, never whole);
    with the lake's group ``names``, the samples of each group."""
    samples = scan_samples(split, fingerprint=False)
    ck = split.checkpoint_ids
    unreferenced = _unreferenced_segments(split)
    retired = sum(size for size, is_retired in unreferenced.values() if is_retired)
    debris = sum(size for size, is_retired in unreferenced.values() if not is_retired)
    seg_bytes = (split.root / fmt.SEGMENTS_DIR).tree_bytes() - retired - debris
    values = split.num_samples * len(ck) * len(split.channels)
    groups = {} if names is None else _groups_info(split, names)
    return {
        "samples": split.num_samples,
        "classes_present": _classes_present(split, samples),
        "checkpoints": len(ck),
        "checkpoint_ids": _compact_ids(ck),
        "channels": split.channels,
        "segments": len(split.segment_names()),
        "nonfinite_losses": split.nonfinite_losses(),
        "metadata_columns": [c for c in samples.columns if c not in ("sample_id", "label")],
        "bytes_on_disk": split.root.tree_bytes() - retired - debris,
        "bytes_retired": retired,
        "bytes_debris": debris,
        "bytes_per_value": round(seg_bytes / values, 3) if values else None,
    } | groups


def _groups_info(split: Split, names: tuple[str, ...]) -> dict[str, Any]:
    """The samples of each group of ``split``, the largest first (ties: by id)."""
    counts = split.label_counts()
    present = np.flatnonzero(counts)
    order = present[np.lexsort((present, -counts[present]))]
    shown = [
        {"id": int(i), "name": names[i], "samples": int(counts[i])} for i in order[:GROUPS_SHOWN]
    ]
    return {"groups": shown, "groups_not_shown": max(0, len(order) - GROUPS_SHOWN)}


def _unreferenced_segments(split: Split) -> dict[str, tuple[int, bool]]:
    """Segment -> (bytes, retired?) of every segment the commit record does not reference:
    retired by compaction (kept for the grace period) or left by a failed write."""
    seg_dir = split.root / fmt.SEGMENTS_DIR
    referenced = set(split.segment_names())
    retired = split.meta.get("retired", {})
    return {
        name: ((seg_dir / name).tree_bytes(), name in retired)
        for name in sorted(seg_dir.list())
        if name not in referenced
    }


def human_bytes(n: float) -> str:
    """``2.7 MiB``: a byte count as ``info`` and ``verify`` print it."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _classes_present(split: Split, samples: SamplesScan) -> int:
    if split.lake.checksummed:  # classes.parquet: one row per class present
        return int(np.count_nonzero(split.classes_table.column("count").to_numpy()))
    if samples.label_counts is None:
        raise CorruptLakeError(
            f"{split.root / fmt.SAMPLES_FILE}: labels outside 0..{MAX_CLASSES - 1}; {split.lake.fix}"
        )
    return int(np.count_nonzero(samples.label_counts))


def _compact_ids(ids: np.ndarray) -> str:
    """``0..89`` for a contiguous run, else a short list."""
    if len(ids) == 0:
        return ""
    if np.array_equal(ids, np.arange(ids[0], ids[0] + len(ids))):
        return f"{ids[0]}..{ids[-1]}"
    shown = ", ".join(str(i) for i in ids[:8])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > 8 else "")


@dataclass
class VerifyReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked_values: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors


def verify_lake(
    lake: Lake, read_data: bool = True, splits: Sequence[str] | None = None
) -> VerifyReport:
    """Check every committed byte of the lake against what its commit recorded.

    Per split: the commit record's checksum; ``samples.parquet`` (its checksum, the row group
    CRCs, ids unique, the recorded ids fingerprint recomputed); ``classes.parquet`` against
    the labels; labels in range; every referenced segment's metadata checksums, shapes and
    dtypes; and (``read_data``) every chunk read back with its CRC32C and the NaN/inf counts
    recomputed. Errors: anything missing or different. Warnings: debris a writer left
    (segments never committed, retired segments within their grace period, temp files, an
    unfinished first write of a split) and a format 1 lake, which has no checksums.
    ``splits`` limits the split checks to those named (the root metadata, the scores table
    and temp files are always checked).
    """
    report = VerifyReport()
    if not lake.checksummed:
        report.warnings.append(
            f"format {lake.format_version}: no checksums to check (tables, shapes and chunk "
            "checksums only); import into a new lake for full checks"
        )
    try:
        runs = sorted(set(lake.runs()) | set(_run_dirs(lake)))
        for run in runs:
            lake.splits(run)  # reads (and checks) the root metadata
    except CldLakeError as exc:
        report.errors.append(str(exc))
        return report
    names = _verify_groups(lake, report)
    for run in runs:
        _verify_run(lake, run, report, read_data, splits, names)
    _verify_scores(lake, report)
    for temp in _temp_files(lake.root):
        report.warnings.append(
            f"{temp}: temp file of an interrupted write (never committed; the next writer of "
            "that file deletes it)"
        )
    return report


def _verify_run(
    lake: Lake,
    run: str,
    report: VerifyReport,
    read_data: bool,
    only: Sequence[str] | None,
    group_names: tuple[str, ...] | None | Exception,
) -> None:
    """Every split of ``run``: committed ones checked, unlisted ones reported as debris;
    ``group_names``: the lake's table (or why it could not be read)."""
    listed = lake.splits(run)
    names = sorted(set(_split_dirs(lake, run)) | set(listed))
    for name in names if only is None else [n for n in names if n in only]:
        label = _label(run, name)
        if name not in listed:
            if any(n != fmt.WRITER_LOCK for n in fmt.split_dir(lake.root, name, run).list()):
                report.warnings.append(
                    f"split {label!r}: an unfinished first write (not listed in {fmt.ROOT_FILE}; "
                    "nothing committed): the split's next writer deletes it"
                )
            continue
        try:
            _verify_split(lake.with_run(run), name, report, read_data, group_names)
        except CldLakeError as exc:  # what a reader refuses on is a verification error
            report.errors.append(f"split {label!r} is corrupt: {exc}")
        except Exception as exc:  # anything unreadable is a verification error, not a crash
            report.errors.append(f"split {label!r}: {type(exc).__name__}: {one_line(exc)}")


def _label(run: str, split: str) -> str:
    """How a report names a split: ``train``, or ``seed1/train`` for a split of another run."""
    return split if run == fmt.DEFAULT_RUN else f"{run}/{split}"


def _run_dirs(lake: Lake) -> list[str]:
    return _folders(lake.root / fmt.RUNS_DIR)


def _folders(root: StorePath) -> list[str]:
    """The folders directly below ``root`` (on an object store: every name, a key prefix)."""
    return sorted(name for name in root.list() if not (root / name).is_file())


def _temp_files(root: StorePath) -> list[StorePath]:
    """Temp files an interrupted write left (a local disk's: an object store has none)."""
    return sorted(p for p in root.walk() if is_temp_name(p.name))


def _verify_scores(lake: Lake, report: VerifyReport) -> None:
    """The current scores table against the root record and its checksums (an error when it
    is missing, swapped, rolled back or damaged); the other files of the scores layout as
    warnings: retired tables (one line) and debris (one line each)."""
    try:
        check_scores_file(lake)
        state = scores_state(lake)
    except CldLakeError as exc:
        report.errors.append(str(exc))
        return
    found = strays(state)
    retired = [s for s in found if s.retired_at is not None]
    if retired:
        size = human_bytes(sum(s.size for s in retired))
        last = max(float(s.retired_at or 0.0) for s in retired) + GC_GRACE_SECONDS
        report.warnings.append(
            f"{_count(len(retired), 'older scores table')} ({size}) retired by newer scores, "
            f"kept for the grace period ({GC_GRACE_SECONDS / 60:g} min) so running readers "
            f"finish; the next score deletes {_goes(len(retired), last)}"
        )
    current = state.located.path if state.located is not None else None
    for stray in found:
        if stray.retired or is_temp_name(stray.path.name):  # temp files: listed below
            continue
        what = (
            f"a scores table of the old layout the lake no longer reads ({fmt.ROOT_FILE} names "
            f"{current})"
            if stray.path.name == fmt.SCORES_FILE
            else "a scores table never committed (a failed or killed score)"
        )
        report.warnings.append(f"{stray.path}: {what}; the next score deletes it")


def _verify_groups(lake: Lake, report: VerifyReport) -> tuple[str, ...] | None | Exception:
    """The table of group names, every part against its checksum and the root record (an
    error when any differs; then the error, for the splits' checks to skip); parts no record
    names (a write that never committed) as warnings."""
    names: tuple[str, ...] | None | Exception
    try:
        names = read_names(lake.root, lake.meta, lake.fix)
    except CldLakeError as exc:
        report.errors.append(str(exc))
        names = exc
    for part in stray_parts(lake.root, lake.meta):
        if is_temp_name(part.name):
            continue  # listed with every temp file
        report.warnings.append(
            f"{part}: group names never committed (a failed or killed write); the next write "
            "of new names deletes it"
        )
    return names


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'s' * (n != 1)}"


def _goes(n: int, last: float) -> str:
    """``them (all by TIME)``: which files a writer deletes, and when the last may go."""
    return f"it (by {_when(last)})" if n == 1 else f"them (all by {_when(last)})"


def _when(timestamp: float) -> str:
    return _dt.datetime.fromtimestamp(timestamp, _dt.UTC).isoformat(timespec="seconds")


def _split_dirs(lake: Lake, run: str) -> list[str]:
    return _folders(fmt.split_dir(lake.root, "", run))


def _verify_split(
    lake: Lake,
    name: str,
    report: VerifyReport,
    read_data: bool,
    names: tuple[str, ...] | None | Exception = None,
) -> None:
    split = lake.split(name)  # checks the commit record
    name = _label(split.run, name)  # how the messages below name it
    if not isinstance(names, Exception):  # (a damaged table is reported once, above)
        check_split_groups(name, split.meta.get("groups"), names, lake.fix)
    errors = report.errors
    limit = lake.num_classes if lake.num_classes is not None else MAX_CLASSES
    named = split.meta.get("groups")
    if isinstance(named, dict) and isinstance(named.get("count"), int):
        limit = min(limit, named["count"])  # ids of the names it was written with
    samples = scan_samples(split, label_limit=limit)  # checks samples.parquet
    if samples.rows != split.num_samples:
        errors.append(
            f"split {name!r}: samples.parquet has {samples.rows} rows, checkpoints.parquet says {split.num_samples}"
        )
        return
    if count_split_duplicates(split, samples):
        errors.append(f"split {name!r}: duplicate sample ids in samples.parquet")
    recorded_sha1 = split.ids_digest
    if recorded_sha1 is not None and samples.ids_sha1 != recorded_sha1:
        errors.append(
            f"split {name!r}: the sample ids' fingerprint differs from the one recorded at creation"
        )
    if samples.label_counts is None:
        errors.append(f"split {name!r}: labels outside 0..{lake.num_classes}")
    elif split.lake.checksummed or split.meta.get("label_counts") is not None:
        counts = samples.label_counts
        recorded = split.label_counts(len(counts))  # checks classes.parquet
        if not np.array_equal(np.trim_zeros(recorded, "b"), np.trim_zeros(counts, "b")):
            errors.append(
                f"split {name!r}: class counts differ from the labels (recorded at creation)"
            )
    ck = split.checkpoint_ids
    if len(np.unique(ck)) != len(ck):
        errors.append(f"split {name!r}: a checkpoint id is committed twice")
    referenced = split.segment_names()
    widths = {
        s: int(np.sum(np.asarray(split.checkpoint_table.column("segment").to_pylist()) == s))
        for s in referenced
    }
    for seg in referenced:
        arrays = split.open_segment(seg)  # checks its metadata files
        for channel, dtype in split.channels.items():
            arr = arrays.get(channel)
            if arr is None:
                errors.append(f"split {name!r}: segment {seg} lacks channel {channel!r}")
            elif (
                arr.shape[0] != split.num_samples
                or arr.shape[1] < widths[seg]
                or str(arr.dtype) != dtype
            ):
                errors.append(
                    f"split {name!r}: segment {seg}/{channel} has shape {arr.shape} {arr.dtype}"
                )
    if errors:
        return
    if read_data and len(ck):
        nonfinite = np.zeros(len(ck), np.int64)
        for block in split.blocks(channels=list(split.channels)):  # checks every chunk
            nonfinite += (~np.isfinite(block.loss)).sum(axis=0)
            report.checked_values += block.loss.size * len(split.channels)
        recorded = split.checkpoint_table.column("nonfinite").to_numpy()
        if not np.array_equal(nonfinite, recorded):
            errors.append(
                f"split {name!r}: NaN/inf counts differ from those recorded at commit (data changed)"
            )
    _debris(split, referenced, report)


def _debris(split: Split, referenced: list[str], report: VerifyReport) -> None:
    """Warnings for segments no commit references: those retired by compaction, kept for the
    grace period (one line for all), and those of failed or killed writes (one line each)."""
    seg_dir = split.root / fmt.SEGMENTS_DIR
    retired = split.meta.get("retired", {})
    label = _label(split.run, split.name)
    kept = [name for name in sorted(seg_dir.list()) if name not in referenced and name in retired]
    if kept:
        size = human_bytes(sum((seg_dir / name).tree_bytes() for name in kept))
        last = max(float(retired[name]) for name in kept) + GC_GRACE_SECONDS
        report.warnings.append(
            f"split {label!r}: {_count(len(kept), 'segment')} ({size}) retired by compaction, "
            f"kept for the grace period ({GC_GRACE_SECONDS / 60:g} min) so running readers "
            f"finish; the split's next writer deletes {_goes(len(kept), last)}, "
            "`cld-lake compact --prune` at once"
        )
    for name in sorted(seg_dir.list()):
        if name not in referenced and name not in retired:
            report.warnings.append(
                f"split {label!r}: segment {name} left by a failed or killed write "
                "(never committed); the split's next writer deletes it"
            )


# --- samples.parquet, streamed ----------------------------------------------------------------
# ``info`` and ``verify`` check a split's samples table one row group at a time: the file's
# checksum (TableChecksum is the same value over the parts as over the whole table), the
# row-group sizes and CRCs the commit record holds, the ids fingerprint and the class counts,
# so neither ever holds a per-sample array of the whole split.

#: the most sample ids a duplicate check sorts at once (32 MB); more are spilled to hash buckets
DUPLICATE_BUCKET_ROWS = 1 << 22
_MAX_BUCKET_BITS = 8  # at most 256 bucket files open at once
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: spreads any id pattern evenly


@dataclass
class SamplesScan:
    """What one pass over a split's ``samples.parquet`` found (every check passed)."""

    rows: int
    columns: list[str]
    #: SHA-1 of the ids in row order, as the writer records it (None when not asked for)
    ids_sha1: str | None
    #: every id greater than the one before (then no id repeats)
    increasing: bool
    #: samples per class; None when a label lies outside ``0..label_limit-1``
    label_counts: np.ndarray | None


def scan_samples(
    split: Split, *, fingerprint: bool = True, label_limit: int = MAX_CLASSES
) -> SamplesScan:
    """Read ``samples.parquet`` one row group at a time and check it as a whole read does.

    Format 2: the file's checksum, its rows and row-group sizes against the commit record,
    each row group's CRC; :class:`CorruptLakeError` (the same one line a reader of the whole
    table raises) when any differs or the file cannot be decoded. Memory: one row group.
    """
    path = split.root / fmt.SAMPLES_FILE
    fix = split.lake.fix
    try:
        pf = parquet_file(path)
        sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
        # the schema and cld_lake JSON a whole read gives: from the footer's key-value
        # metadata, which a flipped byte can change while the embedded Arrow schema does not
        first = pf.read_row_group(0) if sizes else pf.read()
        schema = first.schema
    except FileNotFoundError as exc:
        raise CorruptLakeError(f"{path}: committed file missing; {fix}") from exc
    except Exception as exc:
        raise CorruptLakeError(f"{path} cannot be decoded ({one_line(exc)}); {fix}") from exc
    checked = split.lake.checksummed
    recorded = sample_groups(split.meta) if checked else []
    check_groups = checked and sizes == [rows for rows, _ in recorded]
    has_ids = "sample_id" in schema.names and "label" in schema.names
    whole = WholeTableChecksum(schema)
    sha1 = hashlib.sha1() if fingerprint else None
    counts: np.ndarray | None = np.zeros(0, np.int64)
    increasing, last_id = True, None
    bad_group: tuple[int, str, str] | None = None
    for g in range(len(sizes)):
        try:
            part = first if g == 0 else pf.read_row_group(g)
        except Exception as exc:
            raise CorruptLakeError(f"{path} cannot be decoded ({one_line(exc)}); {fix}") from exc
        whole.update(part)
        if check_groups and bad_group is None:
            computed = rows_checksum(part) if has_ids else "no ids"
            if computed != recorded[g][1]:
                bad_group = (g, recorded[g][1], computed)
        if not has_ids or not part.num_rows:
            continue
        ids = np.ascontiguousarray(part.column("sample_id").to_numpy(), "<i8")
        labels = part.column("label").to_numpy().astype(np.int64, copy=False)
        if sha1 is not None:
            sha1.update(ids)
        if increasing:
            increasing = bool((last_id is None or ids[0] > last_id) and np.all(ids[1:] > ids[:-1]))
            last_id = ids[-1]
        counts = _add_label_counts(counts, labels, label_limit)
    if checked:
        problem = streamed_checksum_problem(read_meta(schema), whole)
        if problem is not None:
            raise CorruptLakeError(f"{path} fails its checksum ({problem}); {fix}")
        expected = sum(rows for rows, _ in recorded)
        if sum(sizes) != expected:
            raise CorruptLakeError(
                f"{path} has {sum(sizes)} rows, the commit record {expected}; {fix}"
            )
        if not check_groups:  # the footer's row-group sizes drive streaming reads
            raise CorruptLakeError(
                f"{path}: row groups of {sizes[:4]}... rows, the commit record says "
                f"{[rows for rows, _ in recorded][:4]}...; {fix}"
            )
        if bad_group is not None:
            group, stored, computed = bad_group
            raise CorruptLakeError(
                f"{path} fails its checksum (row group {group}: stored {stored}, computed "
                f"{computed}); {fix}"
            )
    if not has_ids:
        raise CorruptLakeError(f"{path} has no sample_id and label columns; {fix}")
    return SamplesScan(
        rows=sum(sizes),
        columns=list(schema.names),
        ids_sha1=sha1.hexdigest() if sha1 is not None else None,
        increasing=increasing,
        label_counts=counts,
    )


def _add_label_counts(
    counts: np.ndarray | None, labels: np.ndarray, limit: int
) -> np.ndarray | None:
    """``counts`` plus the samples per class of ``labels``; None once a label is out of range."""
    if counts is None or not len(labels):
        return counts
    if labels.min() < 0 or labels.max() >= limit:
        return None
    part = np.bincount(labels, minlength=len(counts))
    part[: len(counts)] += counts
    return part


def count_split_duplicates(split: Split, samples: SamplesScan) -> int:
    """How many sample ids of ``split`` repeat an earlier one, in bounded memory: none when
    the scan saw them increasing, else a second pass (each row group checked again)."""
    if samples.increasing:
        return 0
    return count_duplicates_bounded((ids for ids, _ in split.iter_samples()), samples.rows)


def count_duplicates_bounded(
    parts: Iterable[np.ndarray], total: int, bucket_rows: int = DUPLICATE_BUCKET_ROWS
) -> int:
    """:func:`count_duplicates` of the concatenated ``parts`` (``total`` ids in all), holding
    about ``bucket_rows`` ids at a time: more than that are spilled to temporary files, one per
    hash bucket (equal ids share a bucket), and each bucket is sorted on its own."""
    if total <= bucket_rows:
        held = [np.asarray(p, np.int64) for p in parts]
        return count_duplicates(np.concatenate(held) if held else np.zeros(0, np.int64))
    bits = min(_MAX_BUCKET_BITS, max(1, math.ceil(math.log2(2 * total / bucket_rows))))
    with tempfile.TemporaryDirectory(prefix="cld-lake-ids-") as folder:
        paths = [os.path.join(folder, f"{b}.i8") for b in range(1 << bits)]
        files = [open(p, "wb") for p in paths]  # noqa: SIM115 (closed below, all together)
        try:
            for part in parts:
                _spill(np.ascontiguousarray(part, np.int64), bits, files)
        finally:
            for f in files:
                f.close()
        return sum(count_duplicates(np.fromfile(p, np.int64)) for p in paths)


def _spill(ids: np.ndarray, bits: int, files: list[Any]) -> None:
    """Append each id of ``ids`` to the file of its hash bucket."""
    bucket = ((ids.view(np.uint64) * _GOLDEN) >> np.uint64(64 - bits)).astype(np.intp)
    order = np.argsort(bucket, kind="stable")
    ends = np.cumsum(np.bincount(bucket, minlength=len(files)))
    grouped = ids[order]
    start = 0
    for f, end in zip(files, ends, strict=True):
        if end > start:
            f.write(grouped[start:end].tobytes())
        start = end
