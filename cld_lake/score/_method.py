"""The method contract: what a scoring method declares, and the row maths it is written with.

A method is defined once, as a :class:`Method`: its name, the lake channels it reads, which of
the selected checkpoints it uses (its window rule), what a higher score means, its range, its
source, and its per-row maths ``score(rows, plan)`` over a piece of a block. CLD is one of
them. The definitions live in :mod:`cld_lake.score._registry` (one registry, the CLI's
``--method`` choices); :mod:`cld_lake.score._plan` plans a pass (each method's checkpoints and
window, CLD's reference); engines stream row blocks through the methods
(:mod:`cld_lake.score._passes`); :mod:`cld_lake.score._orchestrate` runs, collects and stores.

Every method here scores a row from that row's values alone (CLD also from a small per-class
validation table built once, before the pass), so a block's scores are final when the block is
done: nothing is merged across blocks and memory holds one block plus the score columns.

Reductions over checkpoints run in a fixed order (checkpoint after checkpoint, each an
element-wise operation over the piece's rows), so a row's score does not depend on the block
size or on the other rows: scores are identical bit for bit at any block size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cld_lake._types import Direction, Fallback
from cld_lake.errors import ScoringError, argument
from cld_lake.score._formula import Reference, Sums
from cld_lake.score._reference import DEFAULT_REFERENCE_SPLIT, ReferenceChoice, parse_reference

Cols = slice | np.ndarray

#: The sliding-window length J of ``dynunc`` and ``dual`` in their papers (He et al. 2023;
#: Cho et al. 2025), the default wherever the method's checkpoints hold that many.
DEFAULT_WINDOW_LENGTH = 10
#: The fewest checkpoints the default window shrinks to: below 3, a window's standard
#: deviation is one difference between two values, not a dispersion. A caller who wants 2
#: says so (``window_length=2``).
MIN_DEFAULT_WINDOW = 3


@dataclass(frozen=True)
class Params:
    """The parameters of a scoring run; each method reads the ones it names in ``uses``.

    ``early`` None means each early-window method's own default fraction; ``window_length``
    None means :data:`DEFAULT_WINDOW_LENGTH` capped at the checkpoints the method uses (at
    least :data:`MIN_DEFAULT_WINDOW`), see :attr:`Plan.window_length`. ``reference`` is
    CLD's reference as stored (``group``, ``global`` or ``split:NAME``; ``class`` is read as
    ``group``) and ``reference_split`` the split whose losses form it.
    """

    early: float | None = None
    window_length: int | None = None
    reference: str = "group"
    reference_split: str = DEFAULT_REFERENCE_SPLIT
    fallback: Fallback | None = None

    @property
    def reference_choice(self) -> ReferenceChoice:
        """CLD's reference, checked (see :mod:`cld_lake.score._reference`)."""
        return parse_reference(self.reference, self.reference_split)


@dataclass
class Scored:
    """A method's scores for a piece of rows (NaN where undefined) and any counters it keeps
    beyond ``nan`` (which the orchestrator counts itself)."""

    scores: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    """One scoring method, defined once.

    Attributes
    ----------
    name : str
        The ``--method`` name and the default column name.
    summary : str
        One line: what the score is.
    channels : tuple of str
        Lake channels it reads (a lake without one is refused before anything is read).
    direction : {"higher_keep", "higher_harder"}
        What a higher score means: more worth keeping (easier, cleaner, more typical) or harder
        (more often wrong, more uncertain). Which end a selection keeps is the selection's
        business.
    citation : str
        The paper the definition follows.
    score : callable
        ``score(rows, plan) -> Scored``: the row maths on a piece of a block.
    value_range : callable
        ``value_range(plan) -> (low, high)``, None for an unbounded end.
    early : float, optional
        Default early-window fraction: the method uses the first ``max(1, floor(early * K))``
        of the K selected checkpoints. None: it uses all of them.
    uses : tuple of str
        The :class:`Params` fields it reads (recorded in the provenance).
    min_checkpoints : int
        Checkpoints it needs in its window.
    needs_reference : bool
        It reads a reference split too (CLD's reference: ``val`` unless ``--reference-split``
        or ``--reference split:NAME`` names another); its checkpoints are then those committed
        in both train and that split.
    from_sums : callable, optional
        ``from_sums(sums, labels, plan) -> Scored``: the last stage of ``score`` for a method
        whose row maths reduce to the three sums of :class:`~cld_lake.score._formula.Sums`
        (CLD). An engine that computes those sums in its own language (SQL, Polars
        expressions) hands them to this stage, so the edge cases stay in one place.
    whole_blocks : bool
        Its row maths keep their own temporaries cache-sized (CLD's kernels), so a pass of such
        methods alone cuts a block only into one piece per thread, not into cache-sized pieces.
    """

    name: str
    summary: str
    channels: tuple[str, ...]
    direction: Direction
    citation: str
    score: Callable[[Rows, Plan], Scored]
    value_range: Callable[[Plan], tuple[float | None, float | None]]
    early: float | None = None
    uses: tuple[str, ...] = ()
    min_checkpoints: int = 1
    needs_reference: bool = False
    from_sums: Callable[[Sums, np.ndarray, Plan], Scored] | None = None
    whole_blocks: bool = False


@dataclass(frozen=True)
class Plan:
    """One method's part in a pass over the train split.

    ``checkpoint_ids`` are the checkpoints selected by ``--checkpoints`` (recorded, and what
    staleness is judged on); ``used`` the ones of them the method's window keeps; ``cols`` the
    positions of ``used`` among the columns of the blocks the pass reads (several methods
    share one read).
    """

    name: str
    method: Method
    params: Params
    checkpoint_ids: np.ndarray
    used: np.ndarray
    cols: Cols
    reference: Reference | None = None

    @property
    def k(self) -> int:
        """Checkpoints the method uses."""
        return len(self.used)

    def parameters(self) -> dict[str, Any]:
        """The parameter values this method ran with, for the provenance (a default resolved:
        the window length it used, given or not)."""
        out: dict[str, Any] = {}
        for name in self.method.uses:
            if name == "early":
                out["early"] = self.early_fraction
                out["early_checkpoints"] = self.k
            elif name == "window_length":
                out["window_length"] = self.window_length
            else:
                out[name] = getattr(self.params, name)
        return out

    @property
    def window_length(self) -> int:
        """The sliding-window length J: as given, else :data:`DEFAULT_WINDOW_LENGTH` capped at
        the checkpoints the method uses (its window was checked to hold at least
        :data:`MIN_DEFAULT_WINDOW`), so a lake with 10 or more such checkpoints gets the
        paper's J and a shorter one the longest window it holds."""
        given = self.params.window_length
        return given if given is not None else min(DEFAULT_WINDOW_LENGTH, self.k)

    @property
    def early_fraction(self) -> float | None:
        if self.method.early is None:
            return None
        return self.params.early if self.params.early is not None else self.method.early


def check_params(params: Params) -> None:
    """The parameters that need no lake: one line naming the argument (as the caller spells
    it, :func:`~cld_lake.errors.argument`) and what to give."""
    if params.early is not None and not 0.0 < params.early <= 1.0:
        raise ScoringError(
            f"{argument('early', params.early)}: give the early window as a fraction of the "
            f"selected checkpoints in (0, 1], e.g. {argument('early', 0.1)}"
        )
    if params.window_length is not None and params.window_length < 2:
        raise ScoringError(
            f"{argument('window_length', params.window_length)}: a window needs at least 2 "
            "checkpoints (a standard deviation of one value means nothing)"
        )


def checkpoints_needed(method: Method, params: Params) -> int:
    """The fewest checkpoints ``method`` accepts in its window with ``params``."""
    needed = method.min_checkpoints
    if "window_length" in method.uses:
        given = params.window_length
        needed = max(needed, MIN_DEFAULT_WINDOW if given is None else given)
    return needed


def check_window(method: Method, params: Params, selected: int, used: int) -> None:
    """Refuse, in one line with the fixes, a window of ``used`` checkpoints (out of ``selected``)
    too short for ``method``."""
    needed = checkpoints_needed(method, params)
    if used >= needed:
        return
    fraction = params.early if params.early is not None else method.early
    if method.early is not None:
        where = f"its early window ({argument('early', fraction)} of {selected}) holds {used}"
    else:
        where = f"{used} {'is' if used == 1 else 'are'} selected"
    fixes = []
    if "window_length" in method.uses and used >= 2:
        fixes.append(argument("window_length", used) + (" (or less)" if used > 2 else ""))
    if method.early is not None and needed <= selected:
        fixes.append(argument("early", math.ceil(100 * needed / selected) / 100))
    fixes.append(f"more checkpoints (record more, or widen {argument('checkpoints')})")
    raise ScoringError(
        f"{argument('method', method.name)} needs at least {needed} checkpoint"
        f"{'s' * (needed != 1)}; {where}; use {', '.join(fixes[:-1])} or {fixes[-1]}"
    )


def _key(channel: str, cols: Cols) -> tuple[Any, ...]:
    if isinstance(cols, slice):
        return (channel, cols.start, cols.stop, cols.step)
    return (channel, *cols.tolist())


class Rows:
    """A piece of a block (at most :data:`~cld_lake.score._passes.PIECE_ROWS` rows) and the
    derived arrays methods share, computed once per piece whatever the number of methods.

    Derived arrays are float64 and checkpoint-major: shape ``(k, m)`` for ``k`` columns and
    ``m`` rows, so every reduction over checkpoints is a sequence of element-wise operations
    over contiguous rows.
    """

    def __init__(self, values: Mapping[str, np.ndarray], labels: np.ndarray) -> None:
        self.values = values
        self.labels = labels
        self._cache: dict[tuple[Any, ...], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.labels)

    def raw(self, channel: str, cols: Cols) -> np.ndarray:
        """The stored values ``(m, k)`` of ``channel`` at ``cols``, in their stored dtype."""
        return self.values[channel][:, cols]

    def _cached(self, key: tuple[Any, ...], make: Callable[[], np.ndarray]) -> np.ndarray:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def columns(self, channel: str, cols: Cols) -> np.ndarray:
        """``channel`` at ``cols`` as float64, checkpoint-major ``(k, m)`` (widening is exact)."""
        return self._cached(
            ("columns", *_key(channel, cols)),
            lambda: np.ascontiguousarray(self.raw(channel, cols).T, dtype=np.float64),
        )

    def total(self, channel: str, cols: Cols) -> np.ndarray:
        """Sum over ``cols`` of ``channel`` per row (fixed order)."""
        return self._cached(
            ("total", *_key(channel, cols)), lambda: column_sum(self.columns(channel, cols))
        )

    def undefined(self, channel: str, cols: Cols) -> np.ndarray:
        """Rows with a NaN or infinite value of ``channel`` at any of ``cols``.

        A sum is finite exactly when every term is (values read from a lake are far from
        float64 overflow), so this reuses :meth:`total`.
        """
        return ~np.isfinite(self.total(channel, cols))

    def p_true(self, cols: Cols) -> np.ndarray:
        """``exp(-loss)`` at ``cols``, ``(k, m)``: the probability of the labelled class when
        the loss is the cross-entropy (as ``LossRecorder`` records it)."""

        def make() -> np.ndarray:
            with np.errstate(over="ignore", invalid="ignore"):
                return np.exp(-self.columns("loss", cols))

        return self._cached(("p_true", *_key("loss", cols)), make)


# --- reductions over checkpoints, in a fixed order -------------------------------------------
def column_sum(x: np.ndarray) -> np.ndarray:
    """``x[0] + x[1] + ...`` over the first axis, added in order (bit-identical per row for
    any number of rows; ``np.sum`` may pick another order for some shapes)."""
    out = x[0].copy()
    with np.errstate(invalid="ignore", over="ignore"):
        for row in x[1:]:
            out += row
    return out


def column_mean(x: np.ndarray) -> np.ndarray:
    return column_sum(x) / len(x)


def column_std(x: np.ndarray, ddof: int = 0) -> np.ndarray:
    """Standard deviation over the first axis, two-pass (mean, then squared deviations)."""
    mean = column_mean(x)
    with np.errstate(invalid="ignore", over="ignore"):
        squares = column_sum((x - mean) ** 2)
        return np.sqrt(squares / (len(x) - ddof))


def sliding_mean_std(x: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample standard deviation (``ddof=1``) of every window of ``length``
    consecutive checkpoints: two ``(W, m)`` arrays, ``W = k - length + 1``."""
    windows = len(x) - length + 1
    with np.errstate(invalid="ignore", over="ignore"):
        total = x[0:windows].copy()
        for j in range(1, length):
            total += x[j : j + windows]
        mean = total / length
        squares = (x[0:windows] - mean) ** 2
        for j in range(1, length):
            squares += (x[j : j + windows] - mean) ** 2
        return mean, np.sqrt(squares / (length - 1))


def max_sample_std(length: int) -> float:
    """The largest sample standard deviation of ``length`` values in [0, 1] (half at 0, half
    at 1): the upper end of the ranges of ``dynunc`` and ``dual``."""
    low, high = length // 2, length - length // 2
    return math.sqrt(low * high / (length * (length - 1)))
