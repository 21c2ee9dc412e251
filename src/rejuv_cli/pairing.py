"""Tensor pairing: which BASE tensor each SFT tensor is measured against, and which are copied.

The one place that matches the two checkpoints (names, tied embeddings, dtypes, shapes,
added-token rows) and checks they are the same model; no tensor data is read. The fuse plan
(`plan.build_plan`) and `rejuv diagnose` both start from `pair_tensors`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from rejuv_cli.arch.units import embeddings, stored_as
from rejuv_cli.checkpoint.config import vocab_size
from rejuv_cli.checkpoint.dtypes import FUSABLE_CODES
from rejuv_cli.checkpoint.fp8 import Fp8Checkpoint
from rejuv_cli.checkpoint.names import (
    check_layers_stored,
    check_same_names,
    output_embedding,
    ties_embeddings,
)
from rejuv_cli.checkpoint.quantization import dequantize_hint, detect_quantization
from rejuv_cli.checkpoint.reader import Checkpoint
from rejuv_cli.checkpoint.safetensors_file import TensorInfo
from rejuv_cli.errors import MismatchError, QuantizedError

# model.layers.12.mlp..., transformer.h.3.attn..., gpt_neox.layers.0..., encoder.layer.5...
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|block|layer)\.(\d+)(?:\.|$)")
# Input embeddings by name ending, for a tied BASE whose input embedding is not stored under its
# family's name (arch.units.embeddings).
_INPUT_EMBEDDINGS = (
    "embed_tokens.weight",
    "wte.weight",
    "word_embeddings.weight",
    "embed_in.weight",
    "tok_embeddings.weight",
)
_VOCAB_NAMES = re.compile(r"embed|wte|lm_head|embed_out|(^|\.)output\.weight$")
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


@dataclass(frozen=True)
class TensorPairing:
    """One SFT tensor and its BASE counterpart (None: only in SFT)."""

    name: str
    sft: TensorInfo
    base: TensorInfo | None = None
    base_rows: int | None = None  # rows >= base_rows exist only in SFT (added tokens)
    copied: bool = False  # taken whole from SFT: only in SFT, or not floating point
    note: str = ""  # why it is copied, for people

    @property
    def paired(self) -> bool:
        """Floating point with BASE values (for all rows but `base_rows` onwards): fusable,
        measurable."""
        return self.base is not None and not self.copied


@dataclass
class Pairing:
    tensors: list[TensorPairing]  # SFT's tensors, in its storage order
    warnings: list[str] = field(default_factory=list)
    base_only: list[str] = field(default_factory=list)  # BASE tensors with no SFT counterpart
    n_layers: int = 0

    def by_name(self) -> dict[str, TensorPairing]:
        return {t.name: t for t in self.tensors}


def layer_of(name: str) -> int | None:
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def layer_count(ckpt: Checkpoint) -> int | None:
    """Layers as config.json states them (also inside text_config), else None."""
    for cfg in (ckpt.config, ckpt.config.get("text_config") or {}):
        for key in _LAYER_KEYS:
            if isinstance(cfg.get(key), int):
                return cfg[key]
    return None


def n_layers(ckpt: Checkpoint) -> int:
    """Layers per config.json, else one more than the highest layer index in tensor names."""
    from_names = max((x for x in map(layer_of, ckpt.tensors) if x is not None), default=-1) + 1
    return layer_count(ckpt) or from_names


def check_same_architecture(base: Checkpoint, sft: Checkpoint) -> None:
    """MismatchError when config.json says BASE and SFT are different models."""
    bt, st = base.config.get("model_type"), sft.config.get("model_type")
    if bt and st and bt != st:
        raise MismatchError(
            f"BASE is a {bt!r} model but SFT is {st!r} (config.json model_type): "
            "rejuv needs the base model the SFT checkpoint was trained from"
        )
    bl, sl = layer_count(base), layer_count(sft)
    if bl is not None and sl is not None and bl != sl:
        raise MismatchError(
            f"BASE has {bl} layers but SFT has {sl} (config.json): same architecture? "
            "rejuv needs the base model the SFT checkpoint was trained from"
        )


def check_not_quantized(*ckpts: Checkpoint) -> None:
    """QuantizedError naming every quantized input, its format and one example tensor.
    Block-scaled FP8 read through `Fp8Checkpoint` is not: it reads dequantized weights, and
    refused anything else quantized when it was opened."""
    found: list[str] = []
    hints: list[str] = []
    for ckpt in ckpts:
        if isinstance(ckpt, Fp8Checkpoint):
            continue
        table = {name: (t.dtype, t.shape) for name, t in ckpt.tensors.items()}
        what = detect_quantization(ckpt.config, table)
        if what is not None:
            found.append(f"{ckpt.label} is quantized: {what}")
            hints += [h for h in [dequantize_hint(what)] if h and h not in hints]
    if found:
        how = f" ({'; '.join(hints)})" if hints else ""
        raise QuantizedError(
            f"{'; '.join(found)}. rejuv fuses unquantized F16/BF16/F32 weights only: use the "
            f"release's bf16 weights, or dequantize to bf16 first{how}, and pass that directory "
            "instead"
        )


# What happens to the tensors that do not pair, in the words of the command that pairs them:
# fuse (and sweep) write a checkpoint; diagnose only compares.
_UNPAIRED = {
    "fuse": {"sft_only": "copied from SFT", "base_only": "left out",
             "rows": "kept from SFT, shared rows fused"},
    "diagnose": {"sft_only": "not compared (the weight statistics leave it out)",
                 "base_only": "not compared (the weight statistics leave it out)",
                 "rows": "the weight statistics cover the {n} rows BASE has"},
}  # fmt: skip


def pair_tensors(base: Checkpoint, sft: Checkpoint, purpose: str = "fuse") -> Pairing:
    """Pair every SFT tensor with BASE's, after checking both are the same, unquantized model.

    Warnings (in order): found while opening, layers declared but not stored, tensors only in
    SFT and added-token rows (in SFT order), tensors only in BASE; they say what `purpose`
    ("fuse" or "diagnose") does with them.
    """
    says = _UNPAIRED[purpose]
    check_not_quantized(base, sft)
    warnings: list[str] = base.warnings + sft.warnings  # from opening (unlisted tensors)
    for ckpt in (base, sft):  # before comparing layer counts: a config may be the wrong one
        warnings += [w for w in [check_layers_stored(ckpt, layer_count(ckpt))] if w]
    check_same_architecture(base, sft)
    check_same_names(base, sft)
    tensors: list[TensorPairing] = []
    used_base: set[str] = set()
    # SFT's output embedding, which a tied BASE does not store: its input embedding stands in.
    sft_head = output_embedding(sft) if ties_embeddings(base) else None
    for name, s in sft.tensors.items():
        b = base.tensors.get(name) or (_tied_counterpart(base, s) if name == sft_head else None)
        if b is None:
            warnings.append(f"'{name}' exists only in SFT: {says['sft_only']}")
            tensors.append(TensorPairing(name, s, copied=True, note="only in SFT"))
            continue
        used_base.add(b.name)
        _check_dtypes(name, b, s, base, sft)
        if s.dtype not in FUSABLE_CODES:  # the same non-float dtype on both sides
            tensors.append(TensorPairing(name, s, b, copied=True, note="not floating point"))
            continue
        base_rows = _check_shapes(name, b, s, base, sft)
        tensors.append(TensorPairing(name, s, b, base_rows))
        if base_rows is not None:
            warnings.append(
                f"'{name}': rows {base_rows}..{s.shape[0] - 1} exist only in SFT (added tokens): "
                + says["rows"].format(n=base_rows)
            )
    base_only = [n for n in base.tensors if n not in used_base and n not in sft.tensors]
    base_head = output_embedding(base) if ties_embeddings(sft) else None
    for n in base_only:
        why = " (SFT ties it to the input embeddings)" if n == base_head else ""
        warnings.append(f"'{n}' exists only in BASE{why}: {says['base_only']}")
    return Pairing(tensors, warnings, base_only, n_layers(sft))


def _check_dtypes(name: str, b: TensorInfo, s: TensorInfo, base: Checkpoint, sft: Checkpoint):
    """Floats (F16/BF16/F32/F64, any mix) fuse; any other dtype must be the same on both sides
    and is copied. FP8 codes never get here (check_not_quantized; Fp8Checkpoint lists its
    weights dequantized, as F32); refused again, to be sure."""
    if b.dtype in FUSABLE_CODES and s.dtype in FUSABLE_CODES:
        return
    if "F8" in b.dtype or "F8" in s.dtype:
        raise QuantizedError(
            f"tensor '{name}' is {b.dtype} in {base.label} and {s.dtype} in {sft.label}: FP8 "
            "tensors are quantized codes, not weights. Dequantize to bf16 first"
        )
    if b.dtype != s.dtype:
        raise MismatchError(
            f"tensor '{name}' is {b.dtype} in {base.label} but {s.dtype} in {sft.label}: rejuv "
            "fuses floating-point tensors (F16/BF16/F32/F64, in any mix) and copies other tensors "
            "only when both have the same dtype. Is one of them quantized or converted? Re-save "
            "both as plain bf16/fp32 checkpoints (transformers from_pretrained + save_pretrained)"
        )


def _tied_counterpart(base: Checkpoint, s: TensorInfo) -> TensorInfo | None:
    """BASE's input embedding for SFT's output embedding `s`, when BASE is tied
    (`ties_embeddings`) and stores no output embedding of its own: the input embedding under
    its family's name (arch.units.embeddings), else under a usual name ending."""
    named = stored_as(embeddings(base.config).input, base.tensors)
    candidates = [named] if named else [n for n in base.tensors if n.endswith(_INPUT_EMBEDDINGS)]
    for bname in candidates:
        b = base.tensors[bname]
        if b.shape[1:] == s.shape[1:]:
            return b
    return None


def _check_shapes(name: str, b: TensorInfo, s: TensorInfo, base: Checkpoint, sft: Checkpoint):
    """None when shapes match; base row count when SFT only appended vocabulary rows."""
    if b.shape == s.shape:
        return None
    appended_rows = (
        len(b.shape) == len(s.shape) >= 1 and b.shape[1:] == s.shape[1:] and s.shape[0] > b.shape[0]
    )
    vocab_sized = (
        s.shape[0] == vocab_size(sft.config) and b.shape[0] == vocab_size(base.config)
    ) or _vocab_matrix(name, sft)
    if appended_rows and vocab_sized:
        return b.shape[0]
    raise MismatchError(
        f"tensor '{name}' has shape {tuple(b.shape)} in BASE but {tuple(s.shape)} in SFT; "
        "same architecture? Only embedding/lm_head rows for added tokens may differ"
    )


def _vocab_matrix(name: str, ckpt: Checkpoint) -> bool:
    """Whether tensor `name` of `ckpt` is an embedding: its family's names for them
    (arch.units.embeddings), or a usual name."""
    e = embeddings(ckpt.config)
    named = {stored_as(e.input, ckpt.tensors), stored_as(e.output, ckpt.tensors)}
    return name in named or bool(_VOCAB_NAMES.search(name))
