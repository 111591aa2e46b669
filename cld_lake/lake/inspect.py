"""``info`` (what is in a lake) and ``verify`` (is every committed byte readable and consistent)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cld_lake.errors import CldLakeError
from cld_lake.lake import _format as fmt
from cld_lake.lake._validate import count_duplicates
from cld_lake.lake.scores import stored_scores
from cld_lake.lake.store import Lake


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
    for name in lake.splits():
        split = lake.split(name)
        ck = split.checkpoint_ids
        seg_bytes = _dir_bytes(split.path / fmt.SEGMENTS_DIR)
        values = split.num_samples * len(ck) * len(split.channels)
        labels = split.labels
        info["splits"][name] = {
            "samples": split.num_samples,
            "classes_present": int(np.count_nonzero(np.bincount(labels))) if len(labels) else 0,
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
    info["scores"] = stored_scores(lake)
    return info


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


def verify_lake(lake: Lake, read_data: bool = True) -> VerifyReport:
    """Check every split: tables readable, ids unique, labels in range, every referenced
    segment present with the right shape and dtype, and (``read_data``) every chunk read
    back with its CRC32C checksum verified. Unreferenced segments are warnings (garbage a
    crashed or compacting writer left; the next writer removes them)."""
    report = VerifyReport()
    for name in _split_dirs(lake):
        try:
            _verify_split(lake, name, report, read_data)
        except CldLakeError:
            raise
        except Exception as exc:  # anything unreadable is a verification error, not a crash
            report.errors.append(f"split {name!r}: {type(exc).__name__}: {_one_line(exc)}")
    scores = lake.path / fmt.SCORES_FILE
    if scores.exists():
        try:
            import pyarrow.parquet as pq

            pq.ParquetFile(scores).read()
        except Exception as exc:
            report.errors.append(f"{scores}: unreadable ({_one_line(exc)})")
    return report


def _split_dirs(lake: Lake) -> list[str]:
    root = lake.path / fmt.SPLITS_DIR
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.exists() else []


def _verify_split(lake: Lake, name: str, report: VerifyReport, read_data: bool) -> None:
    split_dir = lake.path / fmt.SPLITS_DIR / name
    if not (split_dir / fmt.CHECKPOINTS_FILE).exists():
        if (split_dir / fmt.SEGMENTS_DIR).exists() and any(
            (split_dir / fmt.SEGMENTS_DIR).iterdir()
        ):
            report.warnings.append(
                f"split {name!r}: uncommitted data from an interrupted first write (no checkpoint committed)"
            )
        return
    split = lake.split(name)
    ids = split.sample_ids
    if len(ids) != split.num_samples:
        report.errors.append(
            f"split {name!r}: samples.parquet has {len(ids)} rows, checkpoints.parquet says {split.num_samples}"
        )
        return
    if count_duplicates(ids):
        report.errors.append(f"split {name!r}: duplicate sample ids in samples.parquet")
    labels = split.labels
    if len(labels) and (
        labels.min() < 0 or (lake.num_classes is not None and labels.max() >= lake.num_classes)
    ):
        report.errors.append(f"split {name!r}: labels outside 0..{lake.num_classes}")
    ck = split.checkpoint_ids
    if len(np.unique(ck)) != len(ck):
        report.errors.append(f"split {name!r}: a checkpoint id is committed twice")
    referenced = split.segment_names()
    seg_dir = split.path / fmt.SEGMENTS_DIR
    widths = {
        s: int(np.sum(np.asarray(split.checkpoint_table.column("segment").to_pylist()) == s))
        for s in referenced
    }
    from cld_lake.lake._segments import open_segment

    for seg in referenced:
        path = seg_dir / seg
        if not path.exists():
            report.errors.append(f"split {name!r}: segment {seg} is referenced but missing")
            continue
        try:
            arrays = open_segment(path)
        except Exception as exc:
            report.errors.append(f"split {name!r}: segment {seg} unreadable ({_one_line(exc)})")
            continue
        for channel, dtype in split.channels.items():
            arr = arrays.get(channel)
            if arr is None:
                report.errors.append(f"split {name!r}: segment {seg} lacks channel {channel!r}")
            elif (
                arr.shape[0] != split.num_samples
                or arr.shape[1] < widths[seg]
                or str(arr.dtype) != dtype
            ):
                report.errors.append(
                    f"split {name!r}: segment {seg}/{channel} has shape {arr.shape} {arr.dtype}"
                )
    if report.errors:
        return
    if read_data and len(ck):
        nonfinite = np.zeros(len(ck), np.int64)
        try:
            for block in split.blocks(channels=list(split.channels)):
                nonfinite += (~np.isfinite(block.loss)).sum(axis=0)
                report.checked_values += block.loss.size * len(split.channels)
        except Exception as exc:
            report.errors.append(
                f"split {name!r}: stored values unreadable or corrupt ({_one_line(exc)})"
            )
            return
        recorded = split.checkpoint_table.column("nonfinite").to_numpy()
        if not np.array_equal(nonfinite, recorded):
            report.errors.append(
                f"split {name!r}: NaN/inf counts differ from those recorded at commit (data changed)"
            )
    for entry in seg_dir.iterdir() if seg_dir.exists() else []:
        if entry.name not in referenced:
            report.warnings.append(
                f"split {name!r}: unreferenced segment {entry.name} (garbage; removed by the next writer)"
            )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__
