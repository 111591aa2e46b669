"""A damaged manifest raises the documented ``CorruptFileError`` (exit 1), whatever the damage;
a file that never was a manifest raises ``BadInputError`` (exit 2). Issue 16.9: a manifest
truncated by a few bytes, or with its last byte changed, raised ``BadInputError``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import cld_lake
from cld_lake.errors import BadInputError, CorruptFileError
from tests.test_manifest_checksum import _small_manifest


@pytest.fixture
def manifest(tmp_path) -> Path:
    path = tmp_path / "m.parquet"
    _small_manifest(path)
    return path


def _refused(path: Path) -> Exception:
    with pytest.raises((BadInputError, CorruptFileError)) as err:
        cld_lake.load_manifest(path)
    assert "\n" not in str(err.value)
    return err.value


def test_every_truncation_is_corrupt(manifest, tmp_path) -> None:
    """Cut by 1 byte up to all but the opening magic: the footer (at the end) goes first."""
    data = manifest.read_bytes()
    cut = tmp_path / "cut.parquet"
    for removed in range(1, len(data) - 3):
        cut.write_bytes(data[: len(data) - removed])
        err = _refused(cut)
        assert isinstance(err, CorruptFileError), (removed, err)
        assert err.exit_code == 1 and "damaged or truncated" in str(err), (removed, err)


def test_every_value_of_the_last_byte_is_corrupt(manifest, tmp_path) -> None:
    data = bytearray(manifest.read_bytes())
    flipped = tmp_path / "flipped.parquet"
    original = data[-1]
    for value in range(256):
        if value == original:
            continue
        data[-1] = value
        flipped.write_bytes(bytes(data))
        err = _refused(flipped)
        assert isinstance(err, CorruptFileError) and err.exit_code == 1, (value, err)


def test_a_damaged_footer_length_is_corrupt(manifest, tmp_path) -> None:
    data = bytearray(manifest.read_bytes())
    damaged = tmp_path / "damaged.parquet"
    for offset in range(len(data) - 8, len(data) - 4):  # the footer's length
        for bit in range(8):
            copy = bytearray(data)
            copy[offset] ^= 1 << bit
            damaged.write_bytes(bytes(copy))
            assert isinstance(_refused(damaged), CorruptFileError), (offset, bit)


def test_files_that_never_were_manifests_are_bad_input(manifest, tmp_path) -> None:
    cases = {
        "text.parquet": b"sample_id,label\n1,0\n",
        "empty.parquet": b"",
        "short.parquet": b"PA",
        "zip.parquet": b"PK\x03\x04" + bytes(100),
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        err = _refused(tmp_path / name)
        assert isinstance(err, BadInputError) and err.exit_code == 2, (name, err)
    # another Parquet file, whole: not a manifest, so bad input
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": np.arange(5)}), other)
    err = _refused(other)
    assert isinstance(err, BadInputError) and "missing column" in str(err)
    # the original still loads
    assert len(cld_lake.load_manifest(manifest)) == 4
