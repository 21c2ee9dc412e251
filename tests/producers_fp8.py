"""Block-scaled FP8 checkpoints written by hand in the published layout (no offline producer:
transformers refuses to quantize without a GPU, DeepSeek's scripts need triton and CUDA).

How the layout was checked against the producers' source (tests/test_fp8.py says the same):
- DeepSeek-V3 README_WEIGHTS.md ("FP8 Weight Documentation"): `quantization_config`
  {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size":
  [128, 128]}; `weight_scale_inv` float32 next to each weight; a block not aligned to 128 is
  zero-padded before its scale is computed; W = (128x128 block) * weight_scale_inv.
  inference/fp8_cast_bf16.py `main`: the scale of `<w>` is `f"{w}_scale_inv"`, found through the
  index (it may sit in another shard), every 1-byte tensor with one is FP8; kernel.py
  `weight_dequant_kernel`: y = x.to(float32) * s[pid_m, pid_n], ceil-div grid, masked edges.
- transformers 5.24 integrations/finegrained_fp8.py: `FP8Linear.__init__` (weight
  float8_e4m3fn [out, in], `weight_scale_inv` float32 [ceil(out/bm), ceil(in/bn)]),
  `Fp8Quantize._quantize_one` (per block amax; scale = 448 / amax, 1 for an all-zero block;
  weight_scale_inv = 1 / scale; codes = clamp(W · scale, ±448) cast to e4m3), and
  `replace_with_fp8_linear` + `get_modules_to_not_convert`: only nn.Linear modules of the
  decoder become FP8; embeddings, norms and lm_head stay in the model dtype.

- DeepSeek-V3 inference/kernel.py `weight_quant_kernel` (commit 0623163): per block
  s = amax / 448, y = x / s, on the same ceil-div grid with masked (partial) edge blocks.

`quantize_like_transformers` below is `_quantize_one`'s arithmetic, extended to partial edge
blocks as DeepSeek's README says (transformers itself skips weights whose dims are not block
multiples); `quantize_like_deepseek` is `weight_quant_kernel`'s, with transformers' guards (an
all-zero block gets scale 1, codes clamped to ±448). Both in numpy/torch, independent of rejuv.
bf16 scales are a variant (third-party Qwen FP8 releases are said to store them so).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

FP8_MAX = 448.0
FP8_CONFIG = {
    "activation_scheme": "dynamic",
    "fmt": "e4m3",
    "quant_method": "fp8",
    "weight_block_size": [128, 128],
}
# hidden 256 and head_dim 64 (4 heads, 2 KV heads): q/k/v/o are whole 128x128 blocks;
# intermediate 200: gate/up [200, 256] and down [256, 200] have partial edge blocks.
LLAMA = dict(hidden_size=256, intermediate_size=200, num_attention_heads=4,
             num_key_value_heads=2)  # fmt: skip
# A scale stored in another shard than its weight (fp8_cast_bf16.py looks it up by index).
MOVED_SCALE = "model.layers.1.mlp.up_proj.weight_scale_inv"


def is_linear(name: str) -> bool:
    """The decoder's nn.Linear weights, which FineGrainedFP8 converts (not embeddings, norms,
    lm_head)."""
    return name.endswith("_proj.weight")


def quantize_like_transformers(w: torch.Tensor, block=(128, 128), scale_dtype=torch.float32):
    """(codes float8_e4m3fn [out, in], weight_scale_inv [ceil(out/bm), ceil(in/bn)]).

    Fp8Quantize._quantize_one on the zero-padded weight; with bf16 scales the stored scale is
    rounded and the codes divide by it (what a producer with bf16 scales must do for
    codes × scale to reconstruct the weight)."""
    rows, cols = w.shape
    bm, bn = block
    gr, gc = math.ceil(rows / bm), math.ceil(cols / bn)
    padded = torch.zeros(gr * bm, gc * bn, dtype=torch.float32)
    padded[:rows, :cols] = w.to(torch.float32)
    tiles = padded.reshape(gr, bm, gc, bn)
    amax = tiles.abs().amax(dim=(-3, -1))
    scales = FP8_MAX / torch.where(amax > 0, amax, torch.ones_like(amax))
    scales = torch.where(amax > 0, scales, torch.ones_like(scales))
    inv = (1.0 / scales).to(scale_dtype)
    if scale_dtype != torch.float32:
        scales = 1.0 / inv.to(torch.float32)
    scaled = tiles * scales.unsqueeze(-1).unsqueeze(-3)
    codes = torch.clamp(scaled, -FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return codes.reshape(gr * bm, gc * bn)[:rows, :cols].contiguous(), inv


def quantize_like_deepseek(w: torch.Tensor, block=(128, 128), scale_dtype=torch.float32):
    """(codes, scales) with s = amax / 448 per block in float32 (numpy), stored in
    `scale_dtype`, and codes = clamp(w / s, ±448) cast to e4m3 by torch."""
    w32 = w.to(torch.float32).numpy()
    rows, cols = w32.shape
    bm, bn = block
    amax = np.array([[np.abs(w32[i : i + bm, j : j + bn]).max() for j in range(0, cols, bn)]
                     for i in range(0, rows, bm)], dtype=np.float32)  # fmt: skip
    s = torch.from_numpy(np.where(amax > 0, amax / np.float32(FP8_MAX), np.float32(1)))
    s = s.to(scale_dtype)
    s_full = np.repeat(np.repeat(s.to(torch.float32).numpy(), bm, 0), bn, 1)[:rows, :cols]
    x = np.clip(w32 / s_full, -FP8_MAX, FP8_MAX)
    return torch.from_numpy(x).to(torch.float8_e4m3fn), s


def e4m3_values() -> np.ndarray:
    """[256] float64: the value of every float8_e4m3fn bit pattern, decoded from the format
    (sign, 4 exponent bits with bias 7, 3 mantissa bits; exponent 0 is subnormal; S.1111.111 is
    NaN, there is no infinity), without torch."""
    out = np.empty(256)
    for code in range(256):
        sign = -1.0 if code & 0x80 else 1.0
        exp, man = (code >> 3) & 0xF, code & 0x7
        if exp == 0xF and man == 0x7:
            out[code] = np.nan
        elif exp == 0:
            out[code] = sign * man / 8 * 2.0**-6
        else:
            out[code] = sign * (1 + man / 8) * 2.0 ** (exp - 7)
    return out


def per_element(scale: torch.Tensor, shape, block=(128, 128)) -> np.ndarray:
    """float64 [out, in]: each element's block scale."""
    s = scale.to(torch.float64).numpy()
    return np.repeat(np.repeat(s, block[0], axis=0), block[1], axis=1)[: shape[0], : shape[1]]


def dequantize_numpy(codes: torch.Tensor, scale: torch.Tensor, block=(128, 128)) -> np.ndarray:
    """float32 [out, in]: value(code) · scale of its block in float64 (exact: 4 + 24 significant
    bits), rounded once to float32. Independent of rejuv and of torch's float8 conversion."""
    q = e4m3_values()[codes.contiguous().view(torch.uint8).numpy()]
    return (q * per_element(scale, q.shape, block)).astype(np.float32)


def write_fp8(src: Path, dst: Path, *, block=(128, 128), scale_dtype=torch.float32,
              config: dict | None = None, edit=None,
              quantize=quantize_like_transformers) -> Path:  # fmt: skip
    """Copy HF checkpoint `src` (save_pretrained, sharded) to `dst` with every decoder Linear
    weight as F8_E4M3 codes + `<name>_scale_inv`, in the weight's shard (MOVED_SCALE in the
    first shard instead), and config.json's `quantization_config` = `config` (FP8_CONFIG with
    `block` by default). `edit(state)` may change each shard's tensors before saving."""
    shutil.copytree(src, dst)
    shards = sorted(dst.glob("*.safetensors"))
    states = {f: load_file(f) for f in shards}
    for state in states.values():
        for name in [n for n in state if is_linear(n)]:
            state[name], state[name + "_scale_inv"] = quantize(state[name], block, scale_dtype)
    for f, state in states.items():
        if MOVED_SCALE in state and f != shards[0]:
            states[shards[0]][MOVED_SCALE] = state.pop(MOVED_SCALE)
    for state in states.values():
        if edit is not None:
            edit(state)
    _save_shards(dst, states)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"] = config or (FP8_CONFIG | {"weight_block_size": list(block)})
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return dst


def _save_shards(dst: Path, states: dict) -> None:
    """Save shard file -> tensors, and the index save_pretrained would write for them."""
    weight_map, total = {}, 0
    for f, state in states.items():
        save_file(state, f, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(state, f.name))
        total += sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def write_dequantized(fp8_dir: Path, dst: Path, block=(128, 128)) -> Path:
    """The same model unquantized: each FP8 weight as float32 `dequantize_numpy` (no scale
    tensors), every other tensor as stored; config.json without quantization_config."""
    shutil.copytree(fp8_dir, dst)
    tensors = {}
    for f in sorted(dst.glob("*.safetensors")):
        tensors.update(load_file(f))
    states = {}
    for f in sorted(dst.glob("*.safetensors")):
        state = states[f] = {}
        for name, t in load_file(f).items():
            if name.endswith("_scale_inv"):
                continue
            if t.dtype == torch.float8_e4m3fn:
                t = torch.from_numpy(dequantize_numpy(t, tensors[name + "_scale_inv"], block))
            state[name] = t
    _save_shards(dst, states)
    cfg = json.loads((dst / "config.json").read_text())
    del cfg["quantization_config"]
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return dst
