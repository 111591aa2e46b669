"""LossRecorder under torch.distributed: 2 real processes (gloo, CPU), DistributedSampler with
padding duplicates; the lake must equal a single-process recording value for value.

Run as a script, this file is one rank of the job (see ``worker``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tests._ranks import run_ranks

N, D, C = 101, 5, 3  # odd N: the sampler pads rank 1 with a duplicate
CHECKPOINTS = (0, 1, 2)


def make_data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(N, D, generator=g), torch.randint(0, C, (N,), generator=g))


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(D, 8), torch.nn.ReLU(), torch.nn.Linear(8, C))


def worker(lake: str, states: str) -> None:
    """One rank: record checkpoint 0, train a step with DDP, record 1 (record()), record 2
    (update()/commit()), then provoke an error on the writing rank."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data.distributed import DistributedSampler

    from cld_lake.errors import CheckpointExistsError
    from cld_lake.torch import LossRecorder, WithIndex

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    data = WithIndex(make_data())
    sampler = DistributedSampler(data, shuffle=True, seed=3)
    loader = DataLoader(data, batch_size=16, sampler=sampler)
    model = DistributedDataParallel(make_model())
    rec = LossRecorder(lake, "train")

    def save(ckpt: int) -> None:
        if rank == 0:
            torch.save(model.module.state_dict(), Path(states) / f"{ckpt}.pt")

    save(0)
    summary = rec.record(model.module, loader, checkpoint=0, epoch=0)
    assert summary.num_samples == N, summary
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    for x, y, _ in loader:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    save(1)
    rec.record(model, loader, checkpoint=1, epoch=1)  # the DDP wrapper itself works too
    with torch.no_grad():
        model.module.eval()
        for x, y, ids in loader:
            rec.update(ids, model.module(x), y)
    save(2)
    rec.commit(2, epoch=2)
    print(f"rank {rank}: committed {rec.committed_checkpoints.tolist()}", flush=True)
    try:  # refused before the pass: the loader is never drawn from
        rec.record(model.module, _Untouched(), checkpoint=0)
    except CheckpointExistsError as exc:
        print(f"rank {rank}: CheckpointExistsError {exc}", flush=True)
    dist.destroy_process_group()


class _Untouched:
    """A loader that must not be iterated."""

    def __iter__(self):
        raise AssertionError("record() ran its pass over a committed checkpoint")


@pytest.mark.timeout(300)
def test_two_rank_gloo_recording_equals_single_process(tmp_path: Path) -> None:
    import cld_lake
    from cld_lake.torch import LossRecorder, WithIndex

    lake, states = tmp_path / "ddp.lake", tmp_path / "states"
    states.mkdir()
    outputs = run_ranks(__file__, str(lake), str(states))
    # the writing rank's error reached every rank (and nobody hung at the barrier), the same
    # line on each, before the pass; every rank learnt the committed ids from dst
    errors = [
        line.split("CheckpointExistsError ", 1)[1]
        for out in outputs
        for line in out.splitlines()
        if "CheckpointExistsError" in line
    ]
    assert len(errors) == 2 and errors[0] == errors[1] and "(committed: 0..2)" in errors[0]
    for rank, out in enumerate(outputs):
        assert f"rank {rank}: committed [0, 1, 2]" in out, out

    ref = tmp_path / "ref.lake"
    rec = LossRecorder(ref, "train")
    model = make_model()
    for ckpt in CHECKPOINTS:
        model.load_state_dict(torch.load(states / f"{ckpt}.pt"))
        rec.record(model, DataLoader(WithIndex(make_data()), batch_size=N), checkpoint=ckpt)

    got, want = cld_lake.open_lake(lake).split("train"), cld_lake.open_lake(ref).split("train")
    np.testing.assert_array_equal(got.sample_ids, np.arange(N))  # each sample exactly once
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_array_equal(got.checkpoint_ids, list(CHECKPOINTS))
    assert got.checkpoint_table.column("epoch").to_pylist() == list(CHECKPOINTS)
    channels = list(want.channels)
    (bg,), (bw,) = list(got.blocks(channels=channels)), list(want.blocks(channels=channels))
    np.testing.assert_array_equal(bg.values["correct"], bw.values["correct"])
    for c in ("loss", "margin"):  # batch composition differs: equal up to float rounding
        np.testing.assert_allclose(bg.values[c], bw.values[c], rtol=1e-5, atol=1e-6)
    assert not np.array_equal(bg.loss[:, 0], bg.loss[:, 1]), "training moved the losses"


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2])
