"""``info`` and ``verify`` in bounded memory (issue 11): the samples table, the ids fingerprint,
duplicate ids, class counts and info's per-class CLD share are all computed one row group at a
time, with the same answers (and the same refusals) as the whole-table reads they replace."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cld_lake._meta import (
    TableChecksum,
    WholeTableChecksum,
    read_meta,
    streamed_checksum_problem,
    table_checksum,
    with_checksum,
)
from cld_lake.diagnostics import class_nonpositive_share
from cld_lake.errors import CorruptLakeError
from cld_lake.lake import Lake, open_lake
from cld_lake.lake import _format as fmt
from cld_lake.lake import check as inspect_mod
from cld_lake.lake._validate import count_duplicates, ids_digest
from cld_lake.lake.check import (
    count_duplicates_bounded,
    scan_samples,
    verify_lake,
)
from cld_lake.lake.scores import CHECKSUMS_KEY, iter_scores, read_scores, store_score
from cld_lake.lake.store import rows_checksum
from cld_lake.lake.writer import SplitWriter
from tests._memory import grown_mb
from tests.conftest import scores_file
from tests.test_integrity import build_lake

# --- the streamed checksum is the stored one ------------------------------------------------------


def _samples_like(n: int, seed: int = 0) -> pa.Table:
    """ids, labels and metadata columns of every kind the checksum encodes differently."""
    rng = np.random.default_rng(seed)
    noisy = pa.array(rng.random(n) < 0.3, mask=rng.random(n) < 0.1)  # bool with nulls
    words = [None if i % 7 == 3 else f"s{i}" * (i % 4) for i in range(n)]  # strings with nulls
    return pa.table(
        {
            "sample_id": pa.array(rng.permutation(n) * 3 + 1, pa.int64()),
            "label": pa.array(rng.integers(0, 5, n), pa.int64()),
            "noisy": noisy,
            "weight": pa.array(rng.random(n).astype(np.float32)),
            "source": pa.array(words, pa.string()),
        }
    )


@pytest.mark.parametrize("row_group_size", [1, 7, 64, 100, 333, 1000])
def test_the_streamed_checksum_equals_the_stored_one_at_every_row_group_layout(
    tmp_path, row_group_size
):
    table = with_checksum(_samples_like(333), {"table": "samples"})
    path = tmp_path / "samples.parquet"
    pq.write_table(table, path, row_group_size=row_group_size)
    pf = pq.ParquetFile(path)
    assert pf.metadata.num_row_groups == -(-333 // row_group_size)
    first = pf.read_row_group(0)
    acc = WholeTableChecksum(first.schema)
    for g in range(pf.metadata.num_row_groups):
        acc.update(first if g == 0 else pf.read_row_group(g))
    meta = read_meta(first.schema)
    assert acc.value(meta) == meta["checksum"] == table_checksum(pf.read(), meta)
    assert acc.value(meta) == meta["checksum"]  # value() leaves the running state as it was
    assert streamed_checksum_problem(meta, acc) is None
    changed = WholeTableChecksum(first.schema)  # one value different: the streamed check fails
    whole = pf.read()
    changed.update(whole.set_column(3, "weight", pa.array(np.zeros(333, np.float32))))
    assert streamed_checksum_problem(meta, changed).startswith(f"stored {meta['checksum']}")
    assert streamed_checksum_problem({}, acc) == "no readable cld_lake metadata"


def test_a_string_column_with_some_nulls_needs_the_whole_table_encoding(tmp_path):
    """Row groups of one row: the parts without a null of a string column that has nulls are
    encoded as a whole read encodes them (JSON lines), not as lengths and bytes."""
    table = with_checksum(_samples_like(20), {"table": "samples"})
    pq.write_table(table, tmp_path / "s.parquet", row_group_size=1)
    pf = pq.ParquetFile(tmp_path / "s.parquet")
    parts = [pf.read_row_group(g) for g in range(20)]
    plain, whole = TableChecksum(parts[0].schema), WholeTableChecksum(parts[0].schema)
    for part in parts:
        plain.update(part)
        whole.update(part)
    meta = read_meta(parts[0].schema)
    assert whole.value(meta) == meta["checksum"] != plain.value(meta)


@settings(max_examples=80, deadline=None)
@given(
    words=st.lists(st.none() | st.text(max_size=5), min_size=1, max_size=40),
    cuts=st.lists(st.integers(0, 40), max_size=5),
    kind=st.sampled_from([pa.string(), pa.large_string(), pa.binary()]),
)
def test_whole_table_checksum_is_independent_of_the_parts(words, cuts, kind):
    """Any cut of a table into parts gives the checksum of the table as one chunk."""
    values = [w if w is None or kind != pa.binary() else w.encode() for w in words]
    table = pa.table(
        {"sample_id": pa.array(range(len(words)), pa.int64()), "w": pa.array(values, kind)}
    )
    edges = [0, *sorted(c for c in cuts if c <= len(words)), len(words)]
    acc = WholeTableChecksum(table.schema)
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        acc.update(table.slice(a, b - a))
    assert acc.value({"k": 1}) == table_checksum(table.combine_chunks(), {"k": 1})


@pytest.mark.parametrize("row_chunk", [4, 8, 64])
def test_a_scan_finds_what_the_whole_table_holds(tmp_path, row_chunk):
    """Lakes written with other row-group sizes: the scan's fingerprint, class counts and
    columns equal the whole-table read's, and the commit record's checksums all pass."""
    lake = Lake.create(tmp_path / "lake")
    rng = np.random.default_rng(row_chunk)
    ids = rng.permutation(150).astype(np.int64) + 1000
    labels = rng.integers(0, 6, 150)
    with SplitWriter(lake, "train", row_chunk=row_chunk) as w:
        w.append_columns(
            [0, 1],
            lambda a, b: {"loss": np.ones((b - a, 2), np.float32)},
            num_rows=150,
            channels={"loss": "float32"},
            new_samples=(ids, labels),
        )
        w.annotate_samples({"noisy": ids % 3 == 0})
    split = open_lake(lake.path).split("train")
    scan = scan_samples(split)
    whole = split.samples_table
    assert scan.rows == whole.num_rows == 150
    assert scan.columns == whole.column_names == ["sample_id", "label", "noisy"]
    assert scan.ids_sha1 == ids_digest(split.sample_ids) == split.ids_digest
    assert np.array_equal(scan.label_counts, np.bincount(split.labels))
    assert not scan.increasing
    sorted_ids = Lake.create(tmp_path / "sorted")
    with SplitWriter(sorted_ids, "train", row_chunk=row_chunk) as w:
        ck = w.checkpoint(0)
        ck.add(np.arange(150) * 2 + 5, np.ones(150, np.float32), labels=labels)
        ck.commit()
    assert scan_samples(open_lake(sorted_ids.path).split("train")).increasing


# --- duplicate ids in bounded memory ----------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    ids=st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(0, 40), max_size=120),
    cuts=st.lists(st.integers(0, 120), max_size=6),
    bucket_rows=st.integers(1, 50),
)
def test_bounded_duplicate_count_equals_the_sort_of_all_ids(ids, cuts, bucket_rows):
    values = np.asarray(ids, np.int64)
    parts = np.split(values, sorted(c for c in cuts if c <= len(values)))
    got = count_duplicates_bounded(iter(parts), len(values), bucket_rows=bucket_rows)
    assert got == count_duplicates(values)


def test_the_spill_buckets_hold_about_their_share(monkeypatch):
    """Equal ids share a bucket, and runs of consecutive ids spread evenly over all of them,
    so the sort of one bucket stays small."""
    sizes: list[int] = []

    def counted(values: np.ndarray) -> int:
        sizes.append(len(values))
        return count_duplicates(values)

    monkeypatch.setattr(inspect_mod, "count_duplicates", counted)
    repeated = np.arange(100_000)[::7]
    ids = np.concatenate([np.arange(100_000), repeated])
    got = count_duplicates_bounded([ids[:50_000], ids[50_000:]], len(ids), bucket_rows=10_000)
    assert got == len(repeated)
    assert len(sizes) == 32 and sum(sizes) == len(ids) and max(sizes) < 2 * len(ids) / 32


def _rewrite_samples(split_dir: Path, ids: np.ndarray) -> None:
    """Replace the sample ids of a split as a buggy writer would: every checksum consistent
    (file, row groups, fingerprint), so only the recomputed checks can find what is wrong."""
    from tests.test_integrity_faults import rewrite_record

    path = split_dir / fmt.SAMPLES_FILE
    pf = pq.ParquetFile(path)
    sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
    table = pf.read()
    table = table.set_column(0, "sample_id", pa.array(ids, pa.int64()))
    table = with_checksum(table, {"table": "samples"})
    pq.write_table(table, path, row_group_size=sizes[0])
    starts = np.cumsum([0, *sizes])
    groups = [
        [rows, rows_checksum(table.slice(int(a), rows))]
        for a, rows in zip(starts[:-1], sizes, strict=True)
    ]

    def change(meta: dict) -> None:
        meta["samples"] = {"row_groups": groups}
        meta["ids_sha1"] = ids_digest(ids)

    rewrite_record(split_dir, change)


@pytest.mark.parametrize("bucket_rows", [4, 1 << 22])
def test_verify_finds_a_repeated_id_in_memory_and_through_spilled_buckets(
    tmp_path, monkeypatch, bucket_rows
):
    lake = build_lake(tmp_path / "lake")
    train = lake / "splits" / "train"
    ids = pq.ParquetFile(train / fmt.SAMPLES_FILE).read().column("sample_id").to_numpy().copy()
    assert verify_lake(open_lake(lake)).ok
    ids[9] = ids[2]  # in another row group (groups of 8 rows)
    _rewrite_samples(train, ids)
    monkeypatch.setattr(inspect_mod, "DUPLICATE_BUCKET_ROWS", bucket_rows)
    report = verify_lake(open_lake(lake))
    assert report.errors == ["split 'train': duplicate sample ids in samples.parquet"], report
    assert count_duplicates(open_lake(lake).split("train").sample_ids) == 1  # the old check


def test_verify_still_refuses_a_damaged_row_group_and_a_recut_file(tmp_path):
    lake = build_lake(tmp_path / "lake")
    train = lake / "splits" / "train"
    path = train / fmt.SAMPLES_FILE
    table = pq.ParquetFile(path).read()
    pq.write_table(table, path, row_group_size=5)  # same content, other row groups
    [error] = verify_lake(open_lake(lake)).errors
    assert "row groups of [5, 5, 2]... rows, the commit record says [8, 4]" in error
    labels = table.column("label").to_numpy().copy()
    labels[10] = (labels[10] + 1) % 3  # the file's checksum redone, not the record's CRCs
    pq.write_table(
        with_checksum(table.set_column(1, "label", pa.array(labels)), {"table": "samples"}),
        path,
        row_group_size=8,
    )
    [error] = verify_lake(open_lake(lake)).errors
    assert "samples.parquet fails its checksum (row group 1: stored crc32c:" in error
    with pytest.raises(CorruptLakeError, match=r"row group 1: stored"):
        open_lake(lake).split("train").samples_table  # noqa: B018  (the whole read agrees)


# --- info's per-class share, streamed (cld_lake.diagnostics over iter_scores) -----------------------------------------------------------


def _scored_lake(tmp_path: Path) -> Path:
    lake = build_lake(tmp_path / "lake")
    opened = open_lake(lake)
    train = opened.split("train")
    values = np.linspace(-1, 1, train.num_samples)
    values[[1, 4]] = np.nan  # undefined scores are left out and counted
    store_score(opened, train, "cld", values, {"method": "cld"})
    return lake


def test_infos_class_share_streamed_equals_a_numpy_reference(tmp_path):
    lake = _scored_lake(tmp_path)
    table = read_scores(open_lake(lake), ["cld"])  # the whole column, in memory
    labels = table.column("label").to_numpy()
    values = table.column("cld").to_numpy(zero_copy_only=False).astype(np.float64)
    want = []
    for c in np.unique(labels):
        of_c = values[labels == c]
        scored = of_c[~np.isnan(of_c)]
        share = float((scored <= 0).sum() / len(scored)) if len(scored) else float("nan")
        want.append(
            {
                "label": int(c),
                "samples": len(of_c),
                "null": int(np.isnan(of_c).sum()),
                "nonpositive": int((scored <= 0).sum()),
                "share": share,
            }
        )
    got = class_nonpositive_share(open_lake(lake), "cld")
    assert json.dumps(got) == json.dumps(want)  # NaN shares included
    assert sum(r["null"] for r in got) == 2


def test_the_streamed_scores_reader_checks_the_columns_it_read(tmp_path):
    lake = _scored_lake(tmp_path)
    path = scores_file(lake)
    pf = pq.ParquetFile(path)
    table = pf.read()
    footer = pf.metadata.metadata
    values = table.column("cld").to_numpy(zero_copy_only=False).copy()
    values[0] = 0.5  # a changed value, the recorded CRCs kept
    damaged = table.set_column(2, "cld", pa.array(values))
    with pq.ParquetWriter(path, damaged.schema) as writer:
        writer.write_table(damaged)
        writer.add_key_value_metadata({CHECKSUMS_KEY: footer[CHECKSUMS_KEY]})
    parts = iter_scores(open_lake(lake), ["cld"])
    next(parts)  # the first row group comes before the check
    with pytest.raises(CorruptLakeError, match=r"fails its checksum \(column 'cld'\)"):
        list(parts)
    with pytest.raises(CorruptLakeError, match=r"column 'cld'"):
        class_nonpositive_share(open_lake(lake), "cld")


# --- peak memory --------------------------------------------------------------------------------

MEASURE = """
import json, sys
from cld_lake._cli import cli
from cld_lake._cli._common import run_main
from cld_lake.lake import open_lake
from cld_lake.lake._validate import ids_digest
from cld_lake.lake.check import verify_lake

def status(key):  # VmHWM, not ru_maxrss: that one keeps the forking parent's size
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith(key + ":"))

def step(lake):
    if sys.argv[1] == "verify":
        assert verify_lake(open_lake(lake)).ok
    elif sys.argv[1] == "info":
        assert run_main(cli, ["info", lake, "--json"]) == 0
    else:  # the whole-table way: ids and labels of the split in memory, then the fingerprint
        split = open_lake(lake).split("train")
        ids_digest(split.sample_ids), split.labels

step(sys.argv[3])  # imports and caches everything on a tiny lake first
before = status("VmRSS")
step(sys.argv[2])
print(json.dumps({"before": before, "peak": status("VmHWM")}))
"""

ROWS = 3_000_000
BOUND_MB = 48  # bytes over the process's size before the step


@pytest.fixture(scope="module")
def big_lake(tmp_path_factory) -> Path:
    """3M samples x 2 float16 checkpoints, increasing but not contiguous ids, a cld score."""
    path = tmp_path_factory.mktemp("bounded") / "lake"
    lake = Lake.create(path, num_classes=100)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 100, ROWS)
    with SplitWriter(lake, "train") as w:
        w.append_columns(
            [0, 1],
            lambda a, b: {"loss": np.full((b - a, 2), 0.5, np.float16)},
            num_rows=ROWS,
            channels={"loss": "float16"},
            new_samples=(np.arange(ROWS, dtype=np.int64) * 2 + 1, labels),
        )
    lake = open_lake(path)
    store_score(lake, lake.split("train"), "cld", rng.uniform(-1, 1, ROWS), {"method": "cld"})
    return path


def _grown_mb(step: str, lake: Path, tiny: Path) -> float:
    return grown_mb(MEASURE, step, lake, tiny)


def test_info_and_verify_stay_within_a_bound_the_whole_table_read_exceeds(big_lake, tmp_path):
    tiny = tmp_path / "tiny"
    shutil.copytree(_scored_lake(tmp_path / "t"), tiny)
    whole = _grown_mb("whole", big_lake, tiny)
    assert whole > 1.5 * BOUND_MB, whole  # the bound can fail: reading the ids whole exceeds it
    for step in ("verify", "info"):
        assert _grown_mb(step, big_lake, tiny) < BOUND_MB, step
