"""Named groups (issue 17, item 1): group names import as the integer labels of their sorted
names, keep their ids as splits and imports add names, and read by name in SQL, selections
and manifests; the writer takes names as labels."""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cld_lake
from cld_lake.errors import BadInputError
from cld_lake.lake import (
    Lake,
    SampleBlocks,
    SplitWriter,
    _groups,
    _import_samples,
    compact,
    import_file,
    open_lake,
)
from cld_lake.score import compute_scores

# a group name: any text without a lone surrogate or a NUL, at most 256 bytes
NAME = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=8
)
FORMS = ("npy", "npy_bytes", "parquet_rows", "parquet_ids", "object")


@pytest.fixture
def tiny_blocks(monkeypatch):
    """Blocks of a few rows, so names and ids cross block boundaries on small inputs."""
    monkeypatch.setattr(_import_samples, "BLOCK_ROWS", 7)
    monkeypatch.setattr(_import_samples, "BLOCK_BYTES", 96)
    monkeypatch.setattr(_groups, "BLOCK_BYTES", 96)


def _groups_file(folder: Path, names: list[str], form: str, ids: np.ndarray) -> Path:
    """The names of each row as ``--groups`` takes them, in one of its forms."""
    if form == "npy":
        np.save(folder / "g.npy", np.array(names))
        return folder / "g.npy"
    if form == "npy_bytes":
        np.save(folder / "g.npy", np.array([n.encode() for n in names]))
        return folder / "g.npy"
    if form == "object":  # not a .npy form: the Python writer's; a Parquet file here
        form = "parquet_rows"
    table = {"group": pa.array(names, pa.string())}
    if form == "parquet_ids":  # joined on sample_id: rows shuffled
        order = np.random.default_rng(len(names)).permutation(len(names))
        table = {"sample_id": pa.array(ids[order]), "group": pa.array(np.array(names)[order])}
    pq.write_table(pa.table(table), folder / "g.parquet", row_group_size=5)
    return folder / "g.parquet"


def _sorted_ids(names: list[str]) -> tuple[list[str], np.ndarray]:
    table = sorted(set(names))
    index = {n: i for i, n in enumerate(table)}
    return table, np.array([index[n] for n in names], np.int64)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_string_groups_import_as_the_labels_of_their_sorted_names(tiny_blocks, data):
    names = data.draw(st.lists(NAME, min_size=1, max_size=6, unique=True), "names")
    n = data.draw(st.integers(1, 60), "n")
    t = data.draw(st.integers(3, 5), "t")
    rows = data.draw(st.lists(st.sampled_from(names), min_size=n, max_size=n), "rows")
    form = data.draw(st.sampled_from(FORMS), "form")
    shuffled = data.draw(st.booleans(), "shuffled ids")
    rng = np.random.default_rng(n * 7 + t)
    ids = rng.permutation(n).astype(np.int64) + 5 if shuffled else np.arange(n) + 5
    table, labels = _sorted_ids(rows)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        np.save(folder / "loss.npy", rng.uniform(0.1, 3, (n, t)).astype(np.float32))
        np.save(folder / "ids.npy", ids)
        np.save(folder / "labels.npy", labels)
        groups = _groups_file(folder, rows, form, ids)
        common = {"loss": folder / "loss.npy", "sample_ids": folder / "ids.npy", "row_chunk": 16}
        named, plain = folder / "named", folder / "plain"
        for split in ("train", "val"):
            import_file(named, split, groups=groups, **common)
            import_file(plain, split, labels=folder / "labels.npy", **common)
        a, b = open_lake(named), open_lake(plain)
        assert a.group_names() == tuple(table) and b.group_names() is None
        assert a.num_classes == len(table)
        for split in ("train", "val"):
            np.testing.assert_array_equal(a.split(split).labels, b.split(split).labels)
            np.testing.assert_array_equal(a.split(split).sample_ids, ids)
        got = cld_lake.query(
            named, "SELECT sample_id, label, group_name FROM samples WHERE split = 'train'"
        )
        by_id = dict(zip(ids.tolist(), rows, strict=True))
        assert [by_id[i] for i in got["sample_id"]] == got["group_name"].to_list()
        counts = cld_lake.query(named, "SELECT group_name, count(*) AS n FROM samples GROUP BY 1")
        assert dict(zip(counts["group_name"], counts["n"], strict=True)) == {
            k: 2 * v for k, v in Counter(rows).items()
        }
        for lake in (named, plain):
            compute_scores(lake, ["cld", "mean_loss"])
        sa = cld_lake.query(named, "SELECT sample_id, label, group_name, cld FROM scores")
        sb = cld_lake.query(plain, "SELECT sample_id, label, cld FROM scores")
        assert sa["sample_id"].to_list() == sb["sample_id"].to_list()
        np.testing.assert_array_equal(sa["cld"].to_numpy(), sb["cld"].to_numpy())
        assert sa["group_name"].to_list() == [table[i] for i in sa["label"]]
        for score in ("cld", "mean_loss"):
            ma = cld_lake.select(named, score, fraction=0.5)
            mb = cld_lake.select(plain, score, fraction=0.5)
            np.testing.assert_array_equal(ma.sample_ids, mb.sample_ids)
            np.testing.assert_array_equal(ma.labels, mb.labels)
            assert ma.group_names == [table[i] for i in ma.labels] and mb.group_names is None
            assert ma.table.column_names == [*mb.table.column_names, "group_name"]


@settings(max_examples=12, deadline=None)
@given(
    batches=st.lists(
        st.lists(st.sampled_from(["web", "code", "books", "papers", "math", "é", "zz", "a b"]),
                 min_size=1, max_size=25),
        min_size=2, max_size=4,
    )
)  # fmt: skip
def test_new_names_extend_the_table_and_every_name_keeps_its_id(batches):
    """A model: the table is the first split's names sorted, then each later split's new
    names sorted; every split's labels read back as its names, whatever was added later."""
    model: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        lake = Lake.create(folder / "lake")
        written = {}
        for i, rows in enumerate(batches):
            split = ("train", "target", "heldout_code", "val")[i]
            run = "seed1" if i == 2 else None
            with SplitWriter(lake, split, run=run, row_chunk=8) as writer:
                writer.declare_samples(np.arange(len(rows)), np.array(rows))
            model += sorted(set(rows) - set(model))
            written[(run, split)] = rows
            lake = open_lake(folder / "lake")
            assert lake.group_names() == tuple(model)
            for (r, s), names in written.items():
                labels = lake.split(s, run=r).labels
                assert [model[k] for k in labels] == names
        compact(lake)
        assert open_lake(folder / "lake").group_names() == tuple(model)


def _named_lake(path: Path, n: int = 40, t: int = 4) -> Path:
    rng = np.random.default_rng(0)
    np.save(path.parent / "loss.npy", rng.uniform(0.1, 2, (n, t)).astype(np.float32))
    np.save(path.parent / "g.npy", np.array(["web", "code", "books", "web"] * (n // 4)))
    for split in ("train", "val"):
        import_file(path, split, loss=path.parent / "loss.npy", groups=path.parent / "g.npy")
    return path


def test_appending_checkpoints_with_the_same_names_keeps_the_split(tmp_path):
    lake = _named_lake(tmp_path / "lake")
    before = open_lake(lake).split("train").labels.copy()
    np.save(tmp_path / "ck.npy", np.arange(10, 14))
    import_file(lake, "train", loss=tmp_path / "loss.npy", groups=tmp_path / "g.npy",
                checkpoint_ids=tmp_path / "ck.npy")  # fmt: skip
    split = open_lake(lake).split("train")
    assert split.num_checkpoints == 8
    np.testing.assert_array_equal(split.labels, before)
    # the same samples with other names: refused, as other labels are
    other = np.load(tmp_path / "g.npy")
    other[0] = "code"
    np.save(tmp_path / "g2.npy", other)
    np.save(tmp_path / "ck2.npy", np.arange(20, 24))
    with pytest.raises(BadInputError, match="differ from the groups stored"):
        import_file(lake, "train", loss=tmp_path / "loss.npy", groups=tmp_path / "g2.npy",
                    checkpoint_ids=tmp_path / "ck2.npy")  # fmt: skip
    other[0] = "never seen"
    np.save(tmp_path / "g3.npy", other)
    with pytest.raises(BadInputError, match="differ from the groups stored"):
        import_file(lake, "train", loss=tmp_path / "loss.npy", groups=tmp_path / "g3.npy",
                    checkpoint_ids=tmp_path / "ck2.npy")  # fmt: skip
    assert open_lake(lake).group_names() == ("books", "code", "web")


def test_the_writer_takes_names_as_labels_whole_in_blocks_and_batch_by_batch(tmp_path):
    lake = Lake.create(tmp_path / "lake")
    with SplitWriter(lake, "train") as writer:
        writer.declare_samples(np.arange(4), np.array(["b", "a", "b", "c"], dtype=object))
    names = np.array(["c", "d", "a", "d", "e"])

    def blocks():
        for a in range(0, 5, 2):
            yield np.arange(a, min(a + 2, 5)), names[a : a + 2]

    with SplitWriter(lake, "val") as writer:
        writer.declare_samples(SampleBlocks(blocks, num_rows=5))
    with SplitWriter(lake, "test") as writer:
        buffer = writer.checkpoint(0)
        buffer.add(np.arange(3), np.ones(3), labels=["e", "f", "a"])
        buffer.add(np.arange(3, 5), np.ones(2), labels=np.array(["a", "b"]))
        buffer.commit()
    lake = open_lake(tmp_path / "lake")
    assert lake.group_names() == ("a", "b", "c", "d", "e", "f")
    assert lake.split("train").labels.tolist() == [1, 0, 1, 2]
    assert lake.split("val").labels.tolist() == [2, 3, 0, 3, 4]
    assert lake.split("test").labels.tolist() == [4, 5, 0, 0, 1]
    with SplitWriter(lake, "test") as writer:  # an existing split: names compared by id
        buffer = writer.checkpoint(1)
        buffer.add(np.arange(5), np.zeros(5), labels=["e", "f", "a", "a", "b"])
        buffer.commit()
        buffer = writer.checkpoint(2)
        with pytest.raises(BadInputError, match="label 'c' differs from its stored label 'e'"):
            buffer.add(np.arange(1), np.zeros(1), labels=["c"])
        with pytest.raises(BadInputError, match="not among the lake's 6 group names"):
            buffer.add(np.arange(1), np.zeros(1), labels=["zz"])
    with SplitWriter(lake, "more") as writer, pytest.raises(BadInputError, match="same kind"):
        buffer = writer.checkpoint(0)
        buffer.add(np.arange(1), np.zeros(1), labels=["a"])
        buffer.add(np.arange(1, 2), np.zeros(1), labels=[1])
    with SplitWriter(lake, "more") as writer, pytest.raises(BadInputError, match="names its"):
        writer.declare_samples(np.arange(2), np.array([0, 1]))
    assert "more" not in open_lake(tmp_path / "lake").splits()


def test_a_names_hint_skips_the_pass_and_a_wrong_one_is_refused(tmp_path):
    lake = Lake.create(tmp_path / "lake")
    calls = []
    names = np.array(["x", "y", "x"])

    def blocks():
        calls.append(1)
        yield np.arange(3), names

    with SplitWriter(lake, "train") as writer:
        writer.declare_samples(SampleBlocks(blocks, num_rows=3, group_names={"x", "y"}))
    assert len(calls) == 2  # the checksum pass and the write; no pass to gather names
    names = np.array(["x", "z", "y"])  # "z" is new to the lake, and not among those given
    with SplitWriter(lake, "val") as writer, pytest.raises(BadInputError, match="'z' is not"):
        writer.declare_samples(SampleBlocks(blocks, num_rows=3, group_names={"y"}))
    lake = open_lake(tmp_path / "lake")
    assert lake.splits() == ["train"] and lake.group_names() == ("x", "y")


def test_integer_groups_are_labels(tmp_path, cli):
    """``--groups`` of integers is ``--labels``: the same lake, no names table."""
    rng = np.random.default_rng(1)
    np.save(tmp_path / "loss.npy", rng.random((30, 3)).astype(np.float32))
    y = rng.integers(0, 4, 30)
    np.save(tmp_path / "y.npy", y)
    pq.write_table(pa.table({"group": y}), tmp_path / "y.parquet")
    for flag, file, lake in (("--labels", "y.npy", "a"), ("--groups", "y.npy", "b"),
                             ("--groups", "y.parquet", "c")):  # fmt: skip
        r = cli("import", tmp_path / lake, "--split", "train", "--loss", tmp_path / "loss.npy",
                flag, tmp_path / file)  # fmt: skip
        assert r.code == 0, r.err
    a, b, c = (open_lake(tmp_path / x) for x in "abc")
    assert b.group_names() is None and not (tmp_path / "b" / "groups").exists()
    np.testing.assert_array_equal(a.split("train").labels, b.split("train").labels)
    np.testing.assert_array_equal(a.split("train").labels, c.split("train").labels)
    assert cld_lake.query(tmp_path / "b", "SELECT * FROM samples").columns == [
        "split", "sample_id", "label"
    ]  # fmt: skip


def test_a_long_parquet_loss_may_carry_its_groups(tmp_path):
    rng = np.random.default_rng(2)
    n, t = 12, 3
    ids = np.repeat(np.arange(n), t)
    names = np.array(["web", "code", "books"])[np.arange(n) % 3]
    long = pa.table({
        "sample_id": ids, "checkpoint": np.tile(np.arange(t), n),
        "loss": rng.random(n * t), "group": names[ids],
    })  # fmt: skip
    pq.write_table(long, tmp_path / "long.parquet")
    import_file(tmp_path / "lake", "train", loss=tmp_path / "long.parquet")
    lake = open_lake(tmp_path / "lake")
    assert lake.group_names() == ("books", "code", "web")
    assert [lake.group_names()[k] for k in lake.split("train").labels] == names.tolist()
    mixed = long.set_column(3, "group", pa.array(np.where(long["loss"].to_numpy() > 0.5,
                                                            "web", "code")))  # fmt: skip
    pq.write_table(mixed, tmp_path / "mixed.parquet")
    with pytest.raises(BadInputError, match="more than one group"):
        import_file(tmp_path / "lake2", "train", loss=tmp_path / "mixed.parquet")
    assert not (tmp_path / "lake2").exists()


def test_manifests_of_a_named_lake_checksum_their_group_names(tmp_path):
    lake = _named_lake(tmp_path / "lake")
    compute_scores(lake, "mean_loss")
    m = cld_lake.select(lake, "mean_loss", fraction=0.5, out=tmp_path / "m.parquet")
    loaded = cld_lake.load_manifest(tmp_path / "m.parquet")
    assert loaded.group_names == m.group_names
    assert set(loaded.group_names) == {"books", "code", "web"}
    table = pq.read_table(tmp_path / "m.parquet")
    names = table.column("group_name").to_pylist()
    names[0] = "code" if names[0] != "code" else "web"
    forged = table.set_column(4, "group_name", pa.array(names)).replace_schema_metadata(
        table.schema.metadata
    )
    pq.write_table(forged, tmp_path / "forged.parquet")
    with pytest.raises(cld_lake.CldLakeError, match="checksum mismatch"):
        cld_lake.load_manifest(tmp_path / "forged.parquet")


def test_info_names_the_groups_and_truncates_a_thousand_of_them(tmp_path, cli):
    n = 2400
    names = np.array([f"g{i:04d}" for i in range(1200)])
    np.save(tmp_path / "loss.npy", np.full((n, 3), 0.5, np.float32))
    np.save(tmp_path / "g.npy", np.concatenate([names, names[:1000], names[:200]]))
    r = cli("import", tmp_path / "lake", "--split", "heldout_code", "--loss",
            tmp_path / "loss.npy", "--groups", tmp_path / "g.npy")  # fmt: skip
    assert r.code == 0, r.err
    r = cli("info", tmp_path / "lake")
    assert r.code == 0 and "groups: 1,200 named (ids 0..1199): g0000, g0001" in r.out, r.out
    assert "(1,192 more)" in r.out and "1200 groups" in r.out
    assert "largest groups: g0000 3, g0001 3, g0002 3, g0003 3, g0004 3, ... (1,195 more)" in r.out
    assert max(len(line) for line in r.out.splitlines()) < 200
    info = json.loads(cli("info", tmp_path / "lake", "--json").out)
    assert info["groups"]["count"] == 1200 and len(info["groups"]["names"]) == 1000
    assert info["groups"]["names_not_shown"] == 200
    split = info["splits"]["heldout_code"]
    assert len(split["groups"]) == 1000 and split["groups_not_shown"] == 200
    assert split["groups"][0] == {"id": 0, "name": "g0000", "samples": 3}
    assert [g["samples"] for g in split["groups"]] == sorted(
        (g["samples"] for g in split["groups"]), reverse=True
    )


def test_the_report_shows_groups_by_name(tmp_path):
    from cld_lake.report import build_report

    lake = _named_lake(tmp_path / "lake", n=80)
    compute_scores(lake, "cld")
    page = build_report(lake, tmp_path / "r.html").read_text()
    assert "3 named groups" in page and "Groups: share of CLD" in page
    assert "Per-group loss curves" in page and "Groups books, code, web" in page
    assert "<td>books</td>" in page and "largest groups" in page
    assert "class 0" not in page and "Classes 0" not in page


@pytest.mark.parametrize("layout", ["long", "wide", "columns"])
def test_an_export_of_named_groups_imports_back_named(tmp_path, cli, layout):
    """Export writes each sample's name as ``group`` beside its id: every layout imports back
    into a lake with the same names, ids and losses (names are not lost on the way)."""
    rng = np.random.default_rng(3)
    names = np.array(["web", "code", "books", "papers"])
    loss = rng.uniform(0.1, 3, (40, 5)).astype(np.float32)
    np.save(tmp_path / "l.npy", loss)
    np.save(tmp_path / "g.npy", names[rng.integers(0, 4, 40)])
    np.save(tmp_path / "ids.npy", rng.permutation(40) + 7)
    src, back, out = tmp_path / "src.lake", tmp_path / "back.lake", tmp_path / "e.parquet"
    r = cli("import", src, "--split", "train", "--loss", tmp_path / "l.npy",
            "--groups", tmp_path / "g.npy", "--sample-ids", tmp_path / "ids.npy")  # fmt: skip
    assert r.code == 0, r.err
    assert cli("export", src, "--split", "train", "--layout", layout, "--out", out).code == 0
    r = cli("import", back, "--split", "train", "--loss", out)
    assert r.code == 0, r.err
    assert open_lake(back).group_names() == open_lake(src).group_names()
    query = "SELECT sample_id, label, group_name FROM samples ORDER BY sample_id"
    assert cld_lake.query(back, query).equals(cld_lake.query(src, query))
    losses = "SELECT sample_id, checkpoint, loss FROM losses ORDER BY 1, 2"
    assert cld_lake.query(back, losses).equals(cld_lake.query(src, losses))
