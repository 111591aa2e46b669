"""Fault tests with real processes: kill -9 mid-commit, concurrent writers, two recorders."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cld_lake.errors import LakeLockedError
from cld_lake.lake import Lake, open_lake
from cld_lake.lake.check import verify_lake
from cld_lake.lake.writer import SplitWriter
from tests._fault_writer import values
from tests.conftest import REPO, run_cli_subprocess

N = 200_000


def start_writer(lake, total, split="train", n=N):
    return subprocess.Popen(
        [sys.executable, "-m", "tests._fault_writer", str(lake), str(n), str(total), split],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def check_committed_values(lake_path, split="train", n=N):
    split_ = open_lake(lake_path).split(split)
    for block in split_.blocks(channels=["loss", "correct", "margin"], block_rows=131072):
        rows = slice(block.start, block.start + len(block))
        for j, t in enumerate(block.checkpoints):
            np.testing.assert_array_equal(block.loss[:, j], values(n, int(t))[rows])
            np.testing.assert_array_equal(block.values["margin"][:, j], values(n, int(t))[rows] - 1)
        np.testing.assert_array_equal(
            block.values["correct"],
            (block.sample_ids % 3 == 0)[:, None].repeat(len(block.checkpoints), 1),
        )
    return split_.checkpoint_ids.tolist()


@pytest.mark.parametrize("kill_at", [2, 5, 8])
def test_kill_9_mid_commit_leaves_a_verifiable_lake_and_resume_completes(tmp_path, kill_at):
    lake = tmp_path / "lake"
    total = 10
    proc = start_writer(lake, total)
    for line in proc.stdout:
        if line.strip() == f"commit-start {kill_at}":
            time.sleep(random.uniform(0, 0.03))
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    r = run_cli_subprocess("verify", lake)
    assert r.code == 0, r.err
    committed = check_committed_values(lake)
    # the previous checkpoints are intact; the one being committed is all-or-nothing
    assert committed in (list(range(kill_at)), list(range(kill_at + 1)))
    proc = start_writer(lake, total)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert check_committed_values(lake) == list(range(total))
    assert verify_lake(open_lake(lake)).ok


def test_second_unrelated_writer_is_refused_while_first_holds_the_split(tmp_path):
    lake = Lake.create(tmp_path / "lake")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys,time; from cld_lake.lake import open_lake; from cld_lake.lake.writer import SplitWriter; w=SplitWriter(open_lake(sys.argv[1]), 'train'); "
            "print('locked', flush=True); time.sleep(60)",
            str(lake.path),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LakeLockedError, match="being written by another job"):
            SplitWriter(lake, "train")
        # a different split of the same lake is free (train and val recorded together)
        with SplitWriter(lake, "val") as w:
            ck = w.checkpoint(0)
            ck.add(np.arange(5), np.ones(5), labels=np.zeros(5, int))
            ck.commit()
        np.save(tmp_path / "l.npy", np.ones((5, 3), np.float32))
        np.save(tmp_path / "y.npy", np.zeros(5, np.int64))
        r = run_cli_subprocess(
            "import",
            lake.path,
            "--split",
            "train",
            "--loss",
            tmp_path / "l.npy",
            "--labels",
            tmp_path / "y.npy",
        )
        assert r.code == 2 and "being written by another job" in r.err and "pid" in r.err
    finally:
        holder.kill()
        holder.wait()
    with SplitWriter(lake, "train"):  # the kernel released the dead holder's lock
        pass


def test_two_processes_record_train_and_val_at_the_same_time(tmp_path):
    lake = tmp_path / "lake"
    Lake.create(lake, num_classes=10)
    a = start_writer(lake, 6, "train", n=50_000)
    b = start_writer(lake, 6, "val", n=20_000)
    for p in (a, b):
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert check_committed_values(lake, "train", 50_000) == list(range(6))
    assert check_committed_values(lake, "val", 20_000) == list(range(6))
    assert verify_lake(open_lake(lake)).ok
