"""What the command line prints for a newcomer's first mistakes (issues 16.6 and 22)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

import cld_lake
from tests.conftest import import_arrays, make_arrays


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cosmetics")
    loss, labels, ids = make_arrays(120, 4, 3, seed=51)
    vloss, vlabels, _ = make_arrays(30, 4, 3, seed=52)
    import_arrays(d, d / "lake", "train", loss=loss, labels=labels, sample_ids=ids)
    import_arrays(d, d / "lake", "val", loss=vloss, labels=vlabels)
    return d / "lake"


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cld-lake: error: "), err
    return lines[0]


def test_a_misspelt_command_names_the_help_once(cli):
    """Regression: "(see: cld-lake cld-lake --help)"."""
    r = cli("scor")
    line = _one_error_line(r.err)
    assert r.code == 2 and "Did you mean 'score'" in line
    assert line.endswith("(see: cld-lake --help)") and "cld-lake cld-lake" not in line


def test_a_misspelt_option_names_the_command_help(cli, lake):
    r = cli("sql", lake, "SELECT 1", "--outt", "x.csv")
    assert r.code == 2 and _one_error_line(r.err).endswith("(see: cld-lake sql --help)")


def test_bare_cld_lake_prints_the_help_as_click_does(cli):
    """Regression: the whole help folded into one error line."""
    r = cli()
    assert r.code == 2
    lines = r.err.splitlines()
    assert lines[0].startswith("Usage: cld-lake") and "Commands:" in lines
    assert any(line.split()[:1] == ["sql"] for line in lines)  # one command per line
    assert "cld-lake: error" not in r.err


def test_an_unknown_split_is_one_line_without_a_repr(cli, lake, tmp_path):
    """Regression: ``export --split nosuch`` printed the KeyError's repr (quoted)."""
    r = cli("export", lake, "--split", "nosuch", "--out", tmp_path / "x.parquet")
    line = _one_error_line(r.err)
    assert r.code == 2 and "no split 'nosuch'" in line and "train, val" in line
    assert not line.removeprefix("cld-lake: error: ").startswith(('"', "'")), line


def test_wall_time_prints_in_full(cli, lake):
    """Regression: ``checkpoints.wall_time`` printed as ``1.79668e+09``."""
    r = cli("sql", lake, "SELECT wall_time FROM checkpoints LIMIT 1")
    assert r.code == 0, r.err
    cell = r.out.splitlines()[3].strip()
    stored = cld_lake.query(lake, "SELECT wall_time FROM checkpoints LIMIT 1")["wall_time"][0]
    assert "e+" not in cell and float(cell) == pytest.approx(stored, abs=1e-3), cell
    r = cli("sql", lake, "SELECT 1.5e20::DOUBLE AS big, 0.000012345::DOUBLE AS small, 2.5 AS x")
    assert r.out.splitlines()[3].split() == ["1.5e+20", "1.2345e-05", "2.5"]


def test_every_command_help_carries_an_example(cli):
    from cld_lake._cli import cli as app

    for name in app.list_commands(None):
        r = cli(name, "--help")
        assert r.code == 0, (name, r.err)
        assert f"Example: cld-lake {name}" in r.out, f"cld-lake {name} --help has no example"


MEMORY_COMMANDS = [
    ["import", "{url}", "--split", "train", "--loss", "{loss}", "--labels", "{labels}"],
    ["info", "{url}"],
    ["verify", "{url}"],
    ["compact", "{url}"],
    ["score", "{url}"],
    ["sql", "{url}", "SELECT 1"],
    ["select", "{url}", "--score", "cld", "--count", "3", "--out", "{tmp}/m.parquet"],
    ["export", "{url}", "--out", "{tmp}/e.parquet"],
    ["report", "{url}", "--out", "{tmp}/r.html"],
]


@pytest.mark.parametrize("args", MEMORY_COMMANDS, ids=lambda a: a[0])
def test_every_command_refuses_a_memory_lake_in_one_line(cli, tmp_path, args):
    """Regression (16.6): ``import memory://...`` printed "imported" and exited 0, the store
    gone with the process."""
    import numpy as np

    np.save(tmp_path / "loss.npy", np.ones((10, 2), np.float32))
    np.save(tmp_path / "labels.npy", np.arange(10) % 2)
    url = f"memory://{uuid.uuid4().hex[:8]}/lake"
    filled = [
        a.format(url=url, loss=tmp_path / "loss.npy", labels=tmp_path / "labels.npy", tmp=tmp_path)
        for a in args
    ]
    r = cli(*filled)
    line = _one_error_line(r.err)
    assert r.code == 2 and "memory://" in line and "Python API" in line, line
    assert r.out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.npy", "loss.npy"]


def test_the_python_api_keeps_memory_lakes(tmp_path):
    loss, labels, _ = make_arrays(50, 3, 2, seed=53)
    np_files = {}
    import numpy as np

    for name, values in (("loss", loss), ("labels", labels)):
        np_files[name] = tmp_path / f"{name}.npy"
        np.save(np_files[name], values)
    url = f"memory://{uuid.uuid4().hex[:8]}/lake"
    cld_lake.import_file(url, "train", loss=np_files["loss"], labels=np_files["labels"])
    assert cld_lake.query(url, "SELECT count(*) AS n FROM train_samples")["n"][0] == 50
