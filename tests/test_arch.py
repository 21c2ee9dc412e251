"""Unit maps and `rejuv inspect`: every covered family maps completely and at the right offsets."""

from __future__ import annotations

import json

import pytest
from conftest import FAMILIES, run_cli

from rejuv_cli.arch.units import FAMILIES as UNIT_MAPS
from rejuv_cli.arch.units import family_map, module_instances
from rejuv_cli.checkpoint.reader import Checkpoint
from rejuv_cli.errors import ArchError
from rejuv_cli.inspection import inspect_checkpoint
from rejuv_cli.testing.synth import make_pair

EXTRA = [
    "qwen3",
    "olmo",
    "olmo2",
    "gemma",
    "gemma3_text",
    "granite",
    "cohere",
    "smollm3",
    "qwen2_moe",
    "qwen3_moe",
]


@pytest.fixture(scope="module")
def extra_pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("extra")
    return {f: make_pair(root / f, f) for f in EXTRA}


def expected_modules(family: str) -> dict[str, tuple[int, int]]:
    """module -> (units per instance, instances) from rejuv_cli.testing.synth's tiny configs."""
    q, kv, mlp = 32, 16, 64
    attn = {"q": (q, 2), "k": (kv, 2), "v": (kv, 2), "o": (q, 2)}
    if family == "gpt2":  # no GQA; n_inner defaults to 4 * n_embd
        return {"q": (32, 2), "k": (32, 2), "v": (32, 2), "o": (32, 2), "mlp": (128, 2)}
    whole = {"whole_expert": (4, 2)}  # 4 experts per layer, one instance per layer (opt-in)
    if family == "mixtral":
        return attn | {"expert": (mlp, 8)} | whole
    if family == "qwen2_moe":
        return attn | {"expert": (24, 8), "shared_expert": (48, 2)} | whole
    if family == "qwen3_moe":
        return attn | {"expert": (24, 8)} | whole
    return attn | {"mlp": (mlp, 2)}


@pytest.mark.parametrize("family", FAMILIES + EXTRA)
def test_unit_map_covers_every_tensor(pairs, extra_pairs, family):
    _, sft = (pairs | extra_pairs)[family]
    with Checkpoint.open(sft, "SFT") as ckpt:
        report = inspect_checkpoint(ckpt)
    assert report["unit_map"] is not None and report["misfits"] == []
    assert report["unaccounted"] == []
    got = {k: (m["units_per_instance"], m["instances"]) for k, m in report["modules"].items()}
    assert got == expected_modules(family)


def test_fused_tensors_are_addressed_at_their_offsets(pairs):
    offsets = {}
    for family in ("phi3", "gpt2"):
        with Checkpoint.open(pairs[family][1], "SFT") as ckpt:
            fm = family_map(ckpt.config)
            insts = module_instances(fm, ckpt.config, set(ckpt.tensors), 2)
        offsets[family] = {
            (i.module.name, name.split(".", 3)[-1], s.axis, s.part): off
            for i in insts if i.layer == 0 for name, s, off in i.tensors
        }  # fmt: skip
    phi3 = offsets["phi3"]
    # qkv_proj rows: q 0..31, k 32..47, v 48..63 (GQA); gate_up_proj rows: gate 0..63, up 64..127
    assert phi3[("k", "self_attn.qkv_proj.weight", 0, "k")] == 32
    assert phi3[("v", "self_attn.qkv_proj.weight", 0, "v")] == 48
    assert phi3[("mlp", "mlp.gate_up_proj.weight", 0, "up")] == 64
    assert phi3[("mlp", "mlp.down_proj.weight", 1, None)] == 0
    gpt2 = offsets["gpt2"]
    # Conv1D [in, out]: q/k/v output channels are columns of c_attn, their biases follow.
    assert gpt2[("v", "attn.c_attn.weight", 1, "v")] == 64
    assert gpt2[("v", "attn.c_attn.bias", 0, "v")] == 64
    assert gpt2[("mlp", "mlp.c_proj.weight", 0, None)] == 0  # input channels are rows


def test_unknown_family_is_a_clear_error_and_inspect_still_works(llama_copy):
    _, sft = llama_copy
    config = json.loads((sft / "config.json").read_text())
    config["model_type"] = "mystery"
    (sft / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArchError) as e:
        family_map(config)
    assert "no unit map for model_type 'mystery'" in str(e.value)
    assert ", ".join(sorted(UNIT_MAPS)) in str(e.value)
    r = run_cli("inspect", sft, "--json")
    assert r.exit_code == 0
    report = json.loads(r.stdout)
    assert report["unit_map"] is None and "no unit map" in report["unit_map_error"]
    # tiny llama: embeddings + lm_head 2·128·32; per layer q,o 32·32, k,v 16·32, gate/up/down
    # 3·64·32, 2 norms of 32; final norm 32
    per_layer = 2 * 32 * 32 + 2 * 16 * 32 + 3 * 64 * 32 + 2 * 32
    assert report["parameters"] == 2 * 128 * 32 + 2 * per_layer + 32


def test_inspect_reports_misfits_and_unaccounted(llama_copy):
    import torch
    from safetensors.torch import save_file

    _, sft = llama_copy
    config = json.loads((sft / "config.json").read_text())
    config["intermediate_size"] = 96  # config and weights disagree
    (sft / "config.json").write_text(json.dumps(config))
    save_file({"model.layers.0.adapter.weight": torch.zeros(2, 2)}, sft / "extra.safetensors")
    index = json.loads((sft / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.0.adapter.weight"] = "extra.safetensors"
    (sft / "model.safetensors.index.json").write_text(json.dumps(index))
    r = run_cli("inspect", sft, "--json")
    report = json.loads(r.stdout)
    assert report["unaccounted"] == ["model.layers.0.adapter.weight"]
    assert any("'model.layers.0.mlp.gate_proj.weight' has shape (64, 32): expected 96" in m
               for m in report["misfits"])  # fmt: skip
    r = run_cli("inspect", sft)
    assert "misfit" in r.stdout and "model.layers.0.adapter.weight" in r.stdout


def test_inspect_table(pairs):
    r = run_cli("inspect", pairs["mixtral"][1])
    assert r.exit_code == 0
    assert "mixtral (unit map: mixtral)" in r.stdout and "4 experts per layer" in r.stdout
