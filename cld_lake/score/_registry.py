"""Every scoring method, defined once, and the registry the CLI's ``--method`` choices come from.

Each definition is a :class:`~cld_lake.score._method.Method`: the per-row maths over a piece of
a block (``rows``: the channel values at the method's checkpoints, see
:class:`~cld_lake.score._method.Rows`) and what the score means. ``docs/scores.md`` has one
section per method: definition, range, direction, NaN rule, source.

Shared rule: a row with a NaN or infinite value of a channel the method reads, at a checkpoint
it uses, has no score (NaN here, null in the scores table). The ``correct`` channel is bool
and always defined.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

import numpy as np

from cld_lake._types import MethodName, choices
from cld_lake.errors import ScoringError, argument
from cld_lake.score._formula import Reference, Sums, check_usable, finalise
from cld_lake.score._kernel import row_sums
from cld_lake.score._method import (
    Method,
    Plan,
    Rows,
    Scored,
    column_mean,
    column_std,
    max_sample_std,
    sliding_mean_std,
)

UNBOUNDED: tuple[None, None] = (None, None)


def _undefined_to_nan(scores: np.ndarray, undefined: np.ndarray) -> Scored:
    scores[undefined] = np.nan
    return Scored(scores)


def _channel_mean(channel: str):  # noqa: ANN202 - a small factory of row maths
    def score(rows: Rows, plan: Plan) -> Scored:
        mean = rows.total(channel, plan.cols) / plan.k
        return _undefined_to_nan(mean, rows.undefined(channel, plan.cols))

    return score


def _confidence(rows: Rows, plan: Plan) -> Scored:
    return _undefined_to_nan(column_mean(rows.p_true(plan.cols)), rows.undefined("loss", plan.cols))


def _variability(rows: Rows, plan: Plan) -> Scored:
    return _undefined_to_nan(
        column_std(rows.p_true(plan.cols), ddof=0), rows.undefined("loss", plan.cols)
    )


def _correctness(rows: Rows, plan: Plan) -> Scored:
    correct = np.count_nonzero(rows.raw("correct", plan.cols), axis=1)  # exact, any order
    return Scored(correct / plan.k)


def _forgetting(rows: Rows, plan: Plan) -> Scored:
    """Correct -> incorrect transitions between consecutive checkpoints; a row never correct
    scores K (more than any count, at most floor(K / 2)), as Toneva et al. rank it."""
    correct = rows.raw("correct", plan.cols).T  # (k, m) bool
    events = np.zeros(len(rows), dtype=np.int64)
    for before, after in zip(correct[:-1], correct[1:], strict=True):
        events += before & ~after
    scores = events.astype(np.float64)
    scores[~correct.any(axis=0)] = float(plan.k)
    return Scored(scores)


def _dynunc(rows: Rows, plan: Plan) -> Scored:
    _, std = sliding_mean_std(rows.p_true(plan.cols), plan.window_length)
    return _undefined_to_nan(column_mean(std), rows.undefined("loss", plan.cols))


def _dual(rows: Rows, plan: Plan) -> Scored:
    mean, std = sliding_mean_std(rows.p_true(plan.cols), plan.window_length)
    with np.errstate(invalid="ignore"):
        per_window = std * (1.0 - mean)
    return _undefined_to_nan(column_mean(per_window), rows.undefined("loss", plan.cols))


def _cld(rows: Rows, plan: Plan) -> Scored:
    a, b, q = row_sums(rows.raw("loss", plan.cols), rows.labels, _reference(plan).u)
    return _cld_from_sums(Sums(a, b, q), rows.labels, plan)


def _cld_from_sums(sums: Sums, labels: np.ndarray, plan: Plan) -> Scored:
    """CLD from the three sums of its rows: the one finalisation (its edge cases, its counts)."""
    reference = _reference(plan)
    check_usable(reference, labels)
    scores, counts = finalise(sums, labels, reference)
    return Scored(scores, {"degenerate": counts.degenerate, "fallback": counts.fallback})


def _reference(plan: Plan) -> Reference:
    if plan.reference is None:  # the planner builds it before the pass
        raise RuntimeError("cld planned without its reference")
    return plan.reference


def _fixed(low: float | None, high: float | None):  # noqa: ANN202
    return lambda plan: (low, high)


_DEFINITIONS = (
    Method(
        name="cld",
        summary="Pearson correlation of the sample's loss differences with those of its "
        "reference trajectory (its group's mean loss over the reference split, by default val)",
        channels=("loss",),
        direction="higher_keep",
        citation="Correlation of Loss Differences (this package's method; see docs/scores.md)",
        score=_cld,
        value_range=_fixed(-1.0, 1.0),
        uses=("reference", "reference_split", "fallback"),
        min_checkpoints=3,
        needs_reference=True,
        from_sums=_cld_from_sums,
        whole_blocks=True,
    ),
    Method(
        name="mean_loss",
        summary="mean loss over the selected checkpoints",
        channels=("loss",),
        direction="higher_harder",
        citation="the mean training loss, a common difficulty baseline",
        score=_channel_mean("loss"),
        value_range=_fixed(None, None),
    ),
    Method(
        name="early_loss",
        summary="mean loss over an early window of the selected checkpoints",
        channels=("loss",),
        direction="higher_harder",
        citation="the early-training loss, as in Paul et al. 2021 (NeurIPS), 'Deep Learning on "
        "a Data Diet', whose scores are taken early in training",
        score=_channel_mean("loss"),
        value_range=_fixed(None, None),
        early=0.1,
        uses=("early",),
    ),
    Method(
        name="forgetting",
        summary="forgetting events: correct -> incorrect transitions between consecutive "
        "checkpoints; never-correct samples score K",
        channels=("correct",),
        direction="higher_harder",
        citation="Toneva et al. 2019 (ICLR), 'An Empirical Study of Example Forgetting during "
        "Deep Neural Network Learning'",
        score=_forgetting,
        value_range=lambda plan: (0.0, float(plan.k)),
    ),
    Method(
        name="aum",
        summary="area under the margin: mean of the labelled logit minus the largest other logit",
        channels=("margin",),
        direction="higher_keep",
        citation="Pleiss et al. 2020 (NeurIPS), 'Identifying Mislabeled Data using the Area "
        "Under the Margin Ranking'",
        score=_channel_mean("margin"),
        value_range=_fixed(None, None),
    ),
    Method(
        name="confidence",
        summary="data maps confidence: mean of p_true = exp(-loss)",
        channels=("loss",),
        direction="higher_keep",
        citation="Swayamdipta et al. 2020 (EMNLP), 'Dataset Cartography'",
        score=_confidence,
        value_range=_fixed(0.0, 1.0),
    ),
    Method(
        name="variability",
        summary="data maps variability: standard deviation (population) of p_true = exp(-loss)",
        channels=("loss",),
        direction="higher_harder",
        citation="Swayamdipta et al. 2020 (EMNLP), 'Dataset Cartography'",
        score=_variability,
        value_range=_fixed(0.0, 0.5),
    ),
    Method(
        name="correctness",
        summary="data maps correctness: share of checkpoints at which the sample is correct",
        channels=("correct",),
        direction="higher_keep",
        citation="Swayamdipta et al. 2020 (EMNLP), 'Dataset Cartography'",
        score=_correctness,
        value_range=_fixed(0.0, 1.0),
    ),
    Method(
        name="dynunc",
        summary="dynamic uncertainty: mean over sliding windows of J checkpoints of the sample "
        "standard deviation of p_true",
        channels=("loss",),
        direction="higher_harder",
        citation="He et al. 2023 (arXiv 2306.05175; CVPR 2024 workshops), 'Large-scale Dataset "
        "Pruning with Dynamic Uncertainty'",
        score=_dynunc,
        value_range=lambda plan: (0.0, max_sample_std(plan.window_length)),
        uses=("window_length",),
    ),
    Method(
        name="dual",
        summary="DUAL: mean over sliding windows of J checkpoints, within an early window, of "
        "std(p_true) * (1 - mean(p_true))",
        channels=("loss",),
        direction="higher_harder",
        citation="Cho et al. 2025 (ICML), 'Lightweight Dataset Pruning without Full Training "
        "via Example Difficulty and Prediction Uncertainty'",
        score=_dual,
        value_range=lambda plan: (0.0, max_sample_std(plan.window_length)),
        early=0.15,
        uses=("early", "window_length"),
    ),
    Method(
        name="el2n",
        summary="EL2N: mean over an early window of ||softmax(logits) - onehot(label)||_2",
        channels=("el2n",),
        direction="higher_harder",
        citation="Paul et al. 2021 (NeurIPS), 'Deep Learning on a Data Diet: Finding Important "
        "Examples Early in Training'",
        score=_channel_mean("el2n"),
        value_range=_fixed(0.0, float(np.sqrt(2.0))),
        early=0.1,
        uses=("early",),
    ),
)

METHOD_REGISTRY: Mapping[str, Method] = MappingProxyType({m.name: m for m in _DEFINITIONS})
METHODS: tuple[str, ...] = tuple(METHOD_REGISTRY)

# How to get a channel a method needs into a lake (the end of the missing-channel error).
CHANNEL_FIX = {
    "correct": "record it with cld_lake.torch.LossRecorder (loss, correct and margin by "
    "default) or import it with cld-lake import ... --correct FILE.npy",
    "margin": "record it with cld_lake.torch.LossRecorder (loss, correct and margin by "
    "default) or import it with cld-lake import ... --margin FILE.npy",
    "el2n": "record it with cld_lake.torch.LossRecorder(..., channels=('loss', 'correct', "
    "'margin', 'el2n'))",
    "loss": "record or import the losses first",
}

if METHODS != choices(MethodName):  # pragma: no cover - a registry edit without the Literal
    raise ImportError("cld_lake.score._registry: METHODS and cld_lake._types.MethodName differ")


def get_method(name: str) -> Method:
    if name not in METHOD_REGISTRY:
        raise ScoringError(f"{argument('method', name)}: choose among {', '.join(METHODS)}")
    return METHOD_REGISTRY[name]


def split_names(names: str | Sequence[str]) -> list[str]:
    """``"a,b"`` (spaces around each name dropped) or a sequence of names, as a list."""
    return [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)


def repeated(names: Sequence[str]) -> list[str]:
    """The names given more than once, sorted."""
    return sorted({n for n in names if names.count(n) > 1})


def parse_methods(methods: str | Sequence[str]) -> tuple[Method, ...]:
    """``"a,b"`` or ``["a", "b"]`` as Method objects; unknown or repeated names refused."""
    names = split_names(methods)
    if not names or any(not n for n in names):
        raise ScoringError(
            f"{argument('method', methods)}: give one method or several separated by commas, "
            f"e.g. {argument('method', 'aum,forgetting')}"
        )
    twice = repeated(names)
    if twice:
        raise ScoringError(f"{argument('method', methods)}: {', '.join(twice)} given twice")
    return tuple(get_method(n) for n in names)


def missing_channel(method: Method, present: Mapping[str, str], lake_root: object) -> None:
    """Refuse, in one line, a method whose channel the train split does not store."""
    for channel in method.channels:
        if channel not in present:
            raise ScoringError(
                f"{argument('method', method.name)} needs the {channel!r} channel, which the train split of "
                f"{lake_root} does not store (it has {', '.join(present)}); {CHANNEL_FIX[channel]}"
            )


__all__ = [
    "METHODS",
    "METHOD_REGISTRY",
    "get_method",
    "missing_channel",
    "parse_methods",
    "repeated",
    "split_names",
]
