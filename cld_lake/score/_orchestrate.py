"""The lake-level scoring path, one for every method and engine: check the request, pick the
runs, plan the pass, run it on the engine, collect the columns, build the provenance, store.

:func:`compute_scores` is the one entry point; :func:`compute_cld` and :func:`score` are thin
calls of it. Several runs (an ensemble) run the same pass once per run and store the mean.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cld_lake._types import CLDReference, Engine, Fallback
from cld_lake.errors import ScoringError, alternatives, argument
from cld_lake.lake.scores import (
    ScoreReader,
    check_score_name,
    check_scores_fit,
    existing_score_message,
    store_scores,
    stored_scores,
)
from cld_lake.lake.store import Lake, Split
from cld_lake.score._column import ScoreColumn
from cld_lake.score._engines import EngineCompute, load_engine
from cld_lake.score._formula import check_fallback
from cld_lake.score._method import Method, Params, Plan, check_params
from cld_lake.score._passes import Progress, ScoredChunk
from cld_lake.score._plan import TRAIN, Window, plan_pass, require_pass_splits
from cld_lake.score._provenance import ensemble_provenance, method_provenance
from cld_lake.score._reference import parse_reference
from cld_lake.score._registry import (
    METHOD_REGISTRY,
    get_method,
    parse_methods,
    repeated,
    split_names,
)

if TYPE_CHECKING:
    import polars as pl


@dataclass(frozen=True)
class ScoreResult:
    """Scores of every training sample (train row order) and the provenance stored with them.

    Sample ids and labels are read from the lake on first use, so computing and storing a
    score holds only the score column in memory.
    """

    name: str
    train: Split
    scores: np.ndarray | None
    provenance: dict[str, Any]
    _ids_labels: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def sample_ids(self) -> np.ndarray:
        return self._ids_labels[0] if self._ids_labels else self.train.sample_ids

    @property
    def labels(self) -> np.ndarray:
        return self._ids_labels[1] if self._ids_labels else self.train.labels

    def to_polars(self) -> pl.DataFrame:
        """``sample_id, label, score``; an undefined score is null (as in the scores table)."""
        import polars as pl

        if self.scores is None:
            raise ScoringError(
                f"score {self.name!r} was not kept in memory (keep_scores=False); read it from "
                "the scores table, e.g. cld_lake.sql.query(lake, 'SELECT * FROM scores')"
            )
        return pl.DataFrame(
            [
                pl.Series("sample_id", self.sample_ids, dtype=pl.Int64),
                pl.Series("label", self.labels, dtype=pl.Int64),
                pl.Series("score", self.scores, dtype=pl.Float64, nan_to_null=True),
            ]
        )


@dataclass(frozen=True)
class _Pass:
    """A checked request: what the pass over each run's train split computes, and how."""

    methods: tuple[Method, ...]
    names: list[str]
    params: Params
    engine: str
    compute: EngineCompute
    checkpoints: Window
    block_rows: int | None
    progress: Progress | None
    engine_options: dict[str, Any]


def compute_scores(
    lake: Lake | str | os.PathLike[str],
    methods: str | Sequence[str] = "cld",
    *,
    engine: Engine = "numpy",
    checkpoints: Window = None,
    names: str | Sequence[str] | None = None,
    early: float | None = None,
    window_length: int | None = None,
    reference: CLDReference | str | None = None,
    reference_split: str | None = None,
    fallback: Fallback | None = None,
    store: bool = True,
    block_rows: int | None = None,
    progress: Progress | None = None,
    engine_options: dict[str, Any] | None = None,
    collect_ids: bool = True,
    keep_scores: bool = True,
    runs: str | Sequence[str] | None = None,
    force: bool = False,
) -> dict[str, ScoreResult]:
    """Compute one or several scoring methods in one pass over the train split's blocks.

    ``methods`` is a name of :data:`METHODS`, a list of them or ``"a,b,c"``; each is stored as
    its own column (``names``, default the method names) with its provenance (method,
    parameters, checkpoints used, direction, range, engine, version, ...), all in one rewrite
    of the scores table. Every set runs on an engine of :data:`METHOD_ENGINES`, reading each
    block once for all of them; ``cld`` alone runs on every engine.

    Parameters
    ----------
    early : float, optional
        Early-window fraction for ``early_loss``, ``el2n`` (default 0.1) and ``dual`` (default
        0.15): the first ``max(1, floor(early * K))`` of the K selected checkpoints.
    window_length : int, optional
        Sliding-window length J of ``dynunc`` and ``dual`` (default 10).
    reference : {"group", "class", "global"} or "split:NAME", optional
        CLD's reference trajectory: the mean loss of the sample's group over the reference
        split (``"group"``, the default; ``"class"`` is an alias), one mean over every sample
        of the reference split (``"global"``), or one mean over every sample of split NAME
        (``"split:NAME"``, e.g. a target task's held-out set). Stored as ``group``,
        ``global`` or ``split:NAME``.
    reference_split : str, optional
        The split whose losses form a ``group`` or ``global`` reference (default ``"val"``).
        With ``"split:NAME"`` it may only repeat NAME (another split is refused). The
        reference split's checkpoints must cover the window, as val's do by default; a
        lake (each run of an ensemble) without it is refused, naming how to import it.

    A parameter given (not None) that none of ``methods`` reads is refused.
    fallback : {None, "global"}
        CLD, for classes without validation samples (see :func:`score`).
    runs : str or sequence of str, optional
        The proxy runs to score (see ``LossRecorder(run=...)``). Default: the lake's only run
        (an error naming the runs when it holds several). Several runs store, per column, the
        MEAN of the runs' scores (an ensemble): undefined (NaN / null) where any run's is; the
        provenance lists the runs and each run's own provenance. Their train splits must hold
        the same samples and labels. Memory: two score columns (8 bytes per sample each).
    force : bool
        Replace a stored score of the same name (without it, a name the scores table holds is
        refused before anything is computed).

    Other parameters as :func:`compute_cld`. Returns ``{column name: ScoreResult}``.

    Where scores are stored: the lake's one scores table, whose rows are one set of training
    samples; every run whose train split holds them (each proxy run of the same data) stores
    there, and a run of other samples is refused (see :mod:`cld_lake.lake.scores`).

    Raises
    ------
    cld_lake.errors.ScoringError
        An unknown method, a channel the lake lacks (naming how to record it), too few
        checkpoints for a method's window, a window beyond the checkpoints the lake holds, an
        engine that runs CLD only, a name already stored (without ``force``), a run whose
        training samples are not the scores table's. Nothing is written.
    """
    started = time.perf_counter()
    given = {"early": early, "window_length": window_length, "reference": reference}
    given |= {"reference_split": reference_split, "fallback": fallback}
    job = _check(methods, names, given, engine, checkpoints, block_rows, progress, engine_options)
    lake = lake if isinstance(lake, Lake) else Lake(lake)
    picked = _pick_runs(lake, runs)
    if len(picked) > 1:
        _check_same_train(lake, picked)
    for run in picked:  # every run's splits before any run is scored
        require_pass_splits(_on_run(lake, run), job.methods, job.params)
    if store:
        _check_store(_on_run(lake, picked[0]), job.names, force)
    if len(picked) > 1:
        train, totals, provenance = _ensemble(lake, picked, job, started)
        if store:
            _store(lake, train, totals, provenance, force)
        kept = totals if keep_scores else {}
    else:
        lake = _on_run(lake, picked[0])
        train, columns, provenance = _score_run(lake, job, not keep_scores, started)
        try:
            if store:
                columns_read = {n: c.read for n, c in columns.items()}
                _store(lake, train, columns_read, provenance, force)
        finally:
            for column in columns.values():
                column.close()
        kept = {n: c.values for n, c in columns.items() if c.values is not None}
    ids_labels = (train.sample_ids, train.labels) if collect_ids else None
    return {n: ScoreResult(n, train, kept.get(n), p, ids_labels) for n, p in provenance.items()}


def compute_cld(
    lake: Lake | str | os.PathLike[str],
    *,
    engine: Engine = "numpy",
    checkpoints: Window = None,
    name: str | None = None,
    fallback: Fallback | None = None,
    reference: CLDReference | str = "group",
    reference_split: str | None = None,
    store: bool = True,
    block_rows: int | None = None,
    progress: Progress | None = None,
    method: str = "cld",
    engine_options: dict[str, Any] | None = None,
    collect_ids: bool = True,
    keep_scores: bool = True,
    force: bool = False,
) -> ScoreResult:
    """Compute CLD for every training sample and (``store``) save it; see :func:`score`.

    ``compute_scores(lake, "cld", ...)`` for one column: :func:`cld_reference` over the
    reference split's blocks (``val`` by default), then the engine's pass over the train
    split's. Every engine runs it.
    ``collect_ids=False`` keeps only the score column in memory; the result's ``sample_ids`` /
    ``labels`` are then read from the lake on first use. ``keep_scores=False`` (with
    ``store``, the CLI's way) spills the column to a temporary file while it is computed, so
    nothing per-sample stays in memory; the result's ``scores`` is then None. ``method`` is
    ``"cld"`` (another method: :func:`compute_scores`). A lake with several proxy runs is
    scored on the run it was opened with (``lake.with_run("seed1")``); an ensemble of runs:
    ``compute_scores(lake, "cld", runs=[...])``.
    """
    if method != "cld":
        get_method(method)  # an unknown name: the list of choices
        raise ScoringError(
            f"{argument('method', method)}: compute_cld computes cld only; use "
            f"compute_scores(lake, {method!r})"
        )
    results = compute_scores(
        lake,
        "cld",
        engine=engine,
        checkpoints=checkpoints,
        names=None if name is None else [name],
        reference=reference,
        reference_split=reference_split,
        fallback=fallback,
        store=store,
        block_rows=block_rows,
        progress=progress,
        engine_options=engine_options,
        collect_ids=collect_ids,
        keep_scores=keep_scores,
        force=force,
    )
    return next(iter(results.values()))


def score(
    lake: Lake | str | os.PathLike[str],
    engine: Engine = "numpy",
    checkpoints: Window = None,
    name: str | None = None,
    fallback: Fallback | None = None,
    store: bool = True,
    *,
    block_rows: int | None = None,
    method: str = "cld",
    progress: Progress | None = None,
    early: float | None = None,
    window_length: int | None = None,
    reference: CLDReference | str | None = None,
    reference_split: str | None = None,
    force: bool = False,
) -> pl.DataFrame:
    """Score every training sample (CLD by default), as a Polars DataFrame ``sample_id, label,
    score``.

    Parameters
    ----------
    lake : Lake or path
        A lake with a ``train`` split (and a ``val`` split for CLD).
    engine : {"numpy", "duckdb", "polars", "dask"}
        How rows stream through the formula; every engine gives the same scores (to ~1e-15).
        Methods other than CLD run on ``numpy`` or ``dask``.
    checkpoints : str or slice, optional
        Window/stride ``START:STOP[:STEP]`` over the positions of the checkpoints committed in
        both train and val for CLD, in train for the other methods (e.g. ``"0:45"``,
        ``"::2"``). Default: all of them. CLD needs at least 3. A START or STOP beyond the
        checkpoints the lake holds is refused (never clipped).
    name : str, optional
        Column of ``scores.parquet`` to store into (default: the method name, e.g. ``cld``).
    fallback : {None, "global"}
        For classes without validation samples: error (default) or use the global
        validation trajectory (those rows are counted as ``fallback``).
    store : bool
        Store the column (atomically) with its provenance; ``False`` only computes.
    force : bool
        Replace a stored score of the same name; without it that name is refused (before
        anything is computed), so a score is never replaced by mistake.
    block_rows : int, optional
        Rows per block of the lake's iterator (default: one chunk). Scores do not depend on it.
    method : str
        One of :data:`METHODS` (several at once: :func:`compute_scores`).
    early, window_length, reference, reference_split
        Method parameters, see :func:`compute_scores`. CLD's ``reference``: ``"group"``
        (default; ``"class"`` is an alias), ``"global"`` or ``"split:NAME"``;
        ``reference_split``: the split a group or global reference averages (default
        ``"val"``).

    Returns
    -------
    polars.DataFrame
        One row per training sample in the train split's order. For CLD ``score`` is in
        ``[-1, 1]``, higher = more useful; null for a sample with a non-finite loss at a
        selected checkpoint (as in the scores table); 0.0 when its loss differences or its
        class's are constant. Other methods: range and direction in ``docs/scores.md``.

    Raises
    ------
    cld_lake.errors.ScoringError
        No train/val split, fewer than 3 (selected) common checkpoints, or classes without
        validation samples (and no fallback); a channel the method needs is not stored.
        Nothing is written.

    Examples
    --------
    >>> import cld_lake
    >>> df = cld_lake.score("runs/cifar.lake", checkpoints="0:45", name="cld_first45")  # doctest: +SKIP
    >>> aum = cld_lake.score("runs/cifar.lake", method="aum")  # doctest: +SKIP
    """
    if "," in method or method.strip() != method:
        raise ScoringError(
            f"method={method!r}: score() computes one method; use compute_scores for several"
        )
    results = compute_scores(
        lake,
        method,
        engine=engine,
        checkpoints=checkpoints,
        names=None if name is None else [name],
        early=early,
        window_length=window_length,
        reference=reference,
        reference_split=reference_split,
        fallback=fallback,
        store=store,
        block_rows=block_rows,
        progress=progress,
        force=force,
    )
    return next(iter(results.values())).to_polars()


# --- the request ---------------------------------------------------------------------------
def _check(
    methods: str | Sequence[str],
    names: str | Sequence[str] | None,
    given: dict[str, Any],
    engine: str,
    checkpoints: Window,
    block_rows: int | None,
    progress: Progress | None,
    engine_options: dict[str, Any] | None,
) -> _Pass:
    """Every argument checked before the lake is read: one line for the first wrong one."""
    chosen = parse_methods(methods)
    columns = _column_names(chosen, names)
    _check_relevant(chosen, [k for k, v in given.items() if v is not None])
    choice = parse_reference(given.pop("reference"), given.pop("reference_split"))
    params = Params(
        **{k: v for k, v in given.items() if v is not None},
        reference=choice.text,
        reference_split=choice.split,
    )
    check_params(params)
    check_fallback(params.fallback)
    if block_rows is not None and block_rows < 1:
        raise ScoringError(f"block_rows must be >= 1, got {block_rows}")
    compute = load_engine(engine, [m.name for m in chosen])
    options = dict(engine_options or {})
    return _Pass(
        chosen, columns, params, engine, compute, checkpoints, block_rows, progress, options
    )


def _column_names(methods: Sequence[Method], names: str | Sequence[str] | None) -> list[str]:
    """One column name per method: the method names, or ``names`` (a list, or ``"a,b"``)."""
    if names is None:
        return [m.name for m in methods]
    given = split_names(names)
    if len(given) != len(methods):
        raise ScoringError(
            f"{argument('names', ','.join(given))}: {len(given)} name(s) for {len(methods)} "
            f"method(s); give one name per method, in the same order, or leave {argument('names')} "
            "out"
        )
    twice = repeated(given)
    if twice:
        raise ScoringError(
            f"{argument('names')} {', '.join(twice)} given twice; each column needs its own"
        )
    return [check_score_name(n) for n in given]


def _check_relevant(methods: Sequence[Method], given: Sequence[str]) -> None:
    """A parameter given for none of the methods is a mistake worth one line."""
    for param in given:
        if not any(param in m.uses for m in methods):
            users = [m.name for m in METHOD_REGISTRY.values() if param in m.uses]
            raise ScoringError(
                f"{argument(param)} applies to {alternatives('method', users, ' / ')}; none of "
                f"them is in {argument('method', ','.join(m.name for m in methods))}"
            )


# --- runs ----------------------------------------------------------------------------------
def _on_run(lake: Lake, run: str) -> Lake:
    """``lake`` reading ``run`` (itself when it already does)."""
    return lake if lake.run_chosen and lake.run == run else lake.with_run(run)


def _pick_runs(lake: Lake, runs: str | Sequence[str] | None) -> list[str]:
    """The runs to score: those named (each once, in order), else the run ``lake`` was opened
    with (:meth:`Lake.with_run`), else the lake's only run (several runs are an error)."""
    if runs is None or (not isinstance(runs, str) and not runs):
        return [lake.run if lake.run_chosen else lake.pick_run(None)]
    named = [runs] if isinstance(runs, str) else list(runs)
    return list(dict.fromkeys(lake.pick_run(r) for r in named))


def _check_same_train(lake: Lake, runs: Sequence[str]) -> None:
    """An ensemble averages scores row by row: every run's train split must hold the same
    samples with the same labels, in the same order (ids fingerprint, then labels streamed)."""
    missing = [r for r in runs if not lake.has_split(TRAIN, r)]
    if missing:
        raise ScoringError(
            f"{lake.root}: run {missing[0]!r} has no train split; record or import it, or "
            "leave the run out of --run"
        )
    first, *others = (lake.split(TRAIN, r) for r in runs)
    for other in others:
        same = first.ids_digest == other.ids_digest and first.num_samples == other.num_samples
        if same:
            pairs = zip(first.iter_samples(), other.iter_samples(first.row_chunk), strict=True)
            same = all(np.array_equal(a[1], b[1]) for a, b in pairs)
        if not same:
            raise ScoringError(
                f"{lake.root}: runs {first.run!r} and {other.run!r} record different training "
                "samples (sample ids or labels differ); an ensemble needs the same train split "
                "in every run"
            )


# --- the pass --------------------------------------------------------------------------------
def _score_run(
    lake: Lake, job: _Pass, spill: bool, started: float
) -> tuple[Split, dict[str, ScoreColumn], dict[str, dict[str, Any]]]:
    """One run's pass: its plans, the engine's chunks into one column per plan (on disk with
    ``spill``), and each column's provenance."""
    train, plans = plan_pass(
        lake, job.methods, job.names, job.params, job.checkpoints, job.block_rows
    )
    chunks = job.compute(
        train, plans, block_rows=job.block_rows, progress=job.progress, **job.engine_options
    )
    columns, counts = _collect(chunks, train.num_samples, plans, spill)
    seconds = round(time.perf_counter() - started, 3)
    computed_with = [p.name for p in plans]
    provenance = {
        p.name: method_provenance(lake, p, job.engine, job.checkpoints, train, counts[p.name])
        | {"computed_with": computed_with, "seconds": seconds}
        for p in plans
    }
    return train, columns, provenance


def _collect(
    chunks: Iterable[ScoredChunk], num_rows: int, plans: Sequence[Plan], spill: bool
) -> tuple[dict[str, ScoreColumn], dict[str, dict[str, int]]]:
    """Each method's scores into its column as the chunks arrive (on disk with ``spill``):
    memory holds at most the score columns."""
    columns: dict[str, ScoreColumn] = {}
    counts: dict[str, dict[str, int]] = {p.name: {} for p in plans}
    try:
        for plan in plans:
            columns[plan.name] = ScoreColumn(num_rows, spill=spill)
        for chunk in chunks:
            for name, column in columns.items():
                column.write(chunk.rows, chunk.scores[name])
                for key, value in chunk.counts[name].items():
                    counts[name][key] = counts[name].get(key, 0) + value
        for column in columns.values():
            column.check_complete()
    except BaseException:
        for column in columns.values():
            column.close()
        raise
    return columns, counts


def _ensemble(
    lake: Lake, runs: Sequence[str], job: _Pass, started: float
) -> tuple[Split, dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """Score each run in turn and keep, per column, the mean over the runs (NaN where any
    run's score is NaN); each run's column is added to a running sum and then dropped."""
    totals: dict[str, np.ndarray] = {}
    per_run: dict[str, dict[str, dict[str, Any]]] = {}
    for run in runs:
        _, columns, own = _score_run(
            _on_run(lake, run), job, spill=False, started=time.perf_counter()
        )
        for name, column in columns.items():
            assert column.values is not None
            if name in totals:
                totals[name] += column.values
            else:  # the first run's column (nobody else holds it) becomes the sum
                totals[name] = column.values
            per_run.setdefault(name, {})[run] = own[name]
    provenance: dict[str, dict[str, Any]] = {}
    for name, total in totals.items():
        total /= len(runs)
        provenance[name] = ensemble_provenance(per_run[name][runs[0]], runs, per_run[name], total)
        provenance[name]["seconds"] = round(time.perf_counter() - started, 3)
    return lake.split(TRAIN, runs[0]), totals, provenance


def _check_store(lake: Lake, names: Sequence[str], force: bool) -> None:
    """Before anything is computed, what storing would refuse: a name already stored
    (without ``force``), a train split whose samples are not the scores table's."""
    if not lake.has_split(TRAIN):
        return  # planning the pass says what is missing
    if not force:
        stored = stored_scores(lake)
        for name in names:
            if name in stored:
                raise ScoringError(existing_score_message(name, stored[name]))
    check_scores_fit(lake, lake.split(TRAIN))


def _store(
    lake: Lake,
    train: Split,
    columns: dict[str, np.ndarray] | dict[str, ScoreReader],
    provenance: dict[str, dict[str, Any]],
    force: bool,
) -> None:
    """All columns in one new version of the scores table."""
    store_scores(lake, train, columns, provenance, replace=force)
