"""`rejuv diagnose --markdown FILE`: a short GitHub-flavoured markdown summary for CI (a GitHub
step summary, `$GITHUB_STEP_SUMMARY`, or a merge-request comment), and the markdown pieces the
sweep and fuse summaries share. Pure standard library; no torch.

The summary is the verdict with its reasons, the before/after table when a candidate was
judged, the `--fail-on` gates with their outcome, and the suggested command: what a reviewer
needs at a glance; the HTML page has the rest. Numbers are formatted as the terminal and HTML
reports format them (report/numbers.py); every value that comes from the user or the report
(paths, messages) is escaped, so a `|`, `*` or `$` in it cannot break a table or turn into
emphasis or math.
"""

from __future__ import annotations

import math
import re

from rejuv_cli.report.numbers import number, shown_at
from rejuv_cli.report.paths import parse_path

# The characters that start markdown syntax inside a line: emphasis, code, links, HTML and
# entities, GitHub's `$...$` math, `~~x~~` strikethrough and `#123` references. `|` is escaped
# by `table`, which must escape it inside code spans too.
_SPECIAL = re.compile(r"([\\`*_\[\]<>~$&#])")
LABEL_MARK = {"rigid": "🔴", "watch": "🟡", "ok": "🟢"}
GATE_MARK = {"tripped": "❌ tripped", "passed": "✅ passed", "not evaluated": "⚠️ not evaluated"}


def text(value: object) -> str:
    """Free text (a message, a model name) as literal markdown: specials escaped, one line."""
    return _SPECIAL.sub(r"\\\1", " ".join(str(value).split()))


def code(value: object) -> str:
    """An inline code span (a path, a gate): backticks inside get a longer fence."""
    body = " ".join(str(value).split())
    ticks = "`" * (max((len(run) for run in re.findall(r"`+", body)), default=0) + 1)
    pad = " " if body.startswith("`") or body.endswith("`") else ""
    return f"{ticks}{pad}{body}{pad}{ticks}"


def fenced(body: str, language: str = "") -> str:
    """A fenced code block that no run of backticks in `body` can close early."""
    ticks = "`" * max(3, max((len(run) for run in re.findall(r"`+", body)), default=0) + 1)
    return f"{ticks}{language}\n{body}\n{ticks}"


def table(head: list[str], rows: list[list[str]]) -> str:
    """A GFM table of already-rendered cells; every `|` in a cell is escaped (GFM splits cells
    on it even inside code spans) and a cell is one line."""

    def row(cells: list[str]) -> str:
        return "| " + " | ".join(" ".join(c.split()).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([row(head), "|" + "---|" * len(head), *(row(r) for r in rows)])


def shown(path: str, value: object) -> str:
    """A metric value as the reports show the quantity at gate path `path` (shares as %)."""
    return shown_at(parse_path(path), value)


# ---- diagnose ---------------------------------------------------------------------------------
def diagnose_markdown(report: dict, gates: list) -> str:
    """The summary of a diagnose report; `gates`: report/ci.GateOutcome per `--fail-on`."""
    v, inputs = report["verdict"], report["inputs"]
    parts = [
        f"### rejuv diagnose: {LABEL_MARK.get(v['label'], '')} {v['label']}",
        f"SFT {code(inputs['sft'])} vs BASE {code(inputs['base'])}; measured: "
        f"{text(v['measured'])}. The verdict is a heuristic: read the reasons.",
        _reasons(v["reasons"]),
    ]
    if v.get("candidate") is not None:
        c = v["candidate"]
        parts += [f"**Candidate** {code(inputs['candidate'])}: {LABEL_MARK.get(c['label'], '')} "
                  f"{c['label']}", _reasons(c["reasons"])]  # fmt: skip
    if report.get("comparison"):
        parts += ["#### Before (SFT) / after (candidate)", _comparison(report["comparison"])]
    parts += _gates(gates)
    if v.get("suggested_command"):
        from rejuv_cli.report.terms import next_step

        why = text(next_step(v["label"]))
        # as the terminal words it: for ok the step is RL as it is (the command, a CI gate, is
        # optional); for watch and rigid the command is the step, and `why` says what it does
        lead = f"**Next**: {why}:" if v["label"] == "ok" else f"**Next** ({why}):"
        parts += [lead, fenced(v["suggested_command"], "bash")]
    return "\n\n".join(p for p in parts if p) + "\n"


def _reasons(reasons: list[dict]) -> str:
    """The rules that fired, worded as the terminal words them (the verdict's own messages)."""
    if not reasons:
        return "No rule fired."
    return "\n".join(f"- **{r['level']}** {code(r['id'])}: {text(r['message'])}" for r in reasons)


def _comparison(rows: list[dict]) -> str:
    body = [[f"{text(r['label'])} {code(r['metric'])}", shown(r["metric"], r["sft"]),
             shown(r["candidate_metric"], r["candidate"]), f"{r['change']} ({r['better']} is "
             "better)"] for r in rows]  # fmt: skip
    return table(["metric (SFT's gate path)", "SFT", "candidate", "change"], body)


def _gates(gates: list) -> list[str]:
    if not gates:
        return ["No `--fail-on` gates were set."]
    tripped = sum(g.status == "tripped" for g in gates)
    unusable = sum(g.status == "not evaluated" for g in gates)
    if unusable:
        summary = f"{unusable} of {len(gates)} could not be evaluated: exit 2"
    elif tripped:
        summary = f"{tripped} of {len(gates)} tripped: exit 3"
    else:
        summary = f"all {len(gates)} passed"
    rows = []
    for g in gates:
        outcome = GATE_MARK[g.status] + (f": {text(g.error)}" if g.error else "")
        rows.append([code(g.text), _actual(g.actual), outcome])
    return [f"#### `--fail-on` gates: {summary}",
            table(["gate", "measured", "outcome"], rows)]  # fmt: skip


def _actual(value: object) -> str:
    """A gate's measured value in the gate's own units (fractions stay fractions, as in the
    gate's expression and the terminal's gate lines)."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"  # trips the gate whatever the comparison (report/gates.py)
    return code(value) if isinstance(value, str) else number(value)
