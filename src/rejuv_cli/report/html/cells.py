"""Shared pieces of the HTML report: constants, number formatting, escaping, gate-path
labels and table cells. Every numeric cell can carry its `--fail-on` gate path (`data-path`
and tooltip)."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence

from rejuv_cli.report.paths import format_path

MODULE_ORDER = ("q", "k", "v", "o", "attn", "mlp", "norm", "embed", "router", "other")
STAT_KEYS = ("rel_drift", "cosine", "msd", "kurtosis", "top_share", "max_over_std")
OUTPUT_KEYS = (
    ("entropy_mean", "entropy (nats)"),
    ("p_max_mean", "p<sub>max</sub>"),
    ("confident_share", "confident share"),
    ("nll_mean", "NLL (nats)"),
    ("skill_retained", "skill retained"),
    ("kl_mean", "KL to base"),
    ("entropy_ratio", "entropy ÷ base"),
    ("tokens", "tokens"),
)
GENERATION_KEYS = (
    ("accuracy", "accuracy"),
    ("accuracy_retained", "accuracy retained"),
    ("pass_at_1", "pass@1"),
    ("pass_at_k", "pass@k"),
    ("learnable_share", "learnable share"),
    ("all_wrong_share", "all wrong"),
    ("all_right_share", "all right"),
    ("no_answer", "no answer"),
)
TOP_TENSORS = 20
CELL, LAYER, TENSOR = '["LAYER.MODULE"]', '["LAYER"]', '["TENSOR"]'  # placeholders
DASH = "–"
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
    """4 significant digits for floats, full integers, '–' for None / NaN; text escaped."""
    if x is None:
        return DASH
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if math.isnan(x):
            return DASH
        if math.isinf(x):
            return "∞" if x > 0 else "−∞"
        if x == 0:
            return "0"
        text = f"{x:.4g}"
        if text in ("1", "-1") and abs(x) != 1:  # a cosine of 0.99998 is not 1
            text = f"{x:.7g}"
        return text
    return esc(x)


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


def _num(x: object, cls: str = "num", path: Sequence | None = None) -> str:
    """A numeric cell; `path` (keys) gives it its gate path as data-path and tooltip."""
    if path is None:
        return f'<td class="{cls}">{fmt(x)}</td>'
    where = esc(path if isinstance(path, str) else format_path(path))
    return f'<td class="{cls}" data-path="{where}" title="{where}">{fmt(x)}</td>'


def _path(path: Sequence | str) -> str:
    """A gate path shown under or beside a label."""
    text = path if isinstance(path, str) else format_path(path)
    return f'<span class="path">{esc(text)}</span>'


def _head(text: str, key: str | Sequence) -> str:
    """A column head: its label, and under it the key that continues the row's gate path."""
    keys = (key,) if isinstance(key, str) else tuple(key)
    return f"{text}<br>{_path(format_path(('_', *keys))[1:])}"


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
