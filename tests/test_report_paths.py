"""report/paths.py: the one grammar and reader of a metric path, and its users' agreement."""

from __future__ import annotations

import pytest

from rejuv_cli.diagnostics.verdict import RULES, rule_metrics
from rejuv_cli.report.paths import PathError, format_path, lookup, parse_path, resolve

REPORT = {
    "output": {"entropy_mean": 0.1, "candidate": {"entropy_mean": 0.4}},
    "units": {"dormant": {"0.025": 0.3}, "candidate": None},
    "weights": {"layers": {"0": {"rel_drift": 0.2}}, "tensors": {"a.b": {"numel": 8}}},
    "sharpness": None,
    "verdict": {"reasons": [{"id": "sharp"}], "label": "watch", "heuristic": True},
    "null_reasons": {"sharpness": "not measured: --sharpness-draws 0"},
}


def test_parse_and_format_round_trip():
    for text in ('units.dormant["0.025"]', "verdict.reasons[-1].id", 'weights.tensors["a.b"]'):
        assert format_path(parse_path(text)) == text
    assert parse_path('units.dormant["0.025"]') == ("units", "dormant", "0.025")
    assert parse_path(" verdict . reasons [ 0 ] ") == ("verdict", "reasons", 0)


def test_lookup_reads_scalars_and_none_for_anything_else():
    assert lookup(REPORT, 'units.dormant["0.025"]') == 0.3
    assert lookup(REPORT, ("weights", "tensors", "a.b", "numel")) == 8
    assert lookup(REPORT, "verdict.reasons[-1].id") == "sharp"
    assert lookup(REPORT, "verdict.heuristic") is True
    assert lookup(REPORT, "sharpness.ratio") is None  # a null section
    assert lookup(REPORT, "units.candidate.dormant_increase") is None  # null on the way
    assert lookup(REPORT, "output.kl_mean") is None  # missing key
    assert lookup(REPORT, "verdict.reasons[3].id") is None  # index out of range
    assert lookup(REPORT, "weights.layers") is None  # an object, not a scalar


def test_resolve_says_why_a_null_is_null():
    with pytest.raises(PathError, match=r"'sharpness' is null in this report \(not measured: "):
        resolve(REPORT, parse_path("sharpness.ratio"))
    with pytest.raises(PathError, match="'kl_mean' not found under 'output'"):
        resolve(REPORT, parse_path("output.kl_mean"))


def test_rule_metrics_read_each_rule_by_its_path_or_the_candidates():
    sft = rule_metrics(REPORT)
    assert set(sft) == {r.metric for r in RULES}
    assert sft["output.entropy_mean"] == 0.1 and sft["sharpness.ratio"] is None
    moved = rule_metrics(REPORT, {"output.entropy_mean": "output.candidate.entropy_mean"})
    assert moved["output.entropy_mean"] == 0.4
