"""Every committed byte is trusted only after its checksum (issue 9, "Trust every byte").

The sweep flips one bit in every byte of every committed Parquet and JSON file of a small lake
(and in a stride of bytes of every chunk file) and requires each flip to be either detected
by ``verify_lake`` -- and then refused by the readers, with one line -- or provably harmless:
everything the commands return (info, samples, checkpoints, class counts, every stored value)
is unchanged. Deleting any committed file fails ``verify`` and the commands that need it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cld_lake._meta import read_meta
from cld_lake.errors import CldLakeError
from cld_lake.lake import Lake, open_lake
from cld_lake.lake.check import lake_info, verify_lake
from cld_lake.lake.writer import SplitWriter

CHANNELS = {"loss": "float32", "correct": "bool"}
TRAIN_IDS = np.array([107, 103, 100, 111, 105, 102, 109, 101, 110, 104, 108, 106], np.int64)
CHUNK_STRIDE = 5  # chunk files: every 5th byte (and the 4 CRC bytes); metadata: every byte
PAGE_STRIDE = 3  # Parquet column chunks (page headers and values): every 3rd byte
HARMLESS_FULL_CHECK = 10  # every 10th harmless flip also compares everything the commands return


def build_lake(path: Path) -> Path:
    """train (12 samples, 3 classes, a metadata column, segments of width 1 and 2) and val
    (6 samples, one compacted segment), channels loss + correct."""
    lake = Lake.create(path)
    rng = np.random.default_rng(0)
    for split, ids in (("train", TRAIN_IDS), ("val", np.arange(6, dtype=np.int64) + 500)):
        n = len(ids)
        labels = ids % 3
        with SplitWriter(lake, split, row_chunk=8) as w:
            ck = w.checkpoint(0, epoch=0)
            ck.add(ids, rng.random(n).astype(np.float32), labels=labels, correct=ids % 2 == 0)
            ck.commit()
            loss = rng.random((n, 2)).astype(np.float32)
            loss[3, 1] = np.nan
            correct = rng.random((n, 2)) < 0.5
            rows = {"loss": loss, "correct": correct}
            w.append_columns(
                [1, 2],
                lambda a, b, rows=rows: {c: v[a:b] for c, v in rows.items()},
                num_rows=n,
                channels=CHANNELS,
            )
            if split == "train":
                w.annotate_samples({"noisy": ids % 4 == 0})
            else:
                w.compact(full=True)
                w.gc(grace_seconds=0)
    return path


def committed_files(path: Path) -> list[Path]:
    """Every file a commit wrote and a reader may read (lock files are no data)."""
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


def snapshot(path: Path, first: str | None = None) -> dict[str, Any]:
    """Everything the commands return, as comparable Python values (split ``first`` read
    first, so a reader that refuses it refuses early)."""
    lake = open_lake(path)
    out: dict[str, Any] = {}
    for name in sorted(lake.splits(), key=lambda n: n != first):
        split = lake.split(name)
        out[name] = {
            "checkpoints": split.checkpoint_table.to_pydict(),
            "values": [
                (b.start, b.sample_ids.tobytes(), b.labels.tobytes())
                + tuple(b.values[c].tobytes() for c in split.channels)
                for b in split.blocks(block_rows=5, channels=list(split.channels), prefetch=False)
            ],
            "streamed": [(i.tobytes(), y.tobytes()) for i, y in split.iter_samples(batch_rows=3)],
            "classes": split.label_counts().tolist(),
            "samples": split.samples_table.to_pydict(),
            "ids_sha1": split.ids_digest,
        }
    out["info"] = json.dumps(lake_info(lake), sort_keys=True, default=str)
    return out


def decoded(file: Path) -> Any:
    """What cld_lake decodes from one file: a Parquet table whole and by row group (with its
    metadata), or the JSON value; raw bytes for anything else."""
    if file.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(file)
            groups = [pf.read_row_group(g) for g in range(pf.metadata.num_row_groups)]
            return pf.read(), groups, pf.schema_arrow
        except Exception as exc:
            return repr(exc)
    if file.suffix == ".json":
        try:
            return json.loads(file.read_bytes())
        except ValueError as exc:
            return repr(exc)
    return file.read_bytes()


def same(a: Any, b: Any) -> bool:
    """Equal as cld_lake reads them: values, types, row groups and the ``cld_lake`` JSON (no
    reader looks at other Parquet metadata keys)."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        (ta, ga, sa), (tb, gb, sb) = a, b
        return (
            ta.equals(tb)
            and sa.equals(sb)  # types; its metadata is read from the table's schema
            and read_meta(ta.schema) == read_meta(tb.schema)
            and len(ga) == len(gb)
            and all(x.equals(y) for x, y in zip(ga, gb, strict=True))
        )
    return type(a) is type(b) and a == b


def detected(path: Path, split: str | None = None) -> str | None:
    """What verify_lake reports (its errors, or the error opening the lake), None if clean;
    with ``split``, only that split's checks (its files are the only ones that changed)."""
    try:
        report = verify_lake(open_lake(path), splits=None if split is None else [split])
    except CldLakeError as exc:
        return str(exc)
    return "; ".join(report.errors) or None


def positions(file: Path) -> list[int]:
    """Every byte of metadata (JSON files, Parquet footers and magic); a stride of the values
    (Parquet pages, chunk files) and all of a chunk's 4 CRC bytes."""
    data = file.read_bytes()
    if "/c/" in file.as_posix():  # a chunk file: values, then their CRC32C
        return sorted({*range(0, len(data), CHUNK_STRIDE), *range(len(data) - 4, len(data))})
    if file.suffix == ".parquet":  # PAR1, column chunks, footer, footer length, PAR1
        footer = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
        return sorted({*range(4), *range(4, footer, PAGE_STRIDE), *range(footer, len(data))})
    return list(range(len(data)))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return build_lake(tmp_path_factory.mktemp("integrity") / "lake")


def test_the_small_lake_verifies_and_covers_every_kind_of_file(pristine):
    assert detected(pristine) is None
    names = {p.name for p in committed_files(pristine)}
    assert {"cld_lake.json", "samples.parquet", "classes.parquet", "checkpoints.parquet"} <= names
    assert {"zarr.json", "0"} <= names  # segment metadata and chunk files
    train = open_lake(pristine).split("train")
    assert len(train.segment_names()) == 2 and train.samples_table.num_columns == 3


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["json", "parquet", "chunks"])
def test_every_bit_flip_is_detected_and_refused_or_changes_nothing(tmp_path, pristine, kind):
    path = tmp_path / "lake"
    shutil.copytree(pristine, path)
    baseline = snapshot(path)
    files = [
        f
        for f in committed_files(path)
        if {"json": f.suffix == ".json", "parquet": f.suffix == ".parquet"}.get(kind, f.name == "0")
    ]
    flips = caught = harmless = 0
    for file in files:
        original = file.read_bytes()
        pristine_decode = decoded(file)
        split = file.relative_to(path).parts[1] if file.parts[-2] != "lake" else None
        for pos in positions(file):
            damaged = bytearray(original)
            damaged[pos] ^= 1 << (pos % 8)
            file.write_bytes(bytes(damaged))
            flips += 1
            where = f"{file.relative_to(path)} byte {pos} bit {pos % 8}"
            if detected(path, split):
                caught += 1
                with pytest.raises(CldLakeError) as err:
                    snapshot(path, first=split)
                assert "\n" not in str(err.value), where
            else:  # harmless: nothing decoded changed, so no command can return anything else
                assert same(decoded(file), pristine_decode), f"undetected change: {where}"
                if harmless % HARMLESS_FULL_CHECK == 0:  # and the full proof, for a sample
                    assert snapshot(path, first=split) == baseline, where
                harmless += 1
            file.write_bytes(original)
    assert detected(path) is None
    assert flips > 100 and caught > flips // 2, (flips, caught)


def test_samples_recut_into_other_row_groups_fail_verify_as_the_streaming_readers_do(
    tmp_path, pristine
):
    """Regression (found by the sweep): a flip in the footer's row-group sizes left the decoded
    table, and so its checksum, unchanged; verify passed while streaming readers refused."""
    import pyarrow.parquet as pq

    path = tmp_path / "lake"
    shutil.copytree(pristine, path)
    samples = path / "splits" / "train" / "samples.parquet"
    table = pq.ParquetFile(samples).read()
    pq.write_table(table, samples, row_group_size=5)  # same content and metadata, other groups
    assert detected(path, "train") is not None
    with pytest.raises(CldLakeError, match="row groups"):
        open_lake(path).split("train").sample_ids  # noqa: B018
