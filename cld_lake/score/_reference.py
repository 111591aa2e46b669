"""CLD's reference: which trajectory a training sample is correlated with, and which split's
losses make it.

``reference`` (``--reference``) picks the kind, ``reference_split`` (``--reference-split``) the
split whose losses are averaged (default ``val``):

- ``group`` (``class`` is an alias, its older name): the mean trajectory of the sample's own
  group over the reference split's samples of that group;
- ``global``: one mean trajectory over every sample of the reference split;
- ``split:NAME``: one mean trajectory over every sample of split ``NAME`` (a target task's
  held-out set): ``global`` over that split, whatever the groups of its samples.

Both are checked here, before the lake is read; the planner (:mod:`cld_lake.score._plan`)
reads the split by name and builds the table with :mod:`cld_lake.score._formula`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cld_lake._types import SPLIT_REFERENCE, CLDReference, choices
from cld_lake.errors import BadInputError, ScoringError, argument
from cld_lake.lake import check_split_name

#: The split a ``group`` or ``global`` reference averages unless ``reference_split`` names
#: another.
DEFAULT_REFERENCE_SPLIT = "val"
#: What ``--reference`` accepts, for help texts and messages.
REFERENCE_FORMS = (*choices(CLDReference), f"{SPLIT_REFERENCE}NAME")

Kind = Literal["group", "global", "split"]


@dataclass(frozen=True)
class ReferenceChoice:
    """A checked reference: its ``kind`` and the ``split`` whose losses it averages."""

    kind: Kind
    split: str

    @property
    def text(self) -> str:
        """As stored in the provenance: ``group``, ``global`` or ``split:NAME``."""
        return f"{SPLIT_REFERENCE}{self.split}" if self.kind == "split" else self.kind

    @property
    def pooled(self) -> bool:
        """One trajectory for every training sample (``global``, ``split:NAME``), not one per
        group."""
        return self.kind != "group"


def reference_problem(reference: object) -> str | None:
    """Why ``reference`` is no reference (None when it is one): the text after the argument
    in a message, shared by the API and the CLI's parameter type."""
    if not isinstance(reference, str):
        return f"use one of {', '.join(REFERENCE_FORMS)}"
    if reference in choices(CLDReference):
        return None
    if not reference.startswith(SPLIT_REFERENCE):
        return (
            f"use group (its alias: class), global or {SPLIT_REFERENCE}NAME "
            f"(e.g. {SPLIT_REFERENCE}target: the mean loss of split target)"
        )
    name = reference[len(SPLIT_REFERENCE) :]
    if not name:
        return f"name the split after '{SPLIT_REFERENCE}', e.g. {SPLIT_REFERENCE}target"
    try:
        check_split_name(name)
    except BadInputError as exc:
        return f"{name!r} is not a split name ({str(exc).split(': ', 1)[-1]})"
    return None


def parse_reference(reference: str | None, reference_split: str | None) -> ReferenceChoice:
    """The reference ``reference`` and ``reference_split`` ask for (None: the defaults,
    ``group`` over ``val``), or one line naming the argument to fix.

    ``split:NAME`` names its split itself: a ``reference_split`` beside it must be ``NAME``
    (the same split said twice), any other is refused as a contradiction.
    """
    if reference_split is not None:
        try:
            check_split_name(reference_split, "reference_split")
        except BadInputError as exc:
            raise ScoringError(str(exc)) from None
    text = "group" if reference is None else reference
    problem = reference_problem(text)
    if problem is not None:
        raise ScoringError(f"{argument('reference', text)}: {problem}")
    if text.startswith(SPLIT_REFERENCE):
        name = text[len(SPLIT_REFERENCE) :]
        if reference_split is not None and reference_split != name:
            raise ScoringError(
                f"{argument('reference', text)} and {argument('reference_split', reference_split)} "
                f"name different reference splits; {argument('reference', text)} already "
                f"names its split: leave {argument('reference_split')} out, or use "
                f"{argument('reference', 'group')} {argument('reference_split', reference_split)} "
                "for per-group means of that split"
            )
        return ReferenceChoice("split", name)
    kind: Kind = "global" if text == "global" else "group"  # "class": the alias of "group"
    return ReferenceChoice(kind, reference_split or DEFAULT_REFERENCE_SPLIT)
