"""The provenance stored with each score column (``scores.parquet`` metadata): one builder for
every method, and the mean over runs of an ensemble.

Every column records ``method``, ``engine``, ``checkpoints`` (compact text),
``checkpoint_ids``, ``window`` (as given, ``START:STOP[:STEP]``), ``used_checkpoints``,
``parameters``, ``train_samples``, ``nan``, ``direction``, ``range``, ``citation``, ``splits``,
``lake_id``, ``created_at``, ``version`` (and ``run`` outside the default run); CLD adds its
reference's counts, and ``splits`` names its reference split (``train, val`` by default;
staleness is judged over the checkpoints those splits share). The orchestrator adds
``computed_with`` and ``seconds``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cld_lake._meta import now_iso
from cld_lake._version import __version__
from cld_lake.lake import DEFAULT_RUN, Lake, Split
from cld_lake.score._formula import Reference
from cld_lake.score._method import Params, Plan
from cld_lake.score._plan import TRAIN, VAL, Window, window_text

# what an ensemble's provenance keeps from its runs' (the same in every run)
_ENSEMBLE_KEYS = (
    "method", "engine", "window", "parameters", "train_samples", "direction", "range",
    "citation", "splits", "lake_id", "version",
)  # fmt: skip


def compact(ids: np.ndarray) -> str:
    """Checkpoint ids in a few characters: ``0..89 (90)``, ``0..88 step 2 (45)``, ``1, 4 (2)``."""
    if len(ids) > 1:
        steps = np.diff(ids)
        if np.all(steps == steps[0]):
            step = f" step {steps[0]}" if steps[0] != 1 else ""
            return f"{ids[0]}..{ids[-1]}{step} ({len(ids)})"
    return f"{', '.join(str(i) for i in ids)} ({len(ids)})"


def method_provenance(
    lake: Lake,
    plan: Plan,
    engine: str,
    window: Window,
    train: Split,
    counts: Mapping[str, int],
) -> dict[str, Any]:
    """What a column computed by ``plan`` records."""
    method = plan.method
    prov: dict[str, Any] = {
        "method": method.name,
        "engine": engine,
        "checkpoints": compact(plan.checkpoint_ids),
        "checkpoint_ids": [int(c) for c in plan.checkpoint_ids],
        "window": window_text(window),
        "used_checkpoints": compact(plan.used),
        "parameters": plan.parameters(),
        "train_samples": int(train.num_samples),
        "nan": int(counts.get("nan", 0)),
    }
    if plan.reference is not None:
        prov |= _reference_provenance(plan.reference, counts, plan.params)
    return prov | _common_provenance(lake, plan, method.value_range(plan))


def _reference_provenance(
    reference: Reference, counts: Mapping[str, int], params: Params
) -> dict[str, Any]:
    """What CLD records beyond every method's fields: the reference split's samples used and
    left out (also as ``val_samples_used`` / ``val_left_out`` when that split is val, the
    names they always had), and the rows' counts."""
    used, left_out = int(reference.val_counts.sum()), int(reference.val_left_out)
    of_val = (
        {"val_samples_used": used, "val_left_out": left_out}
        if params.reference_split == VAL
        else {}
    )
    return of_val | {
        "reference_samples_used": used,
        "reference_left_out": left_out,
        "nan": int(counts.get("nan", 0)),
        "degenerate": int(counts.get("degenerate", 0)),
        "fallback": int(counts.get("fallback", 0)),
        "fallback_mode": params.fallback,
        "fallback_classes": [int(c) for c in np.flatnonzero(reference.fallback)],
    }


def _common_provenance(
    lake: Lake, plan: Plan, value_range: tuple[float | None, float | None]
) -> dict[str, Any]:
    method = plan.method
    return {
        "direction": method.direction,
        "range": list(value_range),
        "citation": method.citation,
        "splits": _splits_read(plan),
        "lake_id": lake.lake_id,
        "created_at": now_iso(),
        "version": __version__,
        **({} if lake.run == DEFAULT_RUN else {"run": lake.run}),
    }


def _splits_read(plan: Plan) -> list[str]:
    """The splits a column was computed from: train, and CLD's reference split."""
    if not plan.method.needs_reference:
        return [TRAIN]
    return list(dict.fromkeys([TRAIN, plan.params.reference_split]))


def ensemble_provenance(
    first: Mapping[str, Any],
    runs: Sequence[str],
    per_run: dict[str, dict[str, Any]],
    mean: np.ndarray,
) -> dict[str, Any]:
    """The stored provenance of a mean over ``runs``: the fields every run shares (taken from
    the ``first`` run's), the runs, each run's own provenance, and the NaN count of the mean."""
    return {k: first[k] for k in _ENSEMBLE_KEYS if k in first} | {
        "ensemble": "mean",
        "runs": list(runs),
        "run_provenance": per_run,
        "nan": int(np.count_nonzero(np.isnan(mean))),
        "created_at": now_iso(),
    }
