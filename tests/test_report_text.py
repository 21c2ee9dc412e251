"""One vocabulary for every report (issue #17, parts 5 and 6): one formatter per kind of
quantity (report/numbers.py), one before/after vocabulary, terms defined once (report/terms.py),
tables that never cut a number (report/fit.py). Pure Python: no models."""

from __future__ import annotations

import copy
import io
import math

import pytest
from rich.console import Console
from rich.text import Text

from rejuv_cli.report import columns as C
from rejuv_cli.report.fit import Col, fit
from rejuv_cli.report.numbers import change, number, percent, show, shown_at
from rejuv_cli.report.schema import leaf_patterns
from rejuv_cli.report.schema_spec import NATS, RELATIVE, SHARE
from rejuv_cli.report.terms import TERMS, legend


def test_shares_are_percentages_by_one_rule():
    assert percent(0.5908203125) == "59.1%" and percent(1.0) == "100.0%" and percent(0) == "0.0%"
    assert percent(0.0171875) == "1.7%" and percent(0.01) == "1.0%"
    # below 1%: two significant digits, so a share that is not zero never reads as zero
    assert percent(0.00078125) == "0.078%" and percent(0.0015625) == "0.16%"
    assert percent(1.2e-7) == "1.2e-05%" and percent(-0.0123) == "-1.2%"
    assert percent(None) == "–" and percent(float("nan")) == "–"


def test_one_formatter_per_kind():
    assert show(0.00078125, SHARE) == "0.078%"
    for unit in (NATS, RELATIVE, ""):
        assert show(0.2206358, unit) == "0.2206" and show(5.567504, unit) == "5.568"
    assert show(0.99998, RELATIVE) == "0.99998"  # a cosine that is not 1 does not read 1
    assert show(1024, SHARE) == "102400.0%" and show(1024, "") == "1,024"
    assert number(None) == "–" and number(True) == "yes" and number(float("inf")) == "∞"
    # the kind comes from the schema, by gate path
    assert shown_at(("units", "candidate", "dormant", "0.025"), 0.00078125) == "0.078%"
    assert shown_at(("output", "entropy_mean"), 0.2206358) == "0.2206"
    assert shown_at(("output", "tokens"), 1024) == "1,024"


def test_schema_declares_a_kind_for_every_share_and_entropy():
    for pattern, leaf in leaf_patterns().items():
        name = str(pattern[-1])
        if name.endswith("_share") or pattern[-2:-1] == ("dormant",) or name in (
            "accuracy", "pass_at_1", "pass_at_k", "saturated", "spikiness", "dormant_increase"
        ):  # fmt: skip
            assert leaf.unit == SHARE, pattern
        if name in ("entropy_mean", "nll_mean", "kl_mean"):
            assert leaf.unit == NATS and "nats" in leaf.label, pattern
        if "ratio" in name or name in ("rel_drift", "skill_retained", "accuracy_retained"):
            assert leaf.unit == RELATIVE, pattern


def test_before_after_vocabulary():
    assert change(0.22, 0.49, "higher") == "better" and change(0.22, 0.49, "lower") == "worse"
    assert change(5.5, 3.7, "lower") == "better" and change(5.5, 3.7, "higher") == "worse"
    assert change(0.00078125, 0.00078125, "lower") == "no change"
    assert change(None, 1.0, "higher") == "no change"
    assert change(math.nan, 1.0, "higher") == "no change"


def test_every_term_a_table_uses_is_defined():
    terms = (C.WEIGHT_TERMS + C.UNIT_DRIFT_TERMS + C.OUTPUT_TERMS + C.GENERATION_TERMS
             + C.UNIT_TERMS + C.LAYER_TERMS + C.COMPARISON_TERMS)  # fmt: skip
    for term in (*terms, *C.TERM_OF.values(), *C.SWEEP_TERMS.values()):
        assert TERMS[term], term
    for term in ("ReDo", "msd", "kurtosis", "sharpness", "skill", "learnable share"):
        assert term in TERMS
    assert legend("msd", "skill").startswith("msd: mean squared difference")


def test_fit_never_cuts_a_value():
    values = ["0.0003059", "7.051e-05", "1,024", 'units.candidate.dormant["0.025"]']
    cols = [Col("model", "left"), Col("a long column head", wrap=False), Col("label", wrap=True)]
    rows = [[v, v, "some words that may wrap"] for v in values]
    for width in (200, 80):  # natural widths, then the labels wrap at their spaces
        table = fit(width, cols, rows)
        assert table is not None
        console = Console(width=width, record=True, file=io.StringIO())
        console.print(table)
        text = console.export_text()
        assert "…" not in text and max(len(line) for line in text.splitlines()) <= width
        for v in values:
            assert text.count(v) == 2, (width, v)  # whole, in both columns
    # two whole paths (32 columns each) do not fit 60: the caller lays them out another way
    assert fit(60, cols, rows) is None
    assert fit(80, [Col(Text("a\nb"))], [[Text("x")]]) is not None


@pytest.fixture
def report():
    from rejuv_cli.testing.sample_report import sample_report

    return sample_report(candidate=True)


def test_html_uses_the_same_formats_words_and_terms(report):
    from rejuv_cli.report.html import render_html

    page = render_html(report)
    # a share as a percentage, in the output table and the comparison alike
    assert '<td class="num" data-path="output.confident_share" title="output.confident_share">' \
           "88.0%</td>" in page  # fmt: skip
    assert ">better</span>" in page and ">worse</span>" in page and "improved" not in page
    # heads carry their term as a tooltip, and the legend under the table defines it
    assert f'<abbr title="{TERMS["msd"]}">msd</abbr>' in page
    assert "ReDo: ReDo score s_j" in page and "kurtosis: kurtosis of" in page
    assert "skill: skill retained" in page and "NLL: negative log-likelihood" in page
    # labels are the terminal's
    for label, _ in C.OUTPUT_COLS + C.WEIGHT_COLS:
        assert label.replace(">", "&gt;") in page, label


def test_html_next_step_for_an_ok_verdict(report):
    from rejuv_cli.diagnostics.verdict import suggested_command
    from rejuv_cli.report.html import render_html
    from rejuv_cli.report.terms import next_step

    ok = copy.deepcopy(report)
    command = suggested_command("ok", "b", "s", diagnose_flags=["--samples", "8"])
    assert command == ("rejuv diagnose b s --samples 8 --json s-diagnose.json "
                       "--fail-on verdict.label==rigid")  # fmt: skip
    ok["verdict"] |= {"label": "ok", "reasons": [], "suggested_command": command}
    page = render_html(ok)
    assert f"Next step: {next_step('ok')}:</p><pre>{command}</pre>" in page
    assert next_step("ok").startswith("go on to RL with SFT as it is")
    assert suggested_command("watch", "b", "s").startswith("rejuv sweep b s ")


def test_sweep_html_next_step_without_surgery():
    from rejuv_cli.report.html.sweep import render_sweep_html
    from rejuv_cli.report.terms import NO_SURGERY_NEXT

    row = {"entropy_mean": 0.3, "kl_mean": 1.0, "nll_mean": 0.5, "skill_retained": 0.9,
           "entropy_ratio": 0.8, "accuracy": 0.5, "accuracy_retained": 1.0, "pass_at_1": 0.5,
           "pass_at_k": 0.75, "learnable_share": 0.28125}  # fmt: skip
    report = {"inputs": {"sft": "s"}, "settings": {"generate": True}, "base": row, "sft": row,
              "rows": [row | {"alpha": 0.5}],
              "recommendation": {"alpha": None, "reason": "no surgery: ...",
                                 "fuse_command": None}}  # fmt: skip
    page = render_sweep_html(report)
    assert f"Next step: {NO_SURGERY_NEXT}." in page
    assert '<td class="num">28.1%</td>' in page and "learn: share of prompts" not in page
    assert "learnable share: share of prompts whose k samples" in page
