"""Mixture-of-experts routing in `rejuv diagnose` (#18): expert shares, router entropy, dead
experts and the usage KL to BASE, against an independent float64 recomputation from the
checkpoints' router weights; a planted never-routed expert; the routing_collapse rule; the
section's JSON keys, terminal and HTML rendering; dense models."""

from __future__ import annotations

import json
import math
import os
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import edit_checkpoint, load_dir, run_cli
from moe_reference import ROUTER, moe_inputs

from rejuv_cli.report.schema import EACH, SCHEMA, check_gate, leaf_patterns, pattern_of
from rejuv_cli.report.schema_spec import RunFlags

CALIB = "builtin:math"
FAST = ("--samples", "6", "--sharpness-draws", "0")
PLANT_DIM, PLANT_LAYER, PLANT_EXPERT = 5, 0, 1


def diagnose(*args) -> dict:
    r = run_cli("diagnose", *args, *FAST, "--json", "-")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def plant_dead_expert(src, dst, family: str, layer: int = PLANT_LAYER,
                      expert: int = PLANT_EXPERT) -> None:  # fmt: skip
    """A copy of checkpoint `src` in `dst` whose router in `layer` never picks `expert`: hidden
    dimension PLANT_DIM of the residual stream is made positive for every token (input
    embedding column set to 0.1), no router reads that dimension (column zeroed in every
    layer), except `expert`'s row in `layer`, which reads it with weight −10. After the RMS
    norm the dimension is about +4 for every token, so that expert's logit sits near −40 while
    the others' stay within a few tenths of 0: it is always last, for any input."""
    d = PLANT_DIM

    def edit(state) -> bool:
        hit = False
        for name, t in state.items():
            if name == "model.embed_tokens.weight":
                t[:, d] = 0.1
                hit = True
            m = re.fullmatch(rf"model\.layers\.(\d+)\.{re.escape(ROUTER[family])}\.weight", name)
            if m is not None:
                t[:, d] = 0
                if int(m.group(1)) == layer:
                    t[expert, d] = -10
                hit = True
        return hit

    edit_checkpoint(src, dst, edit)


# --- the independent reference --------------------------------------------------------------


def reference_routing(model_dir, family: str, sft_dir) -> list[dict]:
    """Per MoE layer, from scratch: the MoE block's input (moe_reference.moe_inputs: plain
    hooks) on the real tokens of diagnose's calibration batches, times the router weight read
    from the safetensors files, in float64: expert counts of the top k and the mean entropy of
    the softmax over all experts."""
    from rejuv_cli.calib.forward import prepare_calibration
    from rejuv_cli.settings import SETTINGS

    calib = prepare_calibration(CALIB, 6, SETTINGS["max_tokens"].default, sft_dir,
                                torch.device("cpu"))  # fmt: skip
    k = json.loads((model_dir / "config.json").read_text())["num_experts_per_tok"]
    weights = load_dir(model_dir)
    out = []
    for i, hidden in enumerate(moe_inputs(model_dir, calib.batches)):
        w = weights[f"model.layers.{i}.{ROUTER[family]}.weight"].double()  # [E, H]
        logits = hidden @ w.T
        counts = torch.bincount(logits.topk(k, dim=-1).indices.flatten(), minlength=w.shape[0])
        logp = torch.log_softmax(logits, dim=-1)
        entropy = float(-(logp.exp() * logp).sum(-1).mean())
        out.append({"counts": counts.numpy(), "entropy": entropy, "tokens": hidden.shape[0]})
    return out


def smoothed_kl(c: np.ndarray, b: np.ndarray) -> float:
    p, q = (c + 0.5) / (c + 0.5).sum(), (b + 0.5) / (b + 0.5).sum()
    return float(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True)))


def dead_of(counts: np.ndarray) -> list[int]:
    share = counts / counts.sum()
    return [e for e, s in enumerate(share) if s < 0.1 / len(share)]


def check_against_reference(block: dict, ref: list[dict], base_ref: list[dict] | None) -> None:
    assert [row["layer"] for row in block["layers"]] == list(range(len(ref)))
    dead_total = 0
    increases = []
    for row, r in zip(block["layers"], ref, strict=True):
        counts = r["counts"]
        assert row["experts"] == len(counts)
        assert row["share"] == pytest.approx(list(counts / counts.sum()), abs=1e-12)
        assert row["entropy_mean"] == pytest.approx(r["entropy"], rel=1e-5)
        assert row["dead"] == dead_of(counts)
        assert row["dead_share"] == len(dead_of(counts)) / len(counts)
        dead_total += len(row["dead"])
        if base_ref is not None:
            b = base_ref[row["layer"]]["counts"]
            assert row["kl_to_base"] == pytest.approx(smoothed_kl(counts, b), rel=1e-9, abs=1e-15)
            increases.append(row["dead_share"] - len(dead_of(b)) / len(b))
        else:
            assert "kl_to_base" not in row
    experts = sum(len(r["counts"]) for r in ref)
    assert block["tokens"] == ref[0]["tokens"] and block["dead_experts"] == dead_total
    assert block["dead_share"] == pytest.approx(dead_total / experts)
    assert block["dead_share_max"] == max(row["dead_share"] for row in block["layers"])
    assert block["entropy_mean"] == pytest.approx(np.mean([r["entropy"] for r in ref]), rel=1e-5)
    if base_ref is not None:
        kls = [row["kl_to_base"] for row in block["layers"]]
        assert block["kl_mean"] == pytest.approx(np.mean(kls)) and block["kl_max"] == max(kls)
        assert block["dead_increase"] == pytest.approx(max(increases))


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "qwen3_moe"])
def test_routing_matches_an_independent_computation(moe_pairs, family):
    """BASE, SFT and a candidate (BASE itself) against the float64 recomputation."""
    base, sft = moe_pairs[family]
    report = diagnose(base, sft, "--candidate", base)
    ro = report["routing"]
    assert ro["router"] == "model.layers.{i}.mlp.gate"  # Mixtral's too, as transformers 5 loads it
    assert ro["top_k"] == 2 and ro["dead_below"] == 0.1 and ro["kl_pseudocount"] == 0.5
    base_ref = reference_routing(base, family, sft)
    check_against_reference(ro, reference_routing(sft, family, sft), base_ref)
    check_against_reference(ro["base"], base_ref, None)
    check_against_reference(ro["candidate"], base_ref, base_ref)
    assert ro["candidate"]["kl_max"] == 0 and ro["candidate"]["dead_increase"] == 0
    assert report["verdict"]["measured"] == "weights, output, units, routing"
    assert {"routing.dead_share", "routing.kl_max"} <= {r["metric"] for r in report["comparison"]}


# --- a planted never-routed expert --------------------------------------------------------------


@pytest.fixture(scope="module")
def collapsed(moe_pairs, tmp_path_factory):
    """Mixtral with an expert planted dead in SFT only: diagnose's JSON, HTML and terminal
    report, and the reference of both models."""
    base, sft = moe_pairs["mixtral"]
    root = tmp_path_factory.mktemp("collapsed")
    plant_dead_expert(sft, root / "sft", "mixtral")
    r = run_cli("diagnose", base, root / "sft", *FAST, "--json", root / "r.json", "--html",
                root / "r.html", "--fail-on", "routing.dead_increase>0.1")  # fmt: skip
    assert r.exit_code == 3, r.output  # the gate trips
    report = json.loads((root / "r.json").read_text())
    refs = reference_routing(base, "mixtral", sft), reference_routing(root / "sft", "mixtral", sft)
    return report, (root / "r.html").read_text(), r.stderr, refs


def test_a_planted_never_routed_expert_is_dead_and_the_collapse_rule_fires(collapsed):
    report, _, stderr, (base_ref, sft_ref) = collapsed
    ro = report["routing"]
    layer = ro["layers"][PLANT_LAYER]
    assert PLANT_EXPERT in layer["dead"] and layer["share"][PLANT_EXPERT] == 0
    assert PLANT_EXPERT not in ro["base"]["layers"][PLANT_LAYER]["dead"]
    assert ro["base"]["layers"][PLANT_LAYER]["dead"] == []  # BASE used every expert there
    check_against_reference(ro, sft_ref, base_ref)
    assert ro["dead_increase"] >= 0.25 > 0.1  # one of 4 experts in that layer
    reasons = {x["id"]: x for x in report["verdict"]["reasons"]}
    assert reasons["routing_collapse"]["metric"] == "routing.dead_increase"
    assert reasons["routing_collapse"]["value"] == ro["dead_increase"]
    assert report["gates"][0]["tripped"] is True
    assert "gate tripped: routing.dead_increase>0.1" in stderr
    assert "routing_collapse" in stderr


def test_planted_in_both_models_is_dead_in_both_and_no_collapse(moe_pairs, tmp_path):
    """The same expert planted dead in BASE and SFT (Qwen2-MoE), with the planted SFT as the
    candidate: dead in all three; the rule fires only as the reference says. Every declared
    routing key occurs in this report."""
    base, sft = moe_pairs["qwen2_moe"]
    plant_dead_expert(base, tmp_path / "base", "qwen2_moe")
    plant_dead_expert(sft, tmp_path / "sft", "qwen2_moe")
    report = diagnose(tmp_path / "base", tmp_path / "sft", "--candidate", tmp_path / "sft")
    ro = report["routing"]
    for block in (ro, ro["base"], ro["candidate"]):
        assert PLANT_EXPERT in block["layers"][PLANT_LAYER]["dead"]
    base_ref = reference_routing(tmp_path / "base", "qwen2_moe", tmp_path / "sft")
    sft_ref = reference_routing(tmp_path / "sft", "qwen2_moe", tmp_path / "sft")
    check_against_reference(ro, sft_ref, base_ref)
    assert ro["layers"][PLANT_LAYER]["kl_to_base"] < 0.05  # both never use it: little to tell
    fired = "routing_collapse" in {x["id"] for x in report["verdict"]["reasons"]}
    assert fired == (ro["dead_increase"] > 0.1)
    # every declared routing key is in this report, each value of its declared kind
    seen = set()
    for path, value in _leaves(ro, ("routing",)):
        pattern = pattern_of(path)
        assert pattern is not None, path
        seen.add(pattern)
        assert value is not None, path
    declared = {p for p in leaf_patterns() if p[0] == "routing"}
    assert declared == seen


def _leaves(node, path):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, (*path, i))
    else:
        yield path, node


def test_routing_gate_paths_are_declared():
    flags = RunFlags(candidate=True)
    from rejuv_cli.report.gates import parse_gate

    for gate in ("routing.dead_share>0.1", "routing.kl_max>0.5", "routing.base.dead_share>0",
                 "routing.candidate.dead_increase>0.1", "routing.layers[0].kl_to_base>1",
                 "routing.layers[0].share[3]<0.01", "routing.base.layers[1].dead[0]>=0",
                 "routing.router==x"):  # fmt: skip
        check_gate(parse_gate(gate), flags)
    assert "kl_to_base" not in SCHEMA["routing"]["base"]["layers"][EACH]
    from rejuv_cli.errors import UsageError

    with pytest.raises(UsageError, match="not measured with --weights-only"):
        check_gate(parse_gate("routing.dead_share>0.1"), RunFlags(weights_only=True))


# --- the terminal and HTML reports ---------------------------------------------------------


def test_html_report_shows_routing_with_gate_paths(collapsed):
    from test_report_html import Dom

    from rejuv_cli.report.gates import evaluate, parse_gate

    report, page, _, _ = collapsed
    assert not Dom(page).errors
    paths = set(re.findall(r'data-path="(routing[^"]*)"', page))
    # share cells of BASE and SFT (3 layers × 4 experts) and the summary table's cells (BASE has
    # no KL and no rise over itself)
    assert len(paths) == 2 * 3 * 4 + 7 + 4
    for path in paths:  # every gate path the routing section shows reads a number
        (result,) = evaluate([parse_gate(f"{path}>=-1")], report)
        assert isinstance(result.actual, int | float), path
    for plot in ("routing-share-base", "routing-share", "routing-dead", "routing-kl"):
        assert f'id="{plot}"' in page, plot
    assert "Routing (mixture of experts)" in page
    cell = re.search(r'<rect class="cell dead" data-layer="0" data-expert="1" '
                     r'data-path="routing\.layers\[0\]\.share\[1\]"', page)  # fmt: skip
    assert cell is not None
    base_cells = re.findall(r'<rect class="cell[^"]*" [^>]*data-path="routing\.base\.layers'
                            r'\[0\]\.share\[(\d)\]"', page)  # fmt: skip
    assert base_cells == ["0", "1", "2", "3"]
    assert 'class="cell dead" data-layer="0" data-expert="1" data-path="routing.base' not in page
    for path in ("routing.dead_share", "routing.base.dead_share", "routing.dead_increase",
                 "routing.kl_max"):  # fmt: skip
        assert f'data-path="{path}"' in page, path
    from rejuv_cli.report.html import render_html

    dense = dict(report, routing=None)
    assert "Routing (mixture of experts)" not in render_html(dense)


@pytest.mark.parametrize("width", [120, 80, 40])
def test_terminal_report_shows_routing_whole(collapsed, width):
    from rich.console import Console

    from rejuv_cli.report.diagnose_console import render_diagnose, shown_paths
    from rejuv_cli.report.gates import evaluate, parse_gate
    from rejuv_cli.report.numbers import shown_at
    from rejuv_cli.report.paths import parse_path

    report = collapsed[0]
    console = Console(width=width, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    render_diagnose(console, report)
    text = console.export_text()
    assert "routing (mixture of experts" in text and "routing per MoE layer" in text
    assert "…" not in text
    words = set(re.split(r"[\s=]+", text))
    paths = [p for p in shown_paths(report) if p.startswith("routing")]
    assert "routing.dead_increase" in paths and "routing.layers[0].dead_share" in paths
    assert "routing.base.layers[2].dead_share" in paths and "routing.layers[1].kl_to_base" in paths
    for path in paths:
        check_gate(parse_gate(f"{path}>0"), RunFlags())
        (result,) = evaluate([parse_gate(f"{path}>=-1")], report)
        shown = shown_at(parse_path(path), result.actual)
        assert any(w.strip("(),:;") == shown for w in words), (path, shown)


# --- dense models and the recorder alone -----------------------------------------------------


def test_dense_model_has_no_routing_and_says_why(pairs):
    report = diagnose(*pairs["llama"])
    assert report["routing"] is None
    assert "'llama'" in report["null_reasons"]["routing"]
    assert "dense" in report["null_reasons"]["routing"]
    r = run_cli("diagnose", *pairs["llama"], *FAST, "--fail-on", "routing.dead_share>0.1")
    assert r.exit_code == 2 and "routing" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("diagnose", *pairs["llama"], "--weights-only", "--json", "-")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["routing"] is None
    assert report["null_reasons"]["routing"] == "'routing' is not measured with --weights-only"


class _Block(torch.nn.Module):
    """A transformers-4-style MoE block: its router is an nn.Linear that returns logits only."""

    def __init__(self, hidden: int, experts: int, top_k: int):
        super().__init__()
        self.gate = torch.nn.Linear(hidden, experts, bias=False)
        self.top_k = top_k

    def forward(self, x):
        return self.gate(x.reshape(-1, x.shape[-1]))


class _Layer(torch.nn.Module):
    def __init__(self, *args):
        super().__init__()
        self.block_sparse_moe = _Block(*args)


def test_recorder_reads_logit_only_routers_on_real_tokens_only():
    from rejuv_cli.calib.routing import RoutingRecorder

    torch.manual_seed(0)
    model = torch.nn.Module()
    model.model = torch.nn.Module()
    model.model.layers = torch.nn.ModuleList([_Layer(8, 5, 2), _Layer(8, 5, 2)])
    model.config = SimpleNamespace(model_type="mixtral", num_experts_per_tok=3, top_k=50)
    recorder = RoutingRecorder(model)
    x = torch.randn(2, 7, 8)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False  # padding
    recorder.token_mask = mask
    with torch.inference_mode():
        for layer in model.model.layers:
            layer.block_sparse_moe(x)
    record = recorder.close()
    assert record.where == "model.layers.{i}.block_sparse_moe.gate" and record.routers == 2
    real = x.reshape(-1, 8)[mask.reshape(-1)].double()
    for i, layer in enumerate(model.model.layers):
        logits = real @ layer.block_sparse_moe.gate.weight.detach().double().T
        want = torch.bincount(logits.topk(2, dim=-1).indices.flatten(), minlength=5)
        lr = record.layers[i]
        assert lr.top_k == 2 and lr.tokens == 11  # the block's top_k, not the config's
        assert lr.count_array().tolist() == want.tolist()
        p = torch.softmax(logits, -1)
        assert lr.entropy_mean() == pytest.approx(float(-(p * p.log()).sum(-1).mean()), rel=1e-6)
    assert not model.model.layers[0].block_sparse_moe.gate._forward_hooks  # hooks removed


def test_shares_dead_experts_and_smoothed_kl():
    from rejuv_cli.calib.routing import DEAD_SHARE, KL_PSEUDOCOUNT, dead_experts, shares, usage_kl

    assert DEAD_SHARE == 0.1 and KL_PSEUDOCOUNT == 0.5
    counts = np.array([500, 300, 199, 1, 0])
    share = shares(counts)
    assert share.sum() == pytest.approx(1) and share[0] == 0.5
    # uniform share 1/5 = 0.2, dead below 0.02: 0.001 and 0 are, 0.199 is not
    assert dead_experts(share) == [3, 4]
    assert dead_experts(np.array([0.25, 0.25, 0.25, 0.25])) == []
    assert dead_experts(np.array([0.5, 0.5 - 0.0249, 0.0249, 0.0])) == [2, 3]
    assert usage_kl(counts, counts) == 0
    kl = usage_kl(counts, np.array([0, 0, 0, 0, 1000]))  # BASE never used four of them
    assert math.isfinite(kl) and kl == pytest.approx(
        smoothed_kl(counts, np.array([0, 0, 0, 0, 1000]))
    )
    assert shares(np.zeros(3)).tolist() == [0, 0, 0]
