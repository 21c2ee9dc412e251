"""Quantized checkpoints are refused with one line naming the input and the format; never fused.

Fixtures start from the session's real bf16 pairs (transformers save_pretrained, sharded) and are
rewritten the way each producer writes its checkpoints. The producers are not test dependencies,
so each layout was checked once against the producer itself:

- FP8 with block scales: transformers 5.24 `integrations/finegrained_fp8.py` (`Fp8Quantize.
  _quantize_one`: per-block max-abs, `weight_scale_inv = amax / 448` in F32, codes clamped to
  ±448 and cast to float8_e4m3fn; `FP8Linear.__init__`: scale grid [ceil(out/128),
  ceil(in/128)], as DeepSeek-V3 lays it out) and `quantizers/quantizer_finegrained_fp8.py`
  (lm_head, embeddings and norms stay bf16). `FineGrainedFP8Config` refuses to quantize without
  a GPU ("A GPU or XPU is needed for FP8 quantization"); with CUDA mocked it quantized and
  saved a tiny Llama on this CPU, and `quantize_like_transformers` (tests/producers_fp8.py)
  gave the same bytes for every 128-divisible weight. config.json: DeepSeek-V3's
  `quantization_config`. That layout is now read (tests/test_fp8.py); refused here: its
  per-tensor variant (a quantization_config without weight_block_size; a 32x64 weight's one
  128x128 block is its one scale), and block scales declared only under text_config or
  without any quantization_config.
- bitsandbytes int8 and 4-bit (nf4): bitsandbytes 0.50.2 (pip download; it runs on CPU) with
  transformers 5.24 `BitsAndBytesConfig(load_in_8bit / load_in_4bit)`, from_pretrained +
  save_pretrained of a tiny Llama: int8 = `weight` I8 [out, in] + `SCB` F32 [out] +
  `weight_format` U8 [] (bitsandbytes/nn/modules.py `Int8Params._quantize`, backends/default/
  ops.py `int8_vectorwise_quant`); 4-bit = `weight` U8 [out*in/2, 1] + `weight.absmax` F32
  [out*in/64] + `weight.quant_map` F32 [16] + `weight.quant_state.bitsandbytes__nf4` U8 (JSON,
  functional.py `QuantState.as_dict(packed=True)`; backends/default/ops.py `quantize_4bit`).
  The builders below matched those saved tensors byte for byte; the config dicts are copied
  from the saved config.json files.
- GPTQ 4-bit: the buffers of auto_gptq 0.7.1 `nn_modules/qlinear/qlinear_cuda_old.py` (`pack`,
  zeros stored minus one) and gptqmodel 7.7.0 `nn_modules/qlinear/__init__.py`: `qweight` I32
  [in/8, out], `qzeros` I32 [ceil(in/g), out/8], `scales` F16 [ceil(in/g), out], `g_idx` I32
  [in]; the `weight` itself is gone and the other tensors are F16. Values come from symmetric
  round-to-nearest, not the GPTQ solver: the layout is what is under test. config.json keys:
  optimum 2.3.0 `gptq/quantizer.py` serialization_keys.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import bits, load_dir, read_json, reference_fuse, run_cli
from producers_fp8 import quantize_like_transformers
from safetensors.torch import load_file, save_file

from rejuv_cli.checkpoint.quantization import detect_quantization
from rejuv_cli.checkpoint.safetensors_file import TensorInfo
from rejuv_cli.errors import MismatchError, QuantizedError
from rejuv_cli.pairing import _check_dtypes

FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
       -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
       0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
       0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]  # fmt: skip

FP8_CONFIG = {  # DeepSeek-V3 config.json
    "activation_scheme": "dynamic",
    "fmt": "e4m3",
    "quant_method": "fp8",
    "weight_block_size": [128, 128],
}
# transformers FineGrainedFP8Config(weight_block_size=None): one scale per tensor
FP8_PER_TENSOR_CONFIG = {k: v for k, v in FP8_CONFIG.items() if k != "weight_block_size"}
BNB_COMMON = {
    "bnb_4bit_quant_storage": "uint8",
    "bnb_4bit_use_double_quant": False,
    "llm_int8_enable_fp32_cpu_offload": False,
    "llm_int8_has_fp16_weight": False,
    "llm_int8_skip_modules": None,
    "llm_int8_threshold": 6.0,
    "quant_method": "bitsandbytes",
}
BNB_INT8_CONFIG = BNB_COMMON | {
    "_load_in_4bit": False,
    "_load_in_8bit": True,
    "bnb_4bit_compute_dtype": "float32",
    "bnb_4bit_quant_type": "fp4",
    "load_in_4bit": False,
    "load_in_8bit": True,
}
BNB_NF4_CONFIG = BNB_COMMON | {
    "_load_in_4bit": True,
    "_load_in_8bit": False,
    "bnb_4bit_compute_dtype": "bfloat16",
    "bnb_4bit_quant_type": "nf4",
    "load_in_4bit": True,
    "load_in_8bit": False,
}
GPTQ_CONFIG = {
    "bits": 4,
    "dataset": None,
    "group_size": 128,
    "damp_percent": 0.1,
    "desc_act": False,
    "sym": True,
    "true_sequential": True,
    "quant_method": "gptq",
    "modules_in_block_to_quantize": None,
    "format": "gptq",
}


# ---- producers' layouts --------------------------------------------------------------------
def bnb_int8_quantize(w: torch.Tensor):
    """(CB int8 [out, in], SCB F32 [out]): LLM.int8 row-wise absmax on the fp16 weight."""
    a = w.to(torch.float16)
    scb = torch.max(a.abs(), dim=1).values.float()
    return torch.round(a * (127.0 / scb.unsqueeze(-1))).to(torch.int8), scb


def bnb_nf4_quantize(w: torch.Tensor, blocksize: int = 64):
    """(packed U8 [numel/2, 1], absmax F32 [numel/blocksize]); numel divisible by blocksize."""
    flat = w.reshape(-1).float().reshape(-1, blocksize)
    absmax = flat.abs().max(dim=-1)[0]
    scaled = torch.clamp(flat * (1.0 / absmax.clamp(min=1e-38).view(-1, 1)), -1, 1).reshape(-1)
    code = torch.tensor(NF4)
    q = torch.bucketize(scaled, (code[:-1] + code[1:]) / 2, out_int32=True).to(torch.uint8)
    return ((q[::2] << 4) | q[1::2]).unsqueeze(1), absmax


def gptq_pack(w: torch.Tensor, bits_: int = 4, group_size: int = 128):
    """(qweight I32 [in/8, out], qzeros I32 [groups, out/8], scales F16 [groups, out],
    g_idx I32 [in]), symmetric round-to-nearest."""
    out_f, in_f = w.shape
    per = 32 // bits_
    maxq = 2**bits_ - 1
    g_idx = torch.arange(in_f, dtype=torch.int32) // group_size
    groups = math.ceil(in_f / group_size)
    wf = w.to(torch.float32)
    scales = torch.stack(
        [wf[:, g_idx == g].abs().amax(dim=1) * 2 / maxq for g in range(groups)]
    ).clamp(min=1e-8)  # [groups, out]
    zero = (maxq + 1) // 2
    intw = torch.clamp(torch.round(wf.t() / scales[g_idx.long()]) + zero, 0, maxq).to(torch.int64)
    qweight = torch.zeros(in_f // per, out_f, dtype=torch.int64)
    for k in range(per):
        qweight |= intw[k::per] << (bits_ * k)
    zeros = torch.full((groups, out_f), zero - 1, dtype=torch.int64)  # stored minus one
    qzeros = torch.zeros(groups, out_f // per, dtype=torch.int64)
    for k in range(per):
        qzeros |= zeros[:, k::per] << (bits_ * k)
    as_i32 = lambda t: t.to(torch.uint32).view(torch.int32)  # noqa: E731
    return as_i32(qweight), as_i32(qzeros), scales.to(torch.float16), g_idx


def is_linear(name: str) -> bool:
    """The nn.Linear weights the quantizers convert (not embeddings, norms or lm_head)."""
    return name.endswith("_proj.weight")


def fp8_tensors(name, t):
    if not is_linear(name):
        return {name: t}
    codes, inv = quantize_like_transformers(t)
    return {name: codes, name.removesuffix("weight") + "weight_scale_inv": inv}


def bnb_int8_tensors(name, t):
    if not is_linear(name):
        return {name: t}
    cb, scb = bnb_int8_quantize(t)
    prefix = name.removesuffix("weight")
    return {
        prefix + "SCB": scb,
        name: cb,
        prefix + "weight_format": torch.tensor(0, dtype=torch.uint8),
    }


def bnb_nf4_tensors(name, t):
    if not is_linear(name):
        return {name: t}
    packed, absmax = bnb_nf4_quantize(t)
    state = {"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": list(t.shape)}
    return {
        name: packed,
        name + ".absmax": absmax,
        name + ".quant_map": torch.tensor(NF4),
        name + ".quant_state.bitsandbytes__nf4": torch.tensor(
            list(json.dumps(state).encode()), dtype=torch.uint8
        ),
    }


def gptq_tensors(name, t):
    if not is_linear(name):
        return {name: t.to(torch.float16)}
    qweight, qzeros, scales, g_idx = gptq_pack(t)
    prefix = name.removesuffix("weight")
    return {prefix + "g_idx": g_idx, prefix + "qweight": qweight, prefix + "qzeros": qzeros,
            prefix + "scales": scales}  # fmt: skip


def rewrite(src: Path, dst: Path, tensors=None, config=None) -> Path:
    """Copy checkpoint `src` to `dst`; tensors(name, t) -> {name: tensor} replaces each tensor
    (new tensors go to the same shard), config(cfg) edits config.json. The index follows."""
    shutil.copytree(src, dst)
    index_path = dst / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    weight_map, total = {}, 0
    for shard in sorted(dst.glob("*.safetensors")):
        state = {}
        for name, t in load_file(shard).items():
            state.update(tensors(name, t) if tensors else {name: t})
        save_file(state, shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(state, shard.name))
        total += sum(t.numel() * t.element_size() for t in state.values())
    index["weight_map"] = dict(sorted(weight_map.items()))
    index["metadata"] = {"total_size": total}
    index_path.write_text(json.dumps(index, indent=2))
    if config:
        cfg = read_json(dst / "config.json")
        config(cfg)
        (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return dst


def with_quant_config(qc: dict, under: str | None = None):
    def edit(cfg):
        (cfg.setdefault(under, {}) if under else cfg)["quantization_config"] = dict(qc)

    return edit


def one_error_line(result, *fragments: str) -> str:
    """Exit 1 and exactly one stderr line, 'rejuv: error: ...', containing every fragment."""
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("rejuv: error:"), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# ---- refusals, end to end ------------------------------------------------------------------
# id -> (side quantized, tensors, config edit, fragments the one line must contain)
QUANTIZED = {
    "fp8-sft": ("SFT", fp8_tensors, with_quant_config(FP8_PER_TENSOR_CONFIG),
                ["SFT is quantized: FP8 with per-tensor scales (weight_scale_inv, "
                 "quantization_config.quant_method=fp8)", "(F8_E4M3 [",
                 "dequantize to bf16 first (e.g. AutoModelForCausalLM.from_pretrained(DIR, "
                 "quantization_config=FineGrainedFP8Config(dequantize=True)"]),
    "fp8-sft-text-config": ("SFT", fp8_tensors, with_quant_config(FP8_CONFIG, "text_config"),
                            ["SFT is quantized: FP8 with block scales", "weight_scale_inv",
                             "text_config.quantization_config.quant_method=fp8"]),
    "fp8-base": ("BASE", fp8_tensors, with_quant_config(FP8_PER_TENSOR_CONFIG),
                 ["BASE is quantized: FP8 with per-tensor scales", "weight_scale_inv"]),
    "gptq-sft": ("SFT", gptq_tensors, with_quant_config(GPTQ_CONFIG),
                 ["SFT is quantized: GPTQ 4-bit (qweight, qzeros, scales, "
                  "quantization_config.quant_method=gptq), e.g. tensor 'model.layers.0.",
                  ".qweight' (I32 [4, ", "use the release's bf16 weights"]),
    "bnb-int8-sft": ("SFT", bnb_int8_tensors, with_quant_config(BNB_INT8_CONFIG),
                     ["SFT is quantized: bitsandbytes int8 (LLM.int8) (SCB, weight_format, "
                      "quantization_config.quant_method=bitsandbytes)", "(I8 ["]),
    "bnb-nf4-sft": ("SFT", bnb_nf4_tensors, with_quant_config(BNB_NF4_CONFIG),
                    ["SFT is quantized: bitsandbytes 4-bit (nf4)", "absmax", "(U8 [",
                     "model.dequantize() and save_pretrained"]),
    "config-only": ("SFT", None, with_quant_config(FP8_CONFIG),
                    ["SFT is quantized: FP8 with block scales "
                     "(quantization_config.quant_method=fp8)", "look unquantized"]),
    "tensors-only-fp8": ("SFT", fp8_tensors, None,
                         ["SFT is quantized: FP8 with block scales (weight_scale_inv), "
                          "e.g. tensor 'model."]),
    "tensors-only-int8": ("SFT", lambda n, t: {n: bnb_int8_quantize(t)[0] if is_linear(n) else t},
                          None, ["SFT is quantized: int8-coded weights (I8 *.weight)"]),
    # BASE F8 against SFT BF16, no scales and no quantization_config
    "f8-base-bare": ("BASE", lambda n, t: {n: t.to(torch.float8_e4m3fn) if is_linear(n) else t},
                     None, ["BASE is quantized: FP8 weights (F8_E4M3 tensors)"]),
}  # fmt: skip


@pytest.fixture(scope="module")
def quantized(llama, tmp_path_factory):
    """id -> (base_dir, sft_dir) for every row of QUANTIZED (built once)."""
    root = tmp_path_factory.mktemp("quantized")
    out = {}
    for case, (side, tensors, config, _) in QUANTIZED.items():
        base, sft = llama
        made = rewrite(llama[0 if side == "BASE" else 1], root / case, tensors, config)
        out[case] = (made, sft) if side == "BASE" else (base, made)
    return out


@pytest.mark.parametrize("case", list(QUANTIZED))
def test_fuse_refuses_quantized_input(case, quantized, tmp_path):
    side, _, _, fragments = QUANTIZED[case]
    out = tmp_path / "o"
    line = one_error_line(run_cli("fuse", *quantized[case], "--out", out), *fragments)
    other = "BASE" if side == "SFT" else "SFT"
    assert f"{other} is quantized" not in line
    assert not out.exists()


def test_both_quantized_named_in_one_line(quantized, tmp_path):
    base = quantized["fp8-base"][0]
    sft = quantized["bnb-int8-sft"][1]
    one_error_line(
        run_cli("fuse", base, sft, "--out", tmp_path / "o"),
        "BASE is quantized: FP8 with per-tensor scales",
        "SFT is quantized: bitsandbytes int8",
    )
    assert not (tmp_path / "o").exists()


def test_diagnose_weights_only_refuses_quantized_sft(llama, quantized, tmp_path):
    report = tmp_path / "r.json"
    sft = quantized["fp8-sft"][1]
    r = run_cli("diagnose", llama[0], sft, "--weights-only", "--json", report)
    one_error_line(r, "SFT is quantized: FP8 with per-tensor scales (weight_scale_inv")
    assert not report.exists()
    r = run_cli("diagnose", *llama, "--candidate", sft, "--weights-only", "--json", report)
    one_error_line(r, "CANDIDATE is quantized: FP8 with per-tensor scales")
    assert not report.exists()


def test_fp8_fixture_dequantizes_to_the_weights(llama, quantized):
    """The FP8 fixture is a faithful quantization: codes × block scales ≈ the bf16 weights."""
    plain, fp8 = load_dir(llama[1]), load_dir(quantized["fp8-sft"][1])
    name = "model.layers.0.mlp.down_proj.weight"
    codes, inv = fp8[name], fp8[name.removesuffix("weight") + "weight_scale_inv"]
    assert codes.dtype == torch.float8_e4m3fn and inv.dtype == torch.float32
    assert inv.shape == (1, 1)  # [ceil(32/128), ceil(64/128)]
    assert codes.float().abs().max() == FP8_MAX  # raw codes: 10^4 × the weights' scale
    restored = codes.float() * inv
    assert torch.allclose(restored, plain[name].float(), rtol=0.07, atol=1e-6)


# ---- what must still fuse ------------------------------------------------------------------
def test_integer_buffers_are_copied(llama, tmp_path):
    """I64 position_ids / num_batches_tracked and F32 inv_freq on both sides: copied from SFT."""
    extra = {
        "model.position_ids": torch.arange(128, dtype=torch.int64)[None],
        "model.norm.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
        "model.layers.0.self_attn.rotary_emb.inv_freq": torch.rand(4),
    }

    def add(name, t):
        return {name: t} | (extra if name == "model.norm.weight" else {})

    base, sft = (rewrite(d, tmp_path / d.name, add) for d in llama)
    r = run_cli("fuse", base, sft, "--out", tmp_path / "o", "--quiet", "--reset", "0")
    assert r.exit_code == 0, r.stderr
    out, b, s = load_dir(tmp_path / "o"), load_dir(base), load_dir(sft)
    for name, t in extra.items():
        assert out[name].dtype == t.dtype, name
        assert bits(out[name].reshape(-1)) == bits(s[name].reshape(-1)), name
    name = "model.layers.1.mlp.up_proj.weight"
    assert bits(out[name]) == bits(reference_fuse(b[name], s[name], 0.5)), name


def test_gpt2_causal_mask_buffers_are_copied(pairs, tmp_path):
    """Old GPT-2 checkpoints store `attn.bias` (a U8 causal mask) and `attn.masked_bias`."""
    mask = torch.tril(torch.ones(128, 128, dtype=torch.uint8)).view(1, 1, 128, 128)

    def add(name, t):
        if name.endswith("attn.c_attn.weight"):
            prefix = name.removesuffix("c_attn.weight")
            return {name: t, prefix + "bias": mask, prefix + "masked_bias": torch.tensor(-1e4)}
        return {name: t}

    base, sft = (rewrite(d, tmp_path / d.name, add) for d in pairs["gpt2"])
    r = run_cli("fuse", base, sft, "--out", tmp_path / "o", "--quiet", "--reset", "0")
    assert r.exit_code == 0, r.stderr
    out = load_dir(tmp_path / "o")
    assert out["transformer.h.1.attn.bias"].dtype == torch.uint8
    assert bits(out["transformer.h.1.attn.bias"]) == bits(mask)
    assert out["transformer.h.1.attn.masked_bias"].item() == -1e4


def test_bf16_f32_mix_still_fuses(llama, tmp_path):
    base = rewrite(llama[0], tmp_path / "base32", lambda n, t: {n: t.to(torch.float32)})
    r = run_cli("fuse", base, llama[1], "--out", tmp_path / "o", "--quiet", "--reset", "0")
    assert r.exit_code == 0, r.stderr
    out, b, s = load_dir(tmp_path / "o"), load_dir(base), load_dir(llama[1])
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight"):
        assert b[name].dtype == torch.float32 and out[name].dtype == torch.bfloat16
        assert bits(out[name]) == bits(reference_fuse(b[name], s[name], 0.5)), name


# ---- dtype mismatches ------------------------------------------------------------------------
MISMATCHES = {
    "i32-vs-bf16": ("model.layers.0.input_layernorm.weight", torch.int32, None,
                    "tensor 'model.layers.0.input_layernorm.weight' is I32 in BASE but BF16 in "
                    "SFT"),
    "i64-vs-f32": ("model.position_ids", torch.int64, torch.float32,
                   "tensor 'model.position_ids' is I64 in BASE but F32 in SFT"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(MISMATCHES))
def test_dtype_mismatch_is_an_error(case, llama, tmp_path):
    name, base_dtype, sft_dtype, fragment = MISMATCHES[case]

    def edit(dtype):
        def f(n, t):
            if n == "model.norm.weight" and name == "model.position_ids":
                return {n: t, name: torch.arange(128, dtype=dtype)[None]}
            return {n: t.to(dtype) if n == name and dtype is not None else t}

        return f

    base = rewrite(llama[0], tmp_path / "b", edit(base_dtype))
    sft = rewrite(llama[1], tmp_path / "s", edit(sft_dtype))
    out = tmp_path / "o"
    one_error_line(run_cli("fuse", base, sft, "--out", out), fragment, "same dtype", "Re-save")
    assert not out.exists()


def _info(dtype: str) -> TensorInfo:
    return TensorInfo("w", dtype, (4, 4), Path("x.safetensors"), 0, 16)


def test_plan_never_fuses_or_copies_fp8(llama):
    """Detection catches FP8 first; the planner refuses it anyway, also on both sides."""
    from rejuv_cli.checkpoint.reader import Checkpoint

    with Checkpoint.open(llama[0], "BASE") as base, Checkpoint.open(llama[1], "SFT") as sft:
        for b, s in (("F8_E4M3", "F8_E4M3"), ("F8_E4M3", "BF16"), ("F32", "F8_E5M2")):
            with pytest.raises(QuantizedError, match="FP8 tensors are quantized"):
                _check_dtypes("w", _info(b), _info(s), base, sft)
        with pytest.raises(MismatchError, match="is I64 in BASE but F32 in SFT"):
            _check_dtypes("w", _info("I64"), _info("F32"), base, sft)
        for b, s in (("BF16", "F32"), ("F16", "F64"), ("I64", "I64"), ("BOOL", "BOOL")):
            _check_dtypes("w", _info(b), _info(s), base, sft)


# ---- the detection function alone --------------------------------------------------------------
PLAIN = {
    "model.embed_tokens.weight": ("BF16", (128, 32)),
    "model.layers.0.self_attn.q_proj.weight": ("BF16", (32, 32)),
    "model.layers.0.self_attn.rotary_emb.inv_freq": ("F32", (4,)),
    "model.norm.weight": ("F32", (32,)),
    "bert.embeddings.position_ids": ("I64", (1, 512)),
    "bn.num_batches_tracked": ("I64", ()),
    "transformer.h.0.attn.bias": ("U8", (1, 1, 1024, 1024)),
    "transformer.h.1.attn.bias": ("BOOL", (1, 1, 1024, 1024)),
    "transformer.h.0.attn.masked_bias": ("F32", ()),
    "transformer.h.0.mlp.c_fc.bias": ("BF16", (128,)),
}


@pytest.mark.parametrize(
    "config",
    [{}, {"model_type": "llama"}, {"quantization_config": None}, {"quantization_config": {}},
     {"text_config": {"vocab_size": 5}}, [], None],
)  # fmt: skip
def test_plain_checkpoints_are_not_quantized(config):
    assert detect_quantization(config, PLAIN) is None


# config -> the format named
CONFIGS = [
    (FP8_CONFIG, "FP8 with block scales (quantization_config.quant_method=fp8)"),
    ({"quant_method": "fp8", "activation_scheme": "static"}, "FP8 with per-tensor scales"),
    (GPTQ_CONFIG, "GPTQ 4-bit (quantization_config.quant_method=gptq)"),
    ({"quant_method": "awq", "bits": 4, "version": "gemm"}, "AWQ 4-bit"),
    (BNB_INT8_CONFIG, "bitsandbytes int8 (LLM.int8)"),
    (BNB_NF4_CONFIG, "bitsandbytes 4-bit (nf4)"),
    ({"load_in_8bit": True},
     "bitsandbytes int8 (LLM.int8) (quantization_config.load_in_8bit=true)"),
    ({"quant_method": "compressed-tensors", "format": "pack-quantized"},
     "compressed-tensors (pack-quantized)"),
    ({"bits": 8}, "quantized (method not named) (quantization_config is set)"),
    ({"quant_method": "hqq"}, "HQQ quantization"),
]  # fmt: skip


@pytest.mark.parametrize(("qc", "fmt"), CONFIGS)
def test_config_names_the_format(qc, fmt):
    nested = {"text_config": {"quantization_config": qc}}
    for config, where in (({"quantization_config": qc}, "quantization_config"),
                          (nested, "text_config.")):  # fmt: skip
        what = detect_quantization(config, PLAIN)
        assert what is not None and what.startswith(fmt.split(" (")[0]), what
        assert where in what and "look unquantized" in what
    assert fmt in detect_quantization({"quantization_config": qc}, PLAIN)
    assert detect_quantization({"compression_config": qc}, PLAIN).startswith(fmt.split(" (")[0])


L = "model.layers.0.mlp.down_proj."
# tensors (added to PLAIN, no config) -> the description's start, the example tensor
TENSORS = [
    ({L + "weight": ("F8_E4M3", (32, 64)), L + "weight_scale_inv": ("F32", (1, 1))},
     "FP8 with block scales (weight_scale_inv)", L + "weight"),
    ({L + "weight": ("I8", (32, 64)), L + "SCB": ("F32", (32,)), L + "weight_format": ("U8", ())},
     "bitsandbytes int8 (LLM.int8) (SCB, weight_format)", L + "weight"),
    ({L + "weight": ("U8", (1024, 1)), L + "weight.absmax": ("F32", (32,)),
      L + "weight.quant_map": ("F32", (16,)),
      L + "weight.quant_state.bitsandbytes__fp4": ("U8", (80,))},
     "bitsandbytes 4-bit (absmax, quant_map, quant_state)", L + "weight"),
    ({L + "weight": ("U8", (1024, 1)), L + "weight.nested_absmax": ("F32", (1,))},
     "bitsandbytes 4-bit (nested_absmax)", L + "weight"),
    ({L + "qweight": ("I32", (8, 32)), L + "qzeros": ("I32", (1, 4)),
      L + "scales": ("F16", (1, 32)), L + "g_idx": ("I32", (64,))},
     "GPTQ/AWQ packed integer weights (qweight, qzeros, scales)", L + "qweight"),
    ({L + "qweight": ("I32", (64, 4)), L + "qzeros": ("I32", (1, 4)),
      L + "scales": ("F16", (1, 32))},
     "GPTQ/AWQ packed integer weights (qweight, qzeros, scales)", L + "qweight"),
    ({L + "weight_packed": ("I32", (32, 8)), L + "weight_scale": ("BF16", (32, 1)),
      L + "weight_shape": ("I64", (2,))},
     "compressed-tensors packed weights (weight_packed, weight_scale)", L + "weight_packed"),
    ({L + "weight": ("F8_E4M3", (32, 64)), L + "weight_scale": ("F32", (32, 1)),
      L + "input_scale": ("F32", ())},
     "FP8 with scales (weight_scale, input_scale)", L + "weight"),
    ({L + "weight": ("I8", (32, 64)), L + "weight_scale": ("F32", (32, 1))},
     "int8 with scales (weight_scale)", L + "weight"),
    ({L + "weight": ("F8_E5M2", (32, 64))}, "FP8 weights (F8_E5M2 tensors)", L + "weight"),
    ({"lm_head.activation": ("F8_E4M3", (4,))}, "FP8 weights (F8_E4M3 tensors)",
     "lm_head.activation"),
    ({L + "weight": ("U8", (32, 64))}, "uint8-coded weights (U8 *.weight)", L + "weight"),
    ({L + "weight": ("I8", (32, 64))}, "int8-coded weights (I8 *.weight)", L + "weight"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "start", "example"), TENSORS)
def test_tensors_name_the_format_and_an_example(extra, start, example):
    table = PLAIN | extra
    what = detect_quantization({}, table)
    assert what is not None and what.startswith(start + ", e.g. tensor "), what
    dtype, shape = table[example]
    assert what.endswith(f"e.g. tensor '{example}' ({dtype} {list(shape)})"), what


def test_config_and_tensors_together():
    table = PLAIN | {L + "weight": ("F8_E4M3", (32, 64)), L + "weight_scale_inv": ("F32", (1, 1))}
    what = detect_quantization({"quantization_config": FP8_CONFIG}, table)
    assert what == (
        "FP8 with block scales (weight_scale_inv, quantization_config.quant_method=fp8), "
        f"e.g. tensor '{L}weight' (F8_E4M3 [32, 64])"
    )


def test_detection_module_does_not_import_torch():
    code = (
        "import sys, rejuv_cli.checkpoint.quantization as q; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "print(q.detect_quantization({}, {'w': ('BF16', (2,))}))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and r.stdout.strip() == "None", r.stderr


@pytest.mark.parametrize("code", ["F8_E8M0", "F4", "F8_E4M3FNUZ"])
def test_quantization_only_dtypes_are_named_not_called_corrupt(llama, tmp_path, code):
    """MXFP4/MXFP8/NVFP4 checkpoints store scales as F8_E8M0 and weights as F4: safetensors
    dtypes that rejuv does not read. The header is edited as such a writer would leave it."""
    sft = tmp_path / "sft"
    shutil.copytree(llama[1], sft)
    shard = sorted(sft.glob("model-*.safetensors"))[0]
    raw = shard.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["dtype"] = code
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)  # data offsets are relative to the header's end
    shard.write_bytes(len(new).to_bytes(8, "little") + new + raw[8 + n :])
    line = one_error_line(run_cli("fuse", llama[0], sft, "--out", tmp_path / "o"), code, name)
    assert "quantized checkpoints (MXFP4, MXFP8, NVFP4" in line and "dequantize" in line
    assert "not a valid safetensors file" not in line
    assert not (tmp_path / "o").exists()
