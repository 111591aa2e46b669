"""The engine contract and the one registry of engines (the CLI's ``--engine`` choices).

An engine streams the training rows of a split through the planned methods and yields
:class:`~cld_lake.score._passes.ScoredChunk` objects: every method's final scores for some rows
(a slice or row positions) with their labels and counters. It never stores: the orchestrator
(:mod:`cld_lake.score._orchestrate`) writes each chunk into the score columns as it arrives.

``numpy`` and ``dask`` run the methods' own row maths (:func:`~cld_lake.score._passes.score_blocks`)
and so every method, in any combination. ``duckdb`` and ``polars`` compute CLD's three row sums
in SQL / Polars expressions, the stage they are good at, and finish them through the method's
``from_sums`` (:func:`~cld_lake.score._passes.finalised`): they run ``cld``.

A new engine is a module with a ``compute`` function meeting :class:`EngineCompute`, one line in
:data:`ENGINE_MODULES` and :data:`ENGINE_METHODS`, and its name in ``cld_lake._types.Engine``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from importlib import import_module
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol, cast

from cld_lake._types import Engine
from cld_lake.errors import ScoringError, alternatives, argument
from cld_lake.lake.store import Split
from cld_lake.score._method import Plan
from cld_lake.score._passes import Progress, ScoredChunk


class EngineCompute(Protocol):
    """``compute(train, plans, *, block_rows=None, progress=None, **options)``.

    ``train`` is the split to score and ``plans`` the methods of one pass (each with its
    columns, parameters and, for CLD, its reference table); ``block_rows`` the rows per block
    read from the lake (None: one stored chunk) and ``progress`` a callback told the number of
    rows of each block done. Engine options (``threads``, ``memory_limit``, ``scheduler``, ...)
    are further keyword-only parameters, each with a default; the orchestrator passes
    ``engine_options`` through. Every row of ``train`` must appear in exactly one chunk, in any
    order; a chunk holds every plan's scores for its rows.
    """

    def __call__(
        self,
        train: Split,
        plans: Sequence[Plan],
        /,
        *,
        block_rows: int | None = None,
        progress: Progress | None = None,
    ) -> Iterator[ScoredChunk]: ...


# Modules load on first use: duckdb, polars and dask are imported only by the engine that runs.
ENGINE_MODULES: Mapping[Engine, str] = MappingProxyType(
    {
        "numpy": "cld_lake.score._numpy",
        "duckdb": "cld_lake.score._duckdb",
        "polars": "cld_lake.score._polars",
        "dask": "cld_lake.score._dask",
    }
)
ENGINES: tuple[Engine, ...] = tuple(ENGINE_MODULES)
# The methods each engine runs: None for every method, in any combination.
ENGINE_METHODS: Mapping[Engine, tuple[str, ...] | None] = MappingProxyType(
    {"numpy": None, "duckdb": ("cld",), "polars": ("cld",), "dask": None}
)
# Engines that run every method.
METHOD_ENGINES: tuple[Engine, ...] = tuple(e for e in ENGINES if ENGINE_METHODS[e] is None)


def load_engine(name: str, methods: Sequence[str] = ("cld",)) -> EngineCompute:
    """The ``compute`` function of engine ``name``, which must run ``methods`` (names)."""
    if name not in ENGINE_MODULES:
        raise ScoringError(f"{argument('engine', name)}: choose one of {', '.join(ENGINES)}")
    engine = cast(Engine, name)
    runs = ENGINE_METHODS[engine]
    if runs is not None and not set(methods) <= set(runs):
        raise ScoringError(
            f"{argument('engine', name)} runs {argument('method', ','.join(runs))} alone; for "
            f"{argument('method', ','.join(methods))} use {alternatives('engine', METHOD_ENGINES)}"
        )
    return cast(EngineCompute, import_module(ENGINE_MODULES[engine]).compute)


if TYPE_CHECKING:  # a type checker proves each engine meets the contract, importing none
    from cld_lake.score import _dask, _duckdb, _numpy, _polars

    _CONTRACT: tuple[EngineCompute, ...] = (
        _numpy.compute,
        _duckdb.compute,
        _polars.compute,
        _dask.compute,
    )
