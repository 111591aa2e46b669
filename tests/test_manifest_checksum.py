"""Manifest integrity (issue 9): checksums, a bit-flip sweep, bad arguments of load_manifest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import cld_lake
from cld_lake.errors import BadInputError, CldLakeError, CorruptFileError
from cld_lake.manifest import content_digest, manifest_table, write_manifest
from cld_lake.storage._local import temp_path_for
from tests.conftest import REPO

METADATA = {"score": "cld", "method": "cld", "checkpoints": [0, 1, 2], "fraction": 0.5}


def _small_manifest(path: Path) -> cld_lake.Manifest:
    table = manifest_table(
        np.array([928, 5, 77, 1000]),
        np.array([0, 0, 1, 1]),
        np.array([0.9, 0.1, 0.5, -0.25]),
        np.array([1, 2, 1, 2]),
    )
    write_manifest(path, table, METADATA)
    return cld_lake.load_manifest(path)


def _flip(src: Path, dst: Path, offset: int, bit: int) -> None:
    data = bytearray(src.read_bytes())
    data[offset] ^= 1 << bit
    dst.write_bytes(bytes(data))


def test_flipped_byte_turning_id_928_into_929_is_refused(tmp_path):
    _small_manifest(tmp_path / "m.parquet")
    size = (tmp_path / "m.parquet").stat().st_size
    hits = 0
    for offset in range(size):  # find the flips that read back as id 929, unverified
        _flip(tmp_path / "m.parquet", tmp_path / "bad.parquet", offset, 0)
        try:
            ids = pq.read_table(tmp_path / "bad.parquet").column("sample_id").to_pylist()
        except (pa.ArrowException, OSError, KeyError):  # unreadable or renamed: not this one
            continue
        if 929 not in ids:
            continue
        hits += 1
        with pytest.raises(CorruptFileError, match="damaged|checksum") as err:
            cld_lake.load_manifest(tmp_path / "bad.parquet")
        assert err.value.exit_code == 1 and "\n" not in str(err.value)
    assert hits >= 1  # the defect's flip exists in this file, and is refused


def test_rewritten_content_with_copied_metadata_fails_the_content_checksum(tmp_path):
    # a tool rewrites the rows (valid pages, valid Parquet) but keeps the old footer metadata
    m = _small_manifest(tmp_path / "m.parquet")
    ids = m.table.column("sample_id").to_numpy().copy()
    ids[0] = 929
    changed = m.table.set_column(0, "sample_id", pa.array(ids))
    footer = pq.read_schema(tmp_path / "m.parquet").metadata
    pq.write_table(changed.replace_schema_metadata(footer), tmp_path / "edited.parquet")
    with pytest.raises(CorruptFileError, match="checksum mismatch"):
        cld_lake.load_manifest(tmp_path / "edited.parquet")
    # so is an edit of the metadata JSON alone
    meta = json.loads(footer[b"cld_lake"])
    meta["fraction"] = 0.25
    footer2 = {**footer, b"cld_lake": json.dumps(meta, sort_keys=True).encode()}
    pq.write_table(m.table.replace_schema_metadata(footer2), tmp_path / "meta.parquet")
    with pytest.raises(CorruptFileError, match="checksum mismatch"):
        cld_lake.load_manifest(tmp_path / "meta.parquet")


def test_bit_flip_sweep_every_byte_detected_or_changes_nothing(tmp_path):
    """Flip one bit of every byte (bit = offset mod 8, so every bit position is hit): each
    damaged file is refused with a cld_lake error, or loads exactly as the original."""
    original = _small_manifest(tmp_path / "m.parquet")
    size = (tmp_path / "m.parquet").stat().st_size
    detected = unchanged = 0
    for offset in range(size):
        _flip(tmp_path / "m.parquet", tmp_path / "f.parquet", offset, offset % 8)
        try:
            got = cld_lake.load_manifest(tmp_path / "f.parquet")
        except CldLakeError as exc:
            assert isinstance(exc, BadInputError | CorruptFileError), (offset, exc)
            detected += 1
            continue
        assert got.table.equals(original.table), offset
        assert got.table.schema == original.table.schema, offset
        assert got.metadata == original.metadata, offset
        unchanged += 1
    assert detected + unchanged == size and detected > size // 2  # the data and JSON are covered


def test_manifest_without_checksum_loads_as_before(tmp_path):
    # written by an older cld_lake (or another tool): nothing to verify, the other checks hold
    table = pa.table({"sample_id": [3, 1], "label": [0, 1], "score": [0.5, 0.2], "rank": [1, 1]})
    meta = {"score": "cld", "fraction": 0.1}
    pq.write_table(
        table.replace_schema_metadata({"cld_lake": json.dumps(meta)}), tmp_path / "old.parquet"
    )
    m = cld_lake.load_manifest(tmp_path / "old.parquet")
    assert m.sample_ids.tolist() == [3, 1] and m.metadata == meta


def test_checksum_covers_columns_and_metadata():
    table = manifest_table(np.arange(3), np.zeros(3, int), np.ones(3), np.arange(1, 4))
    base = content_digest(table, METADATA)
    assert content_digest(table, {**METADATA, "checksum": {"digest": "x"}}) == base
    assert content_digest(table, {**METADATA, "fraction": 0.6}) != base
    for column in range(4):
        values = table.column(column).to_numpy().copy()
        values[1] += 1
        assert (
            content_digest(table.set_column(column, table.field(column), [values]), METADATA)
            != base
        )


@pytest.mark.parametrize(
    ("arg", "match"),
    [
        (None, "expected a path"),
        (123, "expected a path"),
        (b"m.parquet", "expected a path"),
        ("", "empty path"),
    ],
)
def test_load_manifest_bad_argument_is_bad_input_not_type_error(arg, match):
    with pytest.raises(BadInputError, match=match):
        cld_lake.load_manifest(arg)


@pytest.mark.parametrize(
    ("columns", "match"),
    [
        ({"sample_id": pa.array([1.0, 2.7])}, "sample_id is double"),  # float ids: not truncated
        ({"sample_id": pa.array(["1", "2"])}, "sample_id is string"),
        ({"sample_id": pa.array([1, None], pa.int64())}, "null"),
        ({"sample_id": pa.array([1, 2**63 + 5], pa.uint64())}, "int64 range"),
        ({"label": pa.array([0, None], pa.int64())}, "null"),
    ],
)
def test_load_manifest_bad_ids_are_bad_input_not_arrow_errors(tmp_path, columns, match):
    base = {
        "sample_id": pa.array([1, 2]),
        "label": pa.array([0, 0]),
        "score": pa.array([0.5, 0.4]),
        "rank": pa.array([1, 2]),
    }
    pq.write_table(pa.table({**base, **columns}), tmp_path / "m.parquet")
    with pytest.raises(BadInputError, match=match):
        cld_lake.load_manifest(tmp_path / "m.parquet")
    (tmp_path / "d.parquet").mkdir()
    with pytest.raises(BadInputError, match="is a directory"):
        cld_lake.load_manifest(tmp_path / "d.parquet")


KILLED_WRITER = """
import sys, time
from pathlib import Path
import numpy as np
import pyarrow.parquet as pq
from cld_lake.manifest import manifest_table, write_manifest

real = pq.write_table
def slow(table, where, **kw):  # the temp file is written; the rename has not happened
    real(table, where, **kw)
    Path(sys.argv[2]).write_text(str(where))
    time.sleep(60)
pq.write_table = slow
t = manifest_table(np.arange(3), np.zeros(3, int), np.ones(3), np.arange(1, 4))
write_manifest(sys.argv[1], t, {"score": "x"})
"""


def test_killed_select_leaves_temp_that_the_next_write_removes(tmp_path):
    out = tmp_path / "m.parquet"
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(out), str(ready)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    deadline = time.monotonic() + 60
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready.exists(), "the writer did not reach its write"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    leftover = Path(ready.read_text())
    assert leftover.exists() and f"-{proc.pid}-" in leftover.name  # the temp names its writer
    assert not out.exists()
    alive = temp_path_for(out)  # a live writer's temp (this process) is never touched
    alive.write_bytes(b"in progress")
    _small_manifest(out)
    assert not leftover.exists() and alive.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, "m.parquet", "ready"])
