"""Tiny Hugging Face models and real text for the tests: built from a config, tokenized by a
byte mapping, never downloaded (``HF_HUB_OFFLINE=1`` is set on import)."""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

# real text: the docstrings of a few standard-library modules, one group per module
MODULES = ("json", "textwrap", "shutil")
PAD, VOCAB = 256, 257  # bytes 0..255, then the padding id
MAX_BYTES = 40


def texts(per_module: int = 100, modules: tuple[str, ...] = MODULES) -> list[tuple[str, int]]:
    """``(text, group)`` pairs: the lines of each module's docstrings (public names, sorted),
    ``per_module`` of them per module, its index in ``modules`` as the group."""
    out = []
    for group, name in enumerate(modules):
        module = importlib.import_module(name)
        lines: list[str] = []
        for attr in sorted(dir(module)):
            doc = inspect.getdoc(getattr(module, attr)) if not attr.startswith("_") else None
            lines += [line.strip() for line in (doc or "").splitlines() if len(line.strip()) > 8]
        unique = list(dict.fromkeys(lines))
        if len(unique) < per_module:
            raise AssertionError(f"{name}: only {len(unique)} docstring lines")
        out += [(line, group) for line in unique[:per_module]]
    return out


def byte_ids(text: str) -> list[int]:
    """A byte-level tokenizer without a vocabulary file: a token is a UTF-8 byte."""
    return list(text.encode()[:MAX_BYTES])


def lm_dataset(rows: list[tuple[str, int]], first_id: int = 0) -> datasets.Dataset:
    """Tokenized rows with int64 sample ids ``first_id, first_id + 1, ...`` and a group."""
    return datasets.Dataset.from_dict(
        {
            "text": [t for t, _ in rows],
            "input_ids": [byte_ids(t) for t, _ in rows],
            "group": [g for _, g in rows],
            "sample_id": list(range(first_id, first_id + len(rows))),
        }
    )


def tiny_gpt2(seed: int = 0, num_labels: int | None = None) -> torch.nn.Module:
    """A 2-layer GPT-2 of width 32 (a classifier with ``num_labels``)."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=PAD,
        eos_token_id=PAD,
        pad_token_id=PAD,
        num_labels=num_labels or 2,
    )
    if num_labels is None:
        return transformers.GPT2LMHeadModel(config)
    return transformers.GPT2ForSequenceClassification(config)


def tiny_llama(seed: int = 0) -> torch.nn.Module:
    """A 2-layer Llama of width 32."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=PAD,
        eos_token_id=PAD,
        pad_token_id=PAD,
    )
    return transformers.LlamaForCausalLM(config)


def padded_batch(
    rows: list[list[int]], ignore: tuple[int, ...] = ()
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``input_ids`` (right-padded), ``attention_mask`` and ``labels`` (-100 at padding and
    at the positions ``ignore``, e.g. a prompt)."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), PAD)
    mask = torch.zeros((len(rows), length), dtype=torch.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    for pos in ignore:
        labels[:, pos] = -100
    return ids, mask, labels


def lm_splits() -> tuple[datasets.Dataset, datasets.Dataset]:
    """300 docstring lines of three modules (three groups): 225 to train on (ids 0..), 75
    held out as the reference (ids 10000..)."""
    rows = texts()
    train = lm_dataset(rows[0::4] + rows[1::4] + rows[2::4])
    return train, lm_dataset(rows[3::4], first_id=10_000)


def lm_collate(features: list[dict]) -> dict[str, torch.Tensor]:
    """The Trainer's batches for a causal LM: the inputs are the targets."""
    ids, mask, labels = padded_batch([f["input_ids"] for f in features])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def classifier_collate(features: list[dict]) -> dict[str, torch.Tensor]:
    """The Trainer's batches for a sequence classifier (the class in column ``label``)."""
    ids, mask, _ = padded_batch([f["input_ids"] for f in features])
    labels = torch.tensor([f["label"] for f in features])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def training_args(out: Path, **kw: Any) -> transformers.TrainingArguments:
    """CPU, no saving, no logging, no reports: a Trainer for a test."""
    defaults: dict[str, Any] = dict(
        output_dir=str(out),
        per_device_train_batch_size=16,
        per_device_eval_batch_size=64,
        learning_rate=3e-3,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        remove_unused_columns=False,
        seed=0,
    )
    return transformers.TrainingArguments(**{**defaults, **kw})


def per_row_loss(model: torch.nn.Module, dataset: datasets.Dataset) -> np.ndarray:
    """Each row's loss as the causal LM computes it for that row alone."""
    model.eval()
    with torch.no_grad():
        return np.array(
            [
                model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
                for ids in dataset["input_ids"]
            ]
        )


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch on ``count`` threads, restored afterwards (a tiny model's matrices are too small
    to share out: on a loaded machine several threads only wait on each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
