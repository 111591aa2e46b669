"""The report in bounded memory: the streamed statistics against the in-memory ones.

Up to ``exact_rows`` training rows the report holds score columns whole and every figure is
exact; above, it streams the scores table. Here ``exact_rows`` is set below the lakes' size
(and the scores table cut into small row groups) so the streamed path runs on small lakes and
is compared with the whole-column path figure by figure: equal where it is exact, within the
bound it states where it is not (AUROC). A subprocess measures peak RSS at 3M samples.
"""

from __future__ import annotations

import base64
import html
import io
import re
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cld_lake import diagnostics as dg
from cld_lake._meta import meta_bytes, read_meta
from cld_lake.diagnostics import FINE_BINS, DetectionTally, detection, spearman
from cld_lake.lake import Lake
from cld_lake.lake import scores as scores_table
from cld_lake.lake.scores import store_score
from cld_lake.lake.writer import SplitWriter
from cld_lake.report import build_report
from cld_lake.report._stats import curve_groups, finite_range, scan_split
from tests.conftest import plant_legacy_scores, scores_file
from tests.test_report_page import N, rich_lake

GROUP_ROWS = 64  # scores-table row group size in these tests: many groups on small lakes


@pytest.fixture(scope="module")
def rich(tmp_path_factory):
    """The report tests' lake (600 train rows, noisy flags, three scores and two runs' CLD),
    its scores table in row groups of 64 rows."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scores_table, "BATCH_ROWS", GROUP_ROWS)
        lake, d = rich_lake(tmp_path_factory.mktemp("bounded") / "lake")
        rng = np.random.default_rng(5)
        train = lake.split("train")
        for run, noise in (("seed1", 0.0), ("seed2", 0.3)):
            store_score(lake, train, f"cld_{run}", d["cld"] + noise * rng.standard_normal(N),
                        {"method": "cld", "run": run})  # fmt: skip
    assert pq.ParquetFile(scores_file(lake)).metadata.num_row_groups > 5
    return lake, d


# --- DetectionTally against detection ---------------------------------------------------------
def _tally(values, noisy, direction, fractions, bins, cut_rows, batch):
    tally = DetectionTally(*finite_range(values), direction, fractions, bins, cut_rows)
    for a in range(0, len(values), batch):
        tally.add(values[a : a + batch], noisy[a : a + batch])
    for a in range(0, len(values), batch):
        tally.add_cut(values[a : a + batch], noisy[a : a + batch])
    return tally.result()


def _same(a, b) -> bool:
    return a == b or (np.isnan(a) and np.isnan(b))


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(0, 400),
    seed=st.integers(0, 2**32 - 1),
    distinct=st.sampled_from([1, 3, 20, 0]),  # 0: continuous values
    nan_share=st.sampled_from([0.0, 0.1]),
    noisy_share=st.sampled_from([0.0, 0.2, 1.0]),
    bins=st.sampled_from([1, 4, 64, FINE_BINS]),
    cut_rows=st.sampled_from([3, 1 << 22]),
    batch=st.integers(1, 97),
    direction=st.sampled_from(["higher_keep", "higher_harder"]),
)
def test_tally_equals_detection_where_exact_and_within_its_bound(
    n, seed, distinct, nan_share, noisy_share, bins, cut_rows, batch, direction
):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, distinct, n).astype(float) if distinct else rng.standard_normal(n)
    values[rng.random(n) < nan_share] = np.nan
    noisy = rng.random(n) < noisy_share
    fractions = (0.05, 0.1, 0.5)
    row, by_fraction = _tally(values, noisy, direction, fractions, bins, cut_rows, batch)
    exact, exact_fraction = detection(values, noisy, direction, fractions)
    approximate = row["approximate"]
    for key in ("n", "noisy", "noise_rate"):
        assert _same(row[key], exact[key])
    if "precision_at_noise_rate" not in approximate:
        assert _same(row["precision_at_noise_rate"], exact["precision_at_noise_rate"])
    for f, got, want in zip(fractions, by_fraction, exact_fraction, strict=True):
        if f"fraction {f}" not in approximate:
            assert got.keys() == want.keys()
            assert all(_same(got[k], want[k]) for k in got)
    if np.isnan(exact["auroc"]):
        assert np.isnan(row["auroc"])
    else:
        assert abs(row["auroc"] - exact["auroc"]) <= row["auroc_bound"] + 1e-12
    if distinct and bins == FINE_BINS:  # one value per bin: AUROC exact, bound 0, all exact
        assert row["auroc_bound"] == 0 and _same(row["auroc"], exact["auroc"])
        assert approximate == []
    if cut_rows > n:  # every cut bin held: the top-ranked figures are all exact
        assert approximate == []


def test_tally_bound_is_reached_by_a_mixed_bin():
    """Two values in one bin, the noisy one lower: exact AUROC 1, the tally 0.5, bound 0.5."""
    row, _ = _tally(np.array([0.0, 0.1]), np.array([True, False]), "higher_keep", (), 1, 10, 2)
    assert row["auroc"] == 0.5 and row["auroc_bound"] == 0.5
    assert detection(np.array([0.0, 0.1]), np.array([True, False]), "higher_keep")[0]["auroc"] == 1


# --- the split scan's sparse groups -----------------------------------------------------------
def test_scan_split_sparse_groups_equal_the_dense_ones(rich):
    lake, d = rich
    classes = np.array([0, 2, 3])
    group, names = curve_groups(d["cld"], d["labels"], classes)
    members = np.flatnonzero(group >= 0)
    dense = scan_split(lake.split("train"), classes=classes, row_groups=group, n_groups=len(names))
    sparse = scan_split(lake.split("train"), classes=classes, n_groups=len(names),
                        row_groups=(members, group[members].astype(np.int64)))  # fmt: skip
    np.testing.assert_array_equal(dense.group_mean, sparse.group_mean)
    np.testing.assert_array_equal(dense.group_count, sparse.group_count)
    for g in range(len(names)):
        np.testing.assert_allclose(dense.group_mean[g], np.nanmean(d["loss"][group == g], axis=0))


# --- the page: streamed vs whole -------------------------------------------------------------
def _tables(text: str) -> list[str]:
    return re.findall(r"<table>.*?</table>", text, flags=re.S)


def _cells(table: str) -> list[list[str]]:
    return [re.findall(r"<t[dh]>(.*?)</t[dh]>", r) for r in re.findall(r"<tr>(.*?)</tr>", table)]


def _images(text: str) -> dict[str, np.ndarray]:
    from matplotlib.image import imread

    found = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]*)"', text)
    return {
        html.unescape(alt): imread(io.BytesIO(base64.b64decode(data)), format="png")
        for data, alt in found
    }


def _both(lake, tmp_path, exact_rows=GROUP_ROWS):
    whole = build_report(lake, tmp_path / "whole.html").read_text()
    streamed = build_report(lake, tmp_path / "streamed.html", exact_rows=exact_rows).read_text()
    return whole, streamed


@pytest.fixture(scope="module")
def pages(rich, tmp_path_factory):
    """The rich lake's page held whole and streamed (``exact_rows`` 64 of 600 rows)."""
    return _both(rich[0], tmp_path_factory.mktemp("pages"))


def test_streamed_page_equals_the_whole_one_where_exact(rich, pages):
    lake, d = rich
    whole, streamed = pages
    assert "training rows the scores are streamed" not in whole
    bound = float(re.search(r"each AUROC is within (\S+) of the exact", streamed).group(1))
    tw, ts = _tables(whole), _tables(streamed)
    assert len(tw) == len(ts)
    for a, b in zip(tw, ts, strict=True):
        if "precision_at_noise_rate" in a:  # detection: all equal but AUROC, within the bound
            rows_a, rows_b = _cells(a), _cells(b)
            auroc = rows_a[0].index("auroc")
            for ra, rb in zip(rows_a[1:], rows_b[1:], strict=True):
                assert ra[:auroc] + ra[auroc + 1 :] == rb[:auroc] + rb[auroc + 1 :]
                assert abs(float(ra[auroc]) - float(rb[auroc])) <= bound + 1e-3  # 4 digits shown
        elif "<th>run a</th>" in a:  # runs: Spearman on every 10th row (600 rows, at most 64)
            rho, n = spearman(d["cld"][::10], _score(lake, "cld_seed2")[::10])
            assert f"<td>{rho:.4g}</td><td>{n}</td>" in b and n == 60
        else:  # splits, scores, lowest-fraction, correlations, class shares, alignment
            assert a == b
    images_w, images_s = _images(whole), _images(streamed)
    for alt in ("score distributions", "data map: confidence vs variability",
                "Spearman correlation matrix", "per-class share of cld <= 0"):  # fmt: skip
        np.testing.assert_array_equal(images_w[alt], images_s[alt])
    assert "every 10th training row (a uniform sample of at most 64 rows)" in streamed
    assert "Groups are taken from every 10th training row of these classes" in streamed


def test_streamed_detection_is_the_in_memory_one_with_the_stated_bound(rich, pages):
    """The detection table of the streamed page against :func:`detection` on the columns."""
    _, d = rich
    _, streamed = pages
    table = next(t for t in _tables(streamed) if "precision_at_noise_rate" in t)
    bound = float(re.search(r"each AUROC is within (\S+) of the exact", streamed).group(1))
    assert bound < 0.01  # 600 continuous values in 262,144 bins: hardly any pair shares one
    for name, values, direction in (("cld", d["cld"], "higher_keep"),
                                    ("hardness", d["loss"].mean(axis=1), "higher_harder")):  # fmt: skip
        row, _ = detection(values, d["noisy"], direction)
        cells = f"<td>{name}</td><td>{direction}</td><td>{row['n']}</td><td>{row['noisy']}</td>"
        assert cells in table
        shown = re.search(re.escape(cells) + r"<td>[^<]*</td><td>([^<]*)</td>", table).group(1)
        assert abs(float(shown) - row["auroc"]) <= bound + 1e-3


def _score(lake, name):
    table = scores_table.read_scores(lake, [name])
    return table.column(name).to_numpy(zero_copy_only=False).astype(float)


def test_streamed_page_of_a_scores_table_in_another_row_order(tmp_path):
    """Scores stored in reverse order, some rows missing (another tool wrote it): mapped by
    sample id, the streamed page equals the whole one."""
    lake, d = rich_lake(tmp_path / "lake", n=300)
    table = pq.read_table(scores_file(lake))
    meta = read_meta(table.schema)
    meta.pop("rows")  # no ids fingerprint: the rows are compared
    keep = np.arange(table.num_rows)[::-1][20:]
    plant_legacy_scores(lake.path, table.take(pa.array(keep)).replace_schema_metadata(
        meta_bytes(meta)))  # fmt: skip
    whole, streamed = _both(lake.reload(), tmp_path)
    detect_w = next(t for t in _tables(whole) if "precision_at_noise_rate" in t)
    detect_s = next(t for t in _tables(streamed) if "precision_at_noise_rate" in t)
    assert _cells(detect_w)[1][:3] == _cells(detect_s)[1][:3] == ["cld", "higher_keep", "279"]
    for a, b in zip(_tables(whole), _tables(streamed), strict=True):
        if "precision_at_noise_rate" not in a:
            assert a == b
    np.testing.assert_array_equal(
        _images(whole)["score distributions"], _images(streamed)["score distributions"]
    )


def test_streamed_diagnostics_equal_numpy_over_many_row_groups(rich):
    lake, d = rich
    labels, cld = d["labels"], d["cld"]
    for row in dg.class_nonpositive_share(lake, "cld"):
        mine = labels == row["label"]
        scored = mine & ~np.isnan(cld)
        assert row["samples"] == mine.sum() and row["null"] == (mine & np.isnan(cld)).sum()
        assert row["nonpositive"] == (cld[scored] <= 0).sum()
    from cld_lake.select import select

    manifest = select(lake, "cld", fraction=0.3)
    out = dg.selection_alignment(lake, manifest, "cld")
    rows = lake.split("train").rows_of(manifest.sample_ids)
    assert out["mean"] == pytest.approx(np.nanmean(cld[rows]))
    assert out["pool_mean"] == pytest.approx(np.nanmean(cld))


# --- peak memory --------------------------------------------------------------------------------
# peak RSS from VmHWM: ru_maxrss of a child also counts the pages it shared with this (large)
# test process between fork and exec
REPORT_RSS = textwrap.dedent(
    """
    import re, sys, warnings
    warnings.simplefilter("ignore")
    from cld_lake.report import build_report
    build_report(sys.argv[1], sys.argv[2], force=True)
    status = open("/proc/self/status").read()
    print(int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) // 1024)
    """
)


def _big_lake(path, n, seed=0):
    """``n`` train rows x 3 float16 checkpoints with noisy flags, scores cld (method cld) and
    hardness (higher_harder); 3,000 val rows."""
    rng = np.random.default_rng(seed)
    lake = Lake.create(path, num_classes=10)
    ids, labels = np.arange(n), rng.integers(0, 10, n)
    with SplitWriter(lake, "train", channels={"loss": "float16"}) as w:
        w.declare_samples(ids, labels, metadata={"noisy": rng.random(n) < 0.1})
        for t in range(3):
            ck = w.checkpoint(t)
            ck.add(ids, rng.random(n).astype(np.float32) * (3 - t))
            ck.commit()
    with SplitWriter(lake, "val", channels={"loss": "float16"}) as w:
        w.declare_samples(np.arange(3000), np.arange(3000) % 10)
        for t in range(3):
            ck = w.checkpoint(t)
            ck.add(np.arange(3000), np.full(3000, 2.0 - t / 2))
            ck.commit()
    lake = lake.reload()
    train = lake.split("train")
    store_score(lake, train, "cld", rng.uniform(-1, 1, n), {"method": "cld"})
    store_score(lake, train, "hardness", rng.random(n), {"method": "mean_loss",
                "direction": "higher_harder"})  # fmt: skip
    return lake


def _report_rss(lake, out) -> int:
    proc = subprocess.run([sys.executable, "-c", REPORT_RSS, str(lake.path), str(out)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(proc.stdout.split()[-1])


@pytest.mark.slow
def test_report_peak_memory_does_not_grow_with_samples(tmp_path):
    """3M samples (above the 2M held whole) against 30k: the report's peak RSS grows by less
    than 80 MB. Holding score columns, ids and labels whole (the in-memory report) costs
    about 60 bytes per sample: some 180 MB more at 3M."""
    small = _report_rss(_big_lake(tmp_path / "small", 30_000), tmp_path / "s.html")
    big = _report_rss(_big_lake(tmp_path / "big", 3_000_000), tmp_path / "b.html")
    assert big - small < 80, (small, big)


# --- the noisy flags, streamed and checked ------------------------------------------------------
def _flagged_lake(path, n=300):
    """Train rows in row groups of 16, a ``noisy`` flag with nulls and a text column with
    nulls in its first row group only (its canonical bytes depend on whether the column has
    a null: a checksum summed group by group must still give the whole table's)."""
    from cld_lake.lake import open_lake

    rng = np.random.default_rng(2)
    lake = Lake.create(path, num_classes=2)
    noisy = pa.array([None if i % 7 == 0 else bool(rng.random() < 0.3) for i in range(n)])
    text = np.array([None if i in (1, 2) else f"img/{i}.png" for i in range(n)], dtype=object)
    with SplitWriter(lake, "train", row_chunk=16, channels={"loss": "float32"}) as w:
        w.declare_samples(np.arange(n), np.arange(n) % 2, metadata={"noisy": noisy, "path": text})
        for t in range(3):
            ck = w.checkpoint(t)
            ck.add(np.arange(n), rng.random(n))
            ck.commit()
    return open_lake(path)


def test_noisy_bits_are_the_samples_tables_flags_and_checked(tmp_path):
    from cld_lake.diagnostics import noisy_bits as _noisy_bits
    from cld_lake.errors import CorruptLakeError

    lake = _flagged_lake(tmp_path / "lake")
    train = lake.split("train")
    table = train.samples_table
    assert table.column("path").null_count and table.column("noisy").null_count
    expected = table.column("noisy").fill_null(False).to_numpy(zero_copy_only=False)
    bits = _noisy_bits(lake.split("train"))
    np.testing.assert_array_equal(np.unpackbits(bits)[: len(expected)].astype(bool), expected)
    # one flag flipped, the file rewritten with the same metadata (and recorded checksum)
    path = train.path / "samples.parquet"
    flipped = expected.copy()
    flipped[3] = not flipped[3]
    column = table.column_names.index("noisy")
    table = table.set_column(column, "noisy", pa.array(flipped))
    pq.write_table(table, path, row_group_size=16)
    with pytest.raises(CorruptLakeError, match="fails its checksum"):
        _noisy_bits(lake.reload().split("train"))
