"""Record a ``transformers.Trainer`` run into a lake: :class:`LossRecorderCallback`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import torch
from transformers import TrainerCallback

from cld_lake.errors import BadInputError
from cld_lake.hf._data import Batches, Columns, check_columns, label_column, max_group
from cld_lake.lake import check_split_name
from cld_lake.torch import LossRecorder, sequence_loss

if TYPE_CHECKING:
    import datasets
    from transformers import TrainerControl, TrainerState, TrainingArguments

Kind = Literal["auto", "causal_lm", "sequence_classification"]
KINDS = ("auto", "causal_lm", "sequence_classification")


class LossRecorderCallback(TrainerCallback):
    """Record the training split and the reference split(s) of a ``Trainer`` run into a lake.

    At each evaluation (``on_evaluate``; set ``eval_strategy`` and ``eval_steps`` in the
    ``TrainingArguments``, ``eval_on_start=True`` to record the initial model too), or every
    ``every_n_steps`` optimizer steps, the callback runs an eval-mode, no-grad pass of the
    model over ``train_dataset`` and each reference dataset and commits one checkpoint per
    split, its id the global step. A step already recorded is not recorded again (a resumed
    run, or ``trainer.evaluate()`` after the last evaluation).

    - **causal LM** (a ``...ForCausalLM`` / ``...LMHeadModel``): each row's mean token loss
      (:func:`~cld_lake.torch.sequence_loss`: the causal shift, -100 and padding left out), its
      group (``group_column``; one group, 0, without it), and its number of target tokens,
      stored once as the ``num_tokens`` column of the split's samples table; the ``loss``
      channel alone (:meth:`~cld_lake.torch.LossRecorder.update_loss`). A row with no target
      token gets a NaN loss (undefined for every score).
    - **sequence classification** (a ``...ForSequenceClassification``): the logits against the
      row's ``label`` (or ``labels``) column, every channel (loss, correct, margin); the group
      is the class.

    Datasets hold tokenized rows: ``input_ids`` (lists of ints), optionally
    ``attention_mask``, ``labels`` (causal LM: the targets, -100 where none; default: the
    ``input_ids`` with padding masked), ``token_type_ids``; other columns are ignored. Rows
    are right-padded per batch with the model's ``pad_token_id`` (0 when it has none; a
    classifier needs one, as ``transformers`` does to find each row's last token).

    Under ``torch.distributed`` (a DDP ``Trainer``) every rank records every ``world``-th row
    of each dataset and the recorder's commit protocol writes each row once.

    Parameters
    ----------
    lake : path or URL
        The lake (created if missing).
    train_dataset : datasets.Dataset
        The training rows to score (the ``Trainer``'s ``train_dataset``, unshuffled, without
        augmentation), recorded as split ``train``.
    reference : mapping of split name to datasets.Dataset, optional
        Reference splits, e.g. ``{"val": held_out}`` (CLD's per-group reference reads ``val``;
        ``cld-lake score --reference split:NAME`` any other).
    every_n_steps : int, optional
        Record every N global steps instead of at each evaluation.
    kind : {"auto", "causal_lm", "sequence_classification"}
        What the model is; ``auto`` reads it from the model's class name.
    sample_id_column : str
        The column of int64 sample ids; without it a row's id is its index in its dataset.
    group_column : str, optional
        Causal LM: the column of each row's group (integers 0..G-1 or strings: a domain, a
        source, a task). Classification lakes group by class.
    batch_size : int, optional
        Rows per forward pass (default: ``per_device_eval_batch_size``).
    num_groups : int, optional
        Causal LM with integer groups: the number of groups (default: the largest group in
        the datasets + 1).
    run : str, optional
        The lake's run (a proxy training's seed or architecture).

    Examples
    --------
    >>> callback = LossRecorderCallback("runs/lm.lake", train_ds, reference={"val": val_ds},
    ...                                 group_column="domain")  # doctest: +SKIP
    >>> Trainer(model, args, train_dataset=train_ds, eval_dataset=val_ds,
    ...         callbacks=[callback]).train()  # doctest: +SKIP
    """

    def __init__(
        self,
        lake: str | os.PathLike[str],
        train_dataset: datasets.Dataset,
        reference: Mapping[str, datasets.Dataset] | None = None,
        *,
        every_n_steps: int | None = None,
        kind: Kind = "auto",
        sample_id_column: str = "sample_id",
        group_column: str | None = None,
        batch_size: int | None = None,
        num_groups: int | None = None,
        run: str | None = None,
    ) -> None:
        if kind not in KINDS:
            raise BadInputError(f"kind={kind!r}: choose one of {', '.join(KINDS)}")
        for name, value in (("every_n_steps", every_n_steps), ("batch_size", batch_size)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise BadInputError(f"{name}={value!r}: expected a positive integer")
        self.lake = lake
        self.splits: dict[str, datasets.Dataset] = {"train": train_dataset}
        for name, ds in (reference or {}).items():
            if check_split_name(name) == "train":
                raise BadInputError("reference: 'train' is the training split; name it 'val'")
            self.splits[name] = ds
        for name, ds in self.splits.items():
            check_columns(ds, name, ["input_ids"] + ([group_column] if group_column else []))
        self.every_n_steps = every_n_steps
        self.kind = kind
        self.sample_id_column = sample_id_column
        self.group_column = group_column
        self.batch_size = batch_size
        self.run = run
        if num_groups is None and group_column is not None:
            top = max_group(list(self.splits.values()), group_column)
            num_groups = None if top is None else top + 1
        self.num_groups = num_groups if group_column is not None else (num_groups or 1)
        self._recorders: dict[str, LossRecorder] = {}

    # --- the Trainer's events ------------------------------------------------------------
    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        if self.every_n_steps is None:
            self.record(kwargs["model"], state.global_step, args.per_device_eval_batch_size)

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        if self.every_n_steps is not None and state.global_step % self.every_n_steps == 0:
            self.record(kwargs["model"], state.global_step, args.per_device_eval_batch_size)

    # --- recording -----------------------------------------------------------------------
    def record(self, model: torch.nn.Module, step: int, batch_size: int = 8) -> list[str]:
        """Record every split at checkpoint ``step`` (those not yet recorded); returns the
        names of the splits recorded. Under ``torch.distributed`` call it on every rank."""
        causal = self._kind(model) == "causal_lm"
        done = []
        for split, dataset in self.splits.items():
            recorder = self._recorder(split, model, causal)
            if step in recorder.committed_checkpoints:
                continue
            columns = Columns(
                self.sample_id_column,
                self.group_column if causal else None,
                None if causal else label_column(dataset, split),
            )
            batches = Batches(
                dataset, columns, self.batch_size or batch_size, _pad_token(model, causal), causal
            )
            if causal:
                recorder.record(model, batches, step, step=step, loss_fn=_causal_loss)
            else:
                recorder.record(model, batches, step, step=step, logits_fn=_classifier_logits)
            done.append(split)
        return done

    def _recorder(self, split: str, model: torch.nn.Module, causal: bool) -> LossRecorder:
        if split not in self._recorders:
            classes = self.num_groups if causal else int(model.config.num_labels)
            self._recorders[split] = LossRecorder(self.lake, split, classes, run=self.run)
        return self._recorders[split]

    def _kind(self, model: torch.nn.Module) -> str:
        if self.kind != "auto":
            return self.kind
        name = type(model).__name__
        if name.endswith(("ForCausalLM", "LMHeadModel")):
            return "causal_lm"
        if name.endswith("ForSequenceClassification"):
            return "sequence_classification"
        raise BadInputError(
            f"kind='auto' cannot tell what a {name} is; pass kind='causal_lm' (a sequence's mean "
            "token loss) or kind='sequence_classification' (logits against the label)"
        )


def _pad_token(model: torch.nn.Module, causal: bool) -> int:
    pad = getattr(model.config, "pad_token_id", None)
    if pad is not None:
        return int(pad)
    if causal:  # padded positions are masked and carry no target: any id will do
        return 0
    raise BadInputError(
        f"{type(model).__name__}.config.pad_token_id is None: a classifier finds each row's last "
        "token by it; set model.config.pad_token_id (e.g. tokenizer.pad_token_id)"
    )


def _causal_loss(model: torch.nn.Module, batch: dict[str, Any]) -> tuple[Any, ...]:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss, counts = sequence_loss(logits, batch["labels"], return_counts=True)
    return batch["sample_id"], loss, batch["group"], counts


def _classifier_logits(model: torch.nn.Module, batch: dict[str, Any]) -> tuple[Any, Any, Any]:
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    return batch["sample_id"], model(**inputs).logits, batch["labels"]
