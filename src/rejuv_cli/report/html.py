"""The `rejuv diagnose --html` report: one self-contained HTML file.

Inline CSS and inline SVG drawn here (no JavaScript, no external URLs, fonts or images), so the
page opens offline and can be attached to an issue or a run log. Stdlib only: never imports
torch or numpy. Every string taken from the report (paths, tensor names, messages) is escaped.
Every number shown carries its `--fail-on` gate path: beside its label (row and column heads
show their part of it) and on the cell itself (`data-path`, and the tooltip).
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence

from rejuv_cli.report.gates import format_path
from rejuv_cli.report.schema import label as schema_label

MODULE_ORDER = ("q", "k", "v", "o", "attn", "mlp", "norm", "embed", "router", "other")
STAT_KEYS = ("rel_drift", "cosine", "msd", "kurtosis", "top_share", "max_over_std")
OUTPUT_KEYS = (
    ("entropy_mean", "entropy (nats)"),
    ("p_max_mean", "p<sub>max</sub>"),
    ("confident_share", "confident share"),
    ("nll_mean", "NLL (nats)"),
    ("kl_mean", "KL to base"),
    ("entropy_ratio", "entropy ÷ base"),
    ("tokens", "tokens"),
)
TOP_TENSORS = 20
CELL, LAYER, TENSOR = '["LAYER.MODULE"]', '["LAYER"]', '["TENSOR"]'  # placeholders
DASH = "–"
FOOTER = "Verdicts are heuristics: no single metric is a validated predictor of RL gain."

# Sequential light-to-dark ramp (ColorBrewer YlOrRd): luminance falls monotonically with value.
RAMP = (
    (255, 255, 204),
    (255, 237, 160),
    (254, 217, 118),
    (254, 178, 76),
    (253, 141, 60),
    (252, 78, 42),
    (227, 26, 28),
    (189, 0, 38),
    (128, 0, 38),
)
SERIES_COLORS = {"base": "#7b8794", "sft": "#e8590c", "candidate": "#1c7ed6"}
VERDICT_COLORS = {"rigid": "#c92a2a", "watch": "#e67700", "ok": "#2b8a3e"}
VERDICT_BG = {"rigid": "#fff5f5", "watch": "#fff9db", "ok": "#ebfbee"}

CSS = """
:root { --fg:#1f2328; --muted:#656d76; --line:#d8dee4; --bg:#ffffff; --panel:#f6f8fa; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 24px 28px 40px; }
h1 { font-size: 26px; margin: 0 0 4px; letter-spacing: -0.01em; }
h2 { font-size: 18px; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 1px solid
  var(--line); }
h3 { font-size: 15px; margin: 18px 0 8px; }
p { margin: 6px 0; }
.muted { color: var(--muted); }
.small { font-size: 12px; }
code, pre, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas,
  "Liberation Mono", monospace; font-size: 12.5px; }
pre { background: var(--panel); border: 1px solid var(--line); border-radius: 6px;
  padding: 10px 12px; overflow-x: auto; white-space: pre-wrap; word-break: break-all;
  margin: 8px 0; }
table { border-collapse: collapse; margin: 6px 0 10px; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left;
  vertical-align: top; }
th { background: var(--panel); font-weight: 600; font-size: 13px; }
td.num, th.num { text-align: right; white-space: nowrap; }
table.kv th { background: none; color: var(--muted); font-weight: 500; min-width: 150px;
  white-space: nowrap; }
table.kv td { word-break: break-all; }
table.wide { width: 100%; }
td.name { word-break: break-all; }
.verdict { border: 2px solid var(--vc); border-radius: 8px; padding: 14px 18px; margin: 18px 0;
  background: var(--vbg); }
.verdict + .verdict { margin-top: 12px; }
.badge { display: inline-block; padding: 1px 10px; border-radius: 999px; color: #fff;
  font-weight: 700; letter-spacing: 0.04em; background: var(--vc); }
.badge.big { font-size: 20px; padding: 2px 16px; vertical-align: middle; }
.level { display: inline-block; padding: 0 6px; border-radius: 4px; font-size: 11px;
  color: #fff; font-weight: 600; margin-right: 6px; }
.better { color: #2b8a3e; font-weight: 600; }
.worse { color: #c92a2a; font-weight: 600; }
.same { color: var(--muted); }
.plots { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
figure { margin: 6px 0 12px; }
figcaption { color: var(--muted); font-size: 12px; margin-top: 2px; }
svg { max-width: 100%; height: auto; display: block; }
svg text { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; }
details > summary { cursor: pointer; color: var(--muted); margin: 4px 0; }
.path { color: var(--muted); font-family: ui-monospace, SFMono-Regular, Menlo, Consolas,
  "Liberation Mono", monospace; font-size: 11px; font-weight: 400; word-break: break-all; }
footer { margin-top: 36px; padding-top: 10px; border-top: 1px solid var(--line);
  color: var(--muted); font-size: 13px; }
"""


# --------------------------------------------------------------------------------------------
# formatting


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


# --------------------------------------------------------------------------------------------
# colour and axes


class ColorScale:
    """Maps values onto RAMP, linearly or (wide positive ranges) logarithmically."""

    def __init__(self, values: Iterable[object]):
        finite = [v for v in (_finite(x) for x in values) if v is not None]
        self.lo = min(finite) if finite else 0.0
        self.hi = max(finite) if finite else 1.0
        self.log = self.lo > 0 and self.hi / self.lo > 100

    def position(self, x: object) -> float | None:
        v = _finite(x)
        if v is None:
            return None
        if self.hi <= self.lo:
            return 0.5
        if self.log:
            v = min(max(v, self.lo), self.hi)
            return (math.log(v) - math.log(self.lo)) / (math.log(self.hi) - math.log(self.lo))
        return min(max((v - self.lo) / (self.hi - self.lo), 0.0), 1.0)

    def rgb(self, x: object) -> tuple[int, int, int] | None:
        t = self.position(x)
        return None if t is None else ramp(t)


def ramp(t: float) -> tuple[int, int, int]:
    t = min(max(t, 0.0), 1.0) * (len(RAMP) - 1)
    i = min(int(t), len(RAMP) - 2)
    f = t - i
    a, b = RAMP[i], RAMP[i + 1]
    return tuple(round(a[c] + (b[c] - a[c]) * f) for c in range(3))  # type: ignore[return-value]


def _css_rgb(c: tuple[int, int, int]) -> str:
    return f"rgb({c[0]},{c[1]},{c[2]})"


def _luma(c: tuple[int, int, int]) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks, k = [], 0
    while start + k * step <= hi + step * 1e-9:
        ticks.append(round(start + k * step, 12))
        k += 1
    return ticks


def _tick(x: float) -> str:
    return f"{x:.3g}"


def _svg_open(plot_id: str, width: int, height: int, label: str) -> str:
    return (
        f'<svg id="{esc(plot_id)}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{esc(label)}">'
    )


def _legend_items(items: Sequence[tuple[str, str]], x: float, y: float) -> str:
    out = []
    for label, color in items:
        out.append(
            f'<rect class="legend" x="{x:.1f}" y="{y - 9:.1f}" width="12" height="12" '
            f'fill="{color}"/><text x="{x + 17:.1f}" y="{y + 1:.1f}" font-size="12">'
            f"{esc(label)}</text>"
        )
        x += 30 + 7.2 * len(label)
    return "".join(out)


# --------------------------------------------------------------------------------------------
# plots


def _layer_cells(layer_modules: dict | None) -> dict[tuple[int, str], dict]:
    cells: dict[tuple[int, str], dict] = {}
    for key, stats in (layer_modules or {}).items():
        layer, _, module = str(key).partition(".")
        try:
            cells[(int(layer), module or "other")] = stats or {}
        except ValueError:
            continue
    return cells


def _module_columns(kinds: Iterable[str]) -> list[str]:
    present = set(kinds)
    return [m for m in MODULE_ORDER if m in present] + sorted(present - set(MODULE_ORDER))


def heatmap_svg(
    plot_id: str,
    cells: dict[tuple[int, str], dict],
    layers: Sequence[int],
    columns: Sequence[str],
    scale: ColorScale,
    title: str,
    path: Sequence[str] = ("weights",),
) -> str:
    """Layers (rows) × module kinds (columns) coloured by rel_drift, with a colour legend.
    `path`: where the cells' section sits in the report (each cell's data-path)."""
    cw = max(40, min(64, 470 // max(len(columns), 1)))  # two maps side by side at 1200px
    ch = max(8, min(24, 640 // max(len(layers), 1)))
    left, top = 64, 50
    grid_w, grid_h = cw * len(columns), ch * len(layers)
    width = max(left + grid_w + 24, 360)
    height = top + grid_h + 78
    show_text = ch >= 15 and cw >= 40
    label_every = max(1, math.ceil(12 / ch))
    out = [_svg_open(plot_id, width, height, title)]
    out.append(f'<text x="{left}" y="18" font-size="13" font-weight="600">{esc(title)}</text>')
    for j, module in enumerate(columns):
        cx = left + j * cw + cw / 2
        out.append(
            f'<text x="{cx:.1f}" y="{top - 8}" font-size="12" text-anchor="middle">'
            f"{esc(module)}</text>"
        )
    out.append(
        f'<text x="14" y="{top + grid_h / 2:.1f}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + grid_h / 2:.1f})">layer</text>'
    )
    for i, layer in enumerate(layers):
        y = top + i * ch
        if i % label_every == 0:
            out.append(
                f'<text x="{left - 6}" y="{y + ch / 2 + 4:.1f}" font-size="11" '
                f'text-anchor="end">{layer}</text>'
            )
        for j, module in enumerate(columns):
            stats = cells.get((layer, module))
            if stats is None:
                continue
            value = stats.get("rel_drift")
            color = scale.rgb(value)
            fill = _css_rgb(color) if color else "#e9ecef"
            tip = f"layer {layer} · module {module} · rel_drift {fmt(value)}"
            where = format_path((*path, "layer_modules", f"{layer}.{module}", "rel_drift"))
            out.append(
                f'<rect class="cell" data-layer="{layer}" data-module="{esc(module)}" '
                f'data-path="{esc(where)}" x="{left + j * cw}" y="{y}" width="{cw - 1}" '
                f'height="{ch - 1}" fill="{fill}">'
                f"<title>{esc(tip)}</title></rect>"
            )
            if show_text:
                ink = "#fff" if color and _luma(color) < 140 else "#1f2328"
                out.append(
                    f'<text x="{left + j * cw + (cw - 1) / 2:.1f}" y="{y + ch / 2 + 3.5:.1f}" '
                    f'font-size="10" text-anchor="middle" fill="{ink}" '
                    f'pointer-events="none">{fmt(value)}</text>'
                )
    # legend: gradient bar with min / max (and the scale type)
    ly = top + grid_h + 24
    lw = min(max(grid_w, 200), 320)
    grad = f"{esc(plot_id)}-grad"
    stops = "".join(
        f'<stop offset="{k / (len(RAMP) - 1):.3f}" stop-color="{_css_rgb(c)}"/>'
        for k, c in enumerate(RAMP)
    )
    out.append(f'<defs><linearGradient id="{grad}">{stops}</linearGradient></defs>')
    out.append(
        f'<rect class="legend-bar" x="{left}" y="{ly}" width="{lw}" height="12" '
        f'fill="url(#{grad})" stroke="#adb5bd" stroke-width="0.5"/>'
    )
    kind = "log scale" if scale.log else "linear scale"
    out.append(
        f'<text class="legend-min" x="{left}" y="{ly + 27}" font-size="11">{fmt(scale.lo)}</text>'
        f'<text class="legend-max" x="{left + lw}" y="{ly + 27}" font-size="11" '
        f'text-anchor="end">{fmt(scale.hi)}</text>'
        f'<text x="{left + lw / 2:.1f}" y="{ly + 27}" font-size="11" text-anchor="middle" '
        f'fill="#656d76">rel_drift ({kind})</text>'
    )
    out.append("</svg>")
    return "".join(out)


def bar_chart_svg(
    plot_id: str,
    categories: Sequence[str],
    series: Sequence[tuple[str, str, Sequence[object]]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    width: int = 1100,
    height: int = 300,
    tip: str = "{cat} · {series} · {value}",
    x_ticks: Sequence[tuple[float, str]] | None = None,
    markers: Sequence[tuple[str, str, str, object]] = (),
) -> str:
    """Grouped bars: one group per category, one bar per series (name, colour, values).

    x_ticks: (position in category units from the left edge, label); default every category
    (thinned). markers: (tooltip, label, colour, x in category units) dashed vertical
    lines, labelled near the top (the y range gets headroom for them).
    """
    left, right, top, bottom = 64, 16, 40, 52
    pw, ph = width - left - right, height - top - bottom
    n = max(len(categories), 1)
    values = [_finite(v) for _, _, vs in series for v in vs]
    vmax = max([v for v in values if v is not None] + [0.0])
    ticks = nice_ticks(0.0, vmax if vmax > 0 else 1.0, 5)
    ymax = max(ticks[-1], vmax) if vmax > 0 else 1.0
    if markers:
        ymax = max(ymax, vmax * (1.1 + 0.07 * len(markers)))
    band = pw / n
    gap = band * 0.15 if band >= 6 else 0.0
    bw = (band - gap) / max(len(series), 1)

    def sy(v: float) -> float:
        return top + ph - ph * v / ymax

    out = [_svg_open(plot_id, width, height, title)]
    out.append(f'<text x="{left}" y="18" font-size="13" font-weight="600">{esc(title)}</text>')
    for t in ticks:
        y = sy(t)
        out.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eaeef2"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">'
            f"{_tick(t)}</text>"
        )
    for i, cat in enumerate(categories):
        for k, (name, color, vs) in enumerate(series):
            v = _finite(vs[i]) if i < len(vs) else None
            h = ph * max(v, 0.0) / ymax if v is not None else 0.0
            x = left + i * band + gap / 2 + k * bw
            label = tip.format(cat=cat, series=name, value=fmt(vs[i] if i < len(vs) else None))
            out.append(
                f'<rect class="bar" data-series="{esc(name)}" data-index="{i}" x="{x:.2f}" '
                f'y="{top + ph - h:.3f}" width="{max(bw, 0.5):.2f}" height="{h:.3f}" '
                f'fill="{color}"><title>{esc(label)}</title></rect>'
            )
    for k, (name, short, color, xv) in enumerate(markers):
        v = _finite(xv)
        if v is None:
            continue
        x = left + v * band
        right_half = x > left + pw * 0.6  # label to the left of the line, inside the plot
        tx, anchor = (x - 4, "end") if right_half else (x + 4, "start")
        out.append(
            f'<line class="marker" x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + ph}" '
            f'stroke="{color}" stroke-width="1.5" stroke-dasharray="5 3">'
            f"<title>{esc(name)}</title></line>"
            f'<text x="{tx:.1f}" y="{top + 11 + 13 * k}" font-size="11" fill="{color}" '
            f'text-anchor="{anchor}" stroke="#fff" stroke-width="3" paint-order="stroke">'
            f"{esc(short)}</text>"
        )
    out.append(
        f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" stroke="#57606a"/>'
        f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}" stroke="#57606a"/>'
    )
    if x_ticks is None:
        every = max(1, math.ceil(n / 32))
        x_ticks = [(i + 0.5, str(c)) for i, c in enumerate(categories) if i % every == 0]
    for pos, label in x_ticks:
        x = left + pos * band
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top + ph}" y2="{top + ph + 4}" '
            f'stroke="#57606a"/><text x="{x:.1f}" y="{top + ph + 17}" font-size="11" '
            f'text-anchor="middle">{esc(label)}</text>'
        )
    out.append(
        f'<text x="{left + pw / 2:.1f}" y="{height - 10}" font-size="12" text-anchor="middle">'
        f"{esc(x_label)}</text>"
        f'<text x="14" y="{top + ph / 2:.1f}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + ph / 2:.1f})">{esc(y_label)}</text>'
    )
    legend = [(name, color) for name, color, _ in series]
    if len(legend) > 1:
        approx = sum(30 + 7.2 * len(name) for name, _ in legend)
        out.append(_legend_items(legend, left + pw - approx, 18))
    out.append("</svg>")
    return "".join(out)


def entropy_histogram_svg(output: dict) -> str | None:
    """Per-token entropy histograms (share of tokens) for base, sft and candidate."""
    found = [
        (
            "base",
            (output.get("base") or {}).get("entropy_hist"),
            (output.get("base") or {}).get("entropy_mean"),
        ),
        ("sft", output.get("entropy_hist"), output.get("entropy_mean")),
        (
            "candidate",
            (output.get("candidate") or {}).get("entropy_hist"),
            (output.get("candidate") or {}).get("entropy_mean"),
        ),
    ]
    found = [(n, h, m) for n, h, m in found if h and h.get("edges") and h.get("counts")]
    if not found:
        return None
    edges = [float(e) for e in found[0][1]["edges"]]
    nb = len(edges) - 1
    if nb < 1:
        return None
    series, markers = [], []
    for name, hist, mean in found:
        counts = hist["counts"]
        if len(counts) != nb:
            continue
        total = sum(c for c in counts if _finite(c) is not None) or 1
        series.append((name, SERIES_COLORS[name], [c / total for c in counts]))
        v = _finite(mean)
        if v is not None and edges[-1] > edges[0]:
            pos = _edge_position(edges, v)
            tip = f"{name} mean entropy {fmt(v)} nats"
            markers.append((tip, f"{name} mean {fmt(v)}", SERIES_COLORS[name], pos))
    lo, hi = edges[0], edges[-1]
    x_ticks = [(_edge_position(edges, t), _tick(t)) for t in nice_ticks(lo, hi, 8)]
    cats = [f"{_tick(edges[i])}–{_tick(edges[i + 1])} nats" for i in range(nb)]
    return bar_chart_svg(
        "entropy-histogram",
        cats,
        series,
        title="Per-token entropy of the next-token distribution",
        x_label="entropy (nats)",
        y_label="share of tokens",
        height=320,
        tip="{series} · {cat} · share {value}",
        x_ticks=x_ticks,
        markers=markers,
    )


def _edge_position(edges: Sequence[float], x: float) -> float:
    """x (nats) in bin units from the left edge (bins may be uneven)."""
    if x <= edges[0]:
        return 0.0
    for i in range(len(edges) - 1):
        a, b = edges[i], edges[i + 1]
        if x <= b:
            return i + ((x - a) / (b - a) if b > a else 0.0)
    return float(len(edges) - 1)


# --------------------------------------------------------------------------------------------
# sections


def _header(report: dict) -> str:
    inputs = report.get("inputs") or {}
    rows = [
        ("base", inputs.get("base")),
        ("sft", inputs.get("sft")),
        ("candidate", inputs.get("candidate")),
        ("calibration", inputs.get("calib")),
        ("samples", inputs.get("samples")),
        ("max tokens", inputs.get("max_tokens")),
        ("device", inputs.get("device")),
    ]
    if inputs.get("weights_only"):
        rows.append(("mode", "weights only (--weights-only)"))
    rows = [(k, v) for k, v in rows if v is not None or k in ("base", "sft")]
    body = "".join(f'<tr><th>{esc(k)}</th><td class="mono">{fmt(v)}</td></tr>' for k, v in rows)
    tool = report.get("tool") or "rejuv"
    schema = report.get("schema_version")
    return (
        "<header><h1>rejuv diagnose</h1>"
        f'<p class="muted">plasticity report · {esc(tool)}'
        + (f" · schema {fmt(schema)}" if schema is not None else "")
        + f'</p><table class="kv">{body}</table></header>'
    )


def _verdict_block(v: dict, title: str) -> str:
    label = str(v.get("label") or "unknown")
    color = VERDICT_COLORS.get(label, "#57606a")
    out = [
        f'<section class="verdict" style="--vc:{color};--vbg:{VERDICT_BG.get(label, "#f6f8fa")}">',
        f'<h3 style="margin-top:0">{esc(title)} <span class="badge big verdict-label" '
        f'data-label="{esc(label)}">{esc(label)}</span></h3>',
        '<p class="muted small">Verdicts are heuristics built from thresholds on the metrics '
        "below; read the reasons, not just the label.</p>",
    ]
    reasons = v.get("reasons") or []
    if reasons:
        rows = []
        for r in reasons:
            level = str(r.get("level") or "")
            lc = VERDICT_COLORS.get(level, "#57606a")
            badge = (
                f'<span class="level" style="background:{lc}">{esc(level)}</span>' if level else ""
            )
            rows.append(
                (
                    f'<td class="mono">{badge}{esc(r.get("id", ""))}</td>',
                    f'<td class="mono">{esc(r.get("metric", ""))}</td>',
                    _num(r.get("value"), path=r.get("metric") or None),
                    _num(r.get("threshold")),
                    f"<td>{esc(r.get('message', ''))}</td>",
                )
            )
        head = ["id", "metric", "value", "threshold", "message"]
        out.append(_table(head, rows, "wide reasons"))
    else:
        out.append("<p>No heuristic fired.</p>")
    cmd = v.get("suggested_command")
    if cmd:
        out.append(f'<p class="small muted">Suggested next step:</p><pre>{esc(cmd)}</pre>')
    out.append("</section>")
    return "".join(out)


def _verdict(report: dict) -> str:
    v = report.get("verdict")
    if not v:
        return "<h2>Verdict</h2><p>No verdict in this report.</p>"
    out = ["<h2>Verdict</h2>", _verdict_block(v, "SFT checkpoint")]
    if v.get("candidate"):
        out.append(_verdict_block(v["candidate"], "Candidate"))
    return "".join(out)


def _comparison(report: dict) -> str:
    comp = report.get("comparison")
    if not comp:
        return ""
    rows = []
    for c in comp:
        s, cand = _finite(c.get("sft")), _finite(c.get("candidate"))
        arrow = DASH if s is None or cand is None else "↑" if cand > s else "↓" if cand < s else "="
        improved = c.get("improved")
        if improved is True:
            mark = '<span class="better">✓ improved</span>'
        elif improved is False and arrow not in ("=", DASH):
            mark = '<span class="worse">✗ worse</span>'
        else:
            mark = '<span class="same">no change</span>'
        label = c.get("label") or c.get("metric", "")
        after = c.get("candidate_metric")
        rows.append(
            (
                f"<td>{esc(label)}<br>{_path(c.get('metric', ''))}"
                + (f"; {_path(after)}" if after else "")
                + "</td>",
                _num(c.get("sft"), path=c.get("metric") or None),
                _num(c.get("candidate"), path=after),
                f'<td class="num">{arrow}</td>',
                f"<td>{esc(c.get('better') or '')} is better</td>",
                f"<td>{mark}</td>",
            )
        )
    head = ["metric", "SFT", "candidate", "change", "direction", ""]
    return "<h2>Before / after: SFT vs candidate</h2>" + _table(head, rows, "wide comparison")


def _output(report: dict) -> str:
    out = ["<h2>Output space</h2>"]
    output = report.get("output")
    if not output:
        out.append(
            '<p class="not-measured">Output-space metrics: <strong>not measured '
            "(--weights-only)</strong>.</p>"
        )
        return "".join(out)
    inputs = report.get("inputs") or {}
    if inputs.get("calib"):
        out.append(
            f'<p class="muted small">On calibration set {esc(inputs["calib"])}; '
            f"samples {fmt(inputs.get('samples'))}, up to {fmt(inputs.get('max_tokens'))} "
            "tokens each.</p>"
        )
    rows = []
    for name, d, path in (
        ("base", output.get("base"), ("output", "base")),
        ("sft", output, ("output",)),
        ("candidate", output.get("candidate"), ("output", "candidate")),
    ):
        if not d:
            continue
        rows.append(
            [_row_head(name, path)]
            + [_num(d.get(k), path=(*path, k) if _has(d, k) else None) for k, _ in OUTPUT_KEYS]
        )
    head = ["model · gate path"] + [_head(h, k) for k, h in OUTPUT_KEYS]
    out.append(_table(head, rows, "wide output"))
    svg = entropy_histogram_svg(output)
    if svg:
        out.append(
            f"<figure>{svg}<figcaption>Share of calibration tokens per entropy bin; dashed "
            "lines mark each model's mean entropy. A mass piled up near 0 nats means the model "
            "is near-deterministic on these prompts. Gate paths: "
            f"{_path('output.entropy_hist.counts[i]')} (bin edges {_path('…edges[i]')}; "
            f"BASE's under {_path('output.base')}, the candidate's under "
            f"{_path('output.candidate')}).</figcaption></figure>"
        )
    return "".join(out)


def _weights(report: dict) -> str:
    w = report.get("weights")
    out = ["<h2>Weight space: drift from base</h2>"]
    if not w:
        out.append("<p>Weight statistics: not measured.</p>")
        return "".join(out)
    cand = w.get("candidate") or None
    # summary
    overall = [("sft", w, ("weights", "overall"))]
    if cand:
        overall.append(("candidate", cand, ("weights", "candidate", "overall")))
    rows = [
        [_row_head(name, path)]
        + [_num((d.get("overall") or {}).get(k), path=(*path, k)) for k in STAT_KEYS]
        for name, d, path in overall
    ]
    head = ["overall vs base · gate path"]
    head += [_head(esc(schema_label("weights", "overall", k) or k), k) for k in STAT_KEYS]
    out.append(_table(head, rows, "overall"))
    if w.get("drift_max_tensor"):
        out.append(
            f'<p class="small">Largest relative drift: <span class="mono">'
            f"{esc(w['drift_max_tensor'])}</span> {_path('weights.drift_max_tensor')} "
            f'(<span data-path="weights.drift_max">{fmt(w.get("drift_max"))}</span> '
            f"{_path('weights.drift_max')}).</p>"
        )
    # heatmaps, sharing one colour scale
    cells = _layer_cells(w.get("layer_modules"))
    ccells = _layer_cells(cand.get("layer_modules")) if cand else {}
    if cells:
        layers = sorted({k[0] for k in cells} | {k[0] for k in ccells})
        columns = _module_columns([k[1] for k in cells] + [k[1] for k in ccells])
        scale = ColorScale([c.get("rel_drift") for c in (*cells.values(), *ccells.values())])
        svgs = [heatmap_svg("drift-heatmap", cells, layers, columns, scale, "SFT vs base")]
        if ccells:
            svgs.append(
                heatmap_svg(
                    "drift-heatmap-candidate",
                    ccells,
                    layers,
                    columns,
                    scale,
                    "Candidate vs base (same colour scale)",
                    ("weights", "candidate"),
                )
            )
        out.append("<h3>Relative drift ‖Δ‖/‖θ<sub>base</sub>‖ per layer × module</h3>")
        out.append(
            '<div class="plots">' + "".join(f"<figure>{s}</figure>" for s in svgs) + "</div>"
        )
        out.append(
            '<p class="small muted">Gate path of a cell: '
            + _path(f"weights.layer_modules{CELL}.rel_drift")
            + " (the candidate's: "
            + _path(f"weights.candidate.layer_modules{CELL}.rel_drift")
            + ").</p>"
        )
    # per-layer bars
    layers_d = w.get("layers") or {}
    keys = sorted((k for k in layers_d if str(k).lstrip("-").isdigit()), key=int)
    if keys:
        series = [
            ("sft", SERIES_COLORS["sft"], [(layers_d[k] or {}).get("rel_drift") for k in keys])
        ]
        cl = (cand or {}).get("layers") or {}
        if cl:
            series.append(
                (
                    "candidate",
                    SERIES_COLORS["candidate"],
                    [(cl.get(k) or {}).get("rel_drift") for k in keys],
                )
            )
        out.append("<h3>Relative drift per layer</h3>")
        out.append(
            "<figure>"
            + bar_chart_svg(
                "drift-layers",
                keys,
                series,
                title="Relative drift per layer (vs base)",
                x_label="layer",
                y_label="rel_drift",
                height=260,
                tip="layer {cat} · {series} · rel_drift {value}",
            )
            + "<figcaption>Gate paths: "
            + _path(f"weights.layers{LAYER}.rel_drift")
            + ", the candidate's "
            + _path(f"weights.candidate.layers{LAYER}.rel_drift")
            + ".</figcaption></figure>"
        )
    # per-module unit drift
    units = w.get("units")
    if units:
        keys = ("count", "p50", "p90", "p99", "max")
        rows = [
            [f'<td class="mono">{esc(m)}<br>{_path(("weights", "units", m))}</td>']
            + [_num(u.get(k), path=("weights", "units", m, k)) for k in keys]
            for m, u in sorted(units.items(), key=lambda kv: _module_rank(kv[0]))
        ]
        out.append("<h3>Per-unit drift by module kind</h3>")
        head = ["module · gate path"] + [_head("units" if k == "count" else k, k) for k in keys]
        out.append(_table(head, rows, "unit-drift"))
    out.append(_top_tensors(w, cand))
    return "".join(out)


def _module_rank(m: str) -> tuple[int, str]:
    return (MODULE_ORDER.index(m) if m in MODULE_ORDER else len(MODULE_ORDER), m)


def _top_tensors(w: dict, cand: dict | None) -> str:
    tensors = w.get("tensors") or {}
    if not tensors:
        return ""

    def key(item: tuple[str, dict]) -> float:
        v = _finite((item[1] or {}).get("rel_drift"))
        return -v if v is not None else math.inf

    top = sorted(tensors.items(), key=key)[:TOP_TENSORS]
    ct = (cand or {}).get("tensors") or {}
    cols = ["rel_drift", "cosine", "kurtosis", "top_share", "max_over_std"]
    rows = []
    for i, (name, t) in enumerate(top, 1):
        t = t or {}
        at = ("weights", "tensors", name)
        row = [
            f'<td class="num muted">{i}</td>',
            f'<td class="mono name">{esc(name)}</td>',
            _num(t.get("numel"), path=(*at, "numel")),
        ] + [_num(t.get(k), path=(*at, k)) for k in cols]
        if ct:
            where = ("weights", "candidate", "tensors", name, "rel_drift")
            row.append(_num((ct.get(name) or {}).get("rel_drift"), path=where))
        rows.append(row)
    head = ["#", "tensor", _head("numel", "numel"), *(_head(k, k) for k in cols)]
    if ct:
        head.append(f"candidate rel_drift<br>{_path(f'weights.candidate.tensors{TENSOR}')}")
    n = min(TOP_TENSORS, len(tensors))
    return (
        f"<h3>Top {n} of {len(tensors):,} tensors by relative drift</h3>"
        '<p class="small muted">Gate path: '
        + _path(f"weights.tensors{TENSOR}")
        + " + column key.</p>"
        + _table(head, rows, "wide tensors")
    )


def _units(report: dict) -> str:
    units = report.get("units")
    if not units:
        return ""
    taus = [_tau(t) for t in units.get("taus") or []]
    if not taus:
        taus = [_tau(t) for t in (units.get("dormant") or {})]

    def dormant(d: dict | None, tau: str) -> object:
        for k, v in (d or {}).items():
            if _tau(k) == tau:
                return v
        return None

    out = ["<h2>Unit activity</h2>"]
    rows = []
    keys = {t: next((k for k in units.get("dormant") or {} if _tau(k) == t), t) for t in taus}
    for name, d, path in (
        ("base", units.get("base"), ("units", "base")),
        ("sft", units, ("units",)),
        ("candidate", units.get("candidate"), ("units", "candidate")),
    ):
        if not d:
            continue
        rows.append(
            [_row_head(name, path)]
            + [_num(dormant(d.get("dormant"), t), path=(*path, "dormant", keys[t])) for t in taus]
            + [_num(d.get("saturated"), path=(*path, "saturated"))]
        )
    head = [_head(f"dormant τ={t}", ("dormant", keys[t])) for t in taus]
    head += [_head("saturated", "saturated")]
    out.append(
        '<p class="muted small">Share of units whose normalised mean activation is below τ '
        "(dormant) or pinned at saturation, on the calibration set.</p>"
    )
    out.append(_table(["model · gate path", *head], rows, "units-summary"))
    layers = units.get("layers") or []
    if layers:
        pkeys = ("p1", "p5", "p50", "p95", "p99")
        lrows = []
        order = sorted(
            range(len(layers)),
            key=lambda i: (
                _sort_int(layers[i].get("layer")),
                _module_rank(str(layers[i].get("module"))),
            ),
        )
        for i in order:
            r, at = layers[i], ("units", "layers", i)
            pct = r.get("percentiles") or {}
            lrows.append(
                [
                    f'<td class="num">{_path(at)}</td>',
                    _num(r.get("layer")),
                    f'<td class="mono">{esc(r.get("module", ""))}</td>',
                    _num(r.get("units"), path=(*at, "units")),
                ]
                + [_num(dormant(r.get("dormant"), t), path=(*at, "dormant", keys[t])) for t in taus]
                + [_num(r.get("saturated"), path=(*at, "saturated"))]
                + [_num(pct.get(k), path=(*at, "percentiles", k)) for k in pkeys]
            )
        phead = [_head(k, ("percentiles", k)) for k in pkeys]
        table = _table(
            ["gate path", "layer", "module", _head("units", "units"), *head, *phead],
            lrows,
            "wide units-layers",
        )
        opened = " open" if len(lrows) <= 48 else ""
        out.append(
            f"<details{opened}><summary>Per layer × module (SFT), {len(lrows)} rows; "
            "percentiles of the normalised activation</summary>" + table + "</details>"
        )
    return "".join(out)


def _sort_int(x: object) -> int:
    try:
        return int(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 1 << 30


def _sharpness(report: dict) -> str:
    s = report.get("sharpness")
    if not s:
        return ""
    keys = [("SFT", "sft"), ("base", "base"), ("ratio SFT ÷ base", "ratio")]
    if s.get("candidate") is not None:
        keys += [("candidate", "candidate"), ("ratio candidate ÷ base", "candidate_ratio")]
    keys += [("σ (relative)", "sigma_rel"), ("draws (each ±u)", "draws"), ("seed", "seed")]
    nulls = report.get("null_reasons") or {}
    body = "".join(
        f"<tr><th>{esc(name)}<br>{_path(('sharpness', k))}</th>"
        + _num(s.get(k), path=("sharpness", k))
        + "</tr>"
        for name, k in keys
    )
    why = [
        f'<p class="small">{_path(f"sharpness.{k}")} is null: {esc(nulls[f"sharpness.{k}"])}</p>'
        for k in ("ratio", "candidate_ratio")
        if s.get(k) is None and f"sharpness.{k}" in nulls
    ]
    return (
        "<h2>Sharpness</h2>"
        '<p class="muted small">Mean loss increase under random relative weight perturbations, '
        "each direction u probed both ways: (L(θ+u) + L(θ−u))/2 − L(θ) (higher = sharper "
        "minimum).</p>"
        f'<table class="kv sharpness">{body}</table>' + "".join(why)
    )


def render_html(report: dict) -> str:
    """The whole report as one self-contained HTML page (inline CSS and SVG, no scripts)."""
    inputs = report.get("inputs") or {}
    name = str(inputs.get("sft") or "").rstrip("/").split("/")[-1]
    title = "rejuv diagnose" + (f" · {name}" if name else "")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>",
        _header(report),
        _verdict(report),
        _comparison(report),
        _output(report),
        _weights(report),
        _units(report),
        _sharpness(report),
        f"<footer>{esc(FOOTER)}</footer>",
        "</main></body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"
