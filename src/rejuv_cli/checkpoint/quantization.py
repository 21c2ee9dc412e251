"""Recognize quantized checkpoints from config.json and the tensor table (no tensor data, no torch).

A quantized checkpoint stores integer or FP8 codes plus scale tensors instead of the weights
themselves. Interpolating codes with another checkpoint's values, or copying scales as if they
were ordinary tensors, writes a checkpoint that loads and is silently wrong, so rejuv refuses
quantized inputs until it can dequantize them itself.

Evidence, strongest first (any one is enough):
  - config.json `quantization_config` (also `compression_config`, at the top level or inside a
    nested config such as `text_config`): it tells loaders the weights on disk are quantized;
  - tensors named as the quantizers name them (last name component): `weight_scale_inv` (FP8
    with block scales: DeepSeek-V3, Qwen3-FP8, transformers FineGrainedFP8), `SCB` /
    `weight_format` (bitsandbytes int8), `absmax` / `quant_map` / `quant_state.*`
    (bitsandbytes 4-bit), `qweight` / `qzeros` / `scales` / `g_idx` (GPTQ, AWQ),
    `weight_packed` / `weight_zero_point` / `weight_global_scale` (compressed-tensors),
    `weight_scale` / `input_scale` (FP8 or int8 with per-tensor or per-channel scales);
  - dtypes: any FP8 tensor (F8_E4M3, F8_E5M2), and any I8/U8 tensor named `*.weight`.
Integer buffers of ordinary checkpoints are not evidence: GPT-2's `attn.bias` / `masked_bias`
causal masks (BOOL or U8), `position_ids` (I64), `*.num_batches_tracked` (I64).
"""

from __future__ import annotations

from collections.abc import Mapping

F8_CODES = frozenset({"F8_E4M3", "F8_E5M2"})
_INT8_WEIGHT_CODES = frozenset({"I8", "U8"})
_CONFIG_KEYS = ("quantization_config", "compression_config")

# Tensor-name rules, in the order their format wins: (format, marker leaf names, the most
# telling first).
_NAME_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("FP8 with block scales", ("weight_scale_inv",)),
    ("bitsandbytes int8 (LLM.int8)", ("SCB", "weight_format")),
    (
        "bitsandbytes 4-bit",
        ("absmax", "quant_map", "quant_state", "nested_absmax", "nested_quant_map"),
    ),
    ("GPTQ/AWQ packed integer weights", ("qweight", "qzeros", "scales", "g_idx")),
    (
        "compressed-tensors packed weights",
        ("weight_packed", "weight_zero_point", "weight_global_scale"),
    ),
    ("low-precision weights with scales", ("weight_scale", "input_scale")),
)

_METHOD_NAMES = {
    "gptq": "GPTQ",
    "awq": "AWQ",
    "fbgemm_fp8": "FP8 (fbgemm)",
    "compressed-tensors": "compressed-tensors",
    "hqq": "HQQ",
    "quanto": "Quanto",
    "torchao": "torchao",
    "eetq": "EETQ",
    "aqlm": "AQLM",
    "mxfp4": "MXFP4",
    "gguf": "GGUF",
}


def detect_quantization(
    config: Mapping, tensors: Mapping[str, tuple[str, tuple[int, ...]]]
) -> str | None:
    """A one-line description of how a checkpoint is quantized, or None when it is not.

    config: the parsed config.json ({} when absent); tensors: name -> (safetensors dtype code,
    shape), in storage order. The description names the format, the evidence in parentheses,
    and one example tensor, e.g. "FP8 with block scales (weight_scale_inv,
    quantization_config.quant_method=fp8), e.g. tensor 'model.layers.0.mlp.down_proj.weight'
    (F8_E4M3 [2048, 7168])".
    """
    from_config = _from_config(config)
    fmt, markers, example = _from_tensors(tensors)
    if from_config is None and fmt is None:
        return None
    evidence = list(markers)
    if from_config is not None:
        fmt, key = from_config
        evidence.append(key)
    text = f"{fmt} ({', '.join(evidence)})"
    if example is None:
        return (
            f"{text}; its tensors look unquantized, but loaders will treat them as quantized "
            "(if they were dequantized and config.json was not updated, delete its "
            "quantization_config)"
        )
    dtype, shape = tensors[example]
    return f"{text}, e.g. tensor '{example}' ({dtype} {list(shape)})"


def _from_config(config: Mapping) -> tuple[str, str] | None:
    """(format, evidence) from config.json's quantization_config, or None."""
    if not isinstance(config, Mapping):
        return None
    places = [("", config)] + [
        (f"{key}.", sub) for key, sub in config.items() if isinstance(sub, Mapping)
    ]
    for prefix, cfg in places:
        for key in _CONFIG_KEYS:
            qc = cfg.get(key)
            if isinstance(qc, Mapping) and qc:
                return _config_format(qc, f"{prefix}{key}")
    return None


def _config_format(qc: Mapping, where: str) -> tuple[str, str]:
    method = str(qc.get("quant_method") or "").lower()
    evidence = f"{where}.quant_method={method}"
    if not method and (qc.get("load_in_8bit") or qc.get("load_in_4bit")):
        method = "bitsandbytes"
        flag = "load_in_4bit" if qc.get("load_in_4bit") else "load_in_8bit"
        evidence = f"{where}.{flag}=true"
    bits = qc.get("bits", qc.get("w_bit"))
    if method == "fp8":
        block = qc.get("weight_block_size")
        return ("FP8 with block scales" if block else "FP8 with per-tensor scales"), evidence
    if method == "bitsandbytes":
        if qc.get("load_in_4bit"):
            return f"bitsandbytes 4-bit ({qc.get('bnb_4bit_quant_type') or 'fp4'})", evidence
        if qc.get("load_in_8bit"):
            return "bitsandbytes int8 (LLM.int8)", evidence
        return "bitsandbytes", evidence
    name = _METHOD_NAMES.get(method, method)
    if method in ("gptq", "awq") and isinstance(bits, int):
        return f"{name} {bits}-bit", evidence
    if method == "compressed-tensors" and isinstance(qc.get("format"), str):
        return f"{name} ({qc['format']})", evidence
    if not method:
        return "quantized (method not named)", f"{where} is set"
    return f"{name} quantization", evidence


def _leaf_markers(name: str) -> set[str]:
    parts = name.split(".")
    found = {parts[-1]}
    if "quant_state" in parts[:-1] or parts[-1].startswith("quant_state"):
        found.add("quant_state")
    return found


def _from_tensors(
    tensors: Mapping[str, tuple[str, tuple[int, ...]]],
) -> tuple[str | None, list[str], str | None]:
    """(format, marker names found, example tensor) from the names and dtypes alone."""
    hits: dict[int, dict[str, str]] = {}  # rule index -> marker -> first tensor with it
    fp8 = int8_weight = None
    for name, (dtype, _shape) in tensors.items():
        leaves = _leaf_markers(name)
        for i, (_fmt, markers) in enumerate(_NAME_RULES):
            for marker in leaves.intersection(markers):
                hits.setdefault(i, {}).setdefault(marker, name)
        if dtype in F8_CODES and fp8 is None:
            fp8 = name
        is_weight = name == "weight" or name.endswith(".weight")
        if is_weight and dtype in _INT8_WEIGHT_CODES and int8_weight is None:
            int8_weight = name
    quantized_weight = fp8 or int8_weight  # the codes themselves make the best example
    if hits:
        first = min(hits)
        fmt = _NAME_RULES[first][0]
        if fmt == "low-precision weights with scales" and fp8 is not None:
            fmt = "FP8 with scales"
        elif fmt == "low-precision weights with scales" and int8_weight is not None:
            fmt = "int8 with scales"
        markers = [m for i in sorted(hits) for m in _NAME_RULES[i][1] if m in hits[i]][:3]
        marker = next(m for m in _NAME_RULES[first][1] if m in hits[first])
        return fmt, markers, quantized_weight or hits[first][marker]
    if fp8 is not None:
        return "FP8 weights", [f"{tensors[fp8][0]} tensors"], fp8
    if int8_weight is not None:
        dtype = tensors[int8_weight][0]
        fmt = "int8-coded weights" if dtype == "I8" else "uint8-coded weights"
        return fmt, [f"{dtype} *.weight"], int8_weight
    return None, [], None


def dequantize_hint(description: str) -> str:
    """How transformers dequantizes the format a description names ("" when it does not)."""
    if description.startswith("FP8 with"):
        return (
            "e.g. AutoModelForCausalLM.from_pretrained(DIR, quantization_config="
            "FineGrainedFP8Config(dequantize=True), dtype=torch.bfloat16).save_pretrained(NEW_DIR)"
        )
    if description.startswith("bitsandbytes"):
        return "e.g. load it with transformers, then model.dequantize() and save_pretrained"
    return ""
