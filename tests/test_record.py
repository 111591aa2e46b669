"""LossRecorder: values, modes, locking, chunking and bad input (single process)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import cld_lake
import cld_lake.torch.record as record_mod
from cld_lake.errors import BadInputError, CheckpointExistsError
from cld_lake.lake.writer import SplitWriter
from cld_lake.torch import LossRecorder, WithIndex, sample_stats
from tests.conftest import scores_file

N, D, C = 203, 6, 4


def make_data(seed: int = 0, n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g), torch.randint(0, C, (n,), generator=g)


def make_model(seed: int = 0, dropout: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(D, 16),
        torch.nn.BatchNorm1d(16),
        torch.nn.ReLU(),
        torch.nn.Dropout(dropout),
        torch.nn.Linear(16, C),
    )


def loader(
    x: torch.Tensor, y: torch.Tensor, batch_size: int = 32, shuffle: bool = False, ids=None
) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    return DataLoader(
        WithIndex(TensorDataset(x, y), ids=ids), batch_size=batch_size, shuffle=shuffle, generator=g
    )


def read_all(
    lake_path: Path, split: str = "train"
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    s = cld_lake.open_lake(lake_path).split(split)
    blocks = list(s.blocks(channels=list(s.channels)))
    values = {c: np.concatenate([b.values[c] for b in blocks]) for c in s.channels}
    return s.sample_ids, s.checkpoint_ids, values


def tree_hash(path: Path) -> str:
    h = hashlib.sha256()
    if not path.exists():
        return "absent"
    for p in sorted(path.rglob("*")):
        if p.is_file() and not p.name.endswith(".lock"):
            h.update(str(p.relative_to(path)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_margin_definition_on_hand_made_logits() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.5], [0.0, 2.0, 1.0], [1.0, 1.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    loss, correct, margin = sample_stats(logits, labels)
    assert margin.tolist() == [2.0, -2.0, 0.0]  # own logit minus the largest other logit
    assert correct.tolist() == [True, False, False]  # a tie resolves to the first class
    np.testing.assert_allclose(
        loss.numpy(), F.cross_entropy(logits, labels, reduction="none").numpy()
    )


def test_record_matches_a_plain_eval_pass_and_restores_mode(tmp_path: Path) -> None:
    x, y = make_data()
    model = make_model(dropout=0.5)
    model.train()
    for _ in range(3):  # move the BatchNorm running stats away from their init
        model(x)
    lake = tmp_path / "r.lake"
    rec = LossRecorder(lake, "train")
    summary = rec.record(model, loader(x, y, shuffle=True), checkpoint=0, epoch=0)
    assert model.training, "record() must restore train mode"
    model.eval()
    rec.record(model, loader(x, y, batch_size=7), checkpoint=5)
    assert not model.training, "record() must restore eval mode"
    with torch.no_grad():
        ref_loss, ref_correct, ref_margin = (t.numpy() for t in sample_stats(model(x), y))
    ids, ckpts, values = read_all(lake)
    np.testing.assert_array_equal(ids, np.arange(N))
    np.testing.assert_array_equal(ckpts, [0, 5])
    for col in range(2):  # eval mode: dropout off, running stats used, whatever the batching
        np.testing.assert_allclose(values["loss"][:, col], ref_loss, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(values["margin"][:, col], ref_margin, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(values["correct"][:, col], ref_correct)
    assert values["loss"].dtype == np.float32 and values["correct"].dtype == bool
    assert summary.num_samples == N and summary.accuracy == pytest.approx(ref_correct.mean())
    assert summary.mean_loss == pytest.approx(float(ref_loss.mean()), rel=1e-5)
    np.testing.assert_array_equal(cld_lake.open_lake(lake).split("train").labels, y.numpy())


def test_mode_restored_when_the_pass_fails(tmp_path: Path) -> None:
    x, y = make_data()
    model = make_model()
    model.train()
    bad = DataLoader(TensorDataset(x, y), batch_size=16)  # no sample ids
    with pytest.raises(BadInputError, match="WithIndex"):
        LossRecorder(tmp_path / "r.lake", "train").record(model, bad, 0)
    assert model.training
    assert not (tmp_path / "r.lake").exists()


def test_update_commit_equals_record_and_custom_ids(tmp_path: Path) -> None:
    x, y = make_data()
    model = make_model().eval()
    ids = np.arange(N) * 10 + 7
    a = LossRecorder(tmp_path / "a.lake", "train")
    a.record(model, loader(x, y, ids=ids), 0)
    b = LossRecorder(tmp_path / "b.lake", "train", num_classes=C)
    with torch.no_grad():
        for xb, yb, ib in loader(x, y, batch_size=50, shuffle=True, ids=ids):
            b.update(ib, model(xb), yb)
    assert b.pending == N
    b.commit(0, epoch=0)
    assert b.pending == 0
    ida, _, va = read_all(tmp_path / "a.lake")
    idb, _, vb = read_all(tmp_path / "b.lake")
    np.testing.assert_array_equal(ida, np.sort(ids))
    np.testing.assert_array_equal(ida, idb)
    for c in va:
        np.testing.assert_allclose(va[c], vb[c], rtol=1e-6)


def test_small_flush_chunks_give_identical_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = make_data()
    model = make_model().eval()
    LossRecorder(tmp_path / "a.lake", "train").record(model, loader(x, y), 0)
    monkeypatch.setattr(record_mod, "FLUSH_ROWS", 5)  # several host moves per pass
    LossRecorder(tmp_path / "b.lake", "train").record(model, loader(x, y), 0)
    va, vb = read_all(tmp_path / "a.lake")[2], read_all(tmp_path / "b.lake")[2]
    for c in va:
        np.testing.assert_array_equal(va[c], vb[c])


def test_train_and_val_recorders_in_one_process_and_lock_only_during_commit(tmp_path: Path) -> None:
    x, y = make_data()
    xv, yv = make_data(seed=3, n=41)
    model = make_model().eval()
    lake = tmp_path / "r.lake"
    train, val = LossRecorder(lake, "train"), LossRecorder(lake, "val", margin_dtype="float16")
    for ckpt in range(3):
        train.record(model, loader(x, y), ckpt)
        val.record(model, loader(xv, yv), ckpt)
        # between commits no lock is held: another writer can open (and close) the split
        with SplitWriter(cld_lake.open_lake(lake), "train"):
            pass
    opened = cld_lake.open_lake(lake)
    assert opened.splits() == ["train", "val"]
    assert opened.split("val").channels["margin"] == "float16"
    assert opened.num_classes == C
    np.testing.assert_array_equal(opened.split("val").checkpoint_ids, [0, 1, 2])


def test_commit_while_another_writer_holds_the_split_fails_cleanly(tmp_path: Path) -> None:
    x, y = make_data()
    model = make_model().eval()
    lake = tmp_path / "r.lake"
    rec = LossRecorder(lake, "train")
    rec.record(model, loader(x, y), 0)
    before = tree_hash(lake)
    with SplitWriter(cld_lake.open_lake(lake), "train"):
        with pytest.raises(cld_lake.CldLakeError, match="being written by another job"):
            rec.record(model, loader(x, y), 1)
    assert tree_hash(lake) == before
    rec.record(model, loader(x, y), 1)  # nothing pending was left behind
    np.testing.assert_array_equal(cld_lake.open_lake(lake).split("train").checkpoint_ids, [0, 1])


def test_bad_input_is_refused_and_the_lake_is_unchanged(tmp_path: Path) -> None:
    x, y = make_data()
    model = make_model().eval()
    lake = tmp_path / "r.lake"
    rec = LossRecorder(lake, "train")
    rec.record(model, loader(x, y), 0)
    before = tree_hash(lake)

    wide = torch.nn.Linear(D, C + 2)
    with pytest.raises(BadInputError, match=f"outputs {C + 2} logits .* {C} classes"):
        rec.record(wide, loader(x, y), 1)
    y_bad = y.clone()
    y_bad[10] = C + 3
    with pytest.raises(BadInputError, match="outside the 4 classes"):
        rec.record(model, loader(x, y_bad), 1)
    with pytest.raises(BadInputError, match="not in split"):
        rec.record(model, loader(x, y, ids=np.arange(N) + 1000), 1)
    with pytest.raises(BadInputError, match="no values for 3 of"):
        rec.record(model, loader(x[:-3], y[:-3]), 1)
    with pytest.raises(BadInputError, match="yielded no batches"):
        rec.record(model, [], 1)
    with pytest.raises(CheckpointExistsError):
        rec.record(model, loader(x, y), 0)
    with pytest.raises(BadInputError, match="no samples were recorded"):
        rec.commit(1)
    with pytest.raises(BadInputError, match="logits"):
        rec.update(torch.arange(3), torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(BadInputError, match="num_classes=7"):
        LossRecorder(lake, "val", num_classes=7).record(model, loader(x, y), 0)
    with pytest.raises(BadInputError, match="margin_dtype"):
        LossRecorder(lake, "train", margin_dtype="int8")
    with pytest.raises(BadInputError, match="split name"):
        LossRecorder(lake, "../train")
    assert tree_hash(lake) == before
    rec.record(model, loader(x, y), 1)  # the recorder still works afterwards


def test_duplicates_refused_single_process_unless_asked(tmp_path: Path) -> None:
    x, y = make_data()
    model = make_model().eval()
    ids = torch.arange(N)
    rec = LossRecorder(tmp_path / "r.lake", "train")
    with torch.no_grad():
        rec.update(ids, model(x), y)
        rec.update(ids[:5], model(x[:5]), y[:5])
    with pytest.raises(BadInputError, match="given twice"):
        rec.commit(0)
    rec = LossRecorder(tmp_path / "r.lake", "train", duplicates="first")
    with torch.no_grad():
        rec.update(ids, model(x), y)
        logits = model(x)
        rec.update(ids[:5], torch.randn(5, C) * 30, y[:5])  # later duplicates are ignored
        ref = sample_stats(logits, y)[0].numpy()
    rec.commit(0)
    _, _, values = read_all(tmp_path / "r.lake")
    np.testing.assert_array_equal(values["loss"][:, 0], ref)


# --- the optional el2n channel ---------------------------------------------------------------
def _el2n_numpy(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """||softmax(logits) - onehot(label)||_2 in float64, from its definition."""
    z = logits.double().numpy()
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(p)), labels.numpy()] -= 1.0
    return np.sqrt((p**2).sum(axis=1))


def test_el2n_definition_and_its_small_values() -> None:
    logits = torch.tensor([[30.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 5.0, 0.0], [2.0, 1.0, -1.0]])
    labels = torch.tensor([0, 2, 1, 0])
    *first, el2n = sample_stats(logits, labels, el2n=True)
    for a, b in zip(first, sample_stats(logits, labels), strict=True):  # same three as always
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    np.testing.assert_allclose(el2n.numpy(), _el2n_numpy(logits, labels), rtol=1e-6, atol=1e-12)
    # a confident right answer: about sqrt(2) e^-30, kept (not lost to cancellation)
    assert 0 < float(el2n[0]) < 1e-12
    # right with p = e^5 / s, s = e^5 + 2: the error is (1, -2, 1) / s
    assert float(el2n[2]) == pytest.approx(np.sqrt(6) / (np.exp(5) + 2), rel=1e-5)


def test_el2n_channel_is_recorded_on_request_and_scored(tmp_path: Path, cli) -> None:
    x, y = make_data()
    model = make_model().eval()
    lake = tmp_path / "e.lake"
    rec = LossRecorder(lake, "train", channels=("loss", "correct", "margin", "el2n"))
    for checkpoint in range(4):
        rec.record(model, loader(x, y, batch_size=17), checkpoint=checkpoint)
    _, _, values = read_all(lake)
    assert values["el2n"].dtype == np.float32
    with torch.no_grad():
        expected = _el2n_numpy(model(x), y)
    for col in range(4):
        np.testing.assert_allclose(values["el2n"][:, col], expected, rtol=1e-5, atol=1e-6)
    res = cli("score", lake, "--method", "el2n,aum,forgetting", "--early", "0.5")
    assert res.code == 0, res.err
    scores = pq.read_table(scores_file(lake)).column("el2n").to_numpy()
    np.testing.assert_allclose(scores, values["el2n"][:, :2].astype(np.float64).mean(axis=1))


def test_default_channels_are_unchanged_and_bad_channels_refused(tmp_path: Path) -> None:
    x, y = make_data(n=20)
    rec = LossRecorder(tmp_path / "d.lake", "train")
    rec.record(make_model(), loader(x, y), checkpoint=0)
    assert cld_lake.open_lake(tmp_path / "d.lake").split("train").channels == {
        "loss": "float32",
        "correct": "bool",
        "margin": "float32",
    }
    for bad in (("correct",), ("loss", "logits"), ("loss", "loss"), "el2n"):
        with pytest.raises(BadInputError, match="give 'loss' and any of"):
            LossRecorder(tmp_path / "x.lake", "train", channels=bad)
    only_loss = LossRecorder(tmp_path / "o.lake", "train", channels=("loss",))
    only_loss.record(make_model(), loader(x, y), checkpoint=0)
    assert list(cld_lake.open_lake(tmp_path / "o.lake").split("train").channels) == ["loss"]
