"""Disk full, for real: a small tmpfs runs out of space under an import, a score and a commit.

Each failure must be one line with exit 1, leave every committed checkpoint readable with its
values, and leave no partial segment or temp file behind. Needs ``mount -t tmpfs`` (root);
skipped with the reason otherwise.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CLI_BIN, import_arrays, lake_hash, make_arrays

MIB = 1 << 20


@pytest.fixture
def tmpfs(tmp_path):
    """A 2 MiB tmpfs mounted for the test (unmounted afterwards)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(mount: Path, leave: int) -> Path:
    """Fill the file system with one file, leaving about ``leave`` bytes free."""
    st = os.statvfs(mount)
    size = max(st.f_bavail * st.f_frsize - leave, 0)
    filler = mount / "filler"
    with open(filler, "wb") as fh:
        fh.write(b"\0" * size)
    return filler


def listing(lake: Path) -> list[str]:
    """Every file and directory of a lake except lock files: debris shows up here."""
    return sorted(str(p.relative_to(lake)) for p in lake.rglob("*") if not p.name.endswith(".lock"))


def cli_run(*args: object, env: dict[str, str] | None = None):
    return subprocess.run(
        [str(CLI_BIN), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def assert_disk_full_line(proc) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "space" in proc.stderr.lower(), proc.stderr


def committed_values(lake: Path, split: str) -> np.ndarray:
    from cld_lake.lake import open_lake

    blocks = open_lake(lake).split(split).blocks()
    return np.concatenate([block.loss for block in blocks])


def small_lake(lake: Path, folder: Path, n: int = 2_000, t: int = 4) -> dict[str, np.ndarray]:
    loss, labels, ids = make_arrays(n, t, 4, seed=5)
    vloss, vlabels, _ = make_arrays(200, t, 4, seed=6)
    import_arrays(folder, lake, "train", loss=loss, labels=labels, sample_ids=ids)
    import_arrays(folder, lake, "val", loss=vloss, labels=vlabels)
    return {"train": loss, "val": vloss}


def test_import_larger_than_the_disk_is_one_line_and_keeps_the_lake(tmpfs, tmp_path):
    lake = tmpfs / "lake"
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    values = small_lake(lake, inputs)
    before = listing(lake)
    big, labels, _ = make_arrays(150_000, 4, 4, seed=7)  # 2.4 MB of losses: over the 2 MiB
    np.save(inputs / "big.npy", big)
    np.save(inputs / "big_labels.npy", labels)

    proc = cli_run(
        "import", lake, "--split", "test", "--loss", inputs / "big.npy",
        "--labels", inputs / "big_labels.npy",
    )  # fmt: skip
    assert_disk_full_line(proc)
    assert cli_run("verify", lake).returncode == 0
    for split, loss in values.items():
        np.testing.assert_array_equal(committed_values(lake, split), loss)
    assert listing(lake) == before  # nothing of the failed import left behind


def test_score_that_cannot_fit_is_one_line_and_keeps_the_lake(tmpfs, tmp_path):
    lake = tmpfs / "lake"
    small_lake(lake, tmp_path, n=20_000)
    assert cli_run("score", lake).returncode == 0
    fill(tmpfs, leave=16 * 1024)  # scores.parquet with a second column needs far more
    before = lake_hash(lake)

    proc = cli_run("score", lake, "--name", "cld2")
    assert_disk_full_line(proc)
    assert lake_hash(lake) == before
    assert not [p for p in lake.rglob("*") if ".tmp-" in p.name]
    assert cli_run("verify", lake).returncode == 0


def test_score_spill_in_a_full_temp_dir_fails_instead_of_storing_zeros(tmpfs, tmp_path):
    """Regression: a short write of the spill file (the disk nearly full) was ignored, and the
    rows it dropped were stored as scores 0.0."""
    lake = tmp_path / "lake"
    small_lake(lake, tmp_path, n=20_000)
    before = lake_hash(lake)
    # one page free: Python's tempfile still accepts the directory, the spill file cannot grow
    fill(tmpfs, leave=4096)

    proc = cli_run("score", lake, env={"TMPDIR": str(tmpfs)})
    assert_disk_full_line(proc)
    assert str(tmpfs) in proc.stderr, proc.stderr
    assert lake_hash(lake) == before
    assert sorted(p.name for p in tmpfs.iterdir()) == ["filler"]


def _commit_too_big(lake: Path) -> OSError:
    """Commit checkpoint 99 of the train split (80 KB of losses) on a nearly full disk."""
    from cld_lake.lake import open_lake
    from cld_lake.lake.writer import SplitWriter

    lk = open_lake(lake)
    train = lk.split("train")
    with SplitWriter(lk, "train") as writer:
        ck = writer.checkpoint(99)
        ck.add(train.sample_ids, np.ones(train.num_samples, np.float32), labels=train.labels)
        with pytest.raises(OSError) as raised:
            ck.commit()
    return raised.value


@pytest.fixture
def full_after_commit(tmpfs, tmp_path):
    """A lake on the tmpfs whose next commit cannot fit; returns (lake, values, listing, error)."""
    lake = tmpfs / "lake"
    values = small_lake(lake, tmp_path, n=20_000)
    fill(tmpfs, leave=16 * 1024)
    before = listing(lake)
    return lake, values, before, _commit_too_big(lake)


def test_commit_on_a_full_disk_raises_disk_full_and_keeps_committed_values(full_after_commit):
    from cld_lake._cli import cli
    from cld_lake._cli._failures import failure_line

    lake, values, _, exc = full_after_commit
    assert exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc), exc
    line, code = failure_line(exc, cli, ["import", str(lake)])
    assert code == 1 and "\n" not in line and "disk full" in line, line
    assert cli_run("verify", lake).returncode == 0
    for split, loss in values.items():
        np.testing.assert_array_equal(committed_values(lake, split), loss)


def test_commit_on_a_full_disk_leaves_no_partial_segment(full_after_commit):
    lake, _, before, _ = full_after_commit
    assert listing(lake) == before
