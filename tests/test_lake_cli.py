"""`cld-lake import / info / verify / compact`: success paths and every bad input of issue 2.

Every bad input must give exit 2, one line on stderr, no traceback, and leave the lake
byte-for-byte unchanged.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import lake_hash, run_cli_subprocess


@pytest.fixture
def lake(tmp_path, npy_files, cli):
    path = tmp_path / "lake"
    r = cli(
        "import",
        path,
        "--split",
        "train",
        "--loss",
        npy_files["loss"],
        "--labels",
        npy_files["labels"],
        "--sample-ids",
        npy_files["ids"],
    )
    assert r.code == 0, r.err
    r = cli(
        "import",
        path,
        "--split",
        "val",
        "--loss",
        npy_files["vloss"],
        "--labels",
        npy_files["vlabels"],
    )
    assert r.code == 0, r.err
    return path


def test_info_counts_nans_and_json(lake, cli):
    r = cli("info", lake, "--json")
    assert r.code == 0
    info = json.loads(r.out)
    assert info["num_classes"] == 4
    assert info["splits"]["train"]["samples"] == 300
    assert info["splits"]["train"]["checkpoints"] == 7
    assert info["splits"]["train"]["nonfinite_losses"] == 3
    assert info["splits"]["val"]["nonfinite_losses"] == 0
    assert 4.0 <= info["splits"]["train"]["bytes_per_value"] < 6.0
    r = cli("info", lake)
    assert r.code == 0 and "NaN/inf losses: 3" in r.out


def test_verify_ok_then_detects_a_flipped_byte(lake, cli):
    assert cli("verify", lake).code == 0
    chunk = next(p for p in (lake / "splits" / "train" / "segments").rglob("c/*/*") if p.is_file())
    data = bytearray(chunk.read_bytes())
    data[5] ^= 0xFF
    chunk.write_bytes(bytes(data))
    r = cli("verify", lake)
    assert r.code == 1
    assert "corrupt" in r.err or "unreadable" in r.err


def test_verify_detects_a_missing_segment(lake, cli):
    import shutil

    seg = next((lake / "splits" / "val" / "segments").iterdir())
    shutil.rmtree(seg)
    r = cli("verify", lake)
    assert r.code == 1 and "missing" in r.err


def test_compact_cli(lake, cli):
    r = cli("compact", lake, "--prune")
    assert r.code == 0, r.err
    assert cli("verify", lake).code == 0


def _bad(cli, lake, *args, match: str):
    before = lake_hash(lake)
    r = cli(*args)
    assert r.code == 2, (r.code, r.err)
    assert len(r.err.strip().splitlines()) == 1, r.err
    assert "Traceback" not in r.err + r.out
    assert match in r.err, r.err
    assert lake_hash(lake) == before
    return r


def test_bad_inputs_leave_the_lake_unchanged(lake, tmp_path, npy_files, cli):
    a, f = npy_files["arrays"], npy_files

    def save(name, arr):
        np.save(tmp_path / name, arr)
        return tmp_path / name

    dup = a["ids"].copy()
    dup[1] = dup[0]
    raw = f["loss"].read_bytes()
    (tmp_path / "trunc.npy").write_bytes(raw[: len(raw) // 2])
    # (split, --loss, --labels, extra options, expected words of the one-line error)
    cases = [
        ("test", f["loss"], save("short.npy", a["labels"][:-3]), [], "does not match"),
        ("test", f["loss"], f["labels"], ["--sample-ids", save("dup.npy", dup)], "duplicate"),
        ("test", f["loss"], save("neg.npy", a["labels"] - 1), [], "negative"),
        ("test", f["loss"], save("big.npy", a["labels"] + 4), [], "outside the lake's 4 classes"),
        ("test", save("str.npy", np.full((300, 7), "x")), f["labels"], [], "dtype"),
        ("test", f["loss"], save("flt.npy", a["labels"].astype(float)), [], "dtype"),
        ("test", save("one.npy", a["loss"][:, 0]), f["labels"], [], "2-D"),
        # a checkpoint id written twice: re-importing checkpoints 0..6 into train
        ("train", f["loss"], f["labels"], ["--sample-ids", f["ids"]], "already committed"),
        ("test", f["loss"], f["labels"],
         ["--checkpoint-ids", save("ck.npy", np.array([0, 1, 2, 3, 4, 5, 5]))], "duplicate"),
        ("test", f["loss"], f["labels"], ["--num-classes", "7"], "has 4 classes"),
        ("test", tmp_path / "nope.npy", f["labels"], [], "no such file"),
        ("test", tmp_path / "trunc.npy", f["labels"], [], "truncated"),
        ("test", f["loss"], f["labels"], ["--margin", save("m.npy", a["loss"][:, :3])], "shape"),
        # issue 17: any split name passing the name rules is a split; a name failing them is not
        (".bogus", f["loss"], f["labels"], [], "--split .bogus"),
        ("train", f["loss"], f["labels"],
         ["--checkpoint-ids", save("ck2.npy", np.arange(20, 27))], "not in split"),
        # issue 9: the class limit, ids beyond int64, a loss without checkpoints
        ("test", f["loss"], f["labels"], ["--num-classes", "40000000"], "1,048,576 classes"),
        ("test", f["loss"], f["labels"],
         ["--sample-ids", save("u64.npy", a["ids"].astype(np.uint64) + np.uint64(2**63))],
         "below 2**63"),
        ("test", save("n0.npy", a["loss"][:, :0]), f["labels"], [], "no checkpoints"),
    ]  # fmt: skip
    for split, loss, labels, extra, match in cases:
        args = ["import", lake, "--split", split, "--loss", loss, "--labels", labels, *extra]
        _bad(cli, lake, *args, match=match)


def test_importing_other_samples_into_an_existing_split_is_refused(lake, tmp_path, npy_files, cli):
    a = npy_files["arrays"]
    np.save(tmp_path / "l2.npy", a["loss"][:100])
    np.save(tmp_path / "y2.npy", a["labels"][:100])
    np.save(tmp_path / "c2.npy", np.arange(50, 57))
    _bad(
        cli,
        lake,
        "import",
        lake,
        "--split",
        "train",
        "--loss",
        tmp_path / "l2.npy",
        "--labels",
        tmp_path / "y2.npy",
        "--checkpoint-ids",
        tmp_path / "c2.npy",
        match="has 300 samples",
    )


def test_not_a_lake_and_newer_format(tmp_path, lake, cli):
    notalake = tmp_path / "notalake"
    notalake.mkdir()
    (notalake / "file.txt").write_text("x")
    for cmd in ("verify", "info"):
        r = cli(cmd, notalake)
        assert r.code == 2 and "not a cld_lake lake" in r.err and len(r.err.splitlines()) == 1
    r = cli("info", tmp_path / "missing")
    assert r.code == 2 and "no such lake" in r.err
    before = lake_hash(notalake)
    np.save(tmp_path / "l.npy", np.zeros((3, 3), np.float32))
    np.save(tmp_path / "y.npy", np.zeros(3, np.int64))
    r = cli(
        "import",
        notalake,
        "--split",
        "train",
        "--loss",
        tmp_path / "l.npy",
        "--labels",
        tmp_path / "y.npy",
    )
    assert r.code == 2 and "not a lake" in r.err and lake_hash(notalake) == before
    meta = json.loads((lake / "cld_lake.json").read_text())
    meta["format_version"] = 99
    (lake / "cld_lake.json").write_text(json.dumps(meta))
    r = cli("verify", lake)
    assert r.code == 2 and "newer" in r.err and "upgrade" in r.err


def test_failed_import_into_a_new_lake_creates_nothing(tmp_path, npy_files, cli):
    a = npy_files["arrays"]
    np.save(tmp_path / "neg.npy", a["labels"] - 1)
    r = cli(
        "import",
        tmp_path / "new",
        "--split",
        "train",
        "--loss",
        npy_files["loss"],
        "--labels",
        tmp_path / "neg.npy",
    )
    assert r.code == 2
    assert not (tmp_path / "new").exists()


def test_cli_subprocess_usage_error_is_one_line(tmp_path):
    r = run_cli_subprocess("import", tmp_path / "x", "--split", "train")
    assert r.code == 2
    assert len(r.err.strip().splitlines()) == 1 and "Missing option" in r.err
    r = run_cli_subprocess("--version")
    assert r.code == 0 and "cld-lake" in r.out


def test_env_names_versions_and_kernel(cli):
    r = cli("env")
    assert r.code == 0
    assert "zarr" in r.out and "duckdb" in r.out and "CLD kernel: compiled C" in r.out


def test_info_shows_the_per_class_share_of_nonpositive_cld(lake, cli):
    from cld_lake.lake import open_lake
    from cld_lake.lake.scores import store_score

    r = cli("info", lake, "--json")
    assert "diagnostics" not in json.loads(r.out)  # no cld score: nothing to show
    opened = open_lake(lake)
    train = opened.split("train")
    labels = train.labels
    cld = np.where(np.arange(len(labels)) % 2 == 0, -1.0, 1.0)  # half of the rows <= 0 ...
    cld[labels == 1] = 0.0  # ... all of class 1 (0 counts as non-positive)
    cld[labels == 2] = 1.0  # ... none of class 2
    cld[np.flatnonzero(labels == 3)[:2]] = np.nan  # two nulls in class 3
    store_score(opened, train, "cld", cld, {"method": "cld"})
    rows = json.loads(cli("info", lake, "--json").out)["diagnostics"]["cld_nonpositive_share"]
    assert [row["label"] for row in rows] == [0, 1, 2, 3]
    for row in rows:
        mine = labels == row["label"]
        scored = mine & ~np.isnan(cld)
        expected = int((cld[scored] <= 0).sum())
        assert row["samples"] == int(mine.sum()) and row["null"] == int((mine & ~scored).sum())
        assert row["nonpositive"] == expected
        assert row["share"] == pytest.approx(expected / scored.sum())
    assert rows[1]["share"] == 1.0 and rows[2]["share"] == 0.0 and rows[3]["null"] == 2
    text = cli("info", lake).out
    overall = sum(r["nonpositive"] for r in rows) / (~np.isnan(cld)).sum()
    line = next(ln for ln in text.splitlines() if "cld <= 0" in ln)
    assert f"{overall:.1%} of {int((~np.isnan(cld)).sum())} scored" in line
    assert "highest classes 1: 100.0%" in line and "2: 0.0%" not in line


def test_info_shows_noisy_label_detection_of_every_stored_score(tmp_path, cli):
    """Where the train samples carry a noisy flag, info gives each score's AUROC and precision
    at the noise rate (cld_lake.diagnostics.noise_detection), oriented by its direction."""
    from cld_lake.lake import open_lake
    from cld_lake.lake.scores import store_score
    from cld_lake.lake.writer import SplitWriter
    from tests.conftest import import_arrays, make_arrays

    loss, labels, ids = make_arrays(40, 4, 2, seed=6)
    import_arrays(tmp_path, tmp_path / "lk", loss=loss, labels=labels)
    noisy = np.arange(40) % 4 == 0  # 10 flipped labels
    with SplitWriter(open_lake(tmp_path / "lk"), "train") as w:
        w.annotate_samples({"noisy": noisy})
    lake = open_lake(tmp_path / "lk")
    train = lake.split("train")
    store_score(lake, train, "cld", np.where(noisy, -1.0, 1.0), {"method": "cld"})  # perfect
    hard = np.where(noisy, 0.0, 1.0)
    hard[np.flatnonzero(noisy)[:5]] = 2.0  # half the flips look clean for a higher_harder score
    store_score(lake, train, "hard", hard, {"method": "x", "direction": "higher_harder"})
    rows = json.loads(cli("info", tmp_path / "lk", "--json").out)["diagnostics"]["noise_detection"]
    by = {r["score"]: r for r in rows}
    assert by["cld"]["auroc"] == 1.0 and by["cld"]["precision_at_rate"] == 1.0
    assert by["hard"]["direction"] == "higher_harder" and by["hard"]["precision_at_rate"] == 0.5
    line = next(ln for ln in cli("info", tmp_path / "lk").out.splitlines() if "noisy-label" in ln)
    assert "cld 1.000/1.000" in line and "hard " in line
