"""Terminal rendering of a `rejuv sweep` report (stderr): one row per model, the recommendation.
No torch."""

from __future__ import annotations

from rich.table import Table

# (JSON key of a row, column header); generation columns only when --generate ran.
COLUMNS = (
    ("entropy_mean", "H"),
    ("entropy_ratio", "H/H_base"),
    ("kl_mean", "KL"),
    ("nll_mean", "NLL"),
    ("skill_retained", "skill"),
)
GENERATION_COLUMNS = (
    ("accuracy", "acc"),
    ("accuracy_retained", "acc kept"),
    ("pass_at_1", "pass@1"),
    ("pass_at_k", "pass@k"),
    ("learnable_share", "learn"),
)
LEGEND = ("H: mean entropy of the response tokens (nats); KL: to BASE (nats/token); skill: "
          "share of SFT's NLL gain over BASE kept")  # fmt: skip
GENERATION_LEGEND = ("acc: greedy accuracy; acc kept: share of SFT's accuracy gain over BASE "
                     "kept; learn: share of prompts whose k samples have mixed "
                     "outcomes")  # fmt: skip


def sweep_rows(report: dict) -> list[tuple[str, dict]]:
    """(label, row) for BASE, SFT and each α, in table order."""
    rows = [("BASE", report["base"]), ("SFT", report["sft"])]
    return rows + [(f"α={r['alpha']:g}", r) for r in report["rows"]]


def columns(report: dict, console: bool = False) -> tuple[tuple[str, str], ...]:
    """The columns measured in this report; the console leaves out H/H_base (the entropy
    column says the same), so that the table fits 80 characters."""
    cols = COLUMNS + (GENERATION_COLUMNS if report["settings"]["generate"] else ())
    return tuple(c for c in cols if not (console and c[0] == "entropy_ratio"))


def cell(v) -> str:
    """Fixed three decimals: the table's columns line up and compare at a glance."""
    return "–" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:.3f}"


def render_sweep(console, report: dict) -> None:
    inputs, rec = report["inputs"], report["recommendation"]
    console.print(f"rejuv sweep: SFT {inputs['sft']} vs BASE {inputs['base']}, "
                  f"{inputs['samples']} examples of {inputs['calib']}, "
                  f"{inputs['response_tokens']:,} response tokens")  # fmt: skip
    cols = columns(report, console=True)
    table = Table(box=None, padding=(0, 1), header_style="bold underline")
    table.add_column("model", no_wrap=True)
    for _, head in cols:
        table.add_column(head, justify="right", no_wrap=True)
    for label, row in sweep_rows(report):
        chosen = row.get("alpha") is not None and row["alpha"] == rec["alpha"]
        table.add_row(f"{label} ◀" if chosen else label, *(cell(row.get(k)) for k, _ in cols))
    console.print(table)
    console.print(LEGEND, soft_wrap=True)
    if report["settings"]["generate"]:
        k = report["settings"]["group_size"]
        console.print(f"{GENERATION_LEGEND}; {inputs['checkable']} checkable examples, k = {k} "
                      "samples at temperature 1", soft_wrap=True)  # fmt: skip
    mark = " ◀" if rec["alpha"] is not None else ""
    console.print(f"recommendation{mark} (a heuristic): {rec['reason']}", soft_wrap=True)
    if rec["fuse_command"]:
        console.print(f"next: {rec['fuse_command']}", soft_wrap=True)
    if report.get("out"):
        console.print(f"wrote {report['out']['path']} (α = {report['out']['alpha']:g})")
