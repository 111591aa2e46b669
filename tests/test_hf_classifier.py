"""cld_lake.hf with a sequence classifier: a real (tiny) Trainer run recorded every N steps,
every channel (loss, correct, margin), the class as the group."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers  # noqa: E402, I001

import cld_lake  # noqa: E402
from cld_lake.hf import LossRecorderCallback  # noqa: E402
from tests import _hf  # sets HF_HUB_OFFLINE=1 before transformers is imported

transformers.logging.set_verbosity_error()


@pytest.fixture(autouse=True)
def _one_thread():
    with _hf.torch_threads(1):
        yield


def test_a_sequence_classifier_run_records_every_channel_every_n_steps(tmp_path):
    train, val = (ds.rename_column("group", "label") for ds in _hf.lm_splits())
    lake = tmp_path / "clf.lake"
    model = _hf.tiny_gpt2(num_labels=3)  # which module's docstring a line is
    callback = LossRecorderCallback(lake, train, reference={"test": val}, every_n_steps=7)
    transformers.Trainer(
        model=model,
        args=_hf.training_args(tmp_path / "out", max_steps=14),
        train_dataset=train.select_columns(["input_ids", "label"]),
        data_collator=_hf.classifier_collate,
        callbacks=[callback],
    ).train()
    opened = cld_lake.open_lake(lake)
    assert opened.num_classes == 3
    model.eval()
    for name, ds in (("train", train), ("test", val)):
        split = opened.split(name)
        assert set(split.channels) == {"loss", "correct", "margin"}
        np.testing.assert_array_equal(split.checkpoint_ids, [7, 14])
        np.testing.assert_array_equal(split.sample_ids, ds["sample_id"][:])
        np.testing.assert_array_equal(split.labels, ds["label"][:])
        (block,) = list(split.blocks(channels=["loss", "correct"]))
        with torch.no_grad():  # rows alone: no padding, so the last token is the row's own
            logits = torch.cat([model(input_ids=torch.tensor([x])).logits for x in ds["input_ids"]])
        labels = torch.tensor(ds["label"][:])
        want = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        np.testing.assert_allclose(block.loss[:, -1], want.numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(block.values["correct"][:, -1], logits.argmax(1) == labels)
