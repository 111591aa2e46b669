"""The scores table is trusted only after its checksums (issue 9: a flipped stored score changed
the selected manifest, and ``verify`` passed).

Every byte of a small ``scores.parquet`` gets one bit flipped: each flip must be detected by
``verify`` and refused by the readers (``select``, the SQL view, ``info``) with one line, or
change nothing that a reader decodes.
"""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

import cld_lake
from cld_lake._meta import read_meta
from cld_lake.errors import CldLakeError, CorruptLakeError
from cld_lake.lake import open_lake
from cld_lake.lake.check import verify_lake
from cld_lake.lake.scores import CHECKSUMS_KEY, check_scores_file, read_scores, stored_scores
from tests.conftest import (
    import_arrays,
    lake_hash,
    make_arrays,
    plant_legacy_scores,
    scores_file,
)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    d = tmp_path_factory.mktemp("scored")
    loss, labels, ids = make_arrays(40, 5, 3, seed=2, nan_rows=2)
    vloss, vlabels, _ = make_arrays(12, 5, 3, seed=3)
    import_arrays(d, d / "lake", loss=loss, labels=labels, sample_ids=ids)
    import_arrays(d, d / "lake", split="val", loss=vloss, labels=vlabels)
    cld_lake.score(d / "lake")
    cld_lake.score(d / "lake", checkpoints="0:4", name="cld_first4")
    return d / "lake"


def _decoded(lake_path):
    """What readers take from the table: its rows and its ``cld_lake`` JSON."""
    table = pq.ParquetFile(scores_file(lake_path)).read()
    return table.to_pylist(), read_meta(table.schema)


def test_a_scored_lake_verifies_and_records_a_checksum_per_column(scored):
    assert verify_lake(open_lake(scored)).ok
    footer = pq.ParquetFile(scores_file(scored)).metadata.metadata
    assert CHECKSUMS_KEY in footer
    assert set(stored_scores(open_lake(scored))) == {"cld", "cld_first4"}
    check_scores_file(open_lake(scored))


@pytest.mark.timeout(300)
def test_every_flipped_byte_of_the_scores_table_is_refused_or_changes_nothing(scored, tmp_path):
    lake_path = tmp_path / "lake"
    shutil.copytree(scored, lake_path)
    path = scores_file(lake_path)
    pristine = path.read_bytes()
    want = _decoded(scored)
    detected = harmless = 0
    for pos in range(len(pristine)):
        data = bytearray(pristine)
        data[pos] ^= 1 << (pos % 8)
        path.write_bytes(bytes(data))
        report = verify_lake(open_lake(lake_path))
        if not report.ok:
            detected += 1
            with pytest.raises(CldLakeError):  # every reader refuses, one line
                read_scores(open_lake(lake_path))
            continue
        try:
            got = _decoded(lake_path)
        except Exception:  # verify passed, so the readers must decode it
            pytest.fail(f"byte {pos}: verify passed but the table does not decode")
        assert got == want, f"byte {pos}: verify passed but the decoded table changed"
        harmless += 1
    path.write_bytes(pristine)
    assert detected > len(pristine) // 2 and detected + harmless == len(pristine)


def test_a_flipped_stored_score_is_refused_by_select_and_sql(scored, tmp_path, cli):
    lake_path = tmp_path / "lake"
    shutil.copytree(scored, lake_path)
    path = scores_file(lake_path)
    table = pq.ParquetFile(path).read()
    footer = pq.ParquetFile(path).metadata.metadata
    values = table.column("cld").to_numpy(zero_copy_only=False).copy()
    values[np.nanargmin(values)] = 1.0  # the worst sample becomes the best
    tampered = table.set_column(table.schema.get_field_index("cld"), "cld", [values])
    with pq.ParquetWriter(path, tampered.schema) as writer:  # the old checksums copied along
        writer.write_table(tampered)
        writer.add_key_value_metadata({CHECKSUMS_KEY: footer[CHECKSUMS_KEY]})
    before = lake_hash(lake_path)
    with pytest.raises(CorruptLakeError, match="fails its checksum"):
        cld_lake.select(lake_path, "cld", fraction=0.5)
    out = tmp_path / "m.parquet"
    for args in (
        ("select", lake_path, "--score", "cld", "--fraction", "0.5", "--out", out),
        ("sql", lake_path, "SELECT max(cld) FROM scores"),
        ("verify", lake_path),
    ):
        r = cli(*args)
        assert r.code == 1 and "fails its checksum" in r.err and len(r.err.splitlines()) == 1
    assert not out.exists() and lake_hash(lake_path) == before


def test_a_scores_table_without_its_checksums_is_corrupt_in_a_checksummed_lake(scored, tmp_path):
    lake_path = tmp_path / "lake"
    shutil.copytree(scored, lake_path)
    path = scores_file(lake_path)
    table = pq.ParquetFile(path).read()
    meta = {b"cld_lake": table.schema.metadata[b"cld_lake"]}
    pq.write_table(table.replace_schema_metadata(meta), path)
    assert CHECKSUMS_KEY not in pq.ParquetFile(path).metadata.metadata
    with pytest.raises(CorruptLakeError, match="is not the scores table cld_lake.json names"):
        stored_scores(open_lake(lake_path))  # not the table the lake recorded
    assert not verify_lake(open_lake(lake_path)).ok
    # a lake of the old layout (no record) has only the table's own checksums to go by
    legacy = plant_legacy_scores(lake_path, table)
    pq.write_table(table.replace_schema_metadata(meta), legacy)
    with pytest.raises(CorruptLakeError, match="none recorded"):
        stored_scores(open_lake(lake_path))
    assert not verify_lake(open_lake(lake_path)).ok
