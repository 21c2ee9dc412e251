"""`rejuv diagnose --generate` (issue #15, section 1): accuracy, pass@k and learnable share per
model in the output section, the `low_learnable` rule, gates, and refusals before any work; on
the shipped demo pair, whose calibration lines carry an "answer" field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import fails, run_cli

from rejuv_cli.diagnostics.verdict import judge
from rejuv_cli.ops.passk import group_summary

DEMO = Path(__file__).resolve().parents[1] / "bench" / "handoff" / "demo"
BASE, SFT, CALIB = DEMO / "base", DEMO / "sft", DEMO / "calib.jsonl"
GEN = ("--calib", CALIB, "--samples", "24", "--sharpness-draws", "0", "--generate",
       "--group-size", "4", "--max-new-tokens", "12")  # fmt: skip


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "fused"
    assert run_cli("fuse", BASE, SFT, "--out", out, "--alpha", "0.5", "-q").exit_code == 0
    return out


@pytest.fixture(scope="module")
def report(fused):
    r = run_cli("diagnose", BASE, SFT, "--candidate", fused, *GEN, "--json", "-")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_generation_numbers_sit_in_each_models_output_block(report):
    o = report["output"]
    for block in (o, o["base"], o["candidate"]):
        assert 0 <= block["accuracy"] <= 1 and 0 <= block["learnable_share"] <= 1
        assert block["pass_at_1"] <= block["pass_at_k"]
        shares = block["learnable_share"] + block["all_wrong_share"] + block["all_right_share"]
        assert shares == pytest.approx(1.0)
    assert o["accuracy"] > 0.2 > o["base"]["accuracy"]  # the toy SFT learned the task
    assert o["candidate"]["accuracy_retained"] == pytest.approx(
        (o["candidate"]["accuracy"] - o["base"]["accuracy"])
        / (o["accuracy"] - o["base"]["accuracy"])
    )
    assert o["accuracy_retained"] == 1.0 and o["base"]["accuracy_retained"] == 0.0
    gen = report["inputs"]["generation"]
    assert gen == {"checkable": 24, "group_size": 4, "max_new_tokens": 12, "checker": "auto",
                   "seed": 0, "temperature": 1.0}  # fmt: skip
    assert report["verdict"]["measured"].endswith(", generation")


def test_before_after_rows_include_accuracy_and_learnable_share(report):
    rows = {r["metric"]: r for r in report["comparison"]}
    for metric in ("output.skill_retained", "output.accuracy", "output.learnable_share",
                   "output.pass_at_k"):  # fmt: skip
        assert metric in rows, metric
    acc = rows["output.accuracy"]
    assert acc["candidate_metric"] == "output.candidate.accuracy"
    assert acc["improved"] == (acc["candidate"] > acc["sft"])


def test_console_and_html_show_the_generation_table(fused, tmp_path):
    page = tmp_path / "r.html"
    r = run_cli("diagnose", BASE, SFT, "--candidate", fused, *GEN, "--html", page)
    assert r.exit_code == 0, r.output
    assert "generation (--generate)" in r.stderr
    html = page.read_text()
    for path in ("output.learnable_share", "output.candidate.accuracy", "output.base.pass_at_k"):
        assert f'data-path="{path}"' in html, path


def test_low_learnable_rule_and_its_threshold(report):
    fires = judge({"output.learnable_share": 0.1})
    assert fires[0] == "watch" and fires[1][0]["id"] == "low_learnable"
    assert judge({"output.learnable_share": 0.3})[0] == "ok"
    assert judge({"output.learnable_share": 0.3}, thresholds={"low_learnable": 0.5})[0] == "watch"
    ids = [x["id"] for x in report["verdict"]["reasons"]]
    assert ("low_learnable" in ids) == (report["output"]["learnable_share"] < 0.25)


def test_min_learnable_makes_sft_watch_and_gates_read_the_share(fused):
    r = run_cli("diagnose", BASE, SFT, *GEN, "--min-learnable", "1", "--json", "-",
                "--fail-on", "output.learnable_share<1")  # fmt: skip
    assert r.exit_code == 3, r.output
    report = json.loads(r.stdout)
    reason = next(x for x in report["verdict"]["reasons"] if x["id"] == "low_learnable")
    assert reason["threshold"] == 1.0 and reason["metric"] == "output.learnable_share"
    assert report["verdict"]["suggested_command"].startswith("rejuv sweep ")
    command = report["verdict"]["suggested_command"]
    assert "--group-size 4 --max-new-tokens 12 --generate" in command
    assert "--min-learnable" not in command  # a diagnose setting; sweep does not take it


def test_learnable_share_from_known_outcomes():
    # 4 prompts, k = 4: 0, 2, 4 and 1 correct -> 2 learnable, 1 all wrong, 1 all right
    s = group_summary([0, 2, 4, 1], 4)
    assert s["learnable_share"] == 0.5 and s["all_wrong_share"] == 0.25
    assert s["all_right_share"] == 0.25 and s["pass_at_k"] == 0.75
    assert s["pass_at_1"] == pytest.approx((0 + 0.5 + 1 + 0.25) / 4)


# ---- refused before any model is read ----------------------------------------------------------
def test_generate_needs_checkable_data(tmp_path):
    data = tmp_path / "plain.jsonl"
    data.write_text('{"prompt": "1+1=", "response": "2"}\n')
    fails(run_cli("diagnose", "/no/base", "/no/sft", "--calib", data, "--generate"), 2,
          "has a reference answer")  # fmt: skip


def test_generate_with_weights_only_is_a_usage_error():
    fails(run_cli("diagnose", BASE, SFT, "--weights-only", "--generate"), 2, "--generate")


def test_gate_on_generation_needs_generate():
    fails(run_cli("diagnose", BASE, SFT, "--calib", CALIB, "--fail-on",
                  "output.learnable_share<0.25"), 2, "needs --generate")  # fmt: skip


def test_unknown_checker_is_a_usage_error():
    fails(run_cli("diagnose", BASE, SFT, "--checker", "fuzzy"), 2,
          "--checker: must be one of auto, number, text")  # fmt: skip
    fails(run_cli("sweep", BASE, SFT, "--checker", "fuzzy"), 2, "--checker")
