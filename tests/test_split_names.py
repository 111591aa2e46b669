"""Any validated split name (issue 17, item 2): besides train, val and test a lake holds the
splits a user names (``target``, ``heldout_code``); import, info, verify, SQL, compact and the
report handle them, and ``train`` stays the split scores rank."""

from __future__ import annotations

import json

import numpy as np

import cld_lake
from cld_lake.lake import open_lake

SPLITS = {"train": 60, "val": 30, "target": 20, "heldout_code": 10}


def test_custom_split_names_end_to_end(tmp_path, cli):
    rng = np.random.default_rng(0)
    lake = tmp_path / "lake"
    for split, n in SPLITS.items():
        np.save(tmp_path / f"{split}_loss.npy", rng.uniform(0.1, 2, (n, 5)).astype(np.float32))
        np.save(tmp_path / f"{split}_groups.npy", np.array(["web", "code"] * (n // 2)))
        r = cli("import", lake, "--split", split, "--loss", tmp_path / f"{split}_loss.npy",
                "--groups", tmp_path / f"{split}_groups.npy")  # fmt: skip
        assert r.code == 0 and f"[{split}]" in r.out, r.err
    assert open_lake(lake).splits() == ["train", "val", "heldout_code", "target"]
    r = cli("info", lake)
    assert r.code == 0
    for split, n in SPLITS.items():
        assert any(line.split()[:2] == [split, f"{n:,}"] for line in r.out.splitlines()), r.out
    info = json.loads(cli("info", lake, "--json").out)
    assert {k: v["samples"] for k, v in info["splits"].items()} == SPLITS
    r = cli("verify", lake)
    assert r.code == 0, r.err
    samples = cld_lake.query(lake, "SELECT split, count(*) AS n FROM samples GROUP BY 1")
    assert dict(zip(samples["split"], samples["n"], strict=True)) == SPLITS
    losses = cld_lake.query(lake, "SELECT split, count(*) AS n FROM losses GROUP BY 1")
    assert dict(zip(losses["split"], losses["n"], strict=True)) == {
        k: 5 * n for k, n in SPLITS.items()
    }
    one = cld_lake.query(
        lake, "SELECT count(*) AS n FROM losses WHERE split = 'heldout_code' AND checkpoint = 2"
    )
    assert one["n"][0] == SPLITS["heldout_code"]
    r = cli("score", lake, "--method", "mean_loss")
    assert r.code == 0, r.err
    assert cld_lake.query(lake, "SELECT count(*) AS n FROM scores")["n"][0] == SPLITS["train"]
    # a custom split as CLD's reference, imported from the command line, selected by name
    r = cli("score", lake, "--reference", "split:target", "--name", "cld_target")
    assert r.code == 0 and "reference split:target" in r.out, r.err
    r = cli("score", lake, "--reference-split", "heldout_code", "--name", "cld_code")
    assert r.code == 0 and "of heldout_code" in r.out, r.err
    r = cli(
        "select",
        lake,
        "--score",
        "cld_target",
        "--fraction",
        "0.5",
        "--out",
        tmp_path / "m.parquet",
    )
    assert r.code == 0 and "2 groups" in r.out, r.err
    assert set(cld_lake.load_manifest(tmp_path / "m.parquet").group_names) == {"web", "code"}
    assert cli("score", lake).code == 0  # cld: info's share line names the groups
    r = cli("info", lake)
    assert "highest groups " in r.out and ("web: " in r.out or "code: " in r.out), r.out
    r = cli("compact", lake, "--split", "target")
    assert r.code == 0 and "target" in r.out, r.err
    r = cli("report", lake, "--out", tmp_path / "r.html")
    assert r.code == 0, r.err
    page = (tmp_path / "r.html").read_text()
    assert "target mean loss" in page or ">target<" in page
    assert "heldout_code" in page


def test_a_split_name_must_pass_the_name_rules(tmp_path, cli):
    np.save(tmp_path / "l.npy", np.ones((4, 3), np.float32))
    np.save(tmp_path / "y.npy", np.zeros(4, np.int64))
    for bad in (".hidden", "-flag", "a/b", "x" * 65, ""):
        r = cli("import", tmp_path / "lake", "--split", bad, "--loss", tmp_path / "l.npy",
                "--labels", tmp_path / "y.npy")  # fmt: skip
        assert r.code == 2 and "a split name is" in r.err and "--split" in r.err, (bad, r.err)
        assert len(r.err.strip().splitlines()) == 1
    assert not (tmp_path / "lake").exists()
    r = cli("import", tmp_path / "lake", "--split", "train", "--loss", tmp_path / "l.npy",
            "--labels", tmp_path / "y.npy")  # fmt: skip
    assert r.code == 0, r.err
    r = cli("compact", tmp_path / "lake", "--split", "nope")  # a typo makes no split folder
    assert r.code == 2 and "no split 'nope'" in r.err
    assert sorted(p.name for p in (tmp_path / "lake" / "splits").iterdir()) == ["train"]
