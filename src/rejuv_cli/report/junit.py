"""`rejuv diagnose --junit FILE`: every `--fail-on` gate and every verdict rule as a JUnit XML
test case, for the test reports of GitLab, Jenkins and GitHub actions. Pure standard library.

One `<testsuite name="rejuv diagnose">`. A case per gate, `gate: EXPR` (the expression as
typed, runs of spaces made one), and per rule, `rule: ID`, plus `rule: ID (candidate)` when a
candidate was judged: names that stay the same from run to run, so a reporter can follow each
one. A gate that trips or a rule that fires is a `<failure>` whose message holds the measured
value and the threshold (a rule's is the verdict's own reason); a gate or rule whose value this
run did not measure is `<skipped>` with the reason. Passing a rule is not the verdict `ok`:
three watch rules together also make a checkpoint rigid (diagnostics/verdict.py).

The file follows the Ant JUnit schema (tests/data/junit.xsd, the strictest of the common
ones: every case has a time, the suite a timestamp without time zone, a hostname, properties,
system-out and system-err), which Jenkins' and GitLab's readers accept too.
"""

from __future__ import annotations

import re
import socket
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timedelta

from rejuv_cli.report.numbers import number
from rejuv_cli.report.paths import PathError, format_path, parse_path, resolve

SUITE = "rejuv diagnose"
GATE_CLASS, RULE_CLASS = "rejuv.diagnose.gates", "rejuv.diagnose.rules"
# Characters XML 1.0 cannot hold (control characters but tab and newlines, lone surrogates).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@dataclass(frozen=True)
class Case:
    """One test case: `outcome` is "passed", "failed" or "skipped"; `message` says why for the
    other two; `kind` is the failure's type (`gate`, or the rule's level: rigid, watch)."""

    name: str
    classname: str
    outcome: str
    message: str = ""
    kind: str = ""


def gate_cases(gates: list) -> list[Case]:
    """A case per report/ci.GateOutcome, in the order the gates were given."""
    cases = []
    for g in gates:
        name = f"gate: {g.text}"
        if g.status == "not evaluated":
            cases.append(Case(name, GATE_CLASS, "skipped", g.error))
        elif g.status == "tripped":
            cases.append(Case(name, GATE_CLASS, "failed", _tripped(g), "gate"))
        else:
            cases.append(Case(name, GATE_CLASS, "passed"))
    return cases


def _tripped(g) -> str:
    """`output.kl_mean = 5.513 > 0.5: the gate trips (exit 3)`: measured value and threshold."""
    gate = g.gate
    actual = repr(g.actual) if isinstance(g.actual, str) else number(g.actual)
    if actual == "–":  # a NaN: nothing compares with it, so the gate fails safe
        actual = "NaN (trips whatever the comparison)"
    threshold = repr(gate.value) if isinstance(gate.value, str) else f"{gate.value:g}"
    return f"{format_path(gate.path)} = {actual} {gate.op} {threshold}: the gate trips (exit 3)"


def rule_cases(report: dict, checks: list, model: str = "") -> list[Case]:
    """A case per verdict rule; `checks`: diagnostics/verdict.RuleCheck of every rule, as the
    verdict applied them to one model (`model`: "" for SFT, "candidate")."""
    cases = []
    classname = f"{RULE_CLASS}.{model}" if model else RULE_CLASS
    for c in checks:
        name = f"rule: {c.rule.id}" + (f" ({model})" if model else "")
        if c.value is None:
            cases.append(Case(name, classname, "skipped", _not_measured(report, c.metric)))
        elif c.fired:
            cases.append(Case(name, classname, "failed", c.reason()["message"], c.rule.level))
        else:
            cases.append(Case(name, classname, "passed"))
    return cases


def _not_measured(report: dict, metric: str) -> str:
    """Why a rule's value is missing: the path reader's account, with the report's null_reasons
    entry (the same words a --fail-on gate on that path would give)."""
    try:
        resolve(report, parse_path(metric))
    except PathError as e:
        return f"not evaluated: {e}"
    return f"not evaluated: '{metric}' is not a number in this report"


def render_junit(cases: list[Case], report: dict, finished: datetime | None = None) -> str:
    """The JUnit XML document: one testsuite of `cases`. Its time is the diagnose run's
    (report["seconds"]); its timestamp when that run started (local time, no zone)."""
    seconds = float(report.get("seconds") or 0.0)
    started = (finished or datetime.now()) - timedelta(seconds=seconds)
    counts = {k: sum(c.outcome == k for c in cases) for k in ("failed", "skipped")}
    suite = ET.Element("testsuite", {
        "name": SUITE, "tests": str(len(cases)), "failures": str(counts["failed"]),
        "errors": "0", "skipped": str(counts["skipped"]), "time": f"{seconds:.3f}",
        "timestamp": started.replace(microsecond=0).isoformat(),
        "hostname": _clean(socket.gethostname()) or "localhost",
    })  # fmt: skip
    properties = ET.SubElement(suite, "properties")
    for name, value in _properties(report):
        ET.SubElement(properties, "property", {"name": name, "value": _clean(value)})
    for c in cases:  # a check takes no time of its own: the measuring is the suite's
        attrs = {"name": _clean(c.name), "classname": c.classname, "time": "0"}
        case = ET.SubElement(suite, "testcase", attrs)
        if c.outcome == "failed":
            failure = ET.SubElement(case, "failure", {"message": _clean(c.message), "type": c.kind})
            failure.text = _clean(c.message)
        elif c.outcome == "skipped":
            ET.SubElement(case, "skipped", {"message": _clean(c.message)})
    ET.SubElement(suite, "system-out").text = _clean(_summary(report))
    ET.SubElement(suite, "system-err").text = ""
    ET.indent(suite)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def _properties(report: dict) -> list[tuple[str, str]]:
    """What the run judged: the verdicts and the inputs (a reporter shows them with the suite)."""
    v, inputs = report["verdict"], report["inputs"]
    props = [("verdict", v["label"])]
    if v.get("candidate") is not None:
        props.append(("candidate verdict", v["candidate"]["label"]))
    props += [("base", str(inputs["base"])), ("sft", str(inputs["sft"]))]
    if inputs.get("candidate"):
        props.append(("candidate", str(inputs["candidate"])))
    return props + [("measured", v["measured"]), ("tool", str(report.get("tool")))]


def _summary(report: dict) -> str:
    v = report["verdict"]
    lines = [f"verdict: {v['label']} (a heuristic; measured: {v['measured']})"]
    lines += [f"  {r['level']} {r['id']}: {r['message']}" for r in v["reasons"]]
    if v.get("candidate") is not None:
        lines.append(f"candidate: {v['candidate']['label']}")
        lines += [f"  {r['level']} {r['id']}: {r['message']}" for r in v["candidate"]["reasons"]]
    if v.get("suggested_command"):
        lines.append(f"next: {v['suggested_command']}")
    return "\n".join(lines) + "\n"


def _clean(value: object) -> str:
    """Text XML can hold: characters it cannot are replaced by U+FFFD."""
    return _NOT_XML.sub("\ufffd", str(value))
