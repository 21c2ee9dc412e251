"""Colour scale, axes and the layer × module drift heatmap, drawn as inline SVG."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from rejuv_cli.report.html.cells import MODULE_ORDER, _finite, esc, fmt
from rejuv_cli.report.paths import format_path

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
