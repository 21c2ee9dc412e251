"""Skill retained in `rejuv diagnose` (issue #15, section 1): (NLL_base − NLL_m) /
(NLL_base − NLL_sft) on the calibration responses, the `low_skill` verdict rule and its
`--min-skill` setting, on the shipped demo pair (a trained char-level Llama, make demo)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import fails, read_json, run_cli

from rejuv_cli.diagnostics.output import MIN_NLL_GAIN, skill_retained

DEMO = Path(__file__).resolve().parents[1] / "bench" / "handoff" / "demo"
BASE, SFT, CALIB = DEMO / "base", DEMO / "sft", DEMO / "calib.jsonl"
# No sharpness: it is slow, and on the demo its `sharp` rule would make the candidate `watch`
# on its own, hiding whether `low_skill` fired.
QUICK = ("--calib", CALIB, "--samples", "32", "--sharpness-draws", "0")
PATH = "output.candidate.skill_retained"


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    """The demo SFT fused at α = 0.3 with the default reset (1% of units, drift): its largest
    tensor drift (0.3 × SFT's 1.55) stays under the large_drift threshold, so low_skill is the
    only candidate rule that fires."""
    out = tmp_path_factory.mktemp("skill") / "fused"
    r = run_cli("fuse", BASE, SFT, "--out", out, "--alpha", "0.3", "-q")
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def report(fused):
    r = run_cli("diagnose", BASE, SFT, "--candidate", fused, *QUICK, "--json", "-")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_skill_retained_is_the_nll_gain_ratio(report):
    o = report["output"]
    base, sft, cand = o["base"]["nll_mean"], o["nll_mean"], o["candidate"]["nll_mean"]
    assert base - sft > 1.0  # the demo SFT learned its task: NLL 5.6 -> 0.37 nats/token
    assert o["candidate"]["skill_retained"] == pytest.approx((base - cand) / (base - sft),
                                                             rel=1e-12)  # fmt: skip
    assert o["skill_retained"] == 1.0 and o["base"]["skill_retained"] == 0.0
    # the candidate lost most of it (0.27 over 128 examples in make demo's sweep)
    assert 0.15 < o["candidate"]["skill_retained"] < 0.5
    assert not any("skill_retained" in k for k in report["null_reasons"])
    row = next(r for r in report["comparison"] if r["candidate_metric"] == PATH)
    assert row["metric"] == "output.skill_retained" and row["better"] == "higher"
    assert row["sft"] == 1.0 and row["candidate"] == o["candidate"]["skill_retained"]
    assert row["improved"] is False and row["label"].startswith("skill retained")


def test_console_shows_skill_next_to_nll(report):
    from rich.console import Console

    from rejuv_cli.report.diagnose_console import fmt, render_diagnose

    console = Console(width=300, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    render_diagnose(console, report)
    lines = console.export_text().splitlines()
    assert any(".nll_mean ┃ .skill_retained ┃" in line for line in lines)  # next to NLL
    row = next(line for line in lines if line.startswith("│ candidate │ output.candidate "))
    cells = [c.strip() for c in row.split("│")]
    o = report["output"]["candidate"]
    assert cells[7:9] == [fmt(o["nll_mean"]), fmt(o["skill_retained"])]


def test_low_skill_makes_the_candidate_watch(report):
    skill = report["output"]["candidate"]["skill_retained"]
    cand = report["verdict"]["candidate"]
    assert cand["label"] == "watch"
    # the only rule that fired: entropy and drift alone would call this candidate ok
    assert [r["id"] for r in cand["reasons"]] == ["low_skill"]
    reason = cand["reasons"][0]
    assert reason["metric"] == PATH and reason["value"] == skill and reason["threshold"] == 0.9
    assert reason["message"].startswith(f"{PATH} = {skill:.4g} < 0.9: ")
    # SFT keeps all of its own skill: the rule never fires for it
    assert "low_skill" not in [r["id"] for r in report["verdict"]["reasons"]]


def test_min_skill_moves_the_threshold_and_gate_exits_3(fused):
    r = run_cli("diagnose", BASE, SFT, "--candidate", fused, *QUICK, "--min-skill", "0.15",
                "--json", "-", "--fail-on", f"{PATH}<0.9")  # fmt: skip
    assert r.exit_code == 3, r.output
    report = json.loads(r.stdout)
    assert report["verdict"]["candidate"]["label"] == "ok"  # it keeps more than 0.15
    assert report["gates"][0]["tripped"] is True
    assert f"gate tripped: {PATH}<0.9" in r.stderr


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan"])
def test_min_skill_outside_0_1_is_a_usage_error(value):
    fails(run_cli("diagnose", BASE, SFT, "--min-skill", value), 2, "--min-skill: must be",
          one_line=True)  # fmt: skip


def test_sft_as_candidate_keeps_all_its_skill(tmp_path):
    r = run_cli("diagnose", BASE, SFT, "--candidate", SFT, *QUICK, "--json", tmp_path / "r.json",
                "--html", tmp_path / "r.html")  # fmt: skip
    assert r.exit_code == 0, r.output
    report = read_json(tmp_path / "r.json")
    assert report["output"]["candidate"]["skill_retained"] == 1.0
    assert report["verdict"]["candidate"]["label"] == report["verdict"]["label"]
    page = (tmp_path / "r.html").read_text()
    assert f'data-path="{PATH}"' in page and "skill retained" in page


def test_no_sft_gain_gives_null_with_the_reason(tmp_path):
    """BASE as its own SFT: there is no gain to retain, so every skill value is null."""
    r = run_cli("diagnose", BASE, BASE, "--candidate", SFT, *QUICK, "--json", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    report = read_json(tmp_path / "r.json")
    o, nulls = report["output"], report["null_reasons"]
    assert o["skill_retained"] is None and o["candidate"]["skill_retained"] is None
    assert o["base"]["skill_retained"] is None
    for path in ("output.skill_retained", "output.base.skill_retained", PATH):
        assert "is not below BASE's" in nulls[path], path
    assert "low_skill" not in [x["id"] for x in report["verdict"]["candidate"]["reasons"]]
    # a gate on it is a usage error that says why, not a pass
    fails(run_cli("diagnose", BASE, BASE, "--candidate", SFT, *QUICK, "--fail-on",
                  f"{PATH}<0.9"), 2, "is not below BASE's")  # fmt: skip


def test_skill_retained_by_hand():
    assert skill_retained(2.0, 1.0, 1.25) == (0.75, None)
    assert skill_retained(2.0, 1.0, 3.0) == (-1.0, None)  # worse than BASE
    value, why = skill_retained(2.0, 2.0 - MIN_NLL_GAIN / 2, 1.0)
    assert value is None and "not below BASE's" in why
    value, why = skill_retained(1.0, 1.5, 1.0)  # SFT worse than BASE
    assert value is None and "SFT's NLL (1.5)" in why


def test_suggested_diagnose_line_carries_min_skill():
    from rejuv_cli.diagnostics.run import DiagnoseJob, measurement_flags

    assert measurement_flags(DiagnoseJob("b", "s", min_skill=0.5)) == ["--min-skill", "0.5"]
    assert measurement_flags(DiagnoseJob("b", "s")) == []  # the default is not repeated
