"""The unit-activity and sharpness sections."""

from __future__ import annotations

from rejuv_cli.report.columns import UNIT_TERMS, dormant_label
from rejuv_cli.report.html.cells import (
    _head,
    _legend,
    _module_rank,
    _num,
    _path,
    _row_head,
    _sort_int,
    _table,
    _tau,
    esc,
)
from rejuv_cli.report.paths import model_blocks


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
    for name, path, d in model_blocks("units", units):
        if not d:
            continue
        rows.append(
            [_row_head(name, path)]
            + [_num(dormant(d.get("dormant"), t), path=(*path, "dormant", keys[t])) for t in taus]
            + [_num(d.get("saturated"), path=(*path, "saturated"))]
        )
    head = [_head(dormant_label(t), ("dormant", keys[t]), "dormant ≤τ") for t in taus]
    head += [_head("saturated", "saturated")]
    out.append(
        '<p class="muted small">Share of units whose ReDo score (mean |activation| relative to '
        "their module's units) is at most τ (dormant), or that are busy and steady "
        "(saturated), on the calibration set.</p>"
    )
    out.append(_table(["model · gate path", *head], rows, "units-summary"))
    out.append(_legend(*UNIT_TERMS))
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
        phead = [_head(f"ReDo {k}", ("percentiles", k), "ReDo") for k in pkeys]
        table = _table(
            ["gate path", "layer", "module", _head("units", "units"), *head, *phead],
            lrows,
            "wide units-layers",
        )
        opened = " open" if len(lrows) <= 48 else ""
        out.append(
            f"<details{opened}><summary>Per layer × module (SFT), {len(lrows)} rows; "
            "percentiles of the ReDo score</summary>" + table + "</details>"
        )
    return "".join(out)


def _sharpness(report: dict) -> str:
    s = report.get("sharpness")
    if not s:
        return ""
    keys = [("SFT (nats)", "sft"), ("base (nats)", "base"), ("ratio SFT ÷ base", "ratio")]
    if s.get("candidate") is not None:
        keys += [("candidate (nats)", "candidate"), ("ratio candidate ÷ base", "candidate_ratio")]
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
        '<p class="muted small">Mean rise of the calibration NLL (nats/token) under random '
        "relative weight perturbations, each direction u probed both ways: "
        "(L(θ+u) + L(θ−u))/2 − L(θ) (higher = sharper minimum); the ratios are over BASE's "
        "(relative).</p>"
        f'<table class="kv sharpness">{body}</table>' + "".join(why)
    )
