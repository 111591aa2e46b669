"""The report's statistics against in-memory NumPy, its sections, and figure layout (legends
outside the data)."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest

from cld_lake.diagnostics import average_ranks as rankdata
from cld_lake.diagnostics import detection, detection_row, spearman
from cld_lake.lake import Lake
from cld_lake.lake.scores import store_score
from cld_lake.lake.writer import SplitWriter
from cld_lake.report import MAX_POINTS, build_report
from cld_lake.report import _plots as plots
from cld_lake.report._stats import curve_groups, data_map_stats, pick_classes, scan_split

N, T, C, NV = 600, 8, 4, 120


def rich_lake(path, n=N, noisy_share=0.1, seed=0):
    """train (loss, correct, noisy flags; 64-row chunks) + val; scores cld, cld_first4 (both
    method cld) and hardness (higher_harder). Noisy samples keep a high loss."""
    rng = np.random.default_rng(seed)
    lake = Lake.create(path, num_classes=C)
    labels = rng.integers(0, C, n)
    labels[:C] = np.arange(C)
    noisy = rng.random(n) < noisy_share
    rate = rng.uniform(0.1, 0.6, n)
    loss = np.exp(-rate[:, None] * np.arange(T)) * 2.0 + 0.05 * rng.random((n, T))
    loss[noisy] = 2.0 + 0.2 * rng.random((int(noisy.sum()), T))
    loss[5, 3] = np.nan
    loss = loss.astype(np.float32).astype(np.float64)  # the values the lake holds
    with SplitWriter(
        lake, "train", row_chunk=64, channels={"loss": "float32", "correct": "bool"}
    ) as w:
        w.declare_samples(np.arange(n) + 10, labels, metadata={"noisy": noisy})
        for t in range(T):
            ck = w.checkpoint(t)
            ck.add(np.arange(n) + 10, loss[:, t], correct=loss[:, t] < 1.0)
            ck.commit()
    vlabels = np.arange(NV) % C
    vloss = np.exp(-0.3 * np.arange(T))[None, :] * (1.5 + 0.1 * rng.random((NV, T)))
    with SplitWriter(lake, "val", row_chunk=64, channels={"loss": "float32"}) as w:
        w.declare_samples(np.arange(NV), vlabels)
        for t in range(T):
            ck = w.checkpoint(t)
            ck.add(np.arange(NV), vloss[:, t])
            ck.commit()
    lake = lake.reload()
    train = lake.split("train")
    cld = -loss[:, -1] + 0.01 * rng.standard_normal(n)
    cld[7] = np.nan
    first4 = -loss[:, 3] + 0.01 * rng.standard_normal(n)
    ids = list(range(T))
    store_score(lake, train, "cld", cld, {"method": "cld", "checkpoints": "0..7 (8)",
                                         "checkpoint_ids": ids})  # fmt: skip
    store_score(lake, train, "cld_first4", first4, {"method": "cld", "window": "0:4",
                "checkpoints": "0..3 (4)", "checkpoint_ids": ids[:4]})  # fmt: skip
    store_score(lake, train, "hardness", loss.mean(axis=1),
                {"method": "mean_loss", "direction": "higher_harder"})  # fmt: skip
    return lake, {"loss": loss, "labels": labels, "noisy": noisy, "vloss": vloss,
                  "vlabels": vlabels, "cld": cld, "first4": first4}  # fmt: skip


@pytest.fixture(scope="module")
def rich(tmp_path_factory):
    return rich_lake(tmp_path_factory.mktemp("report") / "lake")


# --- statistics ------------------------------------------------------------------------------
def test_rankdata_averages_ties_and_spearman():
    assert rankdata(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    x = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    assert spearman(x, x**3) == (1.0, 4)
    assert spearman(x, -x) == (-1.0, 4)
    rho, n = spearman(np.array([1.0, 2, 3, 4]), np.array([1.0, 3, 2, 4]))
    assert n == 4 and rho == pytest.approx(0.8)  # 1 - 6 x 2 / (4 x 15)


def test_detection_row_by_hand_and_orientation():
    values = np.array([-1.0, -0.5, 0.2, 0.3, 0.9, np.nan])
    noisy = np.array([1, 0, 1, 0, 0, 1], bool)
    # suspicion -values: noisy 1.0, -0.2; clean 0.5, -0.3, -0.9: 5 of 6 pairs ordered
    row = detection_row(values, noisy, "higher_keep")
    assert row["auroc"] == pytest.approx(5 / 6) and row["n"] == 5 and row["noisy"] == 2
    assert row["precision_at_noise_rate"] == 0.5  # top 2: one noisy, one clean
    assert detection_row(-values, noisy, "higher_harder") == row
    ties = detection_row(np.zeros(4), np.array([1, 0, 0, 1], bool), "higher_keep")
    assert ties["auroc"] == 0.5
    assert np.isnan(detection_row(values, np.zeros(6, bool), "higher_keep")["auroc"])


@pytest.mark.parametrize("seed", range(6))
def test_detection_matches_brute_force_with_ties_and_nan(seed):
    rng = np.random.default_rng(seed)
    n = 300
    values = rng.integers(-5, 5, n).astype(float)  # many ties
    values[rng.random(n) < 0.05] = np.nan
    noisy = rng.random(n) < 0.2
    for direction in ("higher_keep", "higher_harder"):
        row, fractions = detection(values, noisy, direction, (0.05, 0.1, 0.5))
        s = -values if direction == "higher_keep" else values
        ok = np.isfinite(s)
        s, y = s[ok], noisy[ok]
        pairs = s[y][:, None] - s[~y][None, :]
        assert row["auroc"] == pytest.approx(((pairs > 0) + 0.5 * (pairs == 0)).mean())
        order = np.argsort(-s, kind="stable")  # most suspicious first, ties in row order
        assert row["precision_at_noise_rate"] == pytest.approx(y[order[: y.sum()]].mean())
        for f, got in zip((0.05, 0.1, 0.5), fractions, strict=True):
            k = int(np.floor(f * len(s) + 0.5))
            assert got["noisy_share_lowest"] == pytest.approx(y[order[:k]].mean())
            assert got["recall"] == pytest.approx(y[order[:k]].sum() / y.sum())


def test_data_map_stats():
    conf, var = data_map_stats(np.array([[0.0, np.log(2)], [np.inf, 0.0], [np.nan, np.nan]]))
    np.testing.assert_allclose(conf[:2], [0.75, 1.0])
    np.testing.assert_allclose(var[:2], [0.25, 0.0])
    assert np.isnan(conf[2]) and np.isnan(var[2])


def test_curve_groups_and_classes():
    values = np.array([0.9, -0.8, 0.05, 0.5, -0.1, np.nan, 0.3, -0.4, 0.0, 0.7, 0.2])
    labels = np.zeros(11, int)
    group, names = curve_groups(values, labels, np.array([0]), share=0.2)  # 10 finite -> 2
    assert names == [(0, "highest", 2), (0, "near zero", 2), (0, "lowest", 2)]
    assert sorted(np.flatnonzero(group == 0)) == [0, 9]  # 0.9, 0.7
    assert sorted(np.flatnonzero(group == 1)) == [2, 8]  # 0.05, 0.0
    assert sorted(np.flatnonzero(group == 2)) == [1, 7]  # -0.8, -0.4
    assert pick_classes(np.arange(10), 4).tolist() == [0, 3, 6, 9]
    assert pick_classes(np.array([5, 2]), 4).tolist() == [2, 5]


def test_scan_split_matches_in_memory_numpy(rich):
    lake, d = rich
    loss, labels = d["loss"], d["labels"]
    classes = np.array([1, 3])
    group, names = curve_groups(d["cld"], labels, classes)
    scan = scan_split(lake.split("train"), classes=classes, row_groups=group,
                      n_groups=len(names), stride=7)  # fmt: skip
    np.testing.assert_allclose(scan.mean_loss, np.nanmean(loss, axis=0))
    np.testing.assert_allclose(scan.accuracy, (loss < 1.0).mean(axis=0))
    for i, c in enumerate(classes):
        np.testing.assert_allclose(scan.class_mean[i], np.nanmean(loss[labels == c], axis=0))
    for g in range(len(names)):
        np.testing.assert_allclose(scan.group_mean[g], np.nanmean(loss[group == g], axis=0))
    rows = np.arange(0, N, 7)
    assert scan.sample_rows.tolist() == rows.tolist()  # crosses the 64-row chunks
    conf, var = data_map_stats(loss[rows])
    np.testing.assert_allclose(scan.confidence, conf)
    np.testing.assert_allclose(scan.variability, var)


# --- the page --------------------------------------------------------------------------------
def _tables(text: str) -> list[str]:
    return re.findall(r"<table>.*?</table>", text, flags=re.S)


def test_report_sections_and_detection_values(rich, tmp_path):
    lake, d = rich
    path = build_report(lake, tmp_path / "r.html")
    text = path.read_text()
    for heading in ("Training dynamics", "Per-class loss curves", "Data map", "Scores",
                    "Noisy-label detection", "Score correlations", "Rank stability of CLD"):  # fmt: skip
        assert f">{heading}<" in text
    assert text.count("<img ") == 6  # the 5 figures and the per-class share of cld <= 0
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert "<link" not in text and "@import" not in text
    detection = next(t for t in _tables(text) if "precision_at_noise_rate" in t)
    for name, values, direction in (
        ("cld", d["cld"], "higher_keep"),
        ("hardness", d["loss"].mean(axis=1), "higher_harder"),
    ):
        row = detection_row(values, d["noisy"], direction)
        cells = f"<td>{name}</td><td>{direction}</td><td>{row['n']}</td><td>{row['noisy']}</td>"
        assert cells in detection
        assert (
            f"<td>{row['auroc']:.4g}</td><td>{row['precision_at_noise_rate']:.4g}</td>" in detection
        )
        assert row["auroc"] > 0.9  # noisy samples keep a high loss: both find them
    assert "noisy labels among the lowest-scored" in text  # cld: lowest first
    assert "hardness: noisy labels among the highest-scored" in text
    stability = next(t for t in _tables(text) if "top 10% overlap" in t)
    rho, n = spearman(d["cld"], d["first4"])
    assert (
        f"<td>cld</td><td>0..7 (8)</td><td>cld_first4</td><td>0..3 (4)</td><td>{rho:.4g}</td>"
        in stability
    )
    assert f"<td>{n}</td>" in stability and n == N - 2  # cld NaN at row 7, first4 at 5
    assert "every training row (600 samples)" in text


def test_report_samples_at_most_max_points(rich, tmp_path):
    lake, _ = rich
    text = build_report(lake, tmp_path / "r.html", max_points=50).read_text()
    assert "every 12th training row (50 of 600 samples)" in text
    assert MAX_POINTS == 200_000
    with pytest.raises(Exception, match="max_points"):
        build_report(lake, tmp_path / "s.html", max_points=0)


def test_report_without_scores_val_or_noisy(tmp_path):
    lake = Lake.create(tmp_path / "lake", num_classes=2)
    with SplitWriter(lake, "train", row_chunk=16, channels={"loss": "float16"}) as w:
        w.declare_samples(np.arange(40), np.arange(40) % 2)
        for t in range(3):
            ck = w.checkpoint(t)
            ck.add(np.arange(40), np.full(40, 1.0 - 0.2 * t))
            ck.commit()
    text = build_report(lake.reload(), tmp_path / "r.html").read_text()
    assert text.count("<img ") == 3  # curves, class curves, data map
    assert "No CLD score stored" in text and "Scores<" not in text


def _extent_overlap(a, b) -> bool:
    return not (a.x1 <= b.x0 or b.x1 <= a.x0 or a.y1 <= b.y0 or b.y1 <= a.y0)


def test_legends_do_not_cover_the_axes():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    x = np.arange(10.0)
    figs = [
        plots.training_curves(
            {"train mean loss": (x, x), "val mean loss": (x, x + 1)},
            {"train accuracy": (x, x / 10)},
        ),  # fmt: skip
        plots.class_curves(
            [
                {
                    "label": c,
                    "val": (x, x),
                    "train": (x, x + 1),
                    "groups": {
                        "highest": (x, x / 2, 3),
                        "near zero": (x, x, 3),
                        "lowest": (x, 2 * x, 3),
                    },
                }
                for c in range(3)
            ]
        ),  # fmt: skip
        plots.score_histograms(
            [
                {
                    "name": n,
                    "edges": np.linspace(0, 1, 6),
                    "direction": "higher_keep",
                    "groups": {"clean labels": np.arange(5), "noisy labels": np.arange(5)[::-1]},
                }
                for n in ("a", "b")
            ]
        ),  # fmt: skip
    ]
    for fig in figs:
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        renderer = canvas.get_renderer()
        legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
        assert legends
        for legend in legends:
            box = legend.get_window_extent(renderer)
            for ax in fig.axes:
                if ax.get_visible():
                    assert not _extent_overlap(box, ax.get_window_extent(renderer))
        for ax in fig.axes:  # titles sit above their axes
            if ax.get_visible() and ax.get_title():
                assert (
                    ax.title.get_window_extent(renderer).y0 >= ax.get_window_extent(renderer).y1 - 1
                )


def test_to_img_is_a_decodable_png():
    from matplotlib.image import imread

    fig = plots.data_map(np.array([0.2, 0.8]), np.array([0.1, 0.3]), np.array([-0.5, 0.5]), "cld")
    tag = plots.to_img(fig, "a <map>")
    assert 'alt="a &lt;map&gt;"' in tag
    data = base64.b64decode(re.search(r'base64,([^"]+)"', tag).group(1))
    pixels = imread(io.BytesIO(data), format="png")
    w, h = re.search(r'width="(\d+)" height="(\d+)"', tag).groups()
    assert pixels.shape[:2] == (int(h), int(w)) and pixels.std() > 0


def _images(text: str) -> dict[str, np.ndarray]:
    """Every embedded PNG of the page, decoded, by its alt text."""
    import html

    from matplotlib.image import imread

    found = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]*)"', text)
    return {
        html.unescape(alt): imread(io.BytesIO(base64.b64decode(data)), format="png")
        for data, alt in found
    }


def test_report_diagnostics_section(tmp_path):
    from cld_lake.diagnostics import class_nonpositive_share, selection_alignment
    from cld_lake.select import select

    lake, d = rich_lake(tmp_path / "lake", n=200)
    train = lake.split("train")
    rng = np.random.default_rng(3)
    for run, noise in (("seed1", 0.0), ("seed2", 0.3)):  # the same score from two runs
        store_score(lake, train, f"cld_{run}", d["cld"] + noise * rng.standard_normal(200),
                    {"method": "cld", "run": run})  # fmt: skip
    select(lake, "cld", fraction=0.25, out=lake.path / "manifests" / "top.parquet")
    text = build_report(lake, tmp_path / "r.html").read_text()
    assert ">Diagnostics<" in text and ">Classes: share of CLD &lt;= 0<" in text
    images = _images(text)
    share_png = images["per-class share of cld <= 0"]
    assert share_png.std() > 0
    labels, cld = d["labels"], d["cld"]
    scored = ~np.isnan(cld)
    overall = (cld[scored] <= 0).sum() / scored.sum()  # by hand
    assert f"{overall:.1%} over all {int(scored.sum())} scored samples" in text
    shares = next(t for t in _tables(text) if "<th>nonpositive</th>" in t)
    for row in class_nonpositive_share(lake, "cld"):
        mine = (labels == row["label"]) & scored
        assert row["nonpositive"] == int((cld[mine] <= 0).sum())
        assert f"<td>{row['label']}</td><td>{row['samples']}</td>" in shares
    alignment = next(t for t in _tables(text) if "<td>top.parquet</td>" in t)
    a = selection_alignment(lake, lake.path / "manifests" / "top.parquet", "cld")
    assert (
        f"<td>{a['selected']}</td><td>{a['mean']:.4g}</td><td>{a['pool_mean']:.4g}</td>"
        in alignment
    )
    assert a["selected"] == 50 and a["mean"] > a["pool_mean"]  # top-k keeps the highest cld
    runs = next(t for t in _tables(text) if "<th>run a</th>" in t)
    rho, n = spearman(lake_scores(lake, "cld_seed1"), lake_scores(lake, "cld_seed2"))
    assert (
        f"<td>seed1</td><td>seed2</td><td>cld_seed1</td><td>cld_seed2</td><td>{rho:.4g}</td><td>{n}</td>"
        in runs
    )
    assert "Coreset accuracy" not in text  # no --compare


def lake_scores(lake, name):
    from cld_lake.lake.scores import read_scores

    return read_scores(lake, [name]).column(name).to_numpy(zero_copy_only=False).astype(float)


def test_report_compare_draws_accuracy_vs_fraction(tmp_path, cli):
    import json

    from cld_lake.report import compare_series

    lake, _ = rich_lake(tmp_path / "lake", n=120)

    def row(method, fraction, mean, lo, hi):
        return {"method": method, "fraction": fraction, "seeds": 2, "mean": mean, "min": lo,
                "max": hi}  # fmt: skip

    rows = [row("cld", 0.1, 0.6, 0.58, 0.61), row("cld", 0.3, 0.7, 0.68, 0.71),
            row("random", 0.1, 0.5, 0.48, 0.51), row("random", 0.3, 0.6, 0.58, 0.61),
            row("full", 1.0, 0.9, 0.88, 0.91), row("aum", 0.1, None, None, None)]  # fmt: skip
    out = tmp_path / "compare"
    out.mkdir()
    (out / "results.json").write_text(
        json.dumps({"dataset": "mnist1d", "seeds": 2, "accuracy": rows})
    )
    methods, full = compare_series(json.loads((out / "results.json").read_text()))
    assert methods == {"cld": [(0.1, 0.6, 0.58, 0.61), (0.3, 0.7, 0.68, 0.71)],
                       "random": [(0.1, 0.5, 0.48, 0.51), (0.3, 0.6, 0.58, 0.61)]}  # fmt: skip
    assert full == (0.9, 0.88, 0.91)
    r = cli("report", lake.path, "--out", tmp_path / "r.html", "--compare", out)
    assert r.code == 0, r.err
    text = (tmp_path / "r.html").read_text()
    assert ">Coreset accuracy<" in text and "mnist1d, 2 seed(s)" in text
    png = _images(text)["test accuracy vs fraction kept"]
    assert png.shape[0] > 100 and png.std() > 0
    (tmp_path / "bad.json").write_text(json.dumps({"accuracy": "no"}))
    r = cli("report", lake.path, "--out", tmp_path / "s.html", "--compare", tmp_path / "bad.json")
    assert r.code == 2 and "accuracy" in r.err and not (tmp_path / "s.html").exists()
    r = cli("report", lake.path, "--out", tmp_path / "s.html", "--compare", tmp_path / "nowhere")
    assert r.code == 2 and "results.json" in r.err
