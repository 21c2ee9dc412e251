"""`rejuv diagnose` end to end on tiny real checkpoints: values against direct computations,
the verdict on a planted over-confident SFT, JSON schema, HTML, gates and exit codes."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest
import torch
from conftest import edit_checkpoint, load_dir, read_json, run_cli

from rejuv_cli.calib.data import load_examples
from rejuv_cli.calib.encode import encode

CALIB = "builtin:math"
FAST = ("--samples", "6", "--sharpness-draws", "1")


@pytest.fixture(scope="session")
def overconfident(llama, tmp_path_factory):
    """The llama SFT with lm_head scaled ×400: sharp, near one-hot next-token distributions."""
    dst = tmp_path_factory.mktemp("overconfident") / "sft"

    def scale(state):
        if "lm_head.weight" in state:
            state["lm_head.weight"] = (state["lm_head.weight"].float() * 400).to(torch.bfloat16)
            return True
        return False

    edit_checkpoint(llama[1], dst, scale)
    return dst


@pytest.fixture(scope="session")
def full_report(llama, tmp_path_factory):
    """One full diagnose run with a candidate (α = 0.5 fusion of the pair), JSON and HTML."""
    root = tmp_path_factory.mktemp("diag")
    fused = root / "fused"
    r = run_cli("fuse", *llama, "--out", fused, "--alpha", "0.5", "--reset", "0", "-q")
    assert r.exit_code == 0, r.output
    r = run_cli("diagnose", *llama, "--candidate", fused, *FAST, "--json", root / "r.json",
                "--html", root / "r.html", "--rank")  # fmt: skip
    assert r.exit_code == 0, r.output
    return read_json(root / "r.json"), root


def test_report_schema(full_report):
    report, _ = full_report
    assert report["schema_version"] == 1
    for key in ("verdict", "weights", "output", "units", "sharpness", "comparison", "inputs"):
        assert report[key] is not None, key
    assert report["verdict"]["label"] in ("rigid", "watch", "ok")
    assert report["verdict"]["heuristic"] is True
    assert set(report["output"]) >= {"entropy_mean", "p_max_mean", "confident_share",
                                     "entropy_ratio", "kl_mean", "base", "candidate"}  # fmt: skip
    assert report["units"]["taus"] == [0.01, 0.025, 0.1]
    assert report["inputs"]["samples"] == 6
    assert {row["metric"] for row in report["comparison"]} >= {
        "output.entropy_mean",
        "weights.overall.rel_drift",
    }


def test_candidate_half_fusion_halves_the_drift(full_report):
    report, _ = full_report
    sft, cand = report["weights"]["overall"], report["weights"]["candidate"]["overall"]
    # θ_f − θ_b = 0.5 Δ up to one bf16 rounding of θ_f
    assert cand["rel_drift"] == pytest.approx(0.5 * sft["rel_drift"], rel=0.03)
    row = next(r for r in report["comparison"] if r["metric"] == "weights.overall.rel_drift")
    assert row["improved"] and row["candidate"] == cand["rel_drift"]


def test_entropy_and_kl_match_a_direct_computation(llama, full_report):
    """Unbatched, unpadded forwards in float64 give the same per-token statistics."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report, _ = full_report
    tok = AutoTokenizer.from_pretrained(llama[1])
    encoded, _ = encode(load_examples(CALIB, 6), tok, 512)
    models = [AutoModelForCausalLM.from_pretrained(p, dtype=torch.float64).eval() for p in llama]
    ent, kl, pmax, nll = [], [], [], []
    with torch.no_grad():
        for e in encoded:
            ids = torch.tensor([e.input_ids])
            targets = np.array(e.response[1:])
            lb, ls = (m(input_ids=ids).logits[0, :-1][targets] for m in models)
            pb, ps = torch.softmax(lb, -1), torch.softmax(ls, -1)
            ent.append(-(ps * ps.log()).sum(-1))
            kl.append((ps * (ps.log() - pb.log())).sum(-1))
            pmax.append(ps.max(-1).values)
            nll.append(-ps.log()[torch.arange(len(ps)), ids[0, 1:][targets]])
    out = report["output"]
    assert out["tokens"] == sum(len(x) for x in ent)
    assert out["entropy_mean"] == pytest.approx(float(torch.cat(ent).mean()), rel=1e-5)
    assert out["kl_mean"] == pytest.approx(float(torch.cat(kl).mean()), rel=1e-3, abs=1e-7)
    assert out["p_max_mean"] == pytest.approx(float(torch.cat(pmax).mean()), rel=1e-5)
    assert out["nll_mean"] == pytest.approx(float(torch.cat(nll).mean()), rel=1e-5)
    assert sum(out["entropy_hist"]["counts"]) == out["tokens"]


def test_identical_models_have_zero_drift_and_kl_and_pass(llama, tmp_path, monkeypatch):
    r = run_cli("diagnose", llama[0], llama[0], *FAST, "--json", "-")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["weights"]["overall"]["rel_drift"] == 0 and report["weights"]["drift_max"] == 0
    assert report["output"]["kl_mean"] == 0 and report["output"]["entropy_ratio"] == 1
    assert report["units"]["dormant_increase"] == 0
    assert report["verdict"]["label"] == "ok"
    # an ok verdict has a next step too: RL as it is, and this diagnose as a CI gate
    command = report["verdict"]["suggested_command"]
    words = shlex.split(command)
    assert words[:4] == ["rejuv", "diagnose", str(llama[0]), str(llama[0])]
    assert words[4:8] == list(FAST) and words[-2:] == ["--fail-on", "verdict.label==rigid"]
    text = " ".join(r.stderr.split())
    assert "next: go on to RL with SFT as it is (no rule fired)" in text and command in text
    monkeypatch.chdir(tmp_path)  # the command writes its JSON to the working directory
    again = run_cli(*words[1:])
    assert again.exit_code == 0, again.output  # the gate passes: the verdict is still ok
    assert read_json(tmp_path / f"{llama[0].name}-diagnose.json")["gates"][0]["tripped"] is False


def test_overconfident_sft_is_flagged_and_its_base_is_not(llama, overconfident):
    gate = "output.entropy_mean<0.18"
    r = run_cli("diagnose", llama[0], overconfident, *FAST, "--json", "-", "--fail-on", gate,
                "--fail-on", "weights.drift_max>1000")  # fmt: skip
    assert r.exit_code == 3, r.output
    report = json.loads(r.stdout)
    assert report["verdict"]["label"] == "rigid"
    assert "low_entropy" in [x["id"] for x in report["verdict"]["reasons"]]
    assert report["output"]["entropy_mean"] < 0.18 < report["output"]["base"]["entropy_mean"]
    assert report["verdict"]["suggested_command"].startswith("rejuv sweep ")
    assert f"gate tripped: {gate}" in r.stderr
    assert "gate passed: weights.drift_max>1000" in r.stderr
    assert "1 of 2 --fail-on gate(s) tripped" in r.stderr
    assert [g["tripped"] for g in report["gates"]] == [True, False]

    r = run_cli("diagnose", llama[0], llama[0], *FAST, "-q", "--fail-on", gate)
    assert r.exit_code == 0, r.output  # the base itself is not flagged
    assert f"gate passed: {gate}" in r.stderr


def test_planted_dead_units_are_dormant(llama, tmp_path):
    """Zeroed gate/up rows of 8 MLP units in layer 1: exactly those units are dead."""
    sft = tmp_path / "sft"

    def kill(state):
        hit = False
        for name in ("model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight"):
            if name in state:
                state[name][:8] = 0
                hit = True
        return hit

    edit_checkpoint(llama[1], sft, kill)
    r = run_cli("diagnose", llama[0], sft, *FAST, "--sharpness-draws", "0", "--json", "-")
    assert r.exit_code == 0, r.output
    units = json.loads(r.stdout)["units"]
    layer = next(x for x in units["layers"] if x["key"] == "layers.1.mlp")
    assert layer["dormant"]["0.01"] == 8 / 64
    base_layer = next(x for x in units["base"]["layers"] if x["key"] == "layers.1.mlp")
    assert base_layer["dormant"]["0.01"] == 0
    assert units["dormant_increase"] == pytest.approx(8 / 192)  # 2 × 64 MLP + 2 × 32 o units


def test_unit_drift_and_rank_sections(llama, full_report):
    report, _ = full_report
    units = report["weights"]["units"]
    assert units["mlp"]["count"] == 2 * 64 and units["k"]["count"] == 2 * 16
    assert units["mlp"]["p50"] <= units["mlp"]["p90"] <= units["mlp"]["max"]
    rank = report["weights"]["rank"]["tensors"]
    name = "model.layers.0.self_attn.q_proj.weight"
    b, s = load_dir(llama[0])[name].double(), load_dir(llama[1])[name].double()
    sv = torch.linalg.svdvals(s - b)
    assert rank[name]["stable_rank"] == pytest.approx(float((sv**2).sum() / sv[0] ** 2), rel=1e-4)
    assert 1 <= rank[name]["effective_rank"] <= rank[name]["max_rank"] == 32


def test_html_report_has_the_plots(full_report):
    _, root = full_report
    page = (root / "r.html").read_text()
    for plot in ("drift-heatmap", "drift-heatmap-candidate", "entropy-histogram", "drift-layers"):
        assert f'id="{plot}"' in page
    assert "http://" not in page and "https://" not in page


def test_weights_only_gates_and_usage_errors(llama, tmp_path):
    r = run_cli("diagnose", *llama, "--weights-only", "--json", "-",
                "--fail-on", "weights.drift_max>0.01")  # fmt: skip
    assert r.exit_code == 3
    report = json.loads(r.stdout)
    assert report["output"] is None and report["units"] is None and report["sharpness"] is None
    assert report["verdict"]["measured"] == "weights only"

    cases = [
        (("--weights-only", "--fail-on", "output.entropy_mean<0.18"), "not measured with"),
        (("--fail-on", "output.entropy_mean<<0.18"), "expected a number"),
        (("--fail-on", "comparison[0].improved==1"), "needs --candidate"),
        (("--json", str(tmp_path / "missing" / "r.json")), "does not exist"),
    ]
    for args, message in cases:
        r = run_cli("diagnose", *llama, *args)
        assert r.exit_code == 2, (args, r.output)
        assert message in r.stderr and "Traceback" not in r.stderr


def test_calibration_errors_exit_1(llama, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1 + 1", "response": "2"}\n{"prompt": 3}\nnot json\n')
    r = run_cli("diagnose", *llama, "--calib", bad)
    assert r.exit_code == 1
    assert f"{bad}:2:" in r.stderr and f"{bad}:3:" in r.stderr
    r = run_cli("diagnose", *llama, "--calib", "builtin:nope")
    assert r.exit_code == 1 and "math" in r.stderr


@pytest.mark.parametrize("family", ["gpt2", "phi3", "mixtral"])
def test_other_families(pairs, family):
    r = run_cli("diagnose", *pairs[family], *FAST, "--json", "-")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["output"]["tokens"] > 0 and report["output"]["kl_mean"] > 0
    measured = {x["module"] for x in report["units"]["layers"]}
    assert measured >= {"o"} if family == "mixtral" else measured == {"o", "mlp"}


def test_added_tokens_compare_on_the_shared_vocabulary(tmp_path):
    from rejuv_cli.testing.synth import make_pair

    base, sft = make_pair(tmp_path, "llama", seed=3, added_tokens=2)
    r = run_cli("diagnose", base, sft, *FAST, "--json", "-")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert any("vocabulary sizes differ" in w for w in report["warnings"])
    assert report["output"]["kl_mean"] > 0


def test_sharpness_is_seeded_and_restores_the_weights_exactly(llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rejuv_cli.calib.encode import batches, pad_id_of
    from rejuv_cli.calib.forward import mean_nll
    from rejuv_cli.diagnostics.sharpness import noise_std, sharpness

    cpu = torch.device("cpu")
    tok = AutoTokenizer.from_pretrained(llama[1])
    encoded, _ = encode(load_examples(CALIB, 4), tok, 128)
    data = list(batches(encoded, 1024, pad_id_of(tok)))
    model = AutoModelForCausalLM.from_pretrained(llama[1], dtype=torch.float32).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = sharpness(model, data, cpu, sigma_rel=0.5, draws=2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    again = sharpness(model, data, cpu, sigma_rel=0.5, draws=2)
    assert again == first  # same seed, same directions, same numbers
    assert first["loss"] == pytest.approx(mean_nll(model, data, cpu))
    # antithetic pairs: each draw is (L(θ+u) + L(θ−u)) / 2 − L(θ); their mean is the value
    pairs = zip(first["perturbed"], first["mirrored"], strict=True)
    draws = [(a + b) / 2 - first["loss"] for a, b in pairs]
    assert first["draw_values"] == pytest.approx(draws)
    assert first["value"] == pytest.approx(sum(draws) / 2)
    assert first["stderr"] == pytest.approx(abs(draws[0] - draws[1]) / 2)
    # (this untrained model's loss is flat to second order: its sign is tested on a trained
    # pair in test_diagnose_edges.py)
    w = torch.arange(12.0).view(3, 4)
    assert noise_std(w, 0.1) == pytest.approx(0.1 * float(w.norm()) / 12**0.5)
