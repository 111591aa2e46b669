"""The engine contracts and the one registry of engines (the CLI's ``--engine`` choices).

An engine streams the training rows of a split through the formula and yields
:class:`~cld_lake.score._formula.Chunk` objects: the three sums of some rows (a slice or row
positions) with their labels. It never finalises: :func:`cld_lake.score.compute_cld` does, once,
for every engine. A new engine is a module with a ``compute`` function meeting
:class:`EngineCompute` plus one line in :data:`ENGINE_MODULES` (and its name in
``cld_lake._types.Engine``).

Methods other than CLD (and several methods in one pass) run through a second contract,
:class:`MethodsCompute`: ``compute_methods(train, plans, ...)`` yields
:class:`~cld_lake.score._passes.ScoredChunk` objects, every planned method's final scores for
some rows. The engines that have it are :data:`METHOD_ENGINES`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from importlib import import_module
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol, cast

from cld_lake._types import Engine
from cld_lake.errors import ScoringError
from cld_lake.lake.store import Split
from cld_lake.score._formula import Chunk, Progress, Reference
from cld_lake.score._method import Plan
from cld_lake.score._passes import ScoredChunk


class EngineCompute(Protocol):
    """``compute(train, reference, *, block_rows=None, progress=None, **options)``.

    ``train`` is the split to score and ``reference`` the per-class table; ``block_rows`` the
    rows per block read from the lake (None: one stored chunk) and ``progress`` a callback told
    the number of rows of each block done. Engine options (``threads``, ``memory_limit``, ...)
    are further keyword-only parameters, each with a default; ``compute_cld`` passes its
    ``engine_options`` through. Every row of ``train`` must appear in exactly one chunk, in any
    order.
    """

    def __call__(
        self,
        train: Split,
        reference: Reference,
        /,
        *,
        block_rows: int | None = None,
        progress: Progress | None = None,
    ) -> Iterator[Chunk]: ...


class MethodsCompute(Protocol):
    """``compute_methods(train, plans, *, block_rows=None, progress=None, **options)``.

    ``plans`` are the methods of one pass (each with its columns, parameters and, for CLD, its
    reference table). Every row of ``train`` must appear in exactly one chunk, in any order;
    a chunk holds every plan's scores for its rows.
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
# Engines that run every method (their module also has ``compute_methods``); the others run CLD.
METHOD_ENGINES: tuple[Engine, ...] = ("numpy", "dask")


def load_engine(name: str) -> EngineCompute:
    """The ``compute`` function of engine ``name``."""
    if name not in ENGINE_MODULES:
        raise ScoringError(f"--engine {name!r}: choose one of {', '.join(ENGINES)}")
    module = import_module(ENGINE_MODULES[cast(Engine, name)])
    return cast(EngineCompute, module.compute)


def load_methods_engine(name: str, methods: Sequence[str]) -> MethodsCompute:
    """The ``compute_methods`` function of engine ``name``, which must run ``methods``."""
    if name not in ENGINE_MODULES:
        raise ScoringError(f"--engine {name!r}: choose one of {', '.join(ENGINES)}")
    if name not in METHOD_ENGINES:
        raise ScoringError(
            f"--engine {name} runs --method cld alone; for --method {','.join(methods)} use "
            f"--engine {' or '.join(METHOD_ENGINES)}"
        )
    module = import_module(ENGINE_MODULES[cast(Engine, name)])
    return cast(MethodsCompute, module.compute_methods)


if TYPE_CHECKING:  # a type checker proves each engine meets the contract, importing none
    from cld_lake.score import _dask, _duckdb, _numpy, _polars

    _CONTRACT: tuple[EngineCompute, ...] = (
        _numpy.compute,
        _duckdb.compute,
        _polars.compute,
        _dask.compute,
    )
    _METHODS_CONTRACT: tuple[MethodsCompute, ...] = (_numpy.compute_methods, _dask.compute_methods)
