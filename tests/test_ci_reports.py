"""CI reports (issue #21, point 1): `--markdown` for diagnose, sweep and fuse, `--junit` for
diagnose. Each file comes from the real CLI on the repository's fixtures and is checked against
the JSON report of the same run (values, verdict, gate outcomes), the markdown through a real
GFM parser (markdown-it-py, with GFM tables), the JUnit file against the Ant JUnit schema
(tests/data/junit.xsd) with xmlschema. Exit codes stay those of the run without the flags."""

from __future__ import annotations

import html
import math
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import xmlschema
from conftest import fails, read_json, run_cli
from markdown_it import MarkdownIt

from rejuv_cli.checkpoint.card import card_sections, model_card
from rejuv_cli.diagnostics.verdict import RULES
from rejuv_cli.report.ci import gate_outcomes
from rejuv_cli.report.gates import parse_gate
from rejuv_cli.report.markdown import diagnose_markdown
from rejuv_cli.report.numbers import shown_at
from rejuv_cli.report.paths import lookup, parse_path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "bench" / "handoff" / "demo"
BASE, SFT, CALIB = DEMO / "base", DEMO / "sft", DEMO / "calib.jsonl"
DATA = ("--calib", CALIB, "--samples", "16", "--sharpness-draws", "0")
XSD = Path(__file__).parent / "data" / "junit.xsd"
# Three gates: one trips on a number, one passes (typed with extra spaces), one trips on a word.
GATES = ("output.kl_mean>0.5", "weights.drift_max  >  100", "verdict.label==rigid")
GFM = MarkdownIt("commonmark").enable("table")


# ---- reading what was written ------------------------------------------------------------------
def flags(gates) -> list[str]:
    return [word for g in gates for word in ("--fail-on", g)]


def plain(inline) -> str:
    """The text a reader sees in an inline token (markup gone, escapes resolved)."""
    return "".join(c.content if c.type != "softbreak" else " " for c in inline.children
                   if c.type in ("text", "code_inline", "softbreak"))  # fmt: skip


def parsed(markdown: str) -> dict:
    """Headings, list items, tables (rows of cell texts, head first) and fenced blocks."""
    tokens = GFM.parse(markdown)
    out: dict = {"headings": [], "items": [], "tables": [], "fences": [], "paragraphs": []}
    row: list[str] = []
    for i, t in enumerate(tokens):
        after = tokens[i - 1].type if i else ""
        if t.type == "inline" and after == "heading_open":
            out["headings"].append(plain(t))
        elif t.type == "inline" and after in ("th_open", "td_open"):
            row.append(plain(t))
        elif t.type in ("th_open", "td_open") and tokens[i + 1].type != "inline":
            row.append("")
        elif t.type == "inline" and after == "paragraph_open":
            inside_item = i > 1 and tokens[i - 2].type == "list_item_open"
            out["items" if inside_item else "paragraphs"].append(plain(t))
        elif t.type == "table_open":
            out["tables"].append([])
        elif t.type == "tr_close":
            out["tables"][-1].append(row)
            row = []
        elif t.type == "fence":
            out["fences"].append(t.content.rstrip("\n"))
    return out


def number_of(cell: str) -> float:
    """A table cell read back as a number: `96.9%` is 0.969, `1,280` is 1280."""
    if cell.endswith("%"):
        return float(cell[:-1]) / 100
    return float(cell.replace(",", ""))


def close(cell: str, value: float) -> bool:
    """The cell shows `value` to the reports' precision (4 significant digits, or a percentage
    with one decimal)."""
    return number_of(cell) == pytest.approx(value, rel=5e-4, abs=5e-4)


def junit(path: Path) -> ET.Element:
    xmlschema.XMLSchema(XSD).validate(path)
    return ET.parse(path).getroot()


def cases(suite: ET.Element) -> dict[str, ET.Element]:
    named = {c.get("name"): c for c in suite.iter("testcase")}
    assert len(named) == len(suite.findall("testcase")), "test case names must be unique"
    return named


def outcome(case: ET.Element) -> str:
    return next((child.tag for child in case if child.tag in ("failure", "skipped")), "passed")


def check_counts(suite: ET.Element) -> None:
    all_cases = suite.findall("testcase")
    assert int(suite.get("tests")) == len(all_cases)
    assert int(suite.get("failures")) == sum(outcome(c) == "failure" for c in all_cases)
    assert int(suite.get("skipped")) == sum(outcome(c) == "skipped" for c in all_cases)
    assert suite.get("errors") == "0"


# ---- the runs ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    """`rejuv fuse --markdown` on the demo pair: (OUT, the markdown)."""
    root = tmp_path_factory.mktemp("fuse")
    out, md = root / "candidate", root / "fuse.md"
    r = run_cli("fuse", BASE, SFT, "--out", out, "--alpha", "0.5", "--markdown", md, "-q")
    assert r.exit_code == 0, r.output
    return out, md.read_text()


@pytest.fixture(scope="module")
def diagnosed(fused, tmp_path_factory):
    """diagnose with forward passes, a candidate and GATES: (result, JSON, markdown, JUnit
    path, the time window of the run)."""
    root = tmp_path_factory.mktemp("diagnose")
    report, md, xml = root / "report.json", root / "summary.md", root / "junit.xml"
    started = datetime.now()
    # --min-skill 0.5: the low_skill rule's threshold is the setting's, not the rule's default
    files = ("--json", report, "--markdown", md, "--junit", xml)
    r = run_cli("diagnose", BASE, SFT, "--candidate", fused[0], *DATA, "--min-skill", "0.5",
                *flags(GATES), *files, "-q")  # fmt: skip
    return r, read_json(report), md.read_text(), xml, (started, datetime.now())


# ---- diagnose ----------------------------------------------------------------------------------
def test_a_tripped_gate_still_exits_3_and_writes_every_report(diagnosed):
    r, report, _, _, _ = diagnosed
    fails(r, 3, "rejuv: 2 of 3 --fail-on gate(s) tripped; exit 3")
    assert [g["tripped"] for g in report["gates"]] == [True, False, True]


def test_diagnose_markdown_says_what_the_json_says(diagnosed):
    _, report, md, _, _ = diagnosed
    v, doc = report["verdict"], parsed(md)
    assert v["label"] == "rigid" and doc["headings"][0] == "rejuv diagnose: 🔴 rigid"
    reasons = [f"{r['level']} {r['id']}: {r['message']}"
               for r in v["reasons"] + v["candidate"]["reasons"]]  # fmt: skip
    assert doc["items"] == reasons  # each reason worded as the terminal words it, in order
    assert any(p.startswith(f"Candidate {report['inputs']['candidate']}: ") and
               p.endswith(v["candidate"]["label"]) for p in doc["paragraphs"])  # fmt: skip

    before_after, gates = doc["tables"]
    assert before_after[0] == ["metric (SFT's gate path)", "SFT", "candidate", "change"]
    assert len(before_after) - 1 == len(report["comparison"]) > 5
    for row, c in zip(before_after[1:], report["comparison"], strict=True):
        assert row[0].endswith(c["metric"])
        assert row[1] == shown_at(parse_path(c["metric"]), c["sft"]) and close(row[1], c["sft"])
        assert close(row[2], c["candidate"]) and row[3].startswith(c["change"])

    assert "2 of 3 tripped: exit 3" in doc["headings"][-1]
    assert gates[0] == ["gate", "measured", "outcome"]
    for row, text, result in zip(gates[1:], GATES, report["gates"], strict=True):
        assert row[0] == " ".join(text.split())
        actual = result["actual"]
        assert row[1] == actual if isinstance(actual, str) else close(row[1], actual)
        assert row[2] == ("❌ tripped" if result["tripped"] else "✅ passed")
    assert doc["fences"] == [v["suggested_command"]]


def test_junit_has_every_gate_and_rule_with_the_verdicts_values(diagnosed):
    _, report, _, xml, (started, finished) = diagnosed
    suite = junit(xml)
    check_counts(suite)
    named = cases(suite)
    assert len(named) == len(GATES) + 2 * len(RULES)  # every rule, for SFT and the candidate

    for text, result in zip(GATES, report["gates"], strict=True):
        case = named[f"gate: {' '.join(text.split())}"]
        assert outcome(case) == ("failure" if result["tripped"] else "passed")
        if result["tripped"]:  # the measured value and the threshold
            gate, message = parse_gate(text), case.find("failure").get("message")
            actual = result["actual"]
            shown = repr(actual) if isinstance(actual, str) else f"{actual:.4g}"
            assert message.startswith(f"{text.split(gate.op)[0].strip()} = {shown} {gate.op} ")
            assert str(gate.value).removesuffix(".0") in message

    judged = (("", report["verdict"]), (" (candidate)", report["verdict"]["candidate"]))
    for model, verdict in judged:
        fired = {r["id"]: r for r in verdict["reasons"]}
        for rule in RULES:
            case = named[f"rule: {rule.id}{model}"]
            metric = rule.metric if not model else _candidate_path(rule.metric)
            if rule.id in fired:  # the verdict's own message: its value and threshold
                failure = case.find("failure")
                assert failure.get("message") == fired[rule.id]["message"]
                assert failure.get("type") == rule.level
            elif lookup(report, metric) is None:
                assert outcome(case) == "skipped", rule.id
            else:
                assert outcome(case) == "passed", rule.id
    # what this run left unmeasured, and why: the report's own reasons
    assert named["rule: sharp"].find("skipped").get("message").endswith(
        f"({report['null_reasons']['sharpness']})")  # fmt: skip
    assert outcome(named["rule: low_learnable (candidate)"]) == "skipped"

    assert suite.get("time") == f"{report['seconds']:.3f}"
    # the run's start (the file is written at its end): whole seconds, after some parsing
    stamp, took = datetime.fromisoformat(suite.get("timestamp")), finished - started
    assert started - timedelta(seconds=1) <= stamp <= started + timedelta(seconds=1) + took / 4


def _candidate_path(metric: str) -> str:
    """Where the candidate's value of a rule's metric sits (the report's layout)."""
    section, key = metric.split(".", 1)
    return "sharpness.candidate_ratio" if metric == "sharpness.ratio" else \
        f"{section}.candidate.{key}"  # fmt: skip


def test_an_unusable_gate_is_skipped_and_the_others_still_count(llama, tmp_path):
    """A gate whose path the run cannot resolve exits 2, as without the flags; the files are
    still written, that gate skipped with the error line, the others evaluated."""
    md, xml = tmp_path / "summary.md", tmp_path / "junit.xml"
    gates = ("weights.drift_max>100", 'weights.tensors["nope"].rel_drift>0',
             "weights.drift_max<100")  # fmt: skip
    r = run_cli("diagnose", *llama, "--weights-only", *flags(gates), "--markdown", md,
                "--junit", xml, "-q")  # fmt: skip
    line = fails(r, 2, one_line=True).removeprefix("rejuv: error: ")
    suite = junit(xml)
    check_counts(suite)
    named = cases(suite)
    assert [outcome(named[f"gate: {g}"]) for g in gates] == ["passed", "skipped", "failure"]
    assert named[f"gate: {gates[1]}"].find("skipped").get("message") == line
    doc = parsed(md.read_text())
    assert "1 of 3 could not be evaluated: exit 2" in doc["headings"][-1]
    assert doc["tables"][-1][2][2] == f"⚠️ not evaluated: {line}"


def test_passing_gates_exit_0_and_rules_fail_as_the_verdict_fires(llama, tmp_path):
    report, xml = tmp_path / "r.json", tmp_path / "junit.xml"
    r = run_cli("diagnose", *llama, "--weights-only", "--fail-on", "weights.drift_max>100",
                "--json", report, "--junit", xml, "-q")  # fmt: skip
    assert r.exit_code == 0, r.output
    suite, verdict = junit(xml), read_json(report)["verdict"]
    check_counts(suite)
    failed = {c.get("name") for c in suite.iter("testcase") if outcome(c) == "failure"}
    assert failed == {f"rule: {x['id']}" for x in verdict["reasons"]}
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["verdict"] == verdict["label"] and props["sft"] == str(llama[1])


def test_markdown_escapes_what_it_did_not_write(diagnosed):
    """Paths, messages and gates with markdown in them read back as they are, and a `|` in a
    table cell does not split it."""
    _, report, _, _, _ = diagnosed
    hostile = "a|b `c` *d* _e_ $x$ <i>f</i> [g](h) #21 &amp; \\"
    report = {**report, "inputs": {**report["inputs"], "sft": hostile},
              "verdict": {**report["verdict"], "reasons": [
                  {**report["verdict"]["reasons"][0], "message": hostile}]}}  # fmt: skip
    gate = 'weights.tensors["x|`y`"].rel_drift>0'
    doc = parsed(diagnose_markdown(report, gate_outcomes([parse_gate(gate)], report)))
    assert doc["paragraphs"][0].startswith(f"SFT {hostile} vs BASE ")
    assert doc["items"][0] == f"rigid low_entropy: {hostile}"
    gates = doc["tables"][-1]
    assert [len(row) for row in gates] == [3, 3] and gates[1][0] == gate
    assert html.escape(hostile) in GFM.render(diagnose_markdown(report, []))  # never raw HTML


# ---- sweep -------------------------------------------------------------------------------------
def test_sweep_markdown_says_what_the_json_says(tmp_path):
    report, md = tmp_path / "sweep.json", tmp_path / "sweep.md"
    r = run_cli("sweep", BASE, SFT, "--calib", CALIB, "--samples", "16", "--alphas", "0.8,0.95",
                "--reset", "0", "--json", report, "--markdown", md, "-q")  # fmt: skip
    assert r.exit_code == 0, r.output
    report, doc = read_json(report), parsed(md.read_text())
    rec = report["recommendation"]
    assert rec["alpha"] == 0.8 and doc["headings"] == ["rejuv sweep: α = 0.8"]
    (table,) = doc["tables"]
    heads = ["model", "entropy", "H/H_base", "KL to BASE", "NLL", "skill kept"]
    keys = ["entropy_mean", "entropy_ratio", "kl_mean", "nll_mean", "skill_retained"]
    assert table[0] == heads
    models = [report["base"], report["sft"], *report["rows"]]
    labels = ["BASE", "SFT", "α=0.8 ◀", "α=0.95"]  # the recommended α marked as the terminal does
    for row, label, model in zip(table[1:], labels, models, strict=True):
        assert row[0] == label
        for cell, key in zip(row[1:], keys, strict=True):
            assert cell == shown_at(("output", key), model[key]) and close(cell, model[key])
    assert f"Recommendation (a heuristic): {rec['reason']}" in doc["paragraphs"]
    assert doc["fences"] == [rec["fuse_command"]]


# ---- fuse --------------------------------------------------------------------------------------
def test_fuse_markdown_is_the_model_cards_account(fused):
    out, md = fused
    provenance = read_json(out / "rejuv.json")
    head, body = md.split("\n\n", 1)
    assert head == f"## rejuv fuse: wrote `{out}`"
    assert body == card_sections(provenance, "###")  # the card's own code, a level down
    card = (out / "README.md").read_text()
    assert card == model_card(provenance) and card.endswith(card_sections(provenance))
    doc = parsed(md)
    assert doc["headings"][1:] == ["What was done", "Inputs", "Recipe", "Result"]
    inputs = next(t for t in doc["tables"] if t[0][0] == "role")
    for row, role in zip(inputs[1:], ("base", "sft"), strict=True):
        digest = provenance["inputs"][role]["tensor_digest"]
        assert row[0] == role.upper() and row[3] == f"xxh3-128 {digest}" and len(digest) == 32
    recipe = next(f for f in doc["fences"] if f.startswith("fuse:"))
    assert "  alpha: 0.5\n" in recipe and math.isclose(provenance["recipe"]["fuse"]["alpha"], 0.5)


# ---- refused before any work -------------------------------------------------------------------
def test_report_paths_are_checked_before_any_work(llama, tmp_path):
    base, sft = llama
    dry = run_cli("fuse", base, sft, "--out", tmp_path / "o", "--dry-run", "--markdown",
                  tmp_path / "f.md")  # fmt: skip
    fails(dry, 2, "--markdown: --dry-run writes no checkpoint", one_line=True)
    out = tmp_path / "o"
    out.mkdir()  # an OUT that --overwrite replaces whole, and the summary with it
    fails(run_cli("fuse", base, sft, "--out", out, "--overwrite", "--markdown", out / "f.md"), 1,
          f"--markdown {out / 'f.md'} is inside --out {out}", one_line=True)  # fmt: skip
    fails(run_cli("diagnose", base, sft, "--weights-only", "--junit", sft / "junit.xml"), 1,
          f"--junit {sft / 'junit.xml'} is inside SFT", one_line=True)  # fmt: skip
    fails(run_cli("diagnose", base, sft, "--weights-only", "--markdown", tmp_path / "no" / "s.md"),
          2, f"--markdown {tmp_path / 'no' / 's.md'}: directory", one_line=True)  # fmt: skip
    fails(run_cli("sweep", base, sft, "--markdown", tmp_path), 2, "is a directory", one_line=True)
    assert [p.name for p in tmp_path.iterdir()] == ["o"] and not any(out.iterdir())


def test_help_documents_the_flags():
    for command, names in (("diagnose", ("--markdown", "--junit")), ("sweep", ("--markdown",)),
                           ("fuse", ("--markdown",))):  # fmt: skip
        r = run_cli(command, "--help", env={"COLUMNS": "200"})
        assert r.exit_code == 0 and all(n in r.stdout for n in names), (command, r.stdout)
    assert "--junit" not in run_cli("sweep", "--help", env={"COLUMNS": "200"}).stdout
