"""Terminal rendering of a `rejuv sweep` report (stderr): one row per model, the recommendation.
No torch.

Numbers are formatted as diagnose formats them (report/numbers.py: shares as percentages); the
table shows every value whole at the console's width (report/fit.py), else one line per model.
"""

from __future__ import annotations

from rich.text import Text

from rejuv_cli.report.columns import sweep_columns, sweep_legend, sweep_rows
from rejuv_cli.report.fit import Col, fit
from rejuv_cli.report.numbers import shown_at
from rejuv_cli.report.terms import NO_SURGERY_NEXT


def columns(report: dict, console: bool = False) -> tuple[tuple[str, str], ...]:
    """The columns measured in this report (report/columns.sweep_columns)."""
    return sweep_columns(report, console)


def cell(key: str, v) -> str:
    """A value of the table, formatted as diagnose shows the same output metric."""
    return shown_at(("output", key), v)


def render_sweep(console, report: dict) -> None:
    inputs, rec = report["inputs"], report["recommendation"]
    console.print(f"rejuv sweep: SFT {inputs['sft']} vs BASE {inputs['base']}, "
                  f"{inputs['samples']} examples of {inputs['calib']}, "
                  f"{inputs['response_tokens']:,} response tokens", highlight=False)  # fmt: skip
    cols = columns(report, console=True)
    rows = []
    for label, row in sweep_rows(report):
        chosen = row.get("alpha") is not None and row["alpha"] == rec["alpha"]
        rows.append((f"{label} ◀" if chosen else label, [cell(k, row.get(k)) for k, _ in cols]))
    table = fit(console.width, [Col("model", "left"), *(Col(head) for _, head in cols)],
                [[label, *cells] for label, cells in rows], box=False,
                header_style="bold underline")  # fmt: skip
    if table is not None:
        console.print(table)
    else:  # too narrow for a table: one line per model, each value beside its head
        for label, cells in rows:
            pairs = " ".join(f"{head.replace(' ', '-')}={v}"  # a pair never wraps inside
                             for (_, head), v in zip(cols, cells, strict=True))  # fmt: skip
            console.print(Text(f"{label}: {pairs}"))
    console.print(sweep_legend(cols), style="dim", highlight=False)
    if report["settings"]["generate"]:
        k = report["settings"]["group_size"]
        console.print(f"{inputs['checkable']} checkable examples, k = {k} samples at "
                      "temperature 1", style="dim", highlight=False)  # fmt: skip
    mark = " ◀" if rec["alpha"] is not None else ""
    console.print(f"recommendation{mark} (a heuristic): {rec['reason']}", soft_wrap=True,
                  highlight=False)  # fmt: skip
    if rec["fuse_command"]:
        console.print(f"next: {rec['fuse_command']}", soft_wrap=True, highlight=False)
    else:
        console.print(f"next: {NO_SURGERY_NEXT}", soft_wrap=True, highlight=False)
    if report.get("out"):
        console.print(f"wrote {report['out']['path']} (α = {report['out']['alpha']:g})")
