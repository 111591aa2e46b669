"""Every example in README.md and docs/*.md runs as written.

A newcomer copies the blocks of a page into one terminal, in order; so does this test: each
page runs in a scratch directory laid out like the repository root after ``make demo`` (``.venv``,
``pipelines/`` and ``benchmarks/`` are links to the real ones; ``runs/demo/mnist1d.lake`` is a
small recording made the way the demo makes it), every ``bash`` block in one shell whose
exported variables carry over to the next block, every ``python`` block in that environment.
An example that stops running fails here, with the page and line. How a block is run (skipped
with a reason, shrunk, against an S3 server, its output checked) is written next to it in the
page itself: see tests/_examples.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import _examples as ex
from tests.conftest import REPO

DOCS = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
VENV = Path(sys.executable).parents[1]
STATE = ".example-env"
DEMO_LAKE = "runs/demo/mnist1d.lake"  # the shell's exported variables between blocks
TIMEOUT = 300


def test_every_fence_is_tagged_and_every_directive_is_readable():
    problems = []
    for doc in DOCS:
        try:
            ex.read(REPO / doc, REPO)
        except ex.FormatError as exc:
            problems.append(str(exc))
    assert not problems, "\n".join(problems)


def test_the_parser_refuses_an_untagged_fence_and_a_skip_without_a_reason():
    with pytest.raises(ex.FormatError, match="tag it"):
        ex.parse("text\n```\ncld-lake info LAKE\n```\n", "x.md")
    with pytest.raises(ex.FormatError, match="must say why"):
        ex.parse("<!-- example: skip -->\n```bash\nls\n```\n", "x.md")
    with pytest.raises(ex.FormatError, match="never closed"):
        ex.parse("```bash\nls\n", "x.md")
    blocks = ex.parse(
        "<!-- example: shrink --epochs 1 -->\n```bash\npython -m pipelines.x --a 1  # why\n```\n"
        "<!-- example: output -->\n```text\n  a   b\n```\n",
        "x.md",
    )
    assert [(b.lang, b.directive, b.argument) for b in blocks] == [
        ("bash", "shrink", "--epochs 1"),
        ("text", "output", ""),
    ]
    assert (
        ex.shrunk(blocks[0].code, "--epochs 1") == "python -m pipelines.x --a 1 --epochs 1  # why\n"
    )
    assert ex.printed(ex.expected_lines(blocks[1]), "x\na b\n") == []
    assert ex.printed(["a b"], "a c\n") == ["a b"]


@pytest.fixture(scope="session")
def demo_lake(tmp_path_factory) -> Path:
    """A small lake recorded the way ``make demo`` records its own (MNIST-1D, 20% noise), with
    CLD scored: what a newcomer has at ``runs/demo/mnist1d.lake`` after ``make demo``."""
    root = tmp_path_factory.mktemp("demo")
    lake = root / "mnist1d.lake"
    env = _environment(root)
    for command in (
        [
            sys.executable,
            "-m",
            "pipelines.train_proxy",
            "--dataset",
            "mnist1d",
            "--lake",
            lake,
            "--root",
            root / "data",
            "--noise",
            "0.2",
            "--num-samples",
            "1500",
            "--epochs",
            "12",
            "--no-progress",
        ],
        [VENV / "bin" / "cld-lake", "score", lake],
    ):
        proc = subprocess.run(
            list(map(str, command)),
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    return lake


def _environment(cwd: Path) -> dict[str, str]:
    """What the README's set-up leaves in a terminal: the venv first on PATH, ``LAKE`` set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CLD_LAKE_"))}
    env.update(
        PATH=f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        VIRTUAL_ENV=str(VENV),
        LAKE=DEMO_LAKE,
        PYTHONPATH=str(REPO),  # the checkout under test, as when run from the repository root
        MPLBACKEND="Agg",
        HOME=str(cwd),
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def _scratch(tmp_path: Path, demo_lake: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    for name, target in (
        (".venv", VENV),
        ("pipelines", REPO / "pipelines"),
        ("benchmarks", REPO / "benchmarks"),
    ):
        (work / name).symlink_to(target, target_is_directory=True)
    shutil.copytree(demo_lake, work / DEMO_LAKE)
    shutil.copytree(demo_lake.parent / "data", work / "runs" / "demo" / "data")
    # the proxy run's settings (``config.json``) that train_subset --lake reads
    models = demo_lake.with_suffix(".models")
    shutil.copytree(models, (work / DEMO_LAKE).with_suffix(".models"))
    from tests.test_pipelines import write_cifar

    write_cifar(
        work / "data" / "cifar100", "cifar100", per_batch=300, num_test=100, num_classes=100
    )
    return work


def _create_buckets(code: str) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    for bucket in set(re.findall(r"s3://([a-z0-9.-]+)/", code)):
        if not fs.exists(bucket):
            fs.mkdir(bucket)


def _run(
    block: ex.Block, code: str, work: Path, env: dict[str, str]
) -> subprocess.CompletedProcess:
    script = work / f".example-{block.line}.{'sh' if block.lang == 'bash' else 'py'}"
    script.write_text(code)
    state = work / STATE
    if block.lang == "bash":
        body = f'set -eo pipefail\nsource "{script}"\nexport -p > "{state}"\n'
    else:
        body = f'set -eo pipefail\npython "{script}"\n'
    shell = f'[ -f "{state}" ] && source "{state}"\ncd "{work}"\n{body}'
    return subprocess.run(
        ["bash", "-c", shell], cwd=work, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )


def _pages_with_examples() -> list[str]:
    pages = []
    for doc in DOCS:
        try:
            if any(b.is_example for b in ex.read(REPO / doc, REPO)):
                pages.append(doc)
        except ex.FormatError:
            pages.append(doc)  # fails below, and in the fence test, with the reason
    return pages


@pytest.mark.timeout(900)  # the README page runs the whole walk-through
@pytest.mark.slow
@pytest.mark.parametrize("doc", _pages_with_examples())
def test_the_examples_of_a_page_run_as_written(doc, demo_lake, tmp_path, request):
    work = _scratch(tmp_path, demo_lake)
    env = _environment(work)
    blocks = ex.read(REPO / doc, REPO)
    last: subprocess.CompletedProcess | None = None
    ran, skipped = 0, []
    for block in blocks:
        if block.directive == "output":
            assert last is not None, f"{block.where}: output block with no example before it"
            missing = ex.printed(ex.expected_lines(block), last.stdout)
            assert not missing, (
                f"{block.where}: the example before it did not print {missing}\n{last.stdout[-3000:]}"
            )
            continue
        if not block.is_example:
            continue
        if block.directive == "skip":
            skipped.append(f"{block.where} ({block.argument})")
            continue
        code = ex.shrunk(block.code, block.argument) if block.directive == "shrink" else block.code
        run_env = dict(env)
        if block.directive == "s3":
            run_env.update(request.getfixturevalue("s3_env"))
            _create_buckets(code)
        last = _run(block, code, work, run_env)
        ran += 1
        assert last.returncode == 0, (
            f"{block.where}: exit {last.returncode}\n--- stderr\n{last.stderr[-3000:]}"
            f"\n--- stdout\n{last.stdout[-2000:]}"
        )
    print(f"\n{doc}: {ran} examples run, {len(skipped)} skipped: {'; '.join(skipped) or '-'}")
