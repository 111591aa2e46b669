"""Any per-sample loss: LossRecorder.update_loss, record(loss_fn=/logits_fn=) over dict
batches, and sequence_loss against Hugging Face's own causal-LM loss (single process)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import cld_lake
from cld_lake.errors import BadInputError
from cld_lake.torch import LossRecorder, sequence_loss
from tests import _hf

N, G = 23, 3


@pytest.fixture(autouse=True)
def _one_thread():
    with _hf.torch_threads(1):
        yield


def read_split(lake: Path, split: str = "train"):
    s = cld_lake.open_lake(lake).split(split)
    (block,) = list(s.blocks(channels=list(s.channels)))
    return s, block


# --- sequence_loss -------------------------------------------------------------------------
@pytest.mark.parametrize("make", [_hf.tiny_gpt2, _hf.tiny_llama], ids=["gpt2", "llama"])
def test_sequence_loss_equals_the_models_own_loss_per_sequence(make):
    """Padding (-100 at the right), a prompt left out (-100 at positions 0-2), sequences of
    different lengths: each equals ``model(ids, labels=...).loss`` of that sequence alone."""
    model = make().eval()
    rows = [_hf.byte_ids(t) for t, _ in _hf.texts(per_module=4, modules=("json",))]
    rows += [[7, 8, 9, 10, 11, 12]]
    ids, mask, labels = _hf.padded_batch(rows, ignore=(0, 1, 2))
    with torch.no_grad():
        got, counts = sequence_loss(
            model(input_ids=ids, attention_mask=mask).logits, labels, return_counts=True
        )
        want = [
            model(input_ids=ids[i : i + 1, : len(r)], labels=labels[i : i + 1, : len(r)]).loss
            for i, r in enumerate(rows)
        ]
    np.testing.assert_allclose(got.numpy(), torch.stack(want).numpy(), rtol=1e-5, atol=1e-6)
    # the causal shift: position t predicts t+1, so the first three targets are positions 1..3
    # (three left out: 0 is never a target, 1 and 2 are ignored)
    assert counts.tolist() == [len(r) - 3 for r in rows]
    assert got.dtype == torch.float32 and counts.dtype == torch.int64


def test_sequence_loss_by_hand_and_nan_without_a_target():
    logits = torch.log_softmax(torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0)), -1)
    labels = torch.tensor([[1, 2, 3, 4], [0, 1, -100, -100], [3, -100, -100, -100]])
    loss, counts = sequence_loss(logits, labels, return_counts=True)
    first = -(logits[0, 0, 2] + logits[0, 1, 3] + logits[0, 2, 4]) / 3
    assert loss[0].item() == pytest.approx(first.item(), rel=1e-6)
    assert loss[1].item() == pytest.approx(-logits[1, 0, 1].item(), rel=1e-6)
    assert torch.isnan(loss[2]) and counts.tolist() == [3, 1, 0]  # nothing to predict: NaN
    half = sequence_loss(logits.half(), labels)  # computed in float32 from half logits
    assert half.dtype == torch.float32
    np.testing.assert_allclose(half[:2].numpy(), loss[:2].numpy(), rtol=2e-3)


def test_sequence_loss_refuses_bad_shapes_in_one_line():
    with pytest.raises(BadInputError, match=r"\(batch, length, vocab\)"):
        sequence_loss(torch.zeros(2, 5), torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(BadInputError, match="one label per position"):
        sequence_loss(torch.zeros(2, 5, 3), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(BadInputError, match="integer token ids"):
        sequence_loss(torch.zeros(2, 5, 3), torch.zeros(2, 5))


# --- update_loss ---------------------------------------------------------------------------
def losses(ckpt: int) -> np.ndarray:
    return np.random.default_rng(ckpt).random(N).astype(np.float32)


def test_update_loss_records_the_loss_channel_groups_and_token_counts(tmp_path):
    lake = tmp_path / "l.lake"
    rec = LossRecorder(lake, "train", num_classes=G)
    ids = np.arange(100, 100 + N)
    groups, tokens = ids % G, ids - 90
    for ckpt in range(3):
        loss = losses(ckpt)
        loss[5] = np.nan  # a sequence without a target token
        for a in range(0, N, 7):  # batches on any device, shuffled order
            part = slice(a, a + 7)
            rec.update_loss(
                torch.from_numpy(ids[part][::-1].copy()),
                torch.from_numpy(loss[part][::-1].copy()),
                groups[part][::-1],
                num_tokens=torch.from_numpy(tokens[part][::-1].copy()),
            )
        summary = rec.commit(ckpt, step=10 * ckpt)
        assert summary.num_samples == N and np.isnan(summary.accuracy)
        assert summary.mean_loss == pytest.approx(np.nanmean(loss.astype(np.float64)))
    split, block = read_split(lake)
    assert split.channels == {"loss": "float32"}
    np.testing.assert_array_equal(split.sample_ids, ids)
    np.testing.assert_array_equal(split.labels, groups)
    want = np.stack([losses(c) for c in range(3)], axis=1)
    want[5] = np.nan
    np.testing.assert_array_equal(block.values["loss"], want)
    np.testing.assert_array_equal(split.samples_table.column("num_tokens").to_numpy(), tokens)
    assert split.checkpoint_table.column("step").to_pylist() == [0, 10, 20]


def test_update_loss_without_token_counts_and_groups_inferred(tmp_path):
    lake = tmp_path / "l.lake"
    rec = LossRecorder(lake, "val")
    rec.update_loss(list(range(N)), losses(0).tolist(), [i % G for i in range(N)])
    rec.commit(0)
    split, block = read_split(lake, "val")
    assert "num_tokens" not in split.samples_table.column_names
    assert cld_lake.open_lake(lake).num_classes == G  # the largest group + 1
    np.testing.assert_array_equal(block.values["loss"][:, 0], losses(0))


def test_update_loss_refuses_bad_input_before_anything_is_written(tmp_path):
    lake = tmp_path / "l.lake"
    ids, loss, groups = torch.arange(4), torch.rand(4), torch.tensor([0, 1, 0, 1])
    rec = LossRecorder(lake, "train")
    with pytest.raises(BadInputError, match=r"loss: expected shape \(4,\)"):
        rec.update_loss(ids, torch.rand(4, 2), groups)
    with pytest.raises(BadInputError, match="one group per sample"):
        rec.update_loss(ids, loss, groups[:3])
    with pytest.raises(BadInputError, match="groups must be integers"):
        rec.update_loss(ids, loss, groups.float())
    with pytest.raises(BadInputError, match="sample ids must be integers"):
        rec.update_loss(ids.float(), loss, groups)
    with pytest.raises(BadInputError, match="num_tokens: expected 4 integers"):
        rec.update_loss(ids, loss, groups, num_tokens=torch.ones(4))
    rec.update_loss(ids, loss, groups, num_tokens=[1, 2, 3, 4])
    with pytest.raises(BadInputError, match="some batches of this checkpoint and not for others"):
        rec.update_loss(ids + 4, loss, groups)
    with pytest.raises(BadInputError, match=r"records with update_loss\(\); update\(\)"):
        rec.update(ids, torch.randn(4, 2), groups)
    negative = LossRecorder(lake, "train")
    negative.update_loss(ids, loss, torch.tensor([0, -1, 0, 1]))
    with pytest.raises(BadInputError, match="1 groups are negative"):
        negative.commit(0)
    assert not lake.exists()
    explicit = LossRecorder(lake, "train", channels=("loss", "correct"))
    with pytest.raises(BadInputError, match="'loss' channel alone"):
        explicit.update_loss(ids, loss, groups)
    logits = LossRecorder(lake, "train")
    logits.update(ids, torch.randn(4, 2), groups)
    with pytest.raises(BadInputError, match=r"records with update\(\); update_loss\(\)"):
        logits.update_loss(ids, loss, groups)


def test_a_loss_only_lake_scores_and_refuses_the_methods_that_need_logits(tmp_path, cli):
    lake = tmp_path / "l.lake"
    for split, first in (("train", 0), ("val", 1000)):
        rec = LossRecorder(lake, split, num_classes=G)
        for ckpt in range(4):
            rec.update_loss(np.arange(first, first + N), losses(ckpt + first), np.arange(N) % G)
            rec.commit(ckpt)
    assert cli("score", lake).code == 0
    for method, channel in (("aum", "margin"), ("forgetting", "correct"), ("el2n", "el2n")):
        res = cli("score", lake, "--method", method)
        assert res.code == 2 and res.err.count("\n") == 1, res.err
        assert f"needs the '{channel}' channel" in res.err and "Traceback" not in res.err


# --- record(loss_fn=...) over dict batches ---------------------------------------------------
def lm_loader(rows, batch_size: int = 8) -> DataLoader:
    """Hugging Face style dict batches: input_ids, attention_mask, labels, sample_id, group."""
    items = [(i, _hf.byte_ids(t), g) for i, (t, g) in enumerate(rows)]

    def collate(batch):
        ids, mask, labels = _hf.padded_batch([b[1] for b in batch])
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": labels,
            "sample_id": torch.tensor([b[0] for b in batch]),
            "group": torch.tensor([b[2] for b in batch]),
            "text": [rows[b[0]][0] for b in batch],  # a non-tensor entry rides along
        }

    return DataLoader(items, batch_size=batch_size, collate_fn=collate)


def lm_loss(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss, counts = sequence_loss(logits, batch["labels"], return_counts=True)
    return batch["sample_id"], loss, batch["group"], counts


def test_record_with_loss_fn_over_dict_batches_equals_update_loss(tmp_path):
    rows = _hf.texts(per_module=10)
    model = _hf.tiny_gpt2()
    model.train()
    rec = LossRecorder(tmp_path / "a.lake", "train")
    summary = rec.record(model, lm_loader(rows), checkpoint=0, loss_fn=lm_loss)
    assert model.training, "record() restores train mode"
    assert summary.num_samples == len(rows) and np.isnan(summary.accuracy)
    model.eval()
    by_hand = LossRecorder(tmp_path / "b.lake", "train")
    with torch.no_grad():
        for batch in lm_loader(rows, batch_size=len(rows)):
            by_hand.update_loss(*lm_loss(model, batch)[:3])
    by_hand.commit(0)
    got, got_block = read_split(tmp_path / "a.lake")
    want, want_block = read_split(tmp_path / "b.lake")
    np.testing.assert_array_equal(got.labels, [g for _, g in rows])
    np.testing.assert_allclose(got_block.loss, want_block.loss, rtol=1e-5)
    tokens = got.samples_table.column("num_tokens").to_numpy()
    np.testing.assert_array_equal(tokens, [len(_hf.byte_ids(t)) - 1 for t, _ in rows])


def test_record_with_logits_fn_records_every_channel(tmp_path):
    x, y = torch.randn(N, 4), torch.arange(N) % G
    model = torch.nn.Linear(4, G)
    batches = [{"x": x[a : a + 5], "y": y[a : a + 5], "id": torch.arange(a, min(a + 5, N))}
               for a in range(0, N, 5)]  # fmt: skip
    rec = LossRecorder(tmp_path / "c.lake", "train")
    rec.record(model, batches, 0, logits_fn=lambda m, b: (b["id"], m(b["x"]), b["y"]))
    split, block = read_split(tmp_path / "c.lake")
    assert set(split.channels) == {"loss", "correct", "margin"}
    with torch.no_grad():
        want = torch.nn.functional.cross_entropy(model(x), y, reduction="none")
    np.testing.assert_allclose(block.loss[:, 0], want.numpy(), rtol=1e-5)


def test_dict_batches_without_loss_fn_and_bad_loss_fn_results_are_one_line(tmp_path):
    model = _hf.tiny_gpt2()
    rec = LossRecorder(tmp_path / "d.lake", "train")
    loader = lm_loader(_hf.texts(per_module=2, modules=("json",)))
    with pytest.raises(BadInputError, match=r"pass record\(\.\.\., loss_fn=\.\.\.\)"):
        rec.record(model, loader, 0)
    with pytest.raises(BadInputError, match=r"loss_fn returned 2 items for batch 0"):
        rec.record(model, loader, 0, loss_fn=lambda m, b: (b["sample_id"], b["group"]))
    with pytest.raises(BadInputError, match="not both"):
        rec.record(model, loader, 0, loss_fn=lm_loss, logits_fn=lm_loss)
    assert rec.pending == 0 and not (tmp_path / "d.lake").exists()


def test_the_count_of_bad_labels_survives_their_clamping(tmp_path):
    """update() clamps a bad label for the maths; the refusal still counts it."""
    rec = LossRecorder(tmp_path / "e.lake", "train", num_classes=G)
    rec.update(torch.arange(4), torch.randn(4, G), torch.tensor([0, 7, 1, 9]))
    with pytest.raises(BadInputError, match=r"'train': 2 labels are outside the 3 classes"):
        rec.commit(0)


def test_update_loss_takes_group_names_and_sql_shows_them(tmp_path):
    """Named groups (a corpus's sources) recorded straight from the loop: the lake numbers
    the names (sorted), a later split keeps each name's id and adds its new ones, and SQL,
    scoring and selection see them by name."""
    lake = tmp_path / "l.lake"
    sources = np.array(["web", "code", "books"])
    ids = np.arange(N)
    train = sources[ids % 3]
    rec = LossRecorder(lake, "train")
    val = LossRecorder(lake, "val")
    val_ids = np.arange(12)
    for ckpt in range(4):
        for a in range(0, N, 9):
            part = slice(a, a + 9)
            rec.update_loss(ids[part], losses(ckpt)[part], train[part])
        rec.commit(ckpt)
        val.update_loss(val_ids, losses(ckpt)[:12], np.array(["papers", *sources[val_ids % 3][1:]]))
        val.commit(ckpt)
    opened = cld_lake.open_lake(lake)
    assert opened.group_names() == ("books", "code", "web", "papers")
    split, _ = read_split(lake)
    np.testing.assert_array_equal(split.labels, np.searchsorted(["books", "code", "web"], train))
    rows = cld_lake.query(
        lake,
        "SELECT group_name, count(*) AS n FROM samples WHERE split = 'train' GROUP BY 1 ORDER BY 1",
    )
    assert rows.to_dict(as_series=False) == {
        "group_name": ["books", "code", "web"],
        "n": [int((train == s).sum()) for s in ("books", "code", "web")],
    }
    cld_lake.score(lake, method="mean_loss")
    scored = cld_lake.query(lake, "SELECT DISTINCT group_name FROM scores ORDER BY 1")
    assert scored["group_name"].to_list() == ["books", "code", "web"]
