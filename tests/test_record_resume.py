"""A record loop re-run on an existing lake (issue 22): ``record`` refuses a committed
checkpoint BEFORE its eval pass, in one line with the fixes, and ``committed_checkpoints``
tells a loop where to resume. (Under torch.distributed: tests/test_ddp_record.py.)"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from cld_lake.errors import CheckpointExistsError
from cld_lake.torch import LossRecorder
from tests.test_record import loader, make_data, make_model, tree_hash


class _Counted:
    """A loader that counts the batches drawn from it."""

    def __init__(self, inner) -> None:
        self.inner, self.batches = inner, 0

    def __iter__(self) -> Iterator:
        for batch in self.inner:
            self.batches += 1
            yield batch


def test_a_committed_checkpoint_is_refused_before_the_pass(tmp_path) -> None:
    lake = tmp_path / "x.lake"
    x, y = make_data()
    model = make_model()
    first = LossRecorder(lake, "train")
    for ckpt in (0, 1, 2):
        first.record(model, loader(x, y), ckpt)
    before = tree_hash(lake)

    again = LossRecorder(lake, "train")  # the README's loop, run a second time
    batches = _Counted(loader(x, y))
    with pytest.raises(CheckpointExistsError) as err:
        again.record(model, batches, 0)
    assert batches.batches == 0, "the eval pass ran before the refusal"
    message = str(err.value)
    assert len(message.splitlines()) == 1
    for part in (
        f"checkpoint 0 is already committed in split 'train' of {lake}",
        "(committed: 0..2)",
        "next checkpoint id (3",
        "LossRecorder.committed_checkpoints",
        "run='seed1'",
        "a new lake",
    ):
        assert part in message, (part, message)
    assert tree_hash(lake) == before
    # each fix works: the next id, another run
    again.record(model, loader(x, y), 3)
    LossRecorder(lake, "train", run="seed1").record(model, loader(x, y), 0)


def test_committed_checkpoints_resume_a_loop(tmp_path) -> None:
    lake = tmp_path / "x.lake"
    x, y = make_data()
    model = make_model()
    rec = LossRecorder(lake, "train")
    assert rec.committed_checkpoints.tolist() == []  # no lake yet
    rec.record(model, loader(x, y), 0)
    rec.record(model, loader(x, y), 5)
    assert LossRecorder(lake, "val").committed_checkpoints.tolist() == []  # no such split
    assert LossRecorder(lake, "train", run="seed1").committed_checkpoints.tolist() == []

    resumed = LossRecorder(lake, "train")
    done = resumed.committed_checkpoints
    assert done.dtype == np.int64 and done.tolist() == [0, 5]
    for ckpt in range(int(done[-1]) + 1, 8):  # a resumed loop: after the last committed id
        resumed.record(model, loader(x, y), ckpt)
    assert resumed.committed_checkpoints.tolist() == [0, 5, 6, 7]
    with pytest.raises(CheckpointExistsError, match=r"\(committed: 0, 5, 6, 7\)"):
        resumed.record(model, loader(x, y), 6)
