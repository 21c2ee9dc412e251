"""`rejuv sweep --markdown FILE`: the sweep's table, its recommendation and the fuse command, as
a short GitHub-flavoured markdown summary for CI (report/markdown.py's pieces). No torch.

The table has the HTML page's columns and heads (every measured column, shares as %), the
recommended α marked as the terminal marks it (◀); the terms are defined in a folded legend.
"""

from __future__ import annotations

from rejuv_cli.report.columns import sweep_columns, sweep_legend, sweep_rows
from rejuv_cli.report.html.sweep import HTML_HEADS
from rejuv_cli.report.markdown import code, fenced, table, text
from rejuv_cli.report.numbers import number, shown_at
from rejuv_cli.report.terms import NO_SURGERY_NEXT


def sweep_markdown(report: dict) -> str:
    inputs, rec = report["inputs"], report["recommendation"]
    verdict = f"α = {rec['alpha']:g}" if rec["alpha"] is not None else "no surgery"
    short = sweep_columns(report)
    cols = [(key, HTML_HEADS.get(key, head)) for key, head in short]
    rows = []
    for label, row in sweep_rows(report):
        chosen = row.get("alpha") is not None and row["alpha"] == rec["alpha"]
        name = f"**{label} ◀**" if chosen else label
        rows.append([name, *(shown_at(("output", key), row.get(key)) for key, _ in cols)])
    parts = [
        f"### rejuv sweep: {verdict}",
        f"SFT {code(inputs['sft'])} vs BASE {code(inputs['base'])}: "
        f"{number(inputs['samples'])} examples of {code(inputs['calib'])}, "
        f"{number(inputs['response_tokens'])} response tokens.",
        table(["model", *(text(head) for _, head in cols)], rows),
        f"<details><summary>Terms</summary>\n\n{text(sweep_legend(short, dict(cols)))}\n\n"
        "</details>",
        f"**Recommendation** (a heuristic): {text(rec['reason'])}",
    ]
    if rec.get("fuse_command"):
        parts += ["**Next**:", fenced(rec["fuse_command"], "bash")]
    else:
        parts.append(f"**Next**: {text(NO_SURGERY_NEXT)}.")
    if report.get("out"):
        parts.append(f"Wrote {code(report['out']['path'])} (α = {report['out']['alpha']:g}).")
    return "\n\n".join(parts) + "\n"
