"""Weight-space diagnostics: zero for identical checkpoints, a planted change found in its layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_dir
from safetensors.torch import load_file, save_file

from rejuv_cli.checkpoint.reader import Checkpoint
from rejuv_cli.diagnostics.weights import module_kind, weight_drift
from rejuv_cli.plan import build_plan
from rejuv_cli.recipe import Recipe


def drift(base_dir, sft_dir) -> dict:
    with Checkpoint.open(base_dir, "BASE") as base, Checkpoint.open(sft_dir, "SFT") as sft:
        return weight_drift(base, sft, build_plan(base, sft, Recipe()), torch.device("cpu"))


def test_identical_checkpoints_have_zero_drift(llama):
    report = drift(llama[0], llama[0])
    assert report["overall"]["rel_drift"] == 0 and report["drift_max"] == 0
    assert all(t["msd"] == 0 for t in report["tensors"].values())
    assert report["overall"]["cosine"] == pytest.approx(1.0)


def test_tensor_statistics_match_a_direct_computation(llama):
    report = drift(*llama)
    b, s = load_dir(llama[0]), load_dir(llama[1])
    name = "model.layers.1.mlp.down_proj.weight"
    bb, ss = b[name].double().numpy().ravel(), s[name].double().numpy().ravel()
    d = ss - bb
    got = report["tensors"][name]
    assert got["numel"] == d.size
    assert got["rel_drift"] == pytest.approx(np.linalg.norm(d) / np.linalg.norm(bb), rel=1e-5)
    assert got["msd"] == pytest.approx((d**2).mean(), rel=1e-5)
    assert len(report["tensors"]) == len(b)


def test_a_planted_change_is_found_in_its_layer(llama_copy):
    base_dir, sft_dir = llama_copy
    target = "model.layers.1.mlp.up_proj.weight"
    for f in sft_dir.glob("*.safetensors"):
        state = load_file(f)
        if target in state:
            state[target][:4] *= 3  # a large, sparse update in layer 1 only
            save_file(state, f, metadata={"format": "pt"})
    report = drift(base_dir, sft_dir)
    layers = report["layers"]
    assert layers["1"]["rel_drift"] > 2 * layers["0"]["rel_drift"]  # 4 of 64 rows ×3
    assert report["drift_max_tensor"] == target
    cell = report["layer_modules"]["1.mlp"]
    assert cell["rel_drift"] == max(v["rel_drift"] for v in report["layer_modules"].values())
    assert (
        report["tensors"][target]["top_share"]
        > report["tensors"][target.replace("1", "0", 1)]["top_share"]
    )


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("model.layers.0.self_attn.k_proj.weight", "k"),
        ("model.layers.0.mlp.gate_proj.weight", "mlp"),
        ("model.layers.0.block_sparse_moe.gate.weight", "router"),
        ("model.layers.0.input_layernorm.weight", "norm"),
        ("transformer.h.0.attn.c_attn.weight", "attn"),
        ("transformer.h.0.attn.c_proj.weight", "o"),
        ("model.embed_tokens.weight", "embed"),
    ],
)
def test_module_kinds(name, kind):
    assert module_kind(name) == kind


@pytest.mark.slow  # 16 s: the report under several PYTHONHASHSEEDs, one process each
def test_weight_report_is_the_same_under_any_hash_seed():
    """Sets of tensor names iterate in an order that depends on PYTHONHASHSEED; every float
    sum over them must not, or two runs of the same diagnose differ in the last bit."""
    import json
    import os
    import subprocess
    import sys

    reports = []
    root = Path(__file__).resolve().parents[1] / "bench" / "handoff" / "demo"
    demo = [str(root / "base"), str(root / "sft")]  # 28 matrices: enough for order to show
    for seed in ("1", "2", "3", "4"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-m", "rejuv_cli", "diagnose", *demo,
                               "--weights-only", "--json", "-", "-q"], env=env,
                              capture_output=True, text=True, check=True)  # fmt: skip
        report = json.loads(done.stdout)
        del report["seconds"]
        reports.append(report)
    assert reports[0]["weights"]["spikiness"] > 0
    assert all(report == reports[0] for report in reports[1:])
