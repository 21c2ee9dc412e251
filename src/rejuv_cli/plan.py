"""FusePlan: what happens to every output tensor, and where its bytes go. No tensor data is read.

The output tensor set is the SFT checkpoint's own tensor set, in its storage order (from
`pairing.pair_tensors`): nothing is enumerated from an allow-list, so unknown architectures
fuse like known ones.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from rejuv_cli.checkpoint.dtypes import FUSABLE_CODES, USER_DTYPES
from rejuv_cli.checkpoint.fp8 import FP8_CODE, Fp8Output, plan_fp8_outputs
from rejuv_cli.checkpoint.reader import Checkpoint
from rejuv_cli.checkpoint.safetensors_file import TensorInfo
from rejuv_cli.checkpoint.writer import OutEntry, ShardLayout, parse_size, plan_shards
from rejuv_cli.pairing import layer_of, pair_tensors
from rejuv_cli.recipe import Recipe

# What happens to a tensor:
FUSE = "fuse"  # θ_b + α(θ_s − θ_b) in float32, rounded once
BASE = "base"  # α = 0: the base values, exactly (cast only if the output dtype differs)
SFT = "sft"  # α = 1, non-float (same dtype on both sides), or SFT-only: the SFT values, exactly


@dataclass(frozen=True)
class TensorPlan:
    name: str
    action: str  # FUSE | BASE | SFT
    out_dtype: str  # safetensors code
    sft: TensorInfo
    base: TensorInfo | None = None  # None when the tensor exists only in SFT
    alpha: float | None = None
    alpha_source: str = ""  # "alpha", "rules[2]", "--alpha", ...
    base_rows: int | None = None  # rows >= base_rows exist only in SFT (added tokens): copied
    note: str = ""  # why it is copied, when it is (for people; test `copied`, not this)
    copied: bool = False  # copied whole from SFT: only in SFT, or not floating point

    @property
    def paired(self) -> bool:
        """A floating-point tensor with BASE values for every row: fused, resettable, measured
        (α = 0 or 1 included; added-token tensors are paired but have `base_rows`)."""
        return self.base is not None and not self.copied

    @property
    def out_entry(self) -> OutEntry:
        return OutEntry(self.name, self.out_dtype, self.sft.shape)


@dataclass
class FusePlan:
    tensors: list[TensorPlan]
    shards: list[ShardLayout]
    warnings: list[str] = field(default_factory=list)
    base_only: list[str] = field(default_factory=list)
    n_layers: int = 0
    shard_limit: int = 0
    # --dtype fp8: the tensors re-quantized (name -> Fp8Output: block, scale entry), and the
    # quantization_config the output's config.json declares (None: the output is unquantized)
    fp8: dict[str, Fp8Output] = field(default_factory=dict)
    quantization_config: dict | None = None

    def by_name(self) -> dict[str, TensorPlan]:
        return {t.name: t for t in self.tensors}

    @property
    def out_bytes(self) -> int:
        return sum(s.data_bytes for s in self.shards)

    def counts(self) -> dict[str, int | None]:
        """Output tensors by what fusion does to them: `fused` + `from_base` + `from_sft` +
        `copied` = `tensors`. `reset` (tensors whose reset units then get their reset values,
        a subset of the others) is None here: units are chosen after planning (run_fuse)."""
        c = Counter(t.action for t in self.tensors if not t.copied)
        return {
            "tensors": len(self.tensors),
            "fused": c[FUSE],  # 0 < α < 1
            "from_base": c[BASE],  # α = 0: BASE's values
            "from_sft": c[SFT],  # α = 1: SFT's values
            "copied": sum(1 for t in self.tensors if t.copied),  # only in SFT, or not float
            "reset": None,
            "sft_only": sum(1 for t in self.tensors if t.base is None),
            "base_only_dropped": len(self.base_only),
            "added_token_rows": sum(
                t.sft.shape[0] - t.base_rows for t in self.tensors if t.base_rows is not None
            ),
            "shards": len(self.shards),
        }

    def out_dtypes(self) -> dict[str, int]:
        return dict(Counter(t.out_dtype for t in self.tensors))


def build_plan(
    base: Checkpoint, sft: Checkpoint, recipe: Recipe, alpha_flag: bool = False
) -> FusePlan:
    """Decide every output tensor's action, coefficient and dtype, and the shard layout."""
    pairing = pair_tensors(base, sft)
    fp8, qconfig = plan_fp8_outputs(base, sft, pairing.tensors) if recipe.dtype == "fp8" else \
        ({}, None)  # fmt: skip
    tensors: list[TensorPlan] = []
    for p in pairing.tensors:
        out_dtype = FP8_CODE if p.name in fp8 else _out_dtype(p.sft, recipe.dtype)
        if p.copied:
            tensors.append(TensorPlan(p.name, SFT, out_dtype, p.sft, p.base, note=p.note,
                                      copied=True))  # fmt: skip
            continue
        alpha, source = recipe.alpha_for(p.name, layer_of(p.name), pairing.n_layers)
        action = BASE if alpha == 0.0 else SFT if alpha == 1.0 else FUSE
        if alpha_flag and source == "alpha":
            source = "--alpha"
        tensors.append(TensorPlan(p.name, action, out_dtype, p.sft, p.base, alpha, source,
                                  p.base_rows))  # fmt: skip
    shard_limit = parse_size(recipe.shard_size)
    entries = [e for t in tensors for e in
               ([t.out_entry, fp8[t.name].scale] if t.name in fp8 else [t.out_entry])]  # fmt: skip
    shards = plan_shards(entries, shard_limit)
    return FusePlan(tensors, shards, pairing.warnings, pairing.base_only, pairing.n_layers,
                    shard_limit, fp8, qconfig)  # fmt: skip


def _out_dtype(sft: TensorInfo, wanted: str) -> str:
    """`--dtype auto`: the dtype SFT stores the tensor in (`out_dtype` where the source reads it
    in another, e.g. dequantized FP8); otherwise the one asked for, for floating-point tensors.
    `fp8` applies to the tensors that are FP8 in an input (`plan_fp8_outputs`); the others are
    written as under auto."""
    if sft.dtype not in FUSABLE_CODES:
        return sft.dtype
    if wanted in ("auto", "fp8"):
        return sft.out_dtype or sft.dtype
    return USER_DTYPES[wanted]
