"""The Python API (#21, point 6): `rejuv_cli.fuse`, `diagnose` and `sweep` take the commands'
settings by name, return typed results that equal what the CLI writes as JSON, raise rejuv's
exception classes, and importing them loads no torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import run_cli, validate_report
from test_sweep import BASE as DEMO_BASE
from test_sweep import CALIB as DEMO_CALIB
from test_sweep import SFT as DEMO_SFT

import rejuv_cli
from rejuv_cli.errors import RecipeError, ResolveError, UsageError


def without_timings(report: dict) -> dict:
    """A report with its wall-clock figures removed (they differ between any two runs)."""
    out = json.loads(json.dumps(report))
    out.pop("seconds", None)
    for row in out.get("rows", []):
        row.pop("seconds", None)
    if isinstance(out.get("reset"), dict):
        out["reset"].pop("seconds", None)
    return out


def test_import_loads_no_torch():
    code = ("import sys, rejuv_cli; f = rejuv_cli.fuse, rejuv_cli.diagnose, rejuv_cli.sweep; "
            "heavy = ('torch', 'transformers'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"
    assert rejuv_cli.fuse.__module__ == "rejuv_cli.api.fuse"
    with pytest.raises(AttributeError, match="has no attribute 'fuze'"):
        rejuv_cli.fuze  # noqa: B018


def test_fuse_writes_what_the_command_writes(llama, tmp_path):
    base, sft = llama
    settings = {"alpha": 0.4, "fraction": 0.02, "modules": ["k", "v", "mlp"], "seed": 3}
    result = rejuv_cli.fuse(base, sft, tmp_path / "api", **settings)
    r = run_cli("fuse", base, sft, "--out", tmp_path / "cli", "--alpha", "0.4", "--reset", "0.02",
                "--modules", "k,v,mlp", "--seed", "3", "--json", "-q")  # fmt: skip
    assert r.exit_code == 0, r.output
    cli = json.loads(r.stdout)
    assert isinstance(result, rejuv_cli.FuseResult) and result.out == tmp_path / "api"
    assert result.reset["selected"] == cli["reset"]["selected"] > 0
    assert result.reset["modules"] == ["k", "v", "mlp"]
    shards = sorted(p.name for p in (tmp_path / "cli").glob("*.safetensors"))
    assert shards == sorted(p.name for p in result.out.glob("*.safetensors"))
    for name in shards:
        assert (result.out / name).read_bytes() == (tmp_path / "cli" / name).read_bytes()
    api_record = json.loads((result.out / "rejuv.json").read_text())
    cli_record = json.loads((tmp_path / "cli" / "rejuv.json").read_text())
    validate_report("rejuv.json", api_record)
    # the same command line (the API records the CLI equivalent), apart from --out
    cli_command = cli_record["command"].replace(str(tmp_path / "cli"), str(tmp_path / "api"))
    assert api_record["command"] == cli_command
    for record in (api_record, cli_record):
        record.pop("command"), record.pop("seconds"), record["reset"].pop("seconds")
    assert api_record == cli_record


def test_fuse_dry_run_writes_nothing(llama, tmp_path):
    result = rejuv_cli.fuse(*llama, tmp_path / "out", dry_run=True)
    assert result.dry_run and result.out is None and not (tmp_path / "out").exists()
    assert result.summary["counts"]["tensors"] > 0


def test_diagnose_returns_the_report_the_command_writes(llama):
    base, sft = llama
    gates = ["weights.drift_max>0", "verdict.label==rigid"]
    result = rejuv_cli.diagnose(base, sft, weights_only=True, fail_on=gates)
    r = run_cli("diagnose", base, sft, "--weights-only", "--json", "-", "-q",
                *[x for g in gates for x in ("--fail-on", g)])  # fmt: skip
    assert r.exit_code == 3  # drift_max > 0 holds
    cli = json.loads(r.stdout)
    assert without_timings(result.report) == without_timings(cli)
    validate_report("diagnose", result.report)
    assert result.verdict == cli["verdict"]["label"]
    outcomes = [(g.gate.text, g.tripped) for g in result.gates]
    assert outcomes == [(gates[0], True), (gates[1], result.verdict == "rigid")]
    assert [g.gate.text for g in result.tripped] == [
        g["gate"] for g in cli["gates"] if g["tripped"]
    ]
    fired = [c.rule.id for c in result.rules[""] if c.fired]
    assert fired == [reason["id"] for reason in cli["verdict"]["reasons"]]


def test_diagnose_with_forward_passes_matches_the_command(llama):
    base, sft = llama
    flags = {"samples": 8, "max_tokens": 128, "sharpness_draws": 0, "batch_tokens": 512}
    result = rejuv_cli.diagnose(base, sft, **flags)
    r = run_cli("diagnose", base, sft, "--samples", "8", "--max-tokens", "128",
                "--sharpness-draws", "0", "--batch-tokens", "512", "--json", "-", "-q")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert without_timings(result.report) == without_timings(json.loads(r.stdout))
    assert result.report["output"]["tokens"] > 0


def test_sweep_returns_the_table_the_command_writes(tmp_path):
    flags = {"calib": DEMO_CALIB, "samples": 16, "alphas": [0.5, 0.9], "fraction": 0}
    result = rejuv_cli.sweep(DEMO_BASE, DEMO_SFT, **flags)
    r = run_cli("sweep", DEMO_BASE, DEMO_SFT, "--calib", DEMO_CALIB, "--samples", "16",
                "--alphas", "0.5,0.9", "--reset", "0", "--json", "-", "-q")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert without_timings(result.report) == without_timings(json.loads(r.stdout))
    assert [row["alpha"] for row in result.rows] == [0.5, 0.9]
    assert result.recommended_alpha == result.recommendation["alpha"]


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda b, s, t: rejuv_cli.fuse(b, s, t, alpha=1.5), UsageError,
         "alpha (--alpha): must be >= 0.0 and <= 1.0 (got 1.5)"),
        (lambda b, s, t: rejuv_cli.fuse(b, s, t, reset=0.1), UsageError,
         "fuse: unknown setting(s) reset; the settings of fuse are recipe, alpha,"),
        (lambda b, s, t: rejuv_cli.sweep(b, s, alphas=[0.5, 0.5]), UsageError,
         "alphas (--alphas): lists 0.5 twice"),
        (lambda b, s, t: rejuv_cli.diagnose(b, s, weights_only=True, fail_on=["output.kl_mean>1"]),
         UsageError, "--fail-on 'output.kl_mean>1': 'output' is not measured with --weights-only"),
        (lambda b, s, t: rejuv_cli.fuse(t / "missing", s, t / "o"), ResolveError, "missing"),
        (lambda b, s, t: rejuv_cli.fuse(b, s, t / "o", recipe=str(t / "none.yaml")),
         RecipeError, "none.yaml"),
    ],
    ids=["bad-value", "unknown-setting", "repeated-alpha", "gate-not-measured", "no-base",
         "no-recipe"],
)  # fmt: skip
def test_errors_are_rejuvs_with_the_cli_messages(llama, tmp_path, call, error, message):
    with pytest.raises(error) as caught:
        call(*llama, tmp_path)
    assert message in str(caught.value)
    assert not (tmp_path / "o").exists()


def test_a_gate_the_report_cannot_evaluate_carries_the_report(llama):
    base, sft = llama
    with pytest.raises(rejuv_cli.GateError) as caught:
        rejuv_cli.diagnose(base, sft, weights_only=True, fail_on=["weights.tensors.nope.cosine<1"])
    assert caught.value.report["weights"]["overall"]["rel_drift"] > 0
    assert caught.value.exit_code == 2 and "nope" in str(caught.value)
