"""Grouped bar charts as inline SVG: drift per layer and the entropy histograms."""

from __future__ import annotations

import math
from collections.abc import Sequence

from rejuv_cli.report.html.cells import SERIES_COLORS, _finite, esc, fmt
from rejuv_cli.report.html.charts import _legend_items, _svg_open, _tick, nice_ticks


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
