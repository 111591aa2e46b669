"""LossRecorder.update_loss under torch.distributed: 2 real processes (gloo, CPU), a
DistributedSampler that pads with duplicates, Hugging Face style dict batches through
record(loss_fn=...) and update_loss in the loop; the lake must equal a single-process
recording (each sample once, its group, its token count).

Run as a script, this file is one rank of the job (see ``worker``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests._ranks import run_ranks

N, V, G = 61, 11, 3  # odd N: the sampler pads rank 1 with a duplicate
CHECKPOINTS = (0, 1)


def items() -> list[dict[str, torch.Tensor]]:
    """Sequences of 2..9 tokens; sample ids 500.. (not 0..N-1); group = id % G."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(2, 10, (N,), generator=g)
    return [
        {
            "tokens": torch.randint(0, V, (int(n),), generator=g),
            "sample_id": 500 + i,
            "group": i % G,
        }
        for i, n in enumerate(lengths)
    ]


def collate(batch: list[dict]) -> dict[str, torch.Tensor]:
    length = max(len(b["tokens"]) for b in batch)
    input_ids = torch.zeros(len(batch), length, dtype=torch.long)
    labels = torch.full((len(batch), length), -100)
    for i, b in enumerate(batch):
        input_ids[i, : len(b["tokens"])] = b["tokens"]
        labels[i, : len(b["tokens"])] = b["tokens"]
    return {
        "input_ids": input_ids,
        "labels": labels,
        "sample_id": torch.tensor([b["sample_id"] for b in batch]),
        "group": torch.tensor([b["group"] for b in batch]),
    }


def make_model() -> torch.nn.Module:
    """A bigram language model: logits of shape (B, L, V)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(V, 8), torch.nn.Linear(8, V))


def loss_fn(model, batch):
    from cld_lake.torch import sequence_loss

    loss, counts = sequence_loss(model(batch["input_ids"]), batch["labels"], return_counts=True)
    return batch["sample_id"], loss, batch["group"], counts


def worker(lake: str, states: str) -> None:
    """One rank: record checkpoint 0 with record(loss_fn=...), train a step, record 1 with
    update_loss() and commit()."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data.distributed import DistributedSampler

    from cld_lake.torch import LossRecorder

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    sampler = DistributedSampler(items(), shuffle=True, seed=3)
    loader = DataLoader(items(), batch_size=8, sampler=sampler, collate_fn=collate)
    model = DistributedDataParallel(make_model())
    rec = LossRecorder(lake, "train", num_classes=G)
    if rank == 0:
        torch.save(model.module.state_dict(), Path(states) / "0.pt")
    summary = rec.record(model.module, loader, checkpoint=0, loss_fn=loss_fn)
    assert summary.num_samples == N and np.isnan(summary.accuracy), summary
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for batch in loader:
        opt.zero_grad()
        _, loss, _, _ = loss_fn(model, batch)
        loss.mean().backward()
        opt.step()
    if rank == 0:
        torch.save(model.module.state_dict(), Path(states) / "1.pt")
    with torch.no_grad():
        for batch in loader:
            ids, loss, groups, _ = loss_fn(model.module, batch)
            rec.update_loss(ids, loss, groups)
    rec.commit(1, step=1)
    print(f"rank {rank}: committed {rec.committed_checkpoints.tolist()}", flush=True)
    dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_two_rank_update_loss_equals_single_process(tmp_path: Path) -> None:
    import cld_lake
    from cld_lake.torch import LossRecorder

    lake, states = tmp_path / "ddp.lake", tmp_path / "states"
    states.mkdir()
    outputs = run_ranks(__file__, str(lake), str(states))
    for rank, out in enumerate(outputs):
        assert f"rank {rank}: committed [0, 1]" in out, out

    ref = tmp_path / "ref.lake"
    rec = LossRecorder(ref, "train", num_classes=G)
    model = make_model()
    for ckpt in CHECKPOINTS:
        model.load_state_dict(torch.load(states / f"{ckpt}.pt"))
        loader = DataLoader(items(), batch_size=N, collate_fn=collate)
        rec.record(model, loader, checkpoint=ckpt, loss_fn=loss_fn)

    got, want = cld_lake.open_lake(lake).split("train"), cld_lake.open_lake(ref).split("train")
    np.testing.assert_array_equal(got.sample_ids, 500 + np.arange(N))  # each sample once
    np.testing.assert_array_equal(got.labels, np.arange(N) % G)
    assert got.channels == want.channels == {"loss": "float32"}
    tokens = got.samples_table.column("num_tokens").to_numpy()
    np.testing.assert_array_equal(tokens, want.samples_table.column("num_tokens").to_numpy())
    np.testing.assert_array_equal(tokens, [len(it["tokens"]) - 1 for it in items()])
    (bg,), (bw,) = list(got.blocks()), list(want.blocks())
    np.testing.assert_allclose(bg.loss, bw.loss, rtol=1e-5, atol=1e-6)
    assert not np.array_equal(bg.loss[:, 0], bg.loss[:, 1]), "training moved the losses"


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2])
