"""Planning a pass: which checkpoints each method uses, the columns of one shared read, and
CLD's reference, all decided (and every window checked) before a row is scored.

``--checkpoints START:STOP[:STEP]`` selects over the positions of the checkpoints committed in
the train split (for a method that reads a reference split too, CLD: committed in both train
and that split, ``val`` unless ``--reference-split`` or ``--reference split:NAME`` names
another; a START or STOP beyond them is refused, never clipped); an early-window method then
keeps the first ``max(1, floor(early * K))`` of the K selected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cld_lake.errors import ScoringError, argument
from cld_lake.lake import DEFAULT_RUN
from cld_lake.lake.store import Lake, Split, parse_window
from cld_lake.score._formula import MIN_CHECKPOINTS, Reference
from cld_lake.score._method import Cols, Method, Params, Plan, check_window
from cld_lake.score._reference import ReferenceChoice
from cld_lake.score._registry import missing_channel
from cld_lake.score._stream import cld_reference

TRAIN, VAL = "train", "val"
# Guard for the floor in ``early_count``: 0.3 * 10 is 3.0000000000000004 in binary floating point.
_FLOOR_EPS = 1e-9

Window = str | slice | None


def window_text(window: Window) -> str | None:
    """A window as the user writes it: ``"0:45"``, ``"::2"`` (None: every checkpoint)."""
    if window is None or isinstance(window, str):
        return window
    parts = [window.start, window.stop] + ([window.step] if window.step is not None else [])
    return ":".join("" if p is None else str(p) for p in parts)


def _window_slice(window: str | slice, count: int, held: str) -> slice:
    """The window as a slice over ``count`` checkpoint positions; a START or STOP beyond them
    is refused, never clipped (a column named for 45 checkpoints must hold 45). ``held`` says
    where the ``count`` checkpoints are committed, for the message."""
    sel = parse_window(window) if isinstance(window, str) else window
    if not isinstance(sel, slice):
        raise ScoringError(f"--checkpoints {window!r}: expected START:STOP[:STEP]")
    for bound, name, top in ((sel.start, "START", count - 1), (sel.stop, "STOP", count)):
        if bound is not None and not -count <= bound <= top:
            positions = f"positions 0..{count - 1}" if count else "none"
            raise ScoringError(
                f"--checkpoints {window_text(window)}: {name} {bound} lies beyond the lake, "
                f"which holds {count} checkpoint{'s' * (count != 1)} committed in {held} "
                f"({positions}); give a window within them, e.g. --checkpoints 0:{count}"
            )
    return sel


def plan_checkpoints(train: Split, reference: Split, window: Window) -> np.ndarray:
    """Checkpoints committed in both the train split and CLD's ``reference`` split (``val``
    unless another is named), then the window/stride over their positions (at least
    :data:`MIN_CHECKPOINTS` of them; a window beyond them refused)."""
    ref = reference.name
    both = f"both train and {ref}" if ref != TRAIN else "train"
    common = np.intersect1d(train.checkpoint_ids, reference.checkpoint_ids)
    if len(common) < MIN_CHECKPOINTS:
        raise ScoringError(
            f"CLD needs at least {MIN_CHECKPOINTS} checkpoints committed in {both}; "
            f"found {len(common)} (train has {train.num_checkpoints}, {ref} has "
            f"{reference.num_checkpoints}); record more checkpoints"
            + ("" if ref == VAL else f" of the {ref} split, or score against another reference")
        )
    if window is None:
        return common
    chosen = common[_window_slice(window, len(common), both)]
    if len(chosen) < MIN_CHECKPOINTS:
        raise ScoringError(
            f"--checkpoints {window_text(window)}: selects {len(chosen)} of the {len(common)} "
            f"checkpoints committed in {both}; CLD needs at least {MIN_CHECKPOINTS} "
            f"(e.g. --checkpoints 0:{len(common)})"
        )
    return chosen


def select_train_checkpoints(train: Split, window: Window) -> np.ndarray:
    """The train split's committed checkpoints, then the window/stride over their positions
    (a window beyond them refused)."""
    ids = train.checkpoint_ids
    return ids if window is None else ids[_window_slice(window, len(ids), "train")]


def early_count(k: int, fraction: float) -> int:
    """Checkpoints in an early window: the first ``max(1, floor(fraction * k))`` of ``k``."""
    return max(1, min(k, math.floor(fraction * k + _FLOOR_EPS)))


def window_of(method: Method, params: Params, selected: np.ndarray) -> np.ndarray:
    """The checkpoints ``method`` uses out of the ``selected`` ones, checked for its needs."""
    fraction = params.early if params.early is not None else method.early
    used = selected if method.early is None else selected[: early_count(len(selected), fraction)]
    check_window(method, params, len(selected), len(used))
    return used


def as_cols(positions: np.ndarray) -> Cols:
    """Column positions as a slice when they are consecutive (a view, no copy)."""
    positions = np.asarray(positions, dtype=np.int64)
    if len(positions) and np.array_equal(positions, np.arange(positions[0], positions[-1] + 1)):
        return slice(int(positions[0]), int(positions[-1]) + 1)
    return positions


def require_splits(lake: Lake, names: Sequence[str], what: str) -> None:
    """One line naming the splits ``what`` needs that ``lake`` (its run) lacks, and how to add
    them."""
    missing = list(dict.fromkeys(s for s in names if not lake.has_split(s)))
    if missing:
        present = ", ".join(lake.splits()) or "none"
        run = "" if lake.run == DEFAULT_RUN else f" --run {lake.run}"
        where = "" if lake.run == DEFAULT_RUN else f" in run {lake.run!r}"
        raise ScoringError(
            f"{lake.root}: {what} needs a {' and a '.join(missing)} split{where} (present: "
            f"{present}); import or record the {' and '.join(missing)} losses first, e.g. "
            f"cld-lake import {lake.root} --split {missing[0]}{run} --loss ... --labels ..."
        )


def _num_classes(lake: Lake, train: Split, reference: Split) -> int:
    if lake.num_classes is not None:  # set at the first write; every stored label is below it
        return lake.num_classes
    return max(len(train.label_counts()), len(reference.label_counts()))


def reference_table(
    lake: Lake,
    train: Split,
    split: Split,
    ckpts: np.ndarray,
    params: Params,
    block_rows: int | None,
) -> Reference:
    """CLD's reference table: :func:`cld_reference` over the blocks of the reference
    ``split``, per group (``group``) or pooled (``global``, ``split:NAME``)."""
    num_classes = _num_classes(lake, train, split)
    blocks = split.blocks(block_rows=block_rows, checkpoints=ckpts)
    return cld_reference(
        ((block.loss, block.labels) for block in blocks),
        num_classes,
        checkpoints=ckpts,
        fallback=params.fallback,
        train_classes=np.flatnonzero(train.label_counts(num_classes)),
        reference="global" if params.reference_choice.pooled else "group",
        split=split.name,
    )


def _needing(choice: ReferenceChoice) -> str:
    """What needs the reference split, as the user asked for it."""
    if choice.kind == "split":
        return argument("reference", choice.text)
    if choice.split != VAL:
        return argument("reference_split", choice.split)
    return "--method cld"


def require_pass_splits(
    lake: Lake, methods: Sequence[Method], params: Params
) -> ReferenceChoice | None:
    """The splits a pass of ``methods`` reads in ``lake``'s run (train, and CLD's reference
    split), each present or one line naming it; returns CLD's reference (None without it)."""
    if not any(m.needs_reference for m in methods):
        require_splits(lake, (TRAIN,), "scoring")
        return None
    choice = params.reference_choice
    require_splits(lake, (TRAIN,), "--method cld")
    require_splits(lake, (choice.split,), _needing(choice))
    return choice


def plan_pass(
    lake: Lake,
    methods: Sequence[Method],
    names: Sequence[str] | None = None,
    params: Params = Params(),  # noqa: B008 - frozen, never mutated
    checkpoints: Window = None,
    block_rows: int | None = None,
) -> tuple[Split, list[Plan]]:
    """The train split and each method's plan (column ``names``, default the method names):
    its checkpoints, window and (CLD) reference; the columns of the one read they share."""
    names = [m.name for m in methods] if names is None else names
    choice = require_pass_splits(lake, methods, params)
    train = lake.split(TRAIN)
    for method in methods:
        missing_channel(method, train.channels, lake.root)
    ref = lake.split(choice.split) if choice is not None else None
    windows = []  # every window checked before the reference split's pass
    for method in methods:
        if method.needs_reference:
            assert ref is not None
            selected = plan_checkpoints(train, ref, checkpoints)
        else:
            selected = select_train_checkpoints(train, checkpoints)
        windows.append((selected, window_of(method, params, selected)))
    read_ids = np.unique(np.concatenate([used for _, used in windows]))
    plans = []
    for method, name, (selected, used) in zip(methods, names, windows, strict=True):
        reference = None
        if method.needs_reference:
            assert ref is not None
            reference = reference_table(lake, train, ref, selected, params, block_rows)
        cols = as_cols(np.searchsorted(read_ids, used))
        plans.append(Plan(name, method, params, selected, used, cols, reference))
    return train, plans
