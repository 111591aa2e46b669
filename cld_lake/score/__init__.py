"""Scores out of core: CLD's one formula (``_formula``), the other methods defined once each
(``_methods``), and engines that stream row blocks through them.

``score(lake)`` computes the Correlation of Loss Differences of every training sample and
stores it as a named column of ``LAKE/scores.parquet``; ``score(lake, method="aum")`` any other
registered method (:data:`METHODS`), and :func:`compute_scores` several methods in one pass
over the blocks. Without a lake, on arrays in memory or blocks from any storage:
``cld_reference(val_blocks, num_classes)`` then ``CLDAccumulator(reference).update(losses,
labels)`` block by block, ``.finalise()``.

Score range and direction: CLD is a Pearson correlation in ``[-1, 1]``; higher = the sample's
loss moves with its class's validation loss = more useful; a coreset keeps the highest scores
of every class. Undefined rule: a sample with a NaN or infinite loss at a selected checkpoint
has no score (NaN in NumPy arrays, null in DataFrames, the scores table and SQL; never
selected). A sample whose loss differences, or whose class's validation differences, are
constant scores 0.0 ("degenerate"). Every method's range, direction and NaN rule: see
``docs/scores.md`` (and the provenance stored with each column).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cld_lake._io import remove_dead_temps
from cld_lake._types import CLDReference, Engine, Fallback
from cld_lake.errors import ScoringError
from cld_lake.lake._format import DEFAULT_RUN
from cld_lake.lake.scores import check_score_name, scores_path, store_scores
from cld_lake.lake.store import Lake, Split
from cld_lake.score._engines import (
    ENGINES,
    METHOD_ENGINES,
    EngineCompute,
    MethodsCompute,
    load_engine,
    load_methods_engine,
)
from cld_lake.score._formula import (
    MIN_CHECKPOINTS,
    Chunk,
    Counts,
    Reference,
    ScoreColumn,
    check_fallback,
    check_reference,
    plan_checkpoints,
)
from cld_lake.score._method import (
    Method,
    Params,
    Plan,
    as_cols,
    check_params,
    select_train_checkpoints,
    window_of,
)
from cld_lake.score._methods import (
    METHOD_REGISTRY,
    METHODS,
    get_method,
    missing_channel,
    parse_methods,
)
from cld_lake.score._passes import ScoredChunk
from cld_lake.score._stream import CLDAccumulator, CLDScores, cld_reference

if TYPE_CHECKING:
    import polars as pl

TRAIN, VAL = "train", "val"

__all__ = [
    "ENGINES",
    "METHODS",
    "METHOD_ENGINES",
    "METHOD_REGISTRY",
    "MIN_CHECKPOINTS",
    "CLDAccumulator",
    "CLDScores",
    "EngineCompute",
    "Method",
    "MethodsCompute",
    "Reference",
    "ScoreResult",
    "cld_reference",
    "compute_cld",
    "compute_scores",
    "score",
]


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


def _open_splits(lake: Lake, names: Sequence[str] = (TRAIN, VAL), what: str = "CLD") -> None:
    missing = [s for s in names if not lake.has_split(s)]
    if missing:
        present = ", ".join(lake.splits()) or "none"
        raise ScoringError(
            f"{lake.path}: {what} needs a {' and a '.join(missing)} split (present: {present}); "
            f"import or record the {' and '.join(missing)} losses first, e.g. "
            f"cld-lake import {lake.path} --split {missing[0]} --loss ... --labels ..."
        )


def _num_classes(lake: Lake, train: Split, val: Split) -> int:
    if lake.num_classes is not None:  # set at the first write; every stored label is below it
        return lake.num_classes
    return max(len(train.label_counts()), len(val.label_counts()))


def _compact(ids: np.ndarray) -> str:
    if len(ids) > 1:
        steps = np.diff(ids)
        if np.all(steps == steps[0]):
            step = f" step {steps[0]}" if steps[0] != 1 else ""
            return f"{ids[0]}..{ids[-1]}{step} ({len(ids)})"
    return f"{', '.join(str(i) for i in ids)} ({len(ids)})"


def _window_text(checkpoints: str | slice | None) -> str | None:
    return checkpoints if isinstance(checkpoints, str) or checkpoints is None else str(checkpoints)


def _val_reference(
    lake: Lake,
    train: Split,
    val: Split,
    ckpts: np.ndarray,
    fallback: Fallback | None,
    reference: CLDReference,
    block_rows: int | None,
) -> Reference:
    """CLD's reference table: :func:`cld_reference` over the val split's blocks."""
    num_classes = _num_classes(lake, train, val)
    val_blocks = val.blocks(block_rows=block_rows, checkpoints=ckpts)
    return cld_reference(
        ((block.loss, block.labels) for block in val_blocks),
        num_classes,
        checkpoints=ckpts,
        fallback=fallback,
        train_classes=np.flatnonzero(train.label_counts(num_classes)),
        reference=reference,
    )


def _cld_provenance(reference: Reference, counts: Counts, fallback: Fallback | None) -> dict:
    """What CLD records beyond every method's fields."""
    return {
        "val_samples_used": int(reference.val_counts.sum()),
        "val_left_out": int(reference.val_left_out),
        "nan": counts.nan,
        "degenerate": counts.degenerate,
        "fallback": counts.fallback,
        "fallback_mode": fallback,
        "fallback_classes": [int(c) for c in np.flatnonzero(reference.fallback)],
    }


def _common_provenance(
    lake: Lake, method: Method, plan_range: tuple[float | None, float | None]
) -> dict[str, Any]:
    from cld_lake._version import __version__
    from cld_lake.lake._format import now_iso

    return {
        "direction": method.direction,
        "range": list(plan_range),
        "citation": method.citation,
        "splits": [TRAIN, VAL] if method.needs_val else [TRAIN],
        "lake_id": lake.lake_id,
        "created_at": now_iso(),
        "version": __version__,
        **({} if lake.run == DEFAULT_RUN else {"run": lake.run}),
    }


def _one_run(lake: Lake) -> Lake:
    """``lake`` reading the run a call without ``runs`` means: the run ``lake`` was opened
    with (:meth:`Lake.with_run`), else the lake's only run; several runs are an error."""
    if lake.run_chosen:
        return lake
    return lake.with_run(lake.pick_run(None))


def _pick_runs(lake: Lake, runs: str | Sequence[str] | None) -> list[str]:
    """The runs to score: those named (each once, in order), else the one :func:`_one_run`
    picks."""
    if runs is None or (not isinstance(runs, str) and not runs):
        return [_one_run(lake).run]
    named = [runs] if isinstance(runs, str) else list(runs)
    return list(dict.fromkeys(lake.pick_run(r) for r in named))


def _check_same_train(lake: Lake, runs: Sequence[str]) -> None:
    """An ensemble averages scores row by row: every run's train split must hold the same
    samples with the same labels, in the same order (ids fingerprint, then labels streamed)."""
    missing = [r for r in runs if not lake.has_split(TRAIN, r)]
    if missing:
        raise ScoringError(
            f"{lake.path}: run {missing[0]!r} has no train split; record or import it, or "
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
                f"{lake.path}: runs {first.run!r} and {other.run!r} record different training "
                "samples (sample ids or labels differ); an ensemble needs the same train split "
                "in every run"
            )


def compute_cld(
    lake: Lake | str | os.PathLike[str],
    *,
    engine: Engine = "numpy",
    checkpoints: str | slice | None = None,
    name: str | None = None,
    fallback: Fallback | None = None,
    reference: CLDReference = "class",
    store: bool = True,
    block_rows: int | None = None,
    progress: Callable[[int], None] | None = None,
    method: str = "cld",
    engine_options: dict[str, Any] | None = None,
    collect_ids: bool = True,
    keep_scores: bool = True,
) -> ScoreResult:
    """Compute CLD for every training sample and (``store``) save it; see :func:`score`.

    The lake-level orchestrator of the streaming API: :func:`cld_reference` over the val
    split's blocks, the engine's chunks of row sums through one :class:`CLDAccumulator`.
    Every engine runs it. ``collect_ids=False`` keeps only the score column in memory; the
    result's ``sample_ids`` / ``labels`` are then read from the lake on first use.
    ``keep_scores=False`` (with ``store``, the CLI's way) spills the column to a temporary
    file while it is computed, so nothing per-sample stays in memory; the result's ``scores``
    is then None. Other methods: :func:`compute_scores`. A lake with several proxy runs is
    scored on the run it was opened with (``lake.with_run("seed1")``); an ensemble of runs:
    ``compute_scores(lake, "cld", runs=[...])``.
    """
    started = time.perf_counter()
    if method != "cld":
        get_method(method)  # an unknown name: the list of choices
        raise ScoringError(
            f"--method {method!r}: compute_cld computes cld only; use "
            f"compute_scores(lake, {method!r})"
        )
    name = check_score_name(name if name is not None else method)
    compute = load_engine(engine)
    check_fallback(fallback)
    check_reference(reference)
    if block_rows is not None and block_rows < 1:
        raise ScoringError(f"block_rows must be >= 1, got {block_rows}")
    lake = _one_run(lake if isinstance(lake, Lake) else Lake(lake))
    _open_splits(lake)
    train, val = lake.split(TRAIN), lake.split(VAL)
    ckpts = plan_checkpoints(train, val, checkpoints)
    ref = _val_reference(lake, train, val, ckpts, fallback, reference, block_rows)
    chunks = compute(train, ref, block_rows=block_rows, progress=progress, **(engine_options or {}))
    column, counts = _collect(chunks, train.num_samples, ref, spill=not keep_scores)
    cld = METHOD_REGISTRY["cld"]
    provenance: dict[str, Any] = {
        "method": method,
        "engine": engine,
        "checkpoints": _compact(ckpts),
        "checkpoint_ids": [int(c) for c in ckpts],
        "window": _window_text(checkpoints),
        "parameters": {"reference": reference, "fallback": fallback},
        "train_samples": int(train.num_samples),
        **_cld_provenance(ref, counts, fallback),
        **_common_provenance(lake, cld, (-1.0, 1.0)),
        "seconds": round(time.perf_counter() - started, 3),
    }
    ids_labels = (train.sample_ids, train.labels) if collect_ids else None
    try:
        if store:
            # a scorer killed mid-write (kill -9) left its temp file in the lake root
            remove_dead_temps(scores_path(lake))
            store_scores(lake, train, {name: column.read}, {name: provenance})
    finally:
        column.close()
    return ScoreResult(name, train, column.values, provenance, ids_labels)


def _column_names(methods: Sequence[Method], names: str | Sequence[str] | None) -> list[str]:
    """One column name per method: the method names, or ``names`` (a list, or ``"a,b"``)."""
    if names is None:
        return [m.name for m in methods]
    given = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    if len(given) != len(methods):
        raise ScoringError(
            f"--name {','.join(given)}: {len(given)} name(s) for {len(methods)} method(s); give "
            "one name per method, in the same order, or leave --name out"
        )
    repeated = sorted({n for n in given if given.count(n) > 1})
    if repeated:
        raise ScoringError(f"--name: {', '.join(repeated)} given twice; each column needs its own")
    return [check_score_name(n) for n in given]


def _check_relevant(methods: Sequence[Method], given: Sequence[str]) -> None:
    """A parameter given for none of the methods is a mistake worth one line."""
    for param in given:
        if not any(param in m.uses for m in methods):
            users = [m.name for m in METHOD_REGISTRY.values() if param in m.uses]
            raise ScoringError(
                f"--{param.replace('_', '-')} applies to --method {' / '.join(users)}; none of "
                f"them is in --method {','.join(m.name for m in methods)}"
            )


def _plans(
    lake: Lake,
    methods: Sequence[Method],
    names: Sequence[str],
    params: Params,
    checkpoints: str | slice | None,
    block_rows: int | None,
) -> tuple[Split, list[Plan]]:
    """Each method's checkpoints, window and (CLD) reference; columns within one shared read."""
    needs_val = any(m.needs_val for m in methods)
    _open_splits(
        lake, (TRAIN, VAL) if needs_val else (TRAIN,), "--method cld" if needs_val else "scoring"
    )
    train = lake.split(TRAIN)
    for method in methods:
        missing_channel(method, train.channels, lake.path)
    val = lake.split(VAL) if needs_val else None
    windows = []  # every window checked before the val pass of CLD's reference
    for method in methods:
        if method.needs_val:
            assert val is not None
            selected = plan_checkpoints(train, val, checkpoints)
        else:
            selected = select_train_checkpoints(train, checkpoints)
        windows.append((selected, window_of(method, params, selected)))
    read_ids = np.unique(np.concatenate([used for _, used in windows]))
    plans = []
    for method, name, (selected, used) in zip(methods, names, windows, strict=True):
        reference = None
        if method.needs_val:
            assert val is not None
            reference = _val_reference(
                lake, train, val, selected, params.fallback, params.reference, block_rows
            )
        cols = as_cols(np.searchsorted(read_ids, used))
        plans.append(Plan(name, method, params, selected, used, cols, reference))
    return train, plans


def compute_scores(
    lake: Lake | str | os.PathLike[str],
    methods: str | Sequence[str] = "cld",
    *,
    engine: Engine = "numpy",
    checkpoints: str | slice | None = None,
    names: str | Sequence[str] | None = None,
    early: float | None = None,
    window_length: int | None = None,
    reference: CLDReference | None = None,
    fallback: Fallback | None = None,
    store: bool = True,
    block_rows: int | None = None,
    progress: Callable[[int], None] | None = None,
    engine_options: dict[str, Any] | None = None,
    collect_ids: bool = True,
    keep_scores: bool = True,
    runs: str | Sequence[str] | None = None,
) -> dict[str, ScoreResult]:
    """Compute one or several scoring methods in one pass over the train split's blocks.

    ``methods`` is a name of :data:`METHODS`, a list of them or ``"a,b,c"``; each is stored as
    its own column (``names``, default the method names) with its provenance (method,
    parameters, checkpoints used, direction, range, engine, version, ...), all in one rewrite
    of the scores table. CLD alone runs through :func:`compute_cld` (every engine); any other
    set runs on an engine of :data:`METHOD_ENGINES`, reading each block once for all of them.

    Parameters
    ----------
    early : float, optional
        Early-window fraction for ``early_loss``, ``el2n`` (default 0.1) and ``dual`` (default
        0.15): the first ``max(1, floor(early * K))`` of the K selected checkpoints.
    window_length : int, optional
        Sliding-window length J of ``dynunc`` and ``dual`` (default 10).
    reference : {"class", "global"}, optional
        CLD's validation trajectory: the sample's class's (default) or every sample's.

    A parameter given (not None) that none of ``methods`` reads is refused.
    fallback : {None, "global"}
        CLD, for classes without validation samples (see :func:`score`).
    runs : str or sequence of str, optional
        The proxy runs to score (see ``LossRecorder(run=...)``). Default: the lake's only run
        (an error naming the runs when it holds several). Several runs store, per column, the
        MEAN of the runs' scores (an ensemble): undefined (NaN / null) where any run's is; the
        provenance lists the runs and each run's own provenance. Their train splits must hold
        the same samples and labels. Memory: two score columns (8 bytes per sample each).

    Other parameters as :func:`compute_cld`. Returns ``{column name: ScoreResult}``.

    Raises
    ------
    cld_lake.errors.ScoringError
        An unknown method, a channel the lake lacks (naming how to record it), too few
        checkpoints for a method's window, an engine that runs CLD only. Nothing is written.
    """
    started = time.perf_counter()
    chosen = parse_methods(methods)
    columns = _column_names(chosen, names)
    given = {"early": early, "window_length": window_length, "reference": reference}
    given |= {"fallback": fallback}
    _check_relevant(chosen, [k for k, v in given.items() if v is not None])
    params = Params(**{k: v for k, v in given.items() if v is not None})
    check_params(params)
    check_fallback(fallback)
    check_reference(params.reference)
    if block_rows is not None and block_rows < 1:
        raise ScoringError(f"block_rows must be >= 1, got {block_rows}")
    lake = lake if isinstance(lake, Lake) else Lake(lake)
    picked = _pick_runs(lake, runs)
    if len(picked) > 1:
        _check_same_train(lake, picked)
        options = {
            "engine": engine, "checkpoints": checkpoints, "names": columns, "early": early,
            "window_length": window_length, "reference": reference, "fallback": fallback,
            "block_rows": block_rows, "progress": progress, "engine_options": engine_options,
        }  # fmt: skip
        return _ensemble(lake, picked, chosen, options, store, collect_ids, keep_scores, started)
    if not (lake.run_chosen and picked[0] == lake.run):
        lake = lake.with_run(picked[0])
    if [m.name for m in chosen] == ["cld"]:
        result = compute_cld(
            lake,
            engine=engine,
            checkpoints=checkpoints,
            name=columns[0],
            fallback=fallback,
            reference=params.reference,
            store=store,
            block_rows=block_rows,
            progress=progress,
            engine_options=engine_options,
            collect_ids=collect_ids,
            keep_scores=keep_scores,
        )
        return {result.name: result}
    compute = load_methods_engine(engine, [m.name for m in chosen])
    train, plans = _plans(lake, chosen, columns, params, checkpoints, block_rows)
    chunks = compute(
        train, plans, block_rows=block_rows, progress=progress, **(engine_options or {})
    )
    collected, counts = _collect_methods(chunks, train.num_samples, plans, spill=not keep_scores)
    seconds = round(time.perf_counter() - started, 3)
    provenance = {
        plan.name: _method_provenance(lake, plan, engine, checkpoints, train, counts[plan.name])
        | {"computed_with": [p.name for p in plans], "seconds": seconds}
        for plan in plans
    }
    ids_labels = (train.sample_ids, train.labels) if collect_ids else None
    try:
        if store:
            remove_dead_temps(scores_path(lake))
            store_scores(lake, train, {n: c.read for n, c in collected.items()}, provenance)
    finally:
        for column in collected.values():
            column.close()
    return {
        n: ScoreResult(n, train, collected[n].values, provenance[n], ids_labels) for n in collected
    }


def _ensemble(
    lake: Lake,
    runs: Sequence[str],
    methods: Sequence[Method],
    options: dict[str, Any],
    store: bool,
    collect_ids: bool,
    keep_scores: bool,
    started: float,
) -> dict[str, ScoreResult]:
    """Score each run in turn and store, per column, the mean over the runs (NaN where any
    run's score is NaN); each run's column is added to a running sum and then dropped."""
    totals: dict[str, np.ndarray] = {}
    per_run: dict[str, dict[str, dict[str, Any]]] = {}
    for run in runs:
        results = compute_scores(
            lake, methods=[m.name for m in methods], store=False, collect_ids=False,
            keep_scores=True, runs=[run], **options,
        )  # fmt: skip
        for name, result in results.items():
            assert result.scores is not None
            if name in totals:
                totals[name] += result.scores
            else:  # the first run's column (nobody else holds it) becomes the sum
                totals[name] = result.scores
            per_run.setdefault(name, {})[run] = result.provenance
    provenance: dict[str, dict[str, Any]] = {}
    for name, total in totals.items():
        total /= len(runs)
        first = per_run[name][runs[0]]
        provenance[name] = _ensemble_provenance(first, runs, per_run[name], total)
        provenance[name]["seconds"] = round(time.perf_counter() - started, 3)
    train = lake.split(TRAIN, runs[0])
    ids_labels = (train.sample_ids, train.labels) if collect_ids else None
    if store:
        remove_dead_temps(scores_path(lake))
        store_scores(lake, train, totals, provenance)
    return {
        n: ScoreResult(n, train, totals[n] if keep_scores else None, provenance[n], ids_labels)
        for n in totals
    }


# what an ensemble's provenance keeps from its runs' (the same in every run)
_ENSEMBLE_KEYS = (
    "method", "engine", "window", "parameters", "train_samples", "direction", "range",
    "citation", "splits", "lake_id", "version",
)  # fmt: skip


def _ensemble_provenance(
    prov: dict[str, Any], runs: Sequence[str], per_run: dict[str, dict[str, Any]], mean: np.ndarray
) -> dict[str, Any]:
    """The stored provenance of a mean over ``runs``: the fields every run shares, the runs,
    each run's own provenance, and the NaN count of the mean."""
    from cld_lake.lake._format import now_iso

    return {k: prov[k] for k in _ENSEMBLE_KEYS if k in prov} | {
        "ensemble": "mean",
        "runs": list(runs),
        "run_provenance": per_run,
        "nan": int(np.count_nonzero(np.isnan(mean))),
        "created_at": now_iso(),
    }


def _method_provenance(
    lake: Lake,
    plan: Plan,
    engine: str,
    checkpoints: str | slice | None,
    train: Split,
    counts: dict[str, int],
) -> dict[str, Any]:
    method = plan.method
    prov: dict[str, Any] = {
        "method": method.name,
        "engine": engine,
        "checkpoints": _compact(plan.checkpoint_ids),
        "checkpoint_ids": [int(c) for c in plan.checkpoint_ids],
        "window": _window_text(checkpoints),
        "used_checkpoints": _compact(plan.used),
        "parameters": plan.parameters(),
        "train_samples": int(train.num_samples),
        "nan": int(counts.get("nan", 0)),
    }
    if plan.reference is not None:
        cld_counts = Counts(
            int(counts.get("nan", 0)),
            int(counts.get("degenerate", 0)),
            int(counts.get("fallback", 0)),
        )
        prov |= _cld_provenance(plan.reference, cld_counts, plan.params.fallback)
    return prov | _common_provenance(lake, method, method.value_range(plan))


def _collect_methods(
    chunks: Iterable[ScoredChunk], num_rows: int, plans: Sequence[Plan], spill: bool
) -> tuple[dict[str, ScoreColumn], dict[str, dict[str, int]]]:
    """Each method's scores into its column as the chunks arrive (on disk with ``spill``)."""
    columns: dict[str, ScoreColumn] = {}
    counts: dict[str, dict[str, int]] = {p.name: {} for p in plans}
    try:
        for plan in plans:
            columns[plan.name] = ScoreColumn(num_rows, spill=spill)
        for chunk in chunks:
            for name, column in columns.items():
                try:
                    column.write(chunk.rows, chunk.scores[name])
                except OSError as exc:
                    raise _spill_error(exc) if spill else exc from exc
                for key, value in chunk.counts[name].items():
                    counts[name][key] = counts[name].get(key, 0) + value
        for column in columns.values():
            column.check_complete()
    except BaseException:
        for column in columns.values():
            column.close()
        raise
    return columns, counts


def _collect(
    chunks: Iterable[Chunk], num_rows: int, reference: Reference, spill: bool
) -> tuple[ScoreColumn, Counts]:
    """Score the engine's chunks as they arrive, into a column of ``num_rows`` (on disk with
    ``spill``): memory holds at most the score column, never the sums."""
    accumulator = CLDAccumulator(reference, keep=False)
    column = ScoreColumn(num_rows, spill=spill)
    try:
        for chunk in chunks:
            sums = chunk.sums
            part = accumulator.add_sums(sums.a, sums.b, sums.q, chunk.labels)
            try:
                column.write(chunk.rows, part)
            except OSError as exc:
                raise _spill_error(exc) if spill else exc from exc
        column.check_complete()
    except BaseException:
        column.close()
        raise
    return column, accumulator.counts


def _spill_error(exc: OSError) -> OSError:
    """A failed write of the (unnamed) spill file, naming the directory it lives in."""
    import tempfile

    if exc.filename is not None:
        return exc
    where = f"{tempfile.gettempdir()} (the temporary directory scoring spills to; set TMPDIR)"
    return OSError(exc.errno, exc.strerror, where)


def score(
    lake: Lake | str | os.PathLike[str],
    engine: Engine = "numpy",
    checkpoints: str | slice | None = None,
    name: str | None = None,
    fallback: Fallback | None = None,
    store: bool = True,
    *,
    block_rows: int | None = None,
    method: str = "cld",
    progress: Callable[[int], None] | None = None,
    early: float | None = None,
    window_length: int | None = None,
    reference: CLDReference | None = None,
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
        ``"::2"``). Default: all of them. CLD needs at least 3.
    name : str, optional
        Column of ``scores.parquet`` to store into (default: the method name, e.g. ``cld``).
    fallback : {None, "global"}
        For classes without validation samples: error (default) or use the global
        validation trajectory (those rows are counted as ``fallback``).
    store : bool
        Store the column (atomically) with its provenance; ``False`` only computes.
    block_rows : int, optional
        Rows per block of the lake's iterator (default: one chunk). Scores do not depend on it.
    method : str
        One of :data:`METHODS` (several at once: :func:`compute_scores`).
    early, window_length, reference
        Method parameters, see :func:`compute_scores`.

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
        fallback=fallback,
        store=store,
        block_rows=block_rows,
        progress=progress,
    )
    return next(iter(results.values())).to_polars()
