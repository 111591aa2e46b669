"""Filter pushdown for the ``losses`` scan: which predicates it takes and what they keep.

DuckDB offers each filter of a query as a predicate tree (DuckDB's private node classes, reached
through :mod:`cld_lake._duckdb`). The scan accepts those that compare the integer id columns
(``sample_id``, ``label``, ``checkpoint``) with integer constants, combined with ``AND``, ``OR``,
``NOT``, ``IN`` and ``IS [NOT] NULL``, and evaluates them here: three-valued over what is known
before reading (to prune checkpoints and row blocks), exactly over the rows it emits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cld_lake._duckdb import Binary, Col, In, Lit, Postfix, Unary

ID_COLUMNS = ("sample_id", "label", "checkpoint")

_OPS = {
    "=": np.equal,
    "!=": np.not_equal,
    "<>": np.not_equal,
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
}


def supported(node: Any) -> bool:
    """Whether ``node`` only compares the integer id columns with integer constants."""
    if isinstance(node, Binary):
        if node.op in ("AND", "OR"):
            return supported(node.left) and supported(node.right)
        return node.op in _OPS and _is_id_col(node.left) and _is_int(node.right)
    if isinstance(node, Unary):
        return node.op == "NOT" and supported(node.operand)
    if isinstance(node, Postfix):
        return node.op in ("IS NULL", "IS NOT NULL") and _is_id_col(node.operand)
    if isinstance(node, In):
        return (
            _is_id_col(node.operand) and bool(node.values) and all(_is_int(v) for v in node.values)
        )
    return False


def _is_id_col(node: Any) -> bool:
    return isinstance(node, Col) and len(node.parts) == 1 and node.parts[0] in ID_COLUMNS


def _is_int(node: Any) -> bool:
    return (
        isinstance(node, Lit) and isinstance(node.value, int) and not isinstance(node.value, bool)
    )


def may_hold(node: Any, known: dict[str, np.ndarray]) -> tuple[Any, Any]:
    """Three-valued evaluation of a supported predicate over rows of ``known`` columns.

    Returns ``(may_be_true, may_be_false)`` as boolean arrays (or scalars, broadcastable).
    A comparison on a column not in ``known`` may be either. When every column the predicate
    names is known, ``may_be_true`` is exactly the predicate's value.
    """
    if isinstance(node, Binary) and node.op == "AND":
        lt, lf = may_hold(node.left, known)
        rt, rf = may_hold(node.right, known)
        return lt & rt, lf | rf
    if isinstance(node, Binary) and node.op == "OR":
        lt, lf = may_hold(node.left, known)
        rt, rf = may_hold(node.right, known)
        return lt | rt, lf & rf
    if isinstance(node, Unary):
        t, f = may_hold(node.operand, known)
        return f, t
    if isinstance(node, Postfix):  # the id columns are never NULL
        value = node.op == "IS NOT NULL"
        return np.bool_(value), np.bool_(not value)
    column = node.left.parts[0] if isinstance(node, Binary) else node.operand.parts[0]
    if column not in known:
        return np.bool_(True), np.bool_(True)
    values = known[column]
    if isinstance(node, Binary):
        hit = _OPS[node.op](values, np.int64(node.right.value))
    else:
        hit = np.isin(values, np.array([v.value for v in node.values], dtype=np.int64))
    return hit, ~hit


def all_true(filters: Sequence[Any], known: dict[str, np.ndarray], n: int) -> np.ndarray:
    """Rows (of ``n``) where every filter may hold (exactly: holds, when all columns are known)."""
    mask = np.ones(n, dtype=bool)
    for node in filters:
        mask &= may_hold(node, known)[0]
    return mask


def names(node: Any) -> set[str]:
    """The columns a predicate names."""
    if isinstance(node, Col):
        return {node.parts[0]}
    if isinstance(node, Binary):
        return names(node.left) | names(node.right)
    if isinstance(node, Unary | Postfix | In):
        return names(node.operand)
    return set()
