"""Page sections: header, verdicts, before/after comparison and output space."""

from __future__ import annotations

from rejuv_cli.report.columns import COMPARISON_TERMS, GENERATION_TERMS, OUTPUT_TERMS
from rejuv_cli.report.html.bars import entropy_histogram_svg
from rejuv_cli.report.html.cells import (
    GENERATION_KEYS,
    OUTPUT_KEYS,
    VERDICT_BG,
    VERDICT_COLORS,
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
from rejuv_cli.report.numbers import BETTER, WORSE, change
from rejuv_cli.report.paths import model_blocks


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
                    f'<td class="num">{shown(r.get("threshold"), r.get("metric") or None)}</td>',
                    f"<td>{esc(r.get('message', ''))}</td>",
                )
            )
        head = ["id", "metric", "value", "threshold", "message"]
        out.append(_table(head, rows, "wide reasons"))
    else:
        out.append("<p>No heuristic fired.</p>")
    cmd = v.get("suggested_command")
    if cmd:
        from rejuv_cli.report.terms import next_step

        why = next_step(label)
        if label == "ok":  # the step is RL as it is; the command (a CI gate) is optional
            out.append(f'<p class="next">Next step: {esc(why)}:</p><pre>{esc(cmd)}</pre>')
        else:
            out.append(f'<p class="next">Suggested next step ({esc(why)}):</p>'
                       f"<pre>{esc(cmd)}</pre>")  # fmt: skip
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
        # the terminal's words for the same thresholds (report/numbers.change)
        verdict = c.get("change") or change(c.get("sft"), c.get("candidate"), c.get("better"))
        cls = {BETTER: "better", WORSE: "worse"}.get(verdict, "same")
        label = c.get("label") or c.get("metric", "")
        after = c.get("candidate_metric")
        rows.append(
            (
                f"<td>{esc(label)}<br>{_path(c.get('metric', ''))}"
                + (f"; {_path(after)}" if after else "")
                + "</td>",
                _num(c.get("sft"), path=c.get("metric") or None),
                _num(c.get("candidate"), path=after),
                f"<td>{esc(c.get('better') or '')} is better</td>",
                f'<td><span class="{cls}">{esc(verdict)}</span></td>',
            )
        )
    head = ["metric · gate paths (SFT; candidate)", "SFT", "candidate", "direction", "change"]
    return (
        "<h2>Before / after: SFT vs candidate</h2>"
        + _table(head, rows, "wide comparison")
        + _legend(*COMPARISON_TERMS)
    )


def _generation(output: dict, gen: dict) -> str:
    """--generate: accuracy and RL-readiness per model, each cell with its gate path."""
    rows = []
    for name, path, d in model_blocks("output", output):
        if d and d.get("accuracy") is not None:
            rows.append([_row_head(name, path)] + [
                _num(d.get(k), path=(*path, k)) for k, _ in GENERATION_KEYS])  # fmt: skip
    head = ["model · gate path"] + [_head(h, k) for k, h in GENERATION_KEYS]
    return (
        "<h3>Generation (--generate)</h3>"
        f'<p class="muted small">{fmt(gen.get("checkable"))} checkable examples; greedy '
        f"accuracy, and pass@1, pass@k and the learnable share (prompts whose samples have "
        f"mixed outcomes: the groups that give GRPO a non-zero advantage) from "
        f"k = {fmt(gen.get('group_size'))} samples at temperature 1, answers checked by the "
        f"{esc(gen.get('checker'))} checker.</p>"
        + _table(head, rows, "wide output")
        + _legend(*GENERATION_TERMS)
    )


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
    for name, path, d in model_blocks("output", output):
        if not d:
            continue
        rows.append(
            [_row_head(name, path)]
            + [_num(d.get(k), path=(*path, k) if _has(d, k) else None) for k, _ in OUTPUT_KEYS]
        )
    head = ["model · gate path"] + [_head(h, k) for k, h in OUTPUT_KEYS]
    out.append(_table(head, rows, "wide output"))
    out.append(_legend(*OUTPUT_TERMS))
    if inputs.get("generation") is not None or output.get("accuracy") is not None:
        out.append(_generation(output, inputs.get("generation") or {}))
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
