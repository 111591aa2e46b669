"""The page's HTML: its style sheet, tables of rows, figures as embedded PNGs, the document."""

from __future__ import annotations

import html
from typing import Any

from cld_lake.report import _plots as plots


def table(rows: list[dict[str, Any]]) -> str:
    """``rows`` as a table, the first row's keys as its header ("" for no rows)."""
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r.values()) + "</tr>"
        for r in rows
    )
    return f"<div class='wide'><table><tr>{head}</tr>{body}</table></div>"


def columns_table(columns: dict[str, dict[str, Any]], corner: str = "") -> str:
    """One column per key of ``columns`` (e.g. a split), one row per property: a table as
    narrow as its few columns, however many properties they have ("" for none)."""
    if not columns:
        return ""
    props = list(dict.fromkeys(p for values in columns.values() for p in values))
    head = f"<th class='prop'>{html.escape(corner)}</th>" + "".join(
        f"<th>{html.escape(str(k))}</th>" for k in columns
    )
    body = "".join(
        f"<tr><th class='prop'>{html.escape(str(p))}</th>"
        + "".join(f"<td>{html.escape(_fmt(v.get(p, '')))}</td>" for v in columns.values())
        + "</tr>"
        for p in props
    )
    return f"<div class='wide'><table><tr>{head}</tr>{body}</table></div>"


def _fmt(v: Any) -> str:
    """A cell: floats to 4 significant digits, dicts as ``k=v, ...``."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    return str(v)


def figure(fig: Any, alt: str, caption: str = "") -> str:
    """A matplotlib figure as an embedded PNG, with ``caption`` under it."""
    note = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f"<figure>{plots.to_img(fig, alt)}{note}</figure>"


STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1060px;padding:0 1em;"
    "color:#222}table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
    "padding:3px 8px;font-size:13px;text-align:right}th{background:#f3f3f3}"
    "figure{margin:1em 0}figure img{max-width:100%;height:auto;display:block}"
    "figcaption,.note{font-size:13px;color:#555}.wide{overflow-x:auto;max-width:100%}"
    "th.prop{text-align:left}td{overflow-wrap:anywhere}"
)


def document(sections: list[str]) -> str:
    """The whole page around ``sections``: no script, font or style sheet from elsewhere."""
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>cld_lake report</title><style>{STYLE}</style></head>"
        f"<body>{''.join(sections)}</body></html>"
    )
