"""The weight-space section: summary, drift heatmaps, per-layer bars, unit drift, top tensors."""

from __future__ import annotations

import math

from rejuv_cli.report.columns import UNIT_DRIFT_COLS, UNIT_DRIFT_TERMS, WEIGHT_COLS, WEIGHT_TERMS
from rejuv_cli.report.html.bars import bar_chart_svg
from rejuv_cli.report.html.cells import (
    CELL,
    LAYER,
    SERIES_COLORS,
    STAT_KEYS,
    TENSOR,
    TOP_TENSORS,
    _finite,
    _head,
    _legend,
    _module_rank,
    _num,
    _path,
    _row_head,
    _table,
    esc,
    shown,
)
from rejuv_cli.report.html.charts import ColorScale, _layer_cells, _module_columns, heatmap_svg

LABELS = {key: label for label, key in WEIGHT_COLS}


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
    head += [_head(LABELS[k], k) for k in STAT_KEYS]
    out.append(_table(head, rows, "overall"))
    out.append(_legend(*WEIGHT_TERMS))
    if w.get("drift_max_tensor"):
        out.append(
            f'<p class="small">Largest relative drift: <span class="mono">'
            f"{esc(w['drift_max_tensor'])}</span> {_path('weights.drift_max_tensor')} "
            f'(<span data-path="weights.drift_max">{shown(w.get("drift_max"), "weights.drift_max")}'
            f"</span>, relative {_path('weights.drift_max')}).</p>"
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
        rows = [
            [f'<td class="mono">{esc(m)}<br>{_path(("weights", "units", m))}</td>']
            + [_num(u.get(k), path=("weights", "units", m, k)) for _, k in UNIT_DRIFT_COLS]
            for m, u in sorted(units.items(), key=lambda kv: _module_rank(kv[0]))
        ]
        out.append("<h3>Per-unit drift score s<sub>j</sub> by module kind</h3>")
        head = ["module · gate path"]
        head += [_head(label, k, "s_j" if k != "count" else None) for label, k in UNIT_DRIFT_COLS]
        out.append(_table(head, rows, "unit-drift"))
        out.append(_legend(*UNIT_DRIFT_TERMS))
    out.append(_top_tensors(w, cand))
    return "".join(out)


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
    head = ["#", "tensor", _head("elements", "numel"), *(_head(LABELS[k], k) for k in cols)]
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
