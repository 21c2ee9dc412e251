"""The `rejuv sweep --html` page: the trade-off plotted, the table, the recommendation.

One self-contained page like the diagnose report (inline CSS and SVG, no scripts). The plot
puts skill retained on x (accuracy retained when --generate measured it) against entropy and,
with --generate, the learnable share on y: one labelled point per α, BASE and SFT as
references, the recommended α ringed, the --min-skill threshold as a dashed line.
"""

from __future__ import annotations

from rejuv_cli.report.columns import SWEEP_TERMS, sweep_columns, sweep_legend, sweep_rows
from rejuv_cli.report.html.cells import SERIES_COLORS, _finite, _table, esc, fmt, shown
from rejuv_cli.report.html.charts import _svg_open, _tick, nice_ticks
from rejuv_cli.report.html.style import CSS
from rejuv_cli.report.terms import NO_SURGERY_NEXT, TERMS

RECOMMENDED = "#2b8a3e"
HTML_HEADS = {"entropy_mean": "entropy", "kl_mean": "KL to BASE", "skill_retained": "skill kept",
              "accuracy": "accuracy", "learnable_share": "learnable share"}  # fmt: skip


def render_sweep_html(report: dict) -> str:
    inputs, rec = report.get("inputs") or {}, report.get("recommendation") or {}
    skill = rec.get("skill_measure") or "skill_retained"
    panels = [("entropy_mean", "entropy of the response tokens (nats)")]
    if (report.get("settings") or {}).get("generate"):
        panels.append(("learnable_share", "learnable share (mixed-outcome prompts)"))
    plots = "".join(scatter_svg(report, skill, key, label, f"sweep-{key}") for key, label in panels)
    name = str(inputs.get("sft") or "").rstrip("/").split("/")[-1]
    head = [("base", inputs.get("base")), ("sft", inputs.get("sft")),
            ("calibration", inputs.get("calib")), ("examples", inputs.get("samples")),
            ("response tokens", inputs.get("response_tokens")),
            ("device", inputs.get("device"))]  # fmt: skip
    header = "".join(f'<tr><th>{esc(k)}</th><td class="mono">{fmt(v)}</td></tr>' for k, v in head)
    short = sweep_columns(report)
    cols = [(k, HTML_HEADS.get(k, h)) for k, h in short]
    rows = []
    for label, row in sweep_rows(report):
        chosen = row.get("alpha") is not None and row["alpha"] == rec.get("alpha")
        cells = [f"<th>{esc(label)}{' ◀' if chosen else ''}</th>"]
        cells += [f'<td class="num">{shown(row.get(k), ("output", k))}</td>' for k, _ in cols]
        rows.append(cells)
    heads = []
    for (_, head), (_, abbr) in zip(cols, short, strict=True):
        term = SWEEP_TERMS.get(abbr)
        heads.append(f'<abbr title="{esc(TERMS[term])}">{esc(head)}</abbr>' if term else esc(head))
    legend = sweep_legend(short, dict(cols))
    table = _table(["model", *heads], rows) + f'<p class="small muted legend">{esc(legend)}</p>'
    command = rec.get("fuse_command")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc('rejuv sweep' + (f' · {name}' if name else ''))}</title>",
        f"<style>{CSS}</style></head><body><main>",
        f'<h1>rejuv sweep</h1><table class="kv">{header}</table>',
        f"<section><h2>Recommendation</h2><p>{esc(rec.get('reason') or '')}</p>"
        + (
            f'<p class="next">Next step:</p><pre class="mono">{esc(command)}</pre>'
            if command
            else f'<p class="next">Next step: {esc(NO_SURGERY_NEXT)}.</p>'
        )
        + "<p>The rule is a heuristic (README, “Choosing α”); it has not yet been tested against "
        "RL outcomes.</p></section>",
        f"<section><h2>Trade-off</h2>{plots}</section>",
        f"<section><h2>Table</h2>{table}</section>",
        f"<footer>{esc(report.get('tool') or 'rejuv')} · schema "
        f"{esc(report.get('schema_version'))}</footer>",
        "</main></body></html>",
    ]
    return "\n".join(parts) + "\n"


def scatter_svg(report: dict, x_key: str, y_key: str, y_label: str, plot_id: str,
                width: int = 640, height: int = 360) -> str:  # fmt: skip
    """One labelled point per α at (x_key, y_key), BASE and SFT in their series colours."""
    rec = report.get("recommendation") or {}
    points = [(f"{r['alpha']:g}", r, "#1c7ed6") for r in report.get("rows") or []]
    points += [("BASE", report.get("base") or {}, SERIES_COLORS["base"]),
               ("SFT", report.get("sft") or {}, SERIES_COLORS["sft"])]  # fmt: skip
    xy = [(label, _finite(r.get(x_key)), _finite(r.get(y_key)), color, r)
          for label, r, color in points]  # fmt: skip
    xy = [p for p in xy if p[1] is not None and p[2] is not None]
    x_title = {"accuracy_retained": "accuracy retained", "skill_retained": "skill retained"}.get(
        x_key, x_key)  # fmt: skip
    title = f"{y_label} against {x_title}"
    left, right, top, bottom = 60, 120, 48, 48  # room for point labels (right, top)
    pw, ph = width - left - right, height - top - bottom
    out = [_svg_open(plot_id, width, height, title)]
    out.append(f'<text x="{left}" y="18" font-size="13" font-weight="600">{esc(title)}</text>')
    if not xy:
        out.append(f'<text x="{left}" y="{top + 20}" font-size="12">not measured</text></svg>')
        return "".join(out)
    xs, ys = [p[1] for p in xy], [p[2] for p in xy]
    min_skill = _finite(rec.get("min_skill"))
    x_ticks = nice_ticks(min(xs + [0.0]), max(xs + [1.0]), 5)
    y_ticks = nice_ticks(min(ys + [0.0]), max(ys) if max(ys) > 0 else 1.0, 5)
    x0, x1 = min(x_ticks[0], min(xs)), max(x_ticks[-1], max(xs))
    y0, y1 = min(y_ticks[0], min(ys)), max(y_ticks[-1], max(ys))

    def sx(v: float) -> float:
        return left + pw * (v - x0) / ((x1 - x0) or 1.0)

    def sy(v: float) -> float:
        return top + ph - ph * (v - y0) / ((y1 - y0) or 1.0)

    for t in x_ticks:
        out.append(f'<line x1="{sx(t):.1f}" y1="{top}" x2="{sx(t):.1f}" y2="{top + ph}" '
                   f'stroke="#e9ecef"/><text x="{sx(t):.1f}" y="{top + ph + 16}" '
                   f'font-size="11" text-anchor="middle">{_tick(t)}</text>')  # fmt: skip
    for t in y_ticks:
        out.append(f'<line x1="{left}" y1="{sy(t):.1f}" x2="{left + pw}" y2="{sy(t):.1f}" '
                   f'stroke="#e9ecef"/><text x="{left - 6}" y="{sy(t) + 4:.1f}" font-size="11" '
                   f'text-anchor="end">{_tick(t)}</text>')  # fmt: skip
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 8}" font-size="12" '
               f'text-anchor="middle">{esc(x_title)} (1 = SFT, 0 = BASE)</text>')  # fmt: skip
    if min_skill is not None and x0 <= min_skill <= x1:
        out.append(f'<line class="threshold" x1="{sx(min_skill):.1f}" y1="{top}" '
                   f'x2="{sx(min_skill):.1f}" y2="{top + ph}" stroke="#868e96" '
                   f'stroke-dasharray="4 3"><title>--min-skill {min_skill:g}</title>'
                   "</line>")  # fmt: skip
    chain = [p for p in xy if p[4] in (report.get("rows") or [])]
    if len(chain) > 1:
        path = " ".join(f"{sx(p[1]):.1f},{sy(p[2]):.1f}" for p in chain)
        out.append(f'<polyline points="{path}" fill="none" stroke="#a5d8ff"/>')
    for label, x, y, color, row in xy:
        chosen = row.get("alpha") is not None and row.get("alpha") == rec.get("alpha") \
            and row in (report.get("rows") or [])  # fmt: skip
        tip = f"{'α = ' + label if label[0].isdigit() else label}: {x_title} {fmt(x)}, " \
              f"{y_key} {fmt(y)}"  # fmt: skip
        if chosen:
            out.append(f'<circle class="recommended" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="9" '
                       f'fill="none" stroke="{RECOMMENDED}" stroke-width="2.5"/>')  # fmt: skip
        out.append(f'<circle class="point" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4.5" '
                   f'fill="{color}"><title>{esc(tip)}</title></circle>'
                   f'<text x="{sx(x) + 7:.1f}" y="{sy(y) - 7:.1f}" font-size="11">'
                   f"{esc(label)}{' (recommended)' if chosen else ''}</text>")  # fmt: skip
    out.append("</svg>")
    return "".join(out)
