"""`rejuv diagnose` edges on the shipped demo pair (a trained char-level Llama, make demo):
an SFT that added ChatML tokens, the suggested next command, sharpness that BASE's noise made
negative, and gate paths (declared once in report/schema.py, shown beside every label)."""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pytest
import torch
from conftest import fails, read_json, run_cli

from rejuv_cli.report.gates import evaluate, format_path, parse_gate
from rejuv_cli.report.schema import (
    ANY,
    EACH,
    SCHEMA,
    Leaf,
    RunFlags,
    check_gate,
    leaf_patterns,
    node_at,
    parse_path,
    pattern_of,
)

DEMO = Path(__file__).resolve().parents[1] / "bench" / "handoff" / "demo"
BASE, SFT, CALIB = DEMO / "base", DEMO / "sft", DEMO / "calib.jsonl"
# σ 0.05: at the default 0.02 the over-trained demo BASE sits at a minimum of the calibration
# loss (sharpness −0.0003 with 2 draws), which leaves the ratio undefined
QUICK = ("--samples", "32", "--sharpness-draws", "2", "--sharpness-sigma", "0.05")
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
ALL = RunFlags(weights_only=False, candidate=True, rank=True, sharpness=True, generate=True)


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    """The demo SFT as an SFT run that adds ChatML tokens makes it: the tokens added to its
    (real, char-level) tokenizer, embeddings resized by transformers, a ChatML chat template,
    and the demo's calibration set as messages."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("chatml")
    tok = AutoTokenizer.from_pretrained(SFT)
    model = AutoModelForCausalLM.from_pretrained(SFT, dtype=torch.float32)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    model.resize_token_embeddings(len(tok))
    tok.chat_template = CHATML
    model.save_pretrained(root / "sft")
    tok.save_pretrained(root / "sft")
    lines = []
    for line in CALIB.read_text().splitlines():
        ex = json.loads(line)
        turns = [{"role": "user", "content": ex["prompt"]},
                 {"role": "assistant", "content": ex["response"]}]  # fmt: skip
        lines.append(json.dumps({"messages": turns}))
    (root / "chat.jsonl").write_text("\n".join(lines) + "\n")
    return root / "sft", root / "chat.jsonl"


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    """Demo BASE vs SFT with SFT itself as the candidate (so the candidate's rules fire too),
    --rank, --generate (small) and a gate: every section of the report is there."""
    root = tmp_path_factory.mktemp("demo")
    r = run_cli("diagnose", BASE, SFT, "--candidate", SFT, "--calib", CALIB, *QUICK, "--rank",
                "--generate", "--group-size", "2", "--max-new-tokens", "12",
                "--json", root / "r.json", "--html", root / "r.html",
                "--fail-on", "weights.drift_max>5")  # fmt: skip
    assert r.exit_code == 0, r.output
    return read_json(root / "r.json"), (root / "r.html").read_text(), r.stderr


# --- 7: an SFT that added tokens and uses them in its chat template ----------------------------


def test_chat_tokens_added_by_sft_are_diagnosed(chat):
    sft, data = chat
    r = run_cli("diagnose", BASE, sft, "--calib", data, *QUICK, "--json", "-")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    # each response is "<answer><|im_end|>\n": the <|im_end|> target (SFT-only) is skipped
    assert report["output"]["tokens"] == report["inputs"]["response_tokens"] - 32
    assert report["output"]["base"]["tokens"] == report["output"]["tokens"]
    assert 0 < report["output"]["kl_mean"] < 50
    note = next(w for w in report["warnings"] if "mean of its input embeddings" in w)
    # 32 examples × (two <|im_start|> + two <|im_end|>), ids 17 and 18
    assert "BASE has 17 embedding rows; 128 input position(s) held ids beyond them" in note
    assert "(tokens added by SFT: 17, 18)" in note
    assert any("vocabulary sizes differ (base 17, sft 19)" in w for w in report["warnings"])
    # diagnose fuses nothing: its warning says what the weight statistics cover
    rows = [w for w in report["warnings"] if "exist only in SFT (added tokens)" in w]
    assert rows and all(w.endswith(": the weight statistics cover the 17 rows BASE has")
                        for w in rows), rows  # fmt: skip
    assert not any("fused" in w or "copied" in w for w in report["warnings"])


def test_sweep_with_chat_tokens_added_by_sft_matches_diagnose(chat, tmp_path):
    """The sweep's in-memory candidate of an SFT with added tokens measures like diagnose does on
    the checkpoint fuse writes (shared vocabulary, added-token targets skipped)."""
    sft, data = chat
    r = run_cli("sweep", BASE, sft, "--calib", data, "--samples", "32", "--alphas", "0.5",
                "--json", "-", "-q")  # fmt: skip
    assert r.exit_code == 0, r.output
    sweep = json.loads(r.stdout)
    assert sweep["weights_in_memory"]
    assert any("vocabulary sizes differ (BASE 17, SFT 19)" in w for w in sweep["warnings"])
    out = tmp_path / "fused"
    assert run_cli("fuse", BASE, sft, "--out", out, "--alpha", "0.5", "-q").exit_code == 0
    r = run_cli("diagnose", BASE, sft, "--candidate", out, "--calib", data, "--samples", "32",
                "--sharpness-draws", "0", "--json", "-")  # fmt: skip
    assert r.exit_code == 0, r.output
    cand = json.loads(r.stdout)["output"]["candidate"]
    row = sweep["rows"][0]
    assert row["tokens"] == cand["tokens"]
    for key in ("entropy_mean", "kl_mean", "nll_mean", "p_max_mean"):
        assert row[key] == pytest.approx(cand[key], rel=1e-5), key


def test_base_reads_an_added_id_as_its_mean_embedding(chat):
    """The hooked BASE gives the logits of BASE resized with the added rows set to the mean
    embedding (transformers' resize_token_embeddings, mean_resizing)."""
    from transformers import AutoModelForCausalLM

    from rejuv_cli.calib.models import load_model

    hooked = load_model(BASE, "BASE", torch.device("cpu"))
    resized = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32).eval()
    emb = resized.get_input_embeddings().weight.detach()
    mean = emb.mean(0)
    resized.resize_token_embeddings(19, mean_resizing=False)
    with torch.no_grad():
        resized.get_input_embeddings().weight[17:] = mean
    ids = torch.tensor([[1, 17, 5, 6, 18, 4, 2]])
    with torch.no_grad():
        got = hooked(input_ids=ids).logits
        want = resized(input_ids=ids).logits[..., :17]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert hooked._rejuv_unseen.count == 2 and hooked._rejuv_unseen.ids == {17, 18}
    with torch.no_grad():  # ids it has are untouched
        plain = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32).eval()
        torch.testing.assert_close(hooked(input_ids=ids.clamp(max=16)).logits,
                                   plain(input_ids=ids.clamp(max=16)).logits)  # fmt: skip


def test_fuse_select_attribution_with_added_chat_tokens(chat, tmp_path):
    sft, data = chat
    out = tmp_path / "out"
    r = run_cli("fuse", BASE, sft, "--out", out, "--select", "attribution", "--calib", data,
                "--samples", "8")  # fmt: skip
    assert r.exit_code == 0, r.output
    card = read_json(out / "rejuv.json")
    assert card["reset"]["selected"] == card["reset"]["target"] == 18
    assert card["reset"]["scorer"]["positions"] > 0
    assert any("mean of its input embeddings" in w for w in card["warnings"])


# --- 10: the suggested next command keeps the user's flags ------------------------------------


def test_printed_next_command_measures_the_same_way(tmp_path, monkeypatch):
    """The suggested `rejuv sweep` line carries the run's data flags, runs as printed, and its
    SFT row equals this report's SFT numbers."""
    monkeypatch.chdir(tmp_path)  # the suggestion writes ./sft-rejuv and ./sft-sweep.html
    r = run_cli("diagnose", BASE, SFT, "--calib", CALIB, *QUICK, "--json", "first.json")
    assert r.exit_code == 0, r.output
    first = read_json(tmp_path / "first.json")
    assert first["verdict"]["label"] == "rigid"  # the over-trained demo SFT
    command = first["verdict"]["suggested_command"]
    assert f"--calib {CALIB} --samples 32" in command and "--sharpness" not in command
    assert f"next: {command}" in " ".join(r.stderr.split())
    sweep = shlex.split(command)
    assert sweep[:2] == ["rejuv", "sweep"] and sweep[-4:] == ["--out", "sft-rejuv", "--html",
                                                               "sft-sweep.html"]  # fmt: skip
    r = run_cli(*sweep[1:], "--alphas", "0.5,0.9", "--json", "second.json")
    assert r.exit_code == 0, r.output
    second = read_json(tmp_path / "second.json")
    for key in ("entropy_mean", "nll_mean", "kl_mean"):
        assert second["sft"][key] == pytest.approx(first["output"][key], rel=1e-6), key
    assert (tmp_path / "sft-sweep.html").is_file()
    assert (tmp_path / "sft-rejuv").is_dir() == (second["recommendation"]["alpha"] is not None)


def test_text_the_tokenizer_cannot_represent_is_flagged():
    """builtin:math is words; the demo's char-level tokenizer has digits, + and = only."""
    r = run_cli("diagnose", BASE, SFT, "--samples", "8", "--sharpness-draws", "0", "--json", "-")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    share = report["inputs"]["unk_share"]
    assert share > 0.5
    assert f"{share:.0%} of the calibration tokens are the tokenizer's unknown token '<unk>'" in (
        " ".join(report["warnings"])
    )
    assert report["verdict"]["label"] == "rigid"  # what the demo's own data calls "watch"


# --- 11: sharpness ----------------------------------------------------------------------------


def test_sharpness_ratio_is_measured_on_the_demo_pair(demo_report):
    report, _, _ = demo_report
    s = report["sharpness"]
    assert s["base"] > 0 and s["sft"] > 0
    assert s["ratio"] == pytest.approx(s["sft"] / s["base"]) and s["ratio"] >= 0
    base = s["per_model"]["base"]
    plus = [a - base["loss"] for a in base["perturbed"]]
    minus = [b - base["loss"] for b in base["mirrored"]]
    # the first-order term flips sign between u and −u: one-sided draws are noisier
    assert max(abs(a - b) for a, b in zip(plus, minus, strict=True)) > s["base"]
    assert s["base"] == pytest.approx(
        sum((a + b) / 2 for a, b in zip(plus, minus, strict=True)) / 2
    )


def test_a_null_ratio_says_why():
    from types import SimpleNamespace

    from rejuv_cli.diagnostics.forward_report import sharpness_section

    nulls: dict = {}
    job = SimpleNamespace(sharpness_sigma=0.02, sharpness_draws=3)
    sharp = {"base": {"value": -0.0012}, "sft": {"value": 0.003}}
    section = sharpness_section(sharp, job, nulls)
    assert section["ratio"] is None and section["sft"] == 0.003
    report = {"sharpness": section, "null_reasons": nulls}
    with pytest.raises(Exception) as info:
        evaluate([parse_gate("sharpness.ratio>2")], report)
    assert str(info.value).startswith(
        "--fail-on 'sharpness.ratio>2': 'sharpness.ratio' is null in this report (BASE's "
        "sharpness is -0.0012 (≤ 0: on average the calibration loss did not rise under the "
        "weight noise, σ_rel 0.02, 3 draw(s) of ±u), so a ratio to it is undefined; gate on "
        "sharpness.sft instead"
    )


def test_gates_on_sections_left_out_say_why_before_the_run(tmp_path):
    missing = tmp_path / "no-such-model"  # the gate is refused before the models are opened
    cases = [
        (("--fail-on", "units.dormant_share>0.1"),
         "'dormant_share' is not a key of the report under 'units'; available: taus, dormant"),
        (("--sharpness-draws", "0", "--fail-on", "sharpness.ratio>2"),
         "'sharpness' is not measured with --sharpness-draws 0"),
        (("--fail-on", "weights.rank.modules_mean.q.stable_rank>1"),
         "'weights.rank' needs --rank"),
        (("--fail-on", "sharpness.candidate_ratio>2"),
         "'sharpness.candidate_ratio' needs --candidate"),
        (("--weights-only", "--fail-on", "units.saturated>0.5"),
         "'units' is not measured with --weights-only"),
        (("--fail-on", "verdict.label>1"), "'verdict.label' is a string, but the gate compares"),
        (("--fail-on", "output.entropy_mean==rigid"), "is a number, but the gate compares it"),
        (("--fail-on", "units.dormant>0.3"), "'units.dormant' is an object or list"),
        (("--fail-on", "gates[0].tripped==1"), "'gates' is written after the gates"),
    ]  # fmt: skip
    for args, message in cases:
        fails(run_cli("diagnose", missing, missing, *args), 2, message)
    # the comparison's path of the dormant share is a valid gate
    check_gate(parse_gate('units.candidate.dormant["0.025"]>0.1'), ALL)


# --- 12: gate paths beside every label, one declared structure --------------------------------


def _leaves(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, (*path, i))
    else:
        yield path, node


def _kind_ok(leaf: Leaf, value) -> bool:
    if value is None:
        return True
    return {"number": isinstance(value, int | float) and not isinstance(value, bool),
            "integer": isinstance(value, int) and not isinstance(value, bool),
            "string": isinstance(value, str), "boolean": isinstance(value, bool)}.get(
        leaf.kind, True)  # fmt: skip


def _undeclared_absent(node, spec, path=()):
    """The declared keys missing from `node`, an object of a real report, and from the objects
    inside it (a null section has none to miss)."""
    if isinstance(node, dict) and isinstance(spec, dict):
        for key, child in spec.items():
            if key == ANY:
                for name, value in node.items():
                    yield from _undeclared_absent(value, child, (*path, name))
            elif key != EACH:
                if key not in node:
                    yield format_path((*path, key))
                else:
                    yield from _undeclared_absent(node[key], child, (*path, key))
    elif isinstance(node, list) and isinstance(spec, dict) and EACH in spec:
        for i, value in enumerate(node):
            yield from _undeclared_absent(value, spec[EACH], (*path, i))


def test_schema_declares_exactly_the_paths_of_real_reports(demo_report, chat):
    """With and without --candidate, --rank and --generate (and --weights-only): every path of
    a real report is declared, every declared key is present in every report (null when this
    run did not measure it, and `null_reasons` says why), and every declared value occurs."""
    sft, data = chat
    r = run_cli("diagnose", BASE, sft, "--calib", data, "--samples", "8", "--json", "-",
                "--sharpness-draws", "1")  # fmt: skip
    assert r.exit_code == 0, r.output
    chat_report = json.loads(r.stdout)
    r = run_cli("diagnose", BASE, SFT, "--weights-only", "--json", "-")
    assert r.exit_code == 0, r.output
    weights_only = json.loads(r.stdout)
    r = run_cli("diagnose", BASE, SFT, "--weights-only", "--candidate", SFT, "--rank", "--json",
                "-")  # fmt: skip
    assert r.exit_code == 0, r.output
    weights_candidate = json.loads(r.stdout)
    reports = [demo_report[0], chat_report, weights_only, weights_candidate]
    # absent is null, not missing: weights.rank without --rank, the candidate's sections
    # without --candidate, --generate's numbers without it
    assert weights_only["weights"]["rank"] is None and weights_only["weights"]["candidate"] is None
    assert chat_report["output"]["accuracy"] is None and chat_report["output"]["candidate"] is None
    assert chat_report["inputs"]["generation"] is None and weights_only["inputs"]["dtype"] is None
    assert chat_report["null_reasons"]["output.accuracy"] == "'output.accuracy' needs --generate"
    assert weights_only["null_reasons"]["weights.rank"] == "'weights.rank' needs --rank"
    # the candidate's weight section has the same keys as SFT's, per-unit drift included
    cand = weights_candidate["weights"]["candidate"]
    assert set(cand) == set(weights_candidate["weights"]) - {"candidate"}
    assert cand["units"] == weights_candidate["weights"]["units"]  # the candidate is SFT here
    assert cand["rank"]["modules_mean"] == weights_candidate["weights"]["rank"]["modules_mean"]
    assert set(demo_report[0]["weights"]["candidate"]["units"]) == {"q", "k", "v", "o", "mlp"}
    seen = set()
    for report in reports:
        assert list(_undeclared_absent(report, SCHEMA)) == []
        for path, value in _leaves(report):
            pattern = pattern_of(path)
            assert pattern is not None, f"{format_path(path)} is not declared in the schema"
            node = node_at(path)
            if isinstance(node, Leaf):
                assert _kind_ok(node, value), (format_path(path), node.kind, value)
                seen.add(pattern)
            else:  # a null section or an empty list / object
                assert value in (None, [], {}), format_path(path)
            if value is None:  # every null says why
                assert any(format_path(path[:i]) in report["null_reasons"]
                           for i in range(1, len(path) + 1)), format_path(path)  # fmt: skip
    # the demo is dense: `routing` is null here (tests/test_routing.py sees every routing key)
    declared = {p for p in leaf_patterns() if p[0] != "routing"}
    # a warning-free unit map has no unhooked modules, and a dense model no unrouted
    # experts (tests/test_moe_units.py sees those); everything else occurs
    assert declared - seen == {(*model, key, EACH) for key in ("not_measured", "unrouted")
                               for model in [("units",), ("units", "base"),
                                             ("units", "candidate")]}  # fmt: skip
    assert ANY in SCHEMA["weights"]["tensors"]


def test_every_path_shown_in_the_terminal_report_resolves(demo_report):
    from rich.console import Console

    from rejuv_cli.report.diagnose_console import render_diagnose, shown_paths

    report, _, _ = demo_report
    console = Console(width=300, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    render_diagnose(console, report)
    text = " ".join(console.export_text().split())
    paths = shown_paths(report)
    assert 'units.dormant["0.025"]' in paths and "sharpness.ratio" in paths
    assert len(paths) > 100
    for path in paths:
        value = _actual(report, path)
        check_gate(parse_gate(f"{path}=={'x' if isinstance(value, str) else 0}"), ALL)
    for shown in ("weights.overall", "weights.candidate.overall", ".rel_drift", "output.base",
                  "output.candidate", '.dormant["0.025"]', "(sharpness.ratio)",
                  'units.dormant["0.025"]; units.candidate.dormant["0.025"]',
                  "weights.candidate.drift_max = "):  # fmt: skip
        assert shown in text, shown


@pytest.mark.parametrize("width", [80, 40])
def test_terminal_report_keeps_every_number_whole_when_narrow(demo_report, width):
    """At 80 columns the tables turn on their side (a row per metric) and stay tables; at 40
    they become one line per value. Rich never cuts a cell to "…", and every number the
    report shows appears whole, formatted by its kind (a share as a percentage)."""
    from rich.cells import cell_len
    from rich.console import Console

    from rejuv_cli.report.diagnose_console import render_diagnose, shown_paths
    from rejuv_cli.report.numbers import shown_at

    report, _, _ = demo_report
    console = Console(width=width, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    render_diagnose(console, report)
    text = console.export_text()
    assert "…" not in text
    lines = text.splitlines()
    boxed = [line for line in lines if any(c in line for c in "│┃┏┗┡└")]
    assert all(cell_len(line) <= width for line in boxed)
    words = set(re.split(r"[\s=]+", text))
    for path in shown_paths(report):
        value = _actual(report, path)
        if isinstance(value, int | float) and not isinstance(value, bool):
            shown = shown_at(parse_path(path), value)
            assert any(w.strip("(),:;") == shown for w in words), (path, shown)
    if width == 80:  # still tables: the output, units and before/after ones
        assert sum(line.startswith("┃ metric ") for line in lines) >= 4, text
        assert any(line.startswith("┃ metric ") and "candidate ┃ change" in line
                   for line in lines)  # fmt: skip
        assert ' dormant ≤0.025 │ .dormant["0.025"] ' in text
    else:
        assert not boxed[:1] or max(cell_len(line) for line in boxed) <= 40
        assert "  skill retained: 1  .skill_retained" in text
    # shares read as percentages in every table, the before/after one included
    share = report["units"]["dormant"]["0.025"]
    assert text.count(shown_at(("units", "dormant", "0.025"), share)) >= 2
    assert f"{share:.4g}" not in words
    # the terms the tables use are defined under them
    for term in ("ReDo:", "msd:", "kurtosis:", "skill:", "learnable share:", "sharpness (rise"):
        assert term in " ".join(text.split()), term


def _actual(report: dict, path: str):
    """The value a --fail-on gate on `path` reads (number or string); raises if none."""
    from rejuv_cli.errors import UsageError

    try:
        (result,) = evaluate([parse_gate(f"{path}>=-1e300")], report)
    except UsageError:
        (result,) = evaluate([parse_gate(f"{path}!=not_this")], report)
    assert result.actual is not None and parse_path(path) == parse_gate(f"{path}<1").path
    return result.actual


def test_every_path_in_the_html_report_resolves(demo_report):
    report, page, _ = demo_report
    paths = {p.replace("&quot;", '"') for p in re.findall(r'data-path="([^"]*)"', page)}
    assert len(paths) > 300
    for path in paths:
        _actual(report, path)
    for key in ("output.entropy_mean", 'units.dormant["0.025"]', "sharpness.ratio",
                'weights.layer_modules["2.v"].rel_drift', "weights.units.mlp.p99"):  # fmt: skip
        assert key in paths, key
    # labels carry their paths in the text as well
    assert '<span class="path">sharpness.ratio</span>' in page
    assert '<span class="path">units.dormant[&quot;0.025&quot;]</span>' in page


def test_comparison_rows_name_valid_gate_paths(demo_report):
    report, _, _ = demo_report
    rows = report["comparison"]
    assert {r["metric"] for r in rows} >= {'units.dormant["0.025"]', "sharpness.ratio"}
    for row in rows:
        for key, side in (("metric", "sft"), ("candidate_metric", "candidate")):
            (result,) = evaluate([parse_gate(f"{row[key]}>=-1e300")], report)
            assert result.actual == row[side]
    reasons = report["verdict"]["candidate"]["reasons"]
    assert reasons and all(".candidate" in r["metric"] or "candidate_ratio" in r["metric"]
                           for r in reasons)  # fmt: skip


def test_rule_and_comparison_paths_are_declared():
    from rejuv_cli.diagnostics.run import CANDIDATE_RULE_PATHS, COMPARED
    from rejuv_cli.diagnostics.verdict import RULES

    paths = [r.metric for r in RULES] + [p for row in COMPARED for p in row[:2]]
    paths += list(CANDIDATE_RULE_PATHS.values())
    for path in paths:
        check_gate(parse_gate(f"{path}>1"), ALL)
        assert node_at(parse_path(path)).label, path  # each has a readable label


def test_every_measurement_flag_is_carried_and_quoted(tmp_path):
    from rejuv_cli.diagnostics.run import DiagnoseJob, measurement_flags
    from rejuv_cli.diagnostics.verdict import suggested_command

    job = DiagnoseJob("b", "my sft", calib="data dir/c.jsonl", samples=10, max_tokens=64,
                      device="cpu", batch_tokens=512, sharpness_draws=1, sharpness_sigma=0.05,
                      max_memory=2_000_000_000, rank=True, min_skill=0.8, generate=True,
                      group_size=4, max_new_tokens=32)  # fmt: skip
    assert measurement_flags(job) == [
        "--calib", "data dir/c.jsonl", "--samples", "10", "--max-tokens", "64", "--device",
        "cpu", "--batch-tokens", "512", "--sharpness-draws", "1", "--sharpness-sigma", "0.05",
        "--min-skill", "0.8", "--group-size", "4", "--max-new-tokens", "32", "--max-memory",
        "2000000000B", "--generate", "--rank"]  # fmt: skip
    command = suggested_command("watch", "b", "my sft", measurement_flags(job, "sweep"))
    assert command == (
        "rejuv sweep b 'my sft' --calib 'data dir/c.jsonl' --samples 10 --max-tokens 64 "
        "--device cpu --batch-tokens 512 --min-skill 0.8 --group-size 4 --max-new-tokens 32 "
        "--max-memory 2000000000B --generate --out 'my sft-rejuv' --html 'my sft-sweep.html'"
    )
    # the CLI accepts every flag as printed: it gets as far as reading the calibration data
    fails(run_cli(*shlex.split(command)[1:]), 1, "data dir/c.jsonl")
    weights_only = DiagnoseJob("b", "s", samples=10, weights_only=True, device="cpu")
    assert measurement_flags(weights_only) == ["--device", "cpu", "--weights-only"]
    assert measurement_flags(DiagnoseJob("b", "s")) == []
