"""``info`` (what is in a lake) and ``verify`` (is every committed byte readable and consistent)."""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cld_lake.errors import CldLakeError, CorruptLakeError
from cld_lake.lake import _format as fmt
from cld_lake.lake._compact import GC_GRACE_SECONDS
from cld_lake.lake._validate import count_duplicates, ids_digest
from cld_lake.lake.scores import check_scores_file, stale_scores, stored_scores
from cld_lake.lake.store import Lake, Split


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def lake_info(lake: Lake) -> dict[str, Any]:
    """A JSON-ready summary of the lake: splits, samples, classes, checkpoints, channels,
    bytes on disk, NaN/inf loss counts, and the scores present with their provenance."""
    info: dict[str, Any] = {
        "path": str(lake.path),
        "lake_id": lake.lake_id,
        "format_version": lake.meta["format_version"],
        "created_at": lake.meta.get("created_at"),
        "num_classes": lake.num_classes,
        "bytes_on_disk": _dir_bytes(lake.path),
        "splits": {},
    }
    runs = lake.runs()
    for run in runs:
        of_run = {name: _split_info(lake.split(name, run)) for name in lake.splits(run)}
        if run == fmt.DEFAULT_RUN:
            info["splits"] = of_run
        else:  # a one-run lake's summary keeps its shape; several runs: each run's splits
            info.setdefault("runs", {})[run] = {"splits": of_run}
    info["scores"] = stored_scores(lake)
    # a score computed before checkpoints were appended: flagged, never refused
    info["stale_scores"] = stale_scores(lake) if info["scores"] else {}
    return info


def _split_info(split: Split) -> dict[str, Any]:
    """What ``info`` shows of one split."""
    ck = split.checkpoint_ids
    seg_bytes = _dir_bytes(split.path / fmt.SEGMENTS_DIR)
    values = split.num_samples * len(ck) * len(split.channels)
    return {
        "samples": split.num_samples,
        "classes_present": _classes_present(split),
        "checkpoints": len(ck),
        "checkpoint_ids": _compact_ids(ck),
        "channels": split.channels,
        "segments": len(split.segment_names()),
        "nonfinite_losses": split.nonfinite_losses(),
        "metadata_columns": [
            c for c in split.samples_table.column_names if c not in ("sample_id", "label")
        ],
        "bytes_on_disk": _dir_bytes(split.path),
        "bytes_per_value": round(seg_bytes / values, 3) if values else None,
    }


def _classes_present(split: Split) -> int:
    if split.lake.checksummed:  # classes.parquet: one row per class present
        return int(np.count_nonzero(split.classes_table.column("count").to_numpy()))
    labels = split.labels
    return int(np.count_nonzero(np.bincount(labels))) if len(labels) else 0


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
    for run in runs:
        _verify_run(lake, run, report, read_data, splits)
    _verify_scores(lake, report)
    for temp in _temp_files(lake.path):
        report.warnings.append(
            f"{temp}: temp file of an interrupted write (never committed; the next writer of "
            "that file deletes it)"
        )
    return report


def _verify_run(
    lake: Lake, run: str, report: VerifyReport, read_data: bool, only: Sequence[str] | None
) -> None:
    """Every split of ``run``: committed ones checked, unlisted ones reported as debris."""
    listed = lake.splits(run)
    names = sorted(set(_split_dirs(lake, run)) | set(listed))
    for name in names if only is None else [n for n in names if n in only]:
        label = _label(run, name)
        if name not in listed:
            if any(
                p.name != fmt.WRITER_LOCK for p in fmt.split_dir(lake.path, name, run).iterdir()
            ):
                report.warnings.append(
                    f"split {label!r}: an unfinished first write (not listed in {fmt.ROOT_FILE}; "
                    "nothing committed): the split's next writer deletes it"
                )
            continue
        try:
            _verify_split(lake.with_run(run), name, report, read_data)
        except CldLakeError as exc:  # what a reader refuses on is a verification error
            report.errors.append(f"split {label!r} is corrupt: {exc}")
        except Exception as exc:  # anything unreadable is a verification error, not a crash
            report.errors.append(f"split {label!r}: {type(exc).__name__}: {_one_line(exc)}")


def _label(run: str, split: str) -> str:
    """How a report names a split: ``train``, or ``seed1/train`` for a split of another run."""
    return split if run == fmt.DEFAULT_RUN else f"{run}/{split}"


def _run_dirs(lake: Lake) -> list[str]:
    root = lake.path / fmt.RUNS_DIR
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.exists() else []


def _temp_files(root: Path) -> list[Path]:
    found = []
    for folder, _, files in os.walk(root):
        found += [Path(folder) / f for f in files if f.startswith(".") and ".tmp-" in f]
    return sorted(found)


def _verify_scores(lake: Lake, report: VerifyReport) -> None:
    try:
        check_scores_file(lake)
    except CorruptLakeError as exc:
        report.errors.append(str(exc))


def _split_dirs(lake: Lake, run: str) -> list[str]:
    root = fmt.split_dir(lake.path, "", run)
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.exists() else []


def _verify_split(lake: Lake, name: str, report: VerifyReport, read_data: bool) -> None:
    split = lake.split(name)  # checks the commit record
    name = _label(split.run, name)  # how the messages below name it
    errors = report.errors
    ids, labels = split.sample_ids, split.labels  # checks samples.parquet
    if len(ids) != split.num_samples:
        errors.append(
            f"split {name!r}: samples.parquet has {len(ids)} rows, checkpoints.parquet says {split.num_samples}"
        )
        return
    if count_duplicates(ids):
        errors.append(f"split {name!r}: duplicate sample ids in samples.parquet")
    recorded_sha1 = split.ids_digest
    if recorded_sha1 is not None and ids_digest(ids) != recorded_sha1:
        errors.append(
            f"split {name!r}: the sample ids' fingerprint differs from the one recorded at creation"
        )
    if len(labels) and (
        labels.min() < 0 or (lake.num_classes is not None and labels.max() >= lake.num_classes)
    ):
        errors.append(f"split {name!r}: labels outside 0..{lake.num_classes}")
    elif split.lake.checksummed or split.meta.get("label_counts") is not None:
        counts = np.bincount(labels) if len(labels) else np.zeros(0, np.int64)
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
    """Warnings for segments no commit references: retired ones kept for the grace period,
    and those of failed or killed writes."""
    seg_dir = split.path / fmt.SEGMENTS_DIR
    retired = split.meta.get("retired", {})
    grace = f"{GC_GRACE_SECONDS / 60:g} min"
    for entry in sorted(seg_dir.iterdir()) if seg_dir.exists() else []:
        if entry.name in referenced:
            continue
        if entry.name in retired:
            when = _dt.datetime.fromtimestamp(float(retired[entry.name]), _dt.UTC)
            report.warnings.append(
                f"split {_label(split.run, split.name)!r}: segment {entry.name} retired by compaction at "
                f"{when.isoformat(timespec='seconds')}; kept for the grace period ({grace}) so "
                "running readers finish, then deleted by the split's next writer"
            )
        else:
            report.warnings.append(
                f"split {_label(split.run, split.name)!r}: segment {entry.name} left by a failed or killed write "
                "(never committed); the split's next writer deletes it"
            )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__
