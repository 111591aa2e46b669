"""Named groups refuse what they cannot use (issue 17, item 1): bad group inputs are one line,
exit 2, the lake unchanged; a damaged, missing or inconsistent names table is one line, exit
1, everywhere it would be read, and never used."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cld_lake._meta import with_checksum
from cld_lake.errors import CorruptLakeError
from cld_lake.lake import _format as fmt
from cld_lake.lake import open_lake
from cld_lake.lake._groups import names_digest
from tests.conftest import lake_hash

N, T = 24, 4


def _refused(result, code: int, *words: str) -> None:
    assert result.code == code, (result.code, result.out, result.err)
    err = result.err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    np.save(folder / "loss.npy", rng.uniform(0.1, 2, (N, T)).astype(np.float32))
    np.save(folder / "names.npy", np.array(["web", "code", "books"] * (N // 3)))
    np.save(folder / "more.npy", np.array(["web", "math", "zeta", "code"] * (N // 4)))
    np.save(folder / "ints.npy", rng.integers(0, 3, N))
    return folder


@pytest.fixture
def named(tmp_path, inputs, cli):
    """A lake whose train split holds books, code, web and whose val adds math, zeta: its
    names table has two parts."""
    lake = tmp_path / "named"
    for split, groups in (("train", "names.npy"), ("val", "more.npy")):
        r = cli("import", lake, "--split", split, "--loss", inputs / "loss.npy",
                "--groups", inputs / groups)  # fmt: skip
        assert r.code == 0, r.err
    assert open_lake(lake).group_names() == ("books", "code", "web", "math", "zeta")
    return lake


def _save(folder: Path, name: str, values) -> Path:
    if name.endswith(".parquet"):
        pq.write_table(values, folder / name)
    else:
        np.save(folder / name, values, allow_pickle=True)
    return folder / name


def test_bad_group_inputs_are_one_line_and_change_nothing(tmp_path, inputs, named, cli):
    plain = tmp_path / "plain"
    r = cli("import", plain, "--split", "train", "--loss", inputs / "loss.npy",
            "--labels", inputs / "ints.npy")  # fmt: skip
    assert r.code == 0, r.err
    names = np.load(inputs / "names.npy")

    def with_name(i: int, value) -> np.ndarray:
        out = names.astype(object)
        out[i] = value
        return np.array(out.tolist())

    f = inputs
    long_name = "x" * 257
    cases = [  # (lake, extra arguments, words of the error)
        (named, ["--labels", f / "ints.npy", "--groups", f / "names.npy"], ["give one of them"]),
        (named, ["--groups", _save(f, "empty.npy", with_name(5, ""))],
         ["empty group name at row 5"]),
        (named, ["--groups", _save(f, "long.npy", with_name(3, long_name))],
         ["row 3", "257 bytes", "at most 256"]),
        (named, ["--groups", _save(f, "nul.npy", with_name(2, "a\x00b"))], ["NUL"]),
        (named, ["--groups", _save(f, "bytes.npy", np.array([b"web", b"\xff\xfe"] * (N // 2)))],
         ["row 1", "not valid UTF-8"]),
        (named, ["--groups", _save(f, "nulls.parquet",
                                   pa.table({"group": pa.array(["a", None] * (N // 2))}))],
         ["null group names", "row 1"]),
        (named, ["--groups", _save(f, "obj.npy", np.array(names.tolist(), dtype=object))],
         ["Python objects", "dtype=str"]),
        (named, ["--groups", _save(f, "flt.npy", np.ones(N))], ["float64", "not allowed"]),
        (named, ["--groups", f / "ints.npy"], ["integers", "names its groups", "--groups"]),
        (named, ["--labels", f / "ints.npy"], ["integers", "names its groups"]),
        (plain, ["--groups", f / "names.npy"], ["plain integer groups", "new lake"]),
        (named, ["--groups", f / "names.npy", "--num-classes", "3"], ["not used with group"]),
        (named, ["--groups", _save(f, "g.txt", np.zeros(1)).with_suffix(".txt")],
         ["expected a .npy"]),
        (named, ["--groups", _save(f, "nogroup.parquet", pa.table({"label": np.zeros(N)}))],
         ["missing column 'group'"]),
        (named, ["--groups", _save(f, "fgroup.parquet", pa.table({"group": np.zeros(N)}))],
         ["column group is double"]),
        (named, ["--groups", _save(f, "short.parquet", pa.table({"group": names[:5]}))],
         ["5 rows", "sample_id"]),
        (named, ["--groups", _save(f, "ids.parquet", pa.table({"sample_id": np.arange(3),
                                                                "group": names[:3]}))],
         [f"{N - 3} sample ids have no group"]),
        (named, ["--groups", _save(f, "shape.npy", names[:-1])], ["does not match --loss"]),
    ]  # fmt: skip
    (f / "g.txt").write_text("web\n")
    for lake, extra, words in cases:
        before = lake_hash(lake)
        r = cli("import", lake, "--split", "test", "--loss", f / "loss.npy", *extra)
        _refused(r, 2, *words)
        assert lake_hash(lake) == before, extra
        if "groups" in words[-1] or "new lake" in words[-1]:
            continue  # refused by the lake it goes into: fine in a new one
        fresh = tmp_path / "fresh"
        r = cli("import", fresh, "--split", "train", "--loss", f / "loss.npy", *extra)
        assert r.code == 2 and not fresh.exists(), (extra, r.err)


def test_more_names_than_a_lake_holds_is_one_line_naming_the_fix(tmp_path, inputs, cli):
    n = (1 << 20) + 1
    np.save(tmp_path / "loss.npy", np.zeros((n, 1), np.float16))
    np.save(tmp_path / "keys.npy", np.char.add("k", np.arange(n).astype(str)))
    r = cli("import", tmp_path / "lake", "--split", "train", "--loss", tmp_path / "loss.npy",
            "--groups", tmp_path / "keys.npy")  # fmt: skip
    _refused(r, 2, "1,048,577 group names", "1,048,576 groups", "hash or cluster")
    assert not (tmp_path / "lake").exists()


def test_a_long_parquet_group_column_is_checked(tmp_path, inputs, cli):
    ids = np.repeat(np.arange(4), 2)
    base = {"sample_id": ids, "checkpoint": np.tile([0, 1], 4), "loss": np.ones(8)}
    nulls = pa.table(base | {"group": pa.array(["a", None, "b", "b", "c", "c", "d", "d"])})
    cases = [
        (nulls, [], ["1 null values"]),
        (pa.table(base | {"group": ["a", "a", "b", "c", "c", "c", "d", "d"]}), [],
         ["1 samples have more than one group"]),
        (pa.table(base | {"group": ["a"] * 8}), ["--groups", inputs / "names.npy"],
         ["carries a group column"]),
    ]  # fmt: skip
    for table, extra, words in cases:
        pq.write_table(table, tmp_path / "long.parquet")
        r = cli("import", tmp_path / "lake", "--split", "train", "--loss",
                tmp_path / "long.parquet", *extra)  # fmt: skip
        _refused(r, 2, *words)
        assert not (tmp_path / "lake").exists()


# --- a damaged names table --------------------------------------------------------------------


def _root(lake: Path) -> dict:
    return json.loads((lake / fmt.ROOT_FILE).read_text())


def _rewrite_root(lake: Path, meta: dict) -> None:
    """The root JSON replaced by ``meta`` with a valid checksum (a consistent forgery)."""
    fmt.write_root_metadata(lake, meta)


def _part(lake: Path, i: int) -> Path:
    return lake / _root(lake)[fmt.GROUPS_KEY]["parts"][i]["file"]


def _write_part(path: Path, names: list[str], first: int) -> str:
    table = with_checksum(pa.table({"name": pa.array(names, pa.string())}),
                          {"table": "group_names", "first": first})  # fmt: skip
    pq.write_table(table, path)
    return json.loads(table.schema.metadata[b"cld_lake"])["checksum"]


def _flip(lake: Path) -> str:
    part = _part(lake, 0)
    data = bytearray(part.read_bytes())
    at = data.find(b"books")
    data[at] ^= 0x01  # "books" -> "cooks": a name changed, the file still decodes
    part.write_bytes(bytes(data))
    return "fails its checksum"


def _delete(lake: Path) -> str:
    _part(lake, 1).unlink()
    return "missing"


def _swap(lake: Path) -> str:
    """A valid part of the same ids from another write, in place of the committed one."""
    _write_part(_part(lake, 1), ["math", "zzz"], 3)
    return "is not the file"


def _drop_record(lake: Path) -> str:
    meta = _root(lake)
    del meta[fmt.GROUPS_KEY]
    _rewrite_root(lake, meta)
    return "names table is missing"


def _roll_back(lake: Path) -> str:
    """The record of the first import only: the val split's names are gone."""
    meta = _root(lake)
    record = meta[fmt.GROUPS_KEY]
    first = record["parts"][0]
    names = ["books", "code", "web"]
    meta[fmt.GROUPS_KEY] = {"parts": [first], "count": 3, "digest": names_digest(names)}
    _rewrite_root(lake, meta | {"num_classes": 3})
    return "holds 3"


def _reorder(lake: Path) -> str:
    """The first part's names in another order, every checksum and digest made to match."""
    meta = _root(lake)
    record = meta[fmt.GROUPS_KEY]
    names = ["web", "code", "books"]
    record["parts"][0]["checksum"] = _write_part(_part(lake, 0), names, 0)
    record["digest"] = names_digest([*names, "math", "zeta"])
    _rewrite_root(lake, meta)
    return "not those it was written with"


@pytest.mark.parametrize("damage", [_flip, _delete, _swap, _drop_record, _roll_back, _reorder])
def test_a_damaged_names_table_is_refused_everywhere(named, damage, cli, tmp_path):
    words = damage(named)
    r = cli("verify", named)
    assert r.code == 1 and words in r.err, r.err
    errors = [line for line in r.err.splitlines() if line.startswith("cld-lake: error")]
    assert errors and "Traceback" not in r.err
    for command in (
        ("info", named),
        ("sql", named, "SELECT group_name, count(*) FROM samples GROUP BY 1"),
        ("report", named, "--out", tmp_path / "r.html"),
    ):
        _refused(cli(*command), 1, words)
    with pytest.raises(CorruptLakeError, match=words):
        open_lake(named).group_names()


def test_names_a_write_never_committed_are_debris(named, inputs, cli, tmp_path):
    stray = named / fmt.GROUPS_DIR / "names-000009-0123456789ab.parquet"
    shutil.copy(_part(named, 0), stray)
    r = cli("verify", named)
    assert r.code == 0 and "never committed" in r.err and str(stray) in r.err
    np.save(tmp_path / "new.npy", np.array(["new"] * N))
    r = cli("import", named, "--split", "test", "--loss", inputs / "loss.npy",
            "--groups", tmp_path / "new.npy")  # fmt: skip
    assert r.code == 0 and not stray.exists()
    assert open_lake(named).group_names()[-1] == "new"
    r = cli("verify", named)
    assert r.code == 0 and "never committed" not in r.err
