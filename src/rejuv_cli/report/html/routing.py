"""The routing section (mixture-of-experts models): model-level table, a layer × expert map of
each model's expert shares, and per-layer bars of the dead-expert share and the usage KL."""

from __future__ import annotations

from rejuv_cli.report.columns import ROUTING_COLS, ROUTING_TERMS
from rejuv_cli.report.html.bars import bar_chart_svg
from rejuv_cli.report.html.cells import (
    SERIES_COLORS,
    _has,
    _head,
    _legend,
    _num,
    _path,
    _row_head,
    _table,
    esc,
    fmt,
    shown,
)
from rejuv_cli.report.html.charts import RAMP, ColorScale, _css_rgb, _svg_open
from rejuv_cli.report.paths import format_path, model_blocks

N_PATH = "[N]"  # placeholder: a layer's index in `layers`


def _routing(report: dict) -> str:
    ro = report.get("routing")
    if not ro:
        return ""
    blocks = [(name, path, b) for name, path, b in model_blocks("routing", ro) if b]
    out = [
        "<h2>Routing (mixture of experts)</h2>",
        '<p class="muted small">Which experts each MoE layer\'s router sends the real '
        f"calibration tokens to (top-{esc(ro.get('top_k'))} per token; router "
        f'<span class="mono">{esc(ro.get("router"))}</span>). An expert is dead when its share '
        f"of the layer's routed (token, slot) pairs is below {fmt(ro.get('dead_below'))} × the "
        "uniform share 1/E. Usage KL: KL(model's expert usage ‖ BASE's) per layer, "
        f"{fmt(ro.get('kl_pseudocount'))} added to every count.</p>",
    ]
    rows = [
        [_row_head(name, path)]
        + [_num(b.get(key), path=(*path, key) if _has(b, key) else None) for _, key in ROUTING_COLS]
        for name, path, b in blocks
    ]
    out.append(_table(["model · gate path", *(_head(t, k) for t, k in ROUTING_COLS)], rows,
                      "routing-summary"))  # fmt: skip
    out.append(_legend(*ROUTING_TERMS))
    layers = ro.get("layers") or []
    if not layers:
        return "".join(out)
    scale = ColorScale(x for _, _, b in blocks for row in b.get("layers") or []
                       for x in row.get("share") or [])  # fmt: skip
    maps = [
        share_map_svg(
            f"routing-share{'' if name == 'sft' else '-' + name}",
            b,
            path,
            scale,
            f"{name}: expert share per layer",
        )  # fmt: skip
        for name, path, b in blocks
    ]
    out.append("<h3>Expert share per layer × expert</h3>")
    out.append('<div class="plots">' + "".join(f"<figure>{s}</figure>" for s in maps) + "</div>")
    out.append(
        '<p class="small muted">Dead experts are outlined. Gate path of a cell: '
        + _path(f"routing.layers{N_PATH}.share[EXPERT]")
        + " (BASE's: "
        + _path(f"routing.base.layers{N_PATH}.share[EXPERT]")
        + "; the candidate's under "
        + _path("routing.candidate")
        + "); N is the row's index among the MoE layers.</p>"
    )
    cats = [str(row.get("layer")) for row in layers]
    dead = [(name, SERIES_COLORS[name], [r.get("dead_share") for r in b.get("layers") or []])
            for name, _, b in blocks]  # fmt: skip
    kl = [(name, SERIES_COLORS[name], [r.get("kl_to_base") for r in b.get("layers") or []])
          for name, _, b in blocks if name != "base"]  # fmt: skip
    charts = [
        ("routing-dead", dead, "Dead-expert share per MoE layer", "dead_share", "dead_share"),
        ("routing-kl", kl, "Usage KL to BASE per MoE layer (nats)", "KL (nats)", "kl_to_base"),
    ]
    for plot_id, series, title, y_label, key in charts:
        out.append(
            "<figure>"
            + bar_chart_svg(
                plot_id,
                cats,
                series,
                title=title,
                x_label="layer",
                y_label=y_label,
                height=240,
                tip="layer {cat} · {series} · " + key + " {value}",
            )  # fmt: skip
            + "<figcaption>Gate paths: "
            + _path(f"routing.layers{N_PATH}.{key}")
            + ", "
            + _path(f"routing.candidate.layers{N_PATH}.{key}")
            + (", " + _path(f"routing.base.layers{N_PATH}.{key}") if key == "dead_share" else "")
            + ".</figcaption></figure>"
        )
    return "".join(out)


def share_map_svg(plot_id: str, block: dict, path: tuple, scale: ColorScale, title: str) -> str:
    """MoE layers (rows) × experts (columns) coloured by each expert's share of the routed
    pairs; dead experts outlined. Each cell carries its gate path."""
    layers = block.get("layers") or []
    n_exp = max((len(r.get("share") or []) for r in layers), default=1)
    cw = max(3, min(40, 480 // max(n_exp, 1)))
    ch = max(4, min(24, 480 // max(len(layers), 1)))
    left, top = 56, 40
    grid_w, grid_h = cw * n_exp, ch * len(layers)
    width = max(left + grid_w + 24, 300, round(left + 7.5 * len(title)))  # the title fits
    height = top + grid_h + 64
    out = [_svg_open(plot_id, width, height, title)]
    out.append(f'<text x="{left}" y="18" font-size="13" font-weight="600">{esc(title)}</text>')
    out.append(f'<text x="{left + grid_w / 2:.1f}" y="{top - 6}" font-size="12" '
               'text-anchor="middle">expert</text>')  # fmt: skip
    out.append(f'<text x="14" y="{top + grid_h / 2:.1f}" font-size="12" text-anchor="middle" '
               f'transform="rotate(-90 14 {top + grid_h / 2:.1f})">layer</text>')  # fmt: skip
    label_every = max(1, -(-12 // ch))
    for n, row in enumerate(layers):
        y = top + n * ch
        if n % label_every == 0:
            out.append(f'<text x="{left - 6}" y="{y + ch / 2 + 4:.1f}" font-size="11" '
                       f'text-anchor="end">{esc(row.get("layer"))}</text>')  # fmt: skip
        dead = set(row.get("dead") or [])
        for e, share in enumerate(row.get("share") or []):
            color = scale.rgb(share)
            where = format_path((*path, "layers", n, "share", e))
            tip = (f"layer {row.get('layer')} · expert {e} · share "
                   f"{shown(share, where)}{' · dead' if e in dead else ''}")  # fmt: skip
            cls = "cell dead" if e in dead else "cell"
            fill = _css_rgb(color) if color else "#e9ecef"
            stroke = ' stroke="#1f2328" stroke-width="1.5"' if e in dead else ""
            out.append(
                f'<rect class="{cls}" data-layer="{esc(row.get("layer"))}" data-expert="{e}" '
                f'data-path="{esc(where)}" x="{left + e * cw}" y="{y}" width="{cw - 1}" '
                f'height="{ch - 1}" fill="{fill}"{stroke}><title>{esc(tip)}</title></rect>'
            )
    ly, lw = top + grid_h + 18, min(max(grid_w, 160), 320)
    grad = f"{esc(plot_id)}-grad"
    stops = "".join(f'<stop offset="{k / (len(RAMP) - 1):.3f}" stop-color="{_css_rgb(c)}"/>'
                    for k, c in enumerate(RAMP))  # fmt: skip
    out.append(f'<defs><linearGradient id="{grad}">{stops}</linearGradient></defs>')
    out.append(f'<rect x="{left}" y="{ly}" width="{lw}" height="10" fill="url(#{grad})" '
               'stroke="#adb5bd" stroke-width="0.5"/>')  # fmt: skip
    a_share = (*path, "layers", 0, "share", 0)  # how a share is shown (a percentage)
    lo, hi = shown(scale.lo, a_share), shown(scale.hi, a_share)
    out.append(
        f'<text x="{left}" y="{ly + 24}" font-size="11">{lo}</text>'
        f'<text x="{left + lw}" y="{ly + 24}" font-size="11" text-anchor="end">{hi}</text>'
        f'<text x="{left + lw / 2:.1f}" y="{ly + 24}" font-size="11" text-anchor="middle" '
        'fill="#656d76">share</text>'
    )
    out.append("</svg>")
    return "".join(out)
