"""LossRecorderCallback under DDP: a real 2-process Trainer run (gloo, CPU); each rank records
its shard of the training and reference rows, and the lake holds every row once, with the
values a single process computes from the same model states.

Run as a script, this file is one rank of the job (see ``worker``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from tests._ranks import run_ranks

TRAIN_ROWS, VAL_ROWS = 61, 21  # odd: the ranks' shards differ in size
STEPS = (0, 2, 4)


def splits():
    from tests import _hf

    train, val = _hf.lm_splits()
    return train.select(range(TRAIN_ROWS)), val.select(range(VAL_ROWS))


def worker(lake: str, states: str) -> None:
    """One rank of a DDP Trainer run that records at steps 0, 3 and 6."""
    import torch
    import transformers

    from cld_lake.hf import LossRecorderCallback
    from cld_lake.torch import LossRecorder
    from tests import _hf

    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    recorded = []  # the rows this rank recorded: its shard, not every row
    update_loss = LossRecorder.update_loss

    def counting(self, sample_ids, *args, **kwargs):
        recorded.append(len(sample_ids))
        return update_loss(self, sample_ids, *args, **kwargs)

    LossRecorder.update_loss = counting
    train, val = splits()
    model = _hf.tiny_gpt2()

    class SaveStates(transformers.TrainerCallback):
        def on_evaluate(self, args, state, control, model=None, **kwargs):
            if state.is_world_process_zero:
                torch.save(model.state_dict(), Path(states) / f"{state.global_step}.pt")

    callback = LossRecorderCallback(lake, train, reference={"val": val}, group_column="group")
    args = _hf.training_args(
        Path(lake).with_suffix(".out"),
        max_steps=STEPS[-1],
        per_device_train_batch_size=8,
        eval_strategy="steps",
        eval_steps=STEPS[1],
        eval_on_start=True,
        ddp_backend="gloo",
    )
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=train.select_columns(["input_ids"]),
        eval_dataset=val.select_columns(["input_ids"]),
        data_collator=_hf.lm_collate,
        callbacks=[SaveStates(), callback],
    )
    trainer.train()
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    print(f"rank {args.process_index}: world {world}, recorded {sum(recorded)}", flush=True)
    if torch.distributed.is_initialized():  # the Trainer's process group: ended, not left to exit
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


@pytest.mark.timeout(300)
def test_a_ddp_trainer_run_records_each_row_once(tmp_path: Path) -> None:
    import torch

    import cld_lake
    from cld_lake.hf import LossRecorderCallback
    from tests import _hf

    lake, states = tmp_path / "ddp.lake", tmp_path / "states"
    states.mkdir()
    outputs = run_ranks(__file__, str(lake), str(states), timeout=240, HF_HUB_OFFLINE="1")
    for rank, out in enumerate(outputs):
        # every other row of each split, at each of the steps
        rows = sum(len(range(rank, n, 2)) for n in (TRAIN_ROWS, VAL_ROWS)) * len(STEPS)
        assert f"rank {rank}: world 2, recorded {rows}" in out, out[-3000:]

    train, val = splits()
    ref = tmp_path / "ref.lake"
    callback = LossRecorderCallback(ref, train, reference={"val": val}, group_column="group")
    model = _hf.tiny_gpt2()
    with _hf.torch_threads(1):
        for step in STEPS:
            model.load_state_dict(torch.load(states / f"{step}.pt"))
            callback.record(model, step)
    got, want = cld_lake.open_lake(lake), cld_lake.open_lake(ref)
    for name, ds in (("train", train), ("val", val)):
        g, w = got.split(name), want.split(name)
        np.testing.assert_array_equal(g.sample_ids, ds["sample_id"][:])  # each row once
        np.testing.assert_array_equal(g.labels, ds["group"][:])
        np.testing.assert_array_equal(g.checkpoint_ids, STEPS)
        np.testing.assert_array_equal(
            g.samples_table.column("num_tokens").to_numpy(),
            w.samples_table.column("num_tokens").to_numpy(),
        )
        (bg,), (bw,) = list(g.blocks()), list(w.blocks())
        np.testing.assert_allclose(bg.loss, bw.loss, rtol=1e-4, atol=1e-6)
        assert not np.array_equal(bg.loss[:, 0], bg.loss[:, -1]), "training moved the losses"


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2])
