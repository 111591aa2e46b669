"""cld_lake.hf: a real (tiny) Trainer run recorded by LossRecorderCallback, then scored and
selected; a sequence-classification run; select() on a datasets.Dataset. Tiny models built
from a config, byte tokens, standard-library docstrings as text; nothing is downloaded."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers  # noqa: E402, I001

import cld_lake  # noqa: E402
from cld_lake.errors import BadInputError  # noqa: E402
from cld_lake.hf import LossRecorderCallback, select  # noqa: E402
from tests import _hf  # sets HF_HUB_OFFLINE=1 before transformers is imported

transformers.logging.set_verbosity_error()


@pytest.fixture(autouse=True)
def _one_thread():
    with _hf.torch_threads(1):
        yield


@pytest.fixture(scope="module")
def lm_data():
    return _hf.lm_splits()


def test_a_trainer_run_is_recorded_scored_and_selected(tmp_path, lm_data, cli):
    train, val = lm_data
    lake = tmp_path / "lm.lake"
    callback = LossRecorderCallback(lake, train, reference={"val": val}, group_column="group")
    model = _hf.tiny_gpt2()
    trainer = transformers.Trainer(
        model=model,
        args=_hf.training_args(
            tmp_path / "out",
            num_train_epochs=2,
            eval_strategy="steps",
            eval_steps=10,
            eval_on_start=True,
        ),  # fmt: skip
        train_dataset=train.select_columns(["input_ids"]),
        eval_dataset=val.select_columns(["input_ids"]),
        data_collator=_hf.lm_collate,
        callbacks=[callback],
    )
    trainer.train()
    trainer.evaluate()  # the last step again: recorded once
    opened = cld_lake.open_lake(lake)
    for name, ds in (("train", train), ("val", val)):
        split = opened.split(name)
        assert split.channels == {"loss": "float32"}
        np.testing.assert_array_equal(split.checkpoint_ids, [0, 10, 20, 30])  # the global steps
        np.testing.assert_array_equal(split.sample_ids, ds["sample_id"][:])
        np.testing.assert_array_equal(split.labels, ds["group"][:])
        tokens = split.samples_table.column("num_tokens").to_numpy()
        np.testing.assert_array_equal(tokens, [len(x) - 1 for x in ds["input_ids"]])
        (block,) = list(split.blocks())
        # the last checkpoint is the trained model: its own loss of each row, alone
        np.testing.assert_allclose(block.loss[:, -1], _hf.per_row_loss(model, ds), rtol=1e-4)
        assert block.loss[:, -1].mean() < block.loss[:, 0].mean() - 1, "training lowered the loss"

    assert cli("score", lake).code == 0
    manifest = tmp_path / "coreset.parquet"
    res = cli("select", lake, "--score", "cld", "--fraction", "0.3", "--out", manifest)
    assert res.code == 0, res.err
    coreset = select(train, manifest)
    wanted = cld_lake.load_manifest(manifest).sample_ids
    assert len(coreset) == len(wanted) == round(0.3 * len(train))
    np.testing.assert_array_equal(coreset["sample_id"][:], wanted)  # in manifest order
    by_id = dict(zip(train["sample_id"][:], train["text"][:], strict=True))
    assert coreset["text"][:] == [by_id[i] for i in wanted]
    # without a sample_id column, a row's id is its index
    positions = select(train.remove_columns("sample_id"), manifest)
    assert positions["text"][:] == coreset["text"][:]


def test_a_llama_is_recorded_as_a_causal_lm(tmp_path, lm_data):
    train, _ = lm_data
    train = train.select(range(40))
    model = _hf.tiny_llama()
    callback = LossRecorderCallback(tmp_path / "llama.lake", train, batch_size=16)
    assert callback.record(model, step=3) == ["train"]
    assert callback.record(model, step=3) == []  # a recorded step is not recorded again
    split = cld_lake.open_lake(tmp_path / "llama.lake").split("train")
    (block,) = list(split.blocks())
    np.testing.assert_allclose(block.loss[:, 0], _hf.per_row_loss(model, train), rtol=1e-4)
    np.testing.assert_array_equal(split.labels, np.zeros(40))  # no group column: one group


def test_select_refuses_missing_and_repeated_ids_in_one_line(tmp_path, lm_data):
    train, _ = lm_data
    lake = tmp_path / "s.lake"
    LossRecorderCallback(lake, train.select(range(30)), kind="causal_lm").record(_hf.tiny_gpt2(), 0)
    cld_lake.score(lake, method="mean_loss")
    manifest = cld_lake.select(lake, score="mean_loss", fraction=1.0, out=tmp_path / "m.parquet")
    with pytest.raises(BadInputError, match=r"are not in the dataset's 'sample_id' column") as exc:
        select(train.select(range(10)), manifest.path)
    assert "\n" not in str(exc.value)
    twice = train.select([0, 0, 1])
    with pytest.raises(BadInputError, match="occur twice"):
        select(twice, manifest.path)
    assert len(select(train, manifest.path)) == 30


def test_the_callback_refuses_bad_settings_in_one_line(tmp_path, lm_data):
    train, val = lm_data
    with pytest.raises(BadInputError, match="kind='bert'"):
        LossRecorderCallback(tmp_path / "x", train, kind="bert")
    with pytest.raises(BadInputError, match="every_n_steps=0"):
        LossRecorderCallback(tmp_path / "x", train, every_n_steps=0)
    with pytest.raises(BadInputError, match="no column 'domain'"):
        LossRecorderCallback(tmp_path / "x", train, group_column="domain")
    with pytest.raises(BadInputError, match="'train' is the training split"):
        LossRecorderCallback(tmp_path / "x", train, reference={"train": val})
    callback = LossRecorderCallback(tmp_path / "x", train)
    with pytest.raises(BadInputError, match="kind='auto' cannot tell"):
        callback.record(torch.nn.Linear(2, 2), 0)
    classifier = _hf.tiny_gpt2(num_labels=3)
    with pytest.raises(BadInputError, match="no 'label' or 'labels' column"):
        callback.record(classifier, 0)
    assert not (tmp_path / "x").exists()


def test_import_cld_lake_imports_neither_torch_nor_transformers():
    code = (
        "import sys, cld_lake, cld_lake.lake, cld_lake.score; "
        "heavy = [m for m in ('torch', 'transformers', 'datasets') if m in sys.modules]; "
        "print(heavy); sys.exit(bool(heavy))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    missing = "import sys; sys.modules['transformers'] = None; import cld_lake.hf"
    proc = subprocess.run(
        [sys.executable, "-c", missing], capture_output=True, text=True, timeout=60
    )
    assert "pip install 'cld-lake[hf]'" in proc.stderr
