"""A PEFT LoRA adapter's adapter_config.json: what rejuv reads from it, what it refuses, and the
per-module rank, alpha and scale, resolved as PEFT itself does (peft/tuners/lora/model.py
`_create_and_replace`, peft/utils/other.py `get_pattern_key`, lora/layer.py `update_layer`).

Refused: anything whose merge is not θ_base + s·B·A over the full-precision BASE: other PEFT
types, DoRA, the LoRA variants, unconverted residual initialisations (PiSSA, OLoRA, CorDA,
LoRA-GA) and LoftQ.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from rejuv_cli.errors import CheckpointError, first_line

MERGE = (
    "merge it with PEFT (PeftModel.from_pretrained(base, adapter).merge_and_unload()"
    ".save_pretrained(dir)) and pass that directory as SFT"
)
# LoraConfig fields that select a variant whose forward or merge is not plain additive LoRA
# (lora/config.py fields with metadata is_lora_variant, plus those of research A.2).
VARIANT_FIELDS = (
    "use_dora", "alora_invocation_tokens", "velora_config", "monteclora_config", "use_bdlora",
    "arrow_config", "kasa_config", "use_qalora", "layer_replication", "target_parameters",
    "megatron_config",
)  # fmt: skip
# init_lora_weights values after which A·B is relative to a residual W - A0·B0, not to BASE.
RESIDUAL_INITS = ("pissa", "olora", "corda", "lora_ga")


@dataclass(frozen=True)
class LoraSettings:
    """The adapter_config.json fields the reader uses (validated)."""

    r: int
    lora_alpha: float
    use_rslora: bool = False
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    fan_in_fan_out: bool = False
    modules_to_save: list[str] = field(default_factory=list)
    # module name (as PEFT matched it: a suffix of the module's name) -> token indices
    token_indices: dict[str, list[int]] = field(default_factory=dict)
    base_model_name_or_path: str | None = None
    peft_version: str | None = None

    def rank_alpha(self, module: str) -> tuple[int, float]:
        """(r, lora_alpha) of `module` (its name in the model, no `base_model.model.` prefix)."""
        r = self.rank_pattern.get(pattern_key(self.rank_pattern, module), self.r)
        alpha = self.alpha_pattern.get(pattern_key(self.alpha_pattern, module), self.lora_alpha)
        return r, alpha


def pattern_key(patterns, module: str) -> str:
    """PEFT's `get_pattern_key`: the first pattern that matches the whole module name or a
    dot-separated tail of it (re.match(rf"(.*\\.)?({key})$")), else `module` itself."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return module


def lora_scale(alpha: float, r: int, use_rslora: bool) -> float:
    """s = lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA (lora/layer.py update_layer)."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def read_adapter_config(path: Path, label: str) -> LoraSettings:
    """Parse and check adapter_config.json; CheckpointError (one line) when it is malformed or
    describes an adapter that is not a plain LoRA over BASE."""

    def fail(problem: str) -> CheckpointError:
        return CheckpointError(f"{label} {path}: {problem}")

    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise fail(f"cannot read it: {first_line(e)}") from None
    if not isinstance(cfg, dict):
        raise fail("not a JSON object; re-save the adapter with save_pretrained")
    peft_type = cfg.get("peft_type")
    if peft_type != "LORA":
        raise fail(
            f"peft_type is {peft_type!r}; rejuv reads LoRA adapters (peft_type LORA) only: {MERGE}"
        )
    for name in VARIANT_FIELDS:
        if cfg.get(name):
            raise fail(f"{name} is set: a LoRA variant whose merge is not θ_base + s·B·A; {MERGE}")
    init = cfg.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(RESIDUAL_INITS):
        raise fail(
            f"init_lora_weights is {init!r}: this adapter was saved unconverted, so B·A is "
            "relative to PEFT's residual base, not to BASE. Re-save it with save_pretrained(dir, "
            "path_initial_model_for_weight_conversion=<the adapter saved before training>), "
            "which makes it a plain LoRA over BASE, and pass that"
        )
    if isinstance(init, str) and init.lower() == "loftq":
        raise fail(
            "init_lora_weights is 'loftq': A and B were fitted to a quantized copy of the base, "
            "so θ_base + s·B·A over the full-precision BASE is not the trained model; merge it "
            "with PEFT into the base it was trained with"
        )

    def typed(name, ok, what, default=None):
        value = cfg.get(name)
        value = default if value is None else value
        if not ok(value):
            raise fail(f"{name} must be {what} (got {value!r})")
        return value

    def pattern(name, ok, what):
        pats = typed(name, lambda v: isinstance(v, dict), "an object {regex: value}", {})
        for key, value in pats.items():
            if not ok(value):
                raise fail(f"{name}[{key!r}] must be {what} (got {value!r})")
            try:
                re.compile(key)
            except re.error as e:
                raise fail(f"{name} key {key!r} is not a regular expression ({e})") from None
        return pats

    tokens = typed("trainable_token_indices", _is_tokens,
                   "a list of token ids or an object {module: [token ids]}")  # fmt: skip
    return LoraSettings(
        r=typed("r", _is_rank, "a positive integer"),
        lora_alpha=typed("lora_alpha", _is_alpha, "a positive number"),
        use_rslora=typed("use_rslora", _is_bool, "true or false", False),
        rank_pattern=pattern("rank_pattern", _is_rank, "a positive integer"),
        alpha_pattern=pattern("alpha_pattern", _is_alpha, "a positive number"),
        fan_in_fan_out=typed("fan_in_fan_out", _is_bool, "true or false", False),
        modules_to_save=typed("modules_to_save", _is_names, "a list of module names", []),
        # A list means the input embedding; its module name is matched from the weights' keys.
        token_indices={"": tokens} if isinstance(tokens, list) else dict(tokens or {}),
        base_model_name_or_path=_str_or_none(cfg.get("base_model_name_or_path")),
        peft_version=_str_or_none(cfg.get("peft_version")),
    )


def _is_rank(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _is_alpha(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _is_bool(v) -> bool:
    return isinstance(v, bool)


def _is_names(v) -> bool:
    return isinstance(v, list) and all(isinstance(m, str) for m in v)


def _is_tokens(v) -> bool:
    return v is None or _indices(v) or (isinstance(v, dict) and all(map(_indices, v.values())))


def _indices(v) -> bool:
    return isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in v)


def _str_or_none(v) -> str | None:
    return v if isinstance(v, str) and v else None
