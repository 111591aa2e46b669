"""The comparison harness's ``results.json`` (``pipelines/compare.py``): read, checked, and
turned into the series of the coreset accuracy plot."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cld_lake.errors import BadInputError


def load_compare(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The comparison harness's ``results.json`` (``path`` itself, or ``path/results.json``)."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    try:
        results = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInputError(
            f"--compare {path}: no {file.name} there; give the harness's OUT directory or its "
            "results.json"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInputError(f"--compare {file}: not a readable JSON file ({e})") from None
    if not isinstance(results, dict) or not isinstance(results.get("accuracy"), list):
        raise BadInputError(
            f"--compare {file}: no 'accuracy' list; give a results.json of pipelines/compare.py"
        )
    return results


def compare_series(
    results: dict[str, Any],
) -> tuple[dict[str, list[tuple[float, float, float, float]]], tuple[float, float, float] | None]:
    """``(method -> [(fraction, mean, min, max)], full-data (mean, min, max) or None)`` from a
    results.json's accuracy rows; rows without a mean (no finished run) are left out."""
    methods: dict[str, list[tuple[float, float, float, float]]] = {}
    full = None
    for row in results["accuracy"]:
        try:
            point = tuple(float(row[k]) for k in ("fraction", "mean", "min", "max"))
            method = str(row["method"])
        except (KeyError, TypeError, ValueError):
            continue
        if method == "full":
            full = point[1:]
        else:
            methods.setdefault(method, []).append(point)  # type: ignore[arg-type]
    if not methods and full is None:
        raise BadInputError("--compare: its results.json holds no accuracy row with a mean")
    return methods, full  # type: ignore[return-value]
