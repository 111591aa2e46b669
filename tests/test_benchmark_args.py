"""Every benchmark's path arguments are checked when parsed: one line on stderr, exit 2, no
traceback and no work started (issue 22: ``python -m benchmarks.bench_score --workdir
MISSING`` ended in a FileNotFoundError traceback from ``tempfile.mkdtemp``)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from tests.conftest import REPO

MISSING = "no/such/dir"


def _cases(tmp: str) -> list[tuple[str, list[str], str]]:
    afile = f"{tmp}/a_file"
    return [
        ("bench_score", ["--workdir", MISSING], "--workdir: no/such/dir: no such directory"),
        ("bench_score", ["--workdir", afile], "is not a directory"),
        ("bench_score", ["--json", f"{MISSING}/x.json"], "--json"),
        ("bench_score", ["--cli", "--tree", f"old={MISSING}"], "--tree"),
        ("bench_score", ["--cli", "--tree", "nolabel"], "expected LABEL=DIR"),
        ("bench_methods", ["--workdir", MISSING], "--workdir: no/such/dir: no such directory"),
        ("bench_lake", ["--workdir", afile], "--workdir"),
        ("bench_precision", ["--dir", afile], "--dir"),
        ("bench_remote", ["--dir", MISSING], "--dir"),
        ("bench_scale", ["--dir", afile], "--dir"),
        ("bench_scale", ["--json", f"{MISSING}/runs.json"], "--json"),
        ("bench_report", ["--lake", f"{MISSING}/lake"], "--lake"),
        ("bench_report", ["--lake", tmp], "not a cld_lake lake"),
        ("bench_report", ["--before", MISSING], "--before"),
        ("bench_select", ["--paths", "--lake", f"{MISSING}/lake"], "--lake"),
        ("bench_verify", ["--lake", MISSING], "--lake"),
        ("bench_verify", ["--code", f"old={MISSING}"], "--code"),
        ("bench_engines_scale", [MISSING], "lakes"),
        ("bench_engines_scale", [tmp, "--json", "x.json"], "not a cld_lake lake"),
        ("bench_record", ["--ddp", "--root", MISSING], "--root"),
        ("bench_record", ["--ddp", "--tree", f"old={MISSING}"], "--tree"),
    ]


def test_bad_paths_are_one_line_before_any_work(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "a_file").write_text("")
    monkeypatch.chdir(tmp_path)
    for module, args, expected in _cases(str(tmp_path)):
        main = importlib.import_module(f"benchmarks.{module}").main
        monkeypatch.setattr(sys, "argv", [module, *args])
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            main()
        err = capsys.readouterr().err
        assert stop.value.code == 2, (module, args, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (module, err)
        assert expected in err and "(see --help)" in err, (module, args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # nothing was made


def test_the_issues_command(tmp_path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_score", "--workdir", "MISSING"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [
        "bench_score.py: error: argument --workdir: MISSING: no such directory; create it "
        "first, or leave the option out for a temporary one (see --help)"
    ]
