"""Shared pieces of the HTML report: constants, number formatting, escaping, gate-path
labels and table cells. Every numeric cell can carry its `--fail-on` gate path (`data-path`
and tooltip) and is formatted by the kind of quantity it is (report/numbers.py), as in the
terminal; column heads use the terminal's labels (report/columns.py) and define their term in
a tooltip (report/terms.py)."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence

from rejuv_cli.errors import UsageError
from rejuv_cli.report.columns import GENERATION_COLS, OUTPUT_COLS, TERM_OF, WEIGHT_COLS
from rejuv_cli.report.numbers import DASH as DASH  # re-exported for the page modules
from rejuv_cli.report.numbers import number, shown_at
from rejuv_cli.report.paths import format_path, parse_path
from rejuv_cli.report.terms import TERMS, legend

MODULE_ORDER = ("q", "k", "v", "o", "attn", "mlp", "norm", "embed", "router", "other")
STAT_KEYS = tuple(key for _, key in WEIGHT_COLS)
OUTPUT_KEYS = tuple((key, label) for label, key in OUTPUT_COLS)
GENERATION_KEYS = tuple((key, label) for label, key in GENERATION_COLS)
TOP_TENSORS = 20
CELL, LAYER, TENSOR = '["LAYER.MODULE"]', '["LAYER"]', '["TENSOR"]'  # placeholders
FOOTER = "Verdicts are heuristics: no single metric is a validated predictor of RL gain."

# Sequential light-to-dark ramp (ColorBrewer YlOrRd): luminance falls monotonically with value.

SERIES_COLORS = {"base": "#7b8794", "sft": "#e8590c", "candidate": "#1c7ed6"}
VERDICT_COLORS = {"rigid": "#c92a2a", "watch": "#e67700", "ok": "#2b8a3e"}
VERDICT_BG = {"rigid": "#fff5f5", "watch": "#fff9db", "ok": "#ebfbee"}


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _number(x: object) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x)


def fmt(x: object) -> str:
    """4 significant digits for floats, full integers, '–' for None / NaN; text escaped
    (report/numbers.number, as the terminal shows a plain number)."""
    return esc(number(x))


def _tau(key: object) -> str:
    v = _number(key)
    if v is None:
        try:
            v = float(str(key))
        except ValueError:
            return esc(key)
    return f"{v:g}"


def _finite(x: object) -> float | None:
    v = _number(x)
    return v if v is not None and math.isfinite(v) else None


def shown(x: object, path: Sequence | str | None) -> str:
    """`x` as the reports show the quantity at gate path `path` (a share as a percentage),
    escaped; a plain number without a path."""
    if path is None:
        return fmt(x)
    try:
        keys = parse_path(path) if isinstance(path, str) else tuple(path)
    except UsageError:  # a path the grammar does not read: shown as a plain number
        return fmt(x)
    return esc(shown_at(keys, x))


def _num(x: object, cls: str = "num", path: Sequence | None = None) -> str:
    """A numeric cell; `path` (keys) gives it its gate path as data-path and tooltip, and the
    format of its kind of quantity."""
    if path is None:
        return f'<td class="{cls}">{fmt(x)}</td>'
    where = esc(path if isinstance(path, str) else format_path(path))
    return f'<td class="{cls}" data-path="{where}" title="{where}">{shown(x, path)}</td>'


def _path(path: Sequence | str) -> str:
    """A gate path shown under or beside a label."""
    text = path if isinstance(path, str) else format_path(path)
    return f'<span class="path">{esc(text)}</span>'


def _head(text: str, key: str | Sequence, term: str | None = None) -> str:
    """A column head: its label (plain text; with its term's definition as a tooltip,
    report/terms.py), and under it the key that continues the row's gate path."""
    keys = (key,) if isinstance(key, str) else tuple(key)
    term = term or TERM_OF.get(text)
    label = esc(text)
    if term in TERMS:
        label = f'<abbr title="{esc(TERMS[term])}">{label}</abbr>'
    return f"{label}<br>{_path(format_path(('_', *keys))[1:])}"


def _legend(*terms: str) -> str:
    """The legend under a table: the terms it uses, defined (the terminal prints the same)."""
    return f'<p class="small muted legend">{esc(legend(*terms))}</p>'


def _row_head(name: str, path: Sequence) -> str:
    return f"<td><strong>{esc(name)}</strong><br>{_path(path)}</td>"


def _has(d: dict | None, key: str) -> bool:
    return isinstance(d, dict) and key in d


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    """head: already-safe header HTML; rows: already-rendered <td> strings.

    A header is right-aligned when the first row's cell under it is numeric.
    """
    rows = list(rows)
    first = rows[0] if rows else ()
    out = [f'<table class="{cls}">' if cls else "<table>", "<thead><tr>"]
    for i, h in enumerate(head):
        num = i < len(first) and first[i].startswith('<td class="num')
        out.append(f'<th class="num">{h}</th>' if num else f"<th>{h}</th>")
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>" + "".join(row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _module_rank(m: str) -> tuple[int, str]:
    return (MODULE_ORDER.index(m) if m in MODULE_ORDER else len(MODULE_ORDER), m)


def _sort_int(x: object) -> int:
    try:
        return int(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 1 << 30
