"""Crash and resume of the proxy pipeline: real subprocesses killed with SIGKILL (at chosen
points and from outside mid-training), then resumed; the lake must equal an uninterrupted run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import cld_lake
from pipelines.train_proxy import ProxyConfig, train_proxy

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 14


def proxy_cmd(lake: Path) -> list[str]:
    return [
        sys.executable, "-m", "pipelines.train_proxy", "--dataset", "digits", "--lake", str(lake),
        "--noise", "0.2", "--epochs", str(EPOCHS), "--threads", "1", "--no-progress",
    ]  # fmt: skip


def run(lake: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("CLD_LAKE_FAULT", None)
    if fault:
        env["CLD_LAKE_FAULT"] = fault
    return subprocess.run(
        proxy_cmd(lake), cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def committed(lake: Path) -> dict[str, list[int]]:
    opened = cld_lake.open_lake(lake)
    return {s: opened.split(s).checkpoint_ids.tolist() for s in ("train", "val")}


@pytest.mark.timeout(300)
@pytest.mark.slow  # ~25 s: four real processes, each paying torch's import
def test_killed_runs_resume_to_the_uninterrupted_result(tmp_path: Path) -> None:
    ref, lake = tmp_path / "ref.lake", tmp_path / "a.lake"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses: same kernels, same bits
    try:
        train_proxy(
            ProxyConfig(dataset="digits", lake=ref, noise=0.2, epochs=EPOCHS, progress=False)
        )
    finally:
        torch.set_num_threads(threads)

    # 1. killed right after saving the epoch-2 model, before recording epoch 2
    p = run(lake, "after_save:2")
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert committed(lake) == {"train": [0, 1], "val": [0, 1]}
    # 2. resumed (records epoch 2 from the saved model), killed between the train and val commits
    p = run(lake, "after_train_commit:5")
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert committed(lake) == {"train": list(range(6)), "val": list(range(5))}
    # 3. resumed, killed from outside while training
    proc = subprocess.Popen(
        proxy_cmd(lake), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    models = tmp_path / "a.models"
    deadline = time.monotonic() + 120
    while (
        not (models / "epoch-0008.pt").exists()
        and time.monotonic() < deadline
        and proc.poll() is None
    ):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    partial = committed(lake)
    assert 6 <= len(partial["train"]) < EPOCHS + 1
    # 4. resumed to the end
    p = run(lake)
    assert p.returncode == 0, p.stderr
    assert "resuming" in p.stdout

    want, got = cld_lake.open_lake(ref), cld_lake.open_lake(lake)
    for name in ("train", "val"):
        a, b = want.split(name), got.split(name)
        np.testing.assert_array_equal(b.checkpoint_ids, np.arange(EPOCHS + 1))
        assert a.samples_table.equals(b.samples_table)
        (ba,), (bb,) = (
            list(a.blocks(channels=list(a.channels))),
            list(b.blocks(channels=list(b.channels))),
        )
        for channel in a.channels:  # same seeds per epoch: bit-identical trajectories
            np.testing.assert_array_equal(
                ba.values[channel], bb.values[channel], err_msg=f"{name}/{channel}"
            )
