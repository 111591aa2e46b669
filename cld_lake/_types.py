"""Option strings shared by the Python API and the CLI, as ``Literal`` types.

The CLI builds its ``click.Choice`` lists from these (``typing.get_args``), so a new option
value is added in one place.
"""

from __future__ import annotations

from typing import Literal, get_args

Engine = Literal["numpy", "duckdb", "polars", "dask"]
Balance = Literal["proportional", "equal", "none"]
Strategy = Literal["topk", "ccs"]
Layout = Literal["wide", "columns", "long"]
Fallback = Literal["global"]
Duplicates = Literal["error", "first"]
# Scoring method names (cld_lake.score's registry, of Method definitions, is checked against
# this list).
MethodName = Literal[
    "cld",
    "mean_loss",
    "early_loss",
    "forgetting",
    "aum",
    "confidence",
    "variability",
    "correctness",
    "dynunc",
    "dual",
    "el2n",
]
# CLD's reference trajectory: the sample's group's mean over the reference split (``group``;
# ``class`` is its older name, an alias), one mean over the whole reference split (``global``),
# or ``split:NAME`` (one mean over split NAME, a string of that form: no Literal spells it).
CLDReference = Literal["group", "class", "global"]
#: The prefix of a ``split:NAME`` reference.
SPLIT_REFERENCE = "split:"
# What a higher score means: more worth keeping (easier, cleaner) or harder.
Direction = Literal["higher_keep", "higher_harder"]


def choices(alias: object) -> tuple[str, ...]:
    """The values of a ``Literal`` alias, for ``click.Choice`` and error messages."""
    return tuple(get_args(alias))
