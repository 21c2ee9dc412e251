"""Unit maps: which slices of which tensors make up one unit ("neuron"), per model family.

Architecture knowledge is data (docs/method.md section 2). A unit is one output channel of an
input-side projection or one input channel of an output-side projection; a module groups the
units of one kind in one layer (or one expert). Each `Slice` names a tensor relative to the
layer prefix, the axis along which unit j is found in the *stored* tensor, and for fused
tensors which part of that axis holds the module's units.

Pure data and lookups: no torch, no I/O.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from rejuv_cli.errors import ArchError


@dataclass(frozen=True)
class Slice:
    tensor: str  # relative to the layer prefix; "{e}" stands for the expert index
    axis: int  # 0: unit j is row j (output channel); 1: column j (input channel)
    part: str | None = None  # fused tensor: which part of the axis ("q", "k", "gate", ...)
    optional: bool = False  # biases exist only in some families/configs
    out: bool = False  # the unit's outgoing weights (o/down input channels), not incoming
    # The whole tensor belongs to one unit (module `whole_expert`): no row or column is picked
    # out, and the instance's offset field holds the index of the unit that owns the tensor.
    whole: bool = False


@dataclass(frozen=True)
class ModuleMap:
    name: str  # "q", "k", "v", "o", "mlp", "expert", "shared_expert", "whole_expert"
    slices: tuple[Slice, ...]
    size: str  # which config size counts this module's units (see `part_sizes`)
    per_expert: bool = False  # one instance per expert of a layer ("layers.0.expert.2")
    # One instance per layer whose unit e is all of expert e's tensors, whole ("{e}" in the
    # slices); its units are counted from the stored experts, not from config.json.
    whole_experts: bool = False
    # Never in the default module set: only when --modules or a recipe names it.
    opt_in: bool = False


@dataclass(frozen=True)
class Embeddings:
    """Where a family stores its vocabulary matrices: full tensor names as save_pretrained writes
    them (transformers' `_tied_weights_keys` pairs them). `output` is the output embedding (the
    LM head); when config.json ties the embeddings it is not stored and `input` serves for it."""

    input: str
    output: str = "lm_head.weight"


# Most families: transformers' usual names. A checkpoint saved from a wrapper may prefix them
# ("language_model.lm_head.weight"): see `stored_as`.
STANDARD_EMBEDDINGS = Embeddings("model.embed_tokens.weight")


@dataclass(frozen=True)
class FamilyMap:
    name: str
    model_types: tuple[str, ...]
    layer_prefix: str  # with "{i}" for the layer index
    modules: tuple[ModuleMap, ...]
    fused_parts: dict[str, tuple[str, ...]]  # fused tensor -> its parts in storage order
    never_reset: tuple[str, ...]  # globs (full names) fused but never reset: norms, routers, ...
    embeddings: Embeddings = STANDARD_EMBEDDINGS  # fused, never reset
    # Mixture-of-experts families: the router's module (its weight is [experts, hidden]),
    # relative to the layer prefix: first as the checkpoint stores it, then any other name
    # transformers loads it under. `rejuv diagnose` hooks it (docs/method.md section 5).
    router: tuple[str, ...] = ()


def _w(name: str, axis: int, part: str | None = None) -> tuple[Slice, ...]:
    """A weight slice plus, for row slices, its optional bias (biases follow their rows)."""
    # nn.Linear stores [out, in]: rows are a unit's incoming weights, columns its outgoing ones.
    weight = Slice(f"{name}.weight", axis, part, out=axis == 1)
    if axis == 1:
        return (weight,)
    return (weight, Slice(f"{name}.bias", 0, part, optional=True))


_NEVER_RESET = ("*norm*", "*embed*", "*.ln_*", "*wte*", "*wpe*", "*rotary*")  # + embeddings
_ATTN = (
    ModuleMap("q", _w("self_attn.q_proj", 0), "q"),
    ModuleMap("k", _w("self_attn.k_proj", 0), "kv"),
    ModuleMap("v", _w("self_attn.v_proj", 0), "kv"),
    ModuleMap("o", _w("self_attn.o_proj", 1), "q"),
)
_GATED_MLP = ModuleMap(
    "mlp", _w("mlp.gate_proj", 0) + _w("mlp.up_proj", 0) + _w("mlp.down_proj", 1), "intermediate"
)

FAMILIES: dict[str, FamilyMap] = {}
# model_type -> its vocabulary matrices: every family with a unit map (`_register`), and below,
# families rejuv fuses but has no unit map for. Any other model_type: STANDARD_EMBEDDINGS.
EMBEDDINGS: dict[str, Embeddings] = {}


def _register(fm: FamilyMap) -> None:
    for t in fm.model_types:
        FAMILIES[t] = fm
        EMBEDDINGS[t] = fm.embeddings


_register(FamilyMap(
    "llama-like",
    ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "olmo2",
     "granite", "cohere", "smollm3"),
    "model.layers.{i}.", _ATTN + (_GATED_MLP,), {}, _NEVER_RESET,
))  # fmt: skip
_register(FamilyMap(
    "phi3", ("phi3",), "model.layers.{i}.",
    (
        ModuleMap("q", _w("self_attn.qkv_proj", 0, "q"), "q"),
        ModuleMap("k", _w("self_attn.qkv_proj", 0, "k"), "kv"),
        ModuleMap("v", _w("self_attn.qkv_proj", 0, "v"), "kv"),
        ModuleMap("o", _w("self_attn.o_proj", 1), "q"),
        # gate_up_proj stacks [gate; up] on dim 0: unit j is rows j and j + I.
        ModuleMap("mlp", _w("mlp.gate_up_proj", 0, "gate") + _w("mlp.gate_up_proj", 0, "up")
                  + _w("mlp.down_proj", 1), "intermediate"),
    ),
    {"self_attn.qkv_proj": ("q", "k", "v"), "mlp.gate_up_proj": ("gate", "up")},
    _NEVER_RESET,
))  # fmt: skip


def _c_attn(part: str) -> tuple[Slice, ...]:
    # c_attn is [in, 3·hidden]: q/k/v output channels are column blocks, biases follow them.
    return (Slice("attn.c_attn.weight", 1, part), Slice("attn.c_attn.bias", 0, part))


def _whole_experts(expert: ModuleMap) -> ModuleMap:
    """The `whole_expert` module of a family: unit e = every tensor of the neuron-level
    `expert` module's expert e, whole (so both cover the same tensors); opt-in."""
    slices = tuple(Slice(s.tensor, 0, optional=s.optional, out=s.out, whole=True)
                   for s in expert.slices)  # fmt: skip
    return ModuleMap("whole_expert", slices, "experts", whole_experts=True, opt_in=True)


_MOE = "block_sparse_moe.experts.{e}."
# transformers 5 loads Mixtral's block_sparse_moe as `mlp`.
_MIXTRAL_ROUTER, _QWEN_MOE_ROUTER = ("block_sparse_moe.gate", "mlp.gate"), ("mlp.gate",)

_register(FamilyMap(
    # GPT-2 Conv1D stores weights as [in, out]: output channels are columns, input channels rows.
    "gpt2", ("gpt2",), "transformer.h.{i}.",
    (
        ModuleMap("q", _c_attn("q"), "q"),
        ModuleMap("k", _c_attn("k"), "q"),
        ModuleMap("v", _c_attn("v"), "q"),
        ModuleMap("o", (Slice("attn.c_proj.weight", 0, out=True),), "q"),
        ModuleMap("mlp", (Slice("mlp.c_fc.weight", 1), Slice("mlp.c_fc.bias", 0),
                          Slice("mlp.c_proj.weight", 0, out=True)), "intermediate"),
    ),
    {"attn.c_attn": ("q", "k", "v")},
    _NEVER_RESET + ("*.attn.c_proj.bias", "*.mlp.c_proj.bias", "*.attn.bias", "*.attn.masked_bias"),
    Embeddings("transformer.wte.weight"),
))  # fmt: skip
_MIXTRAL_EXPERT = ModuleMap("expert", _w(_MOE + "w1", 0) + _w(_MOE + "w3", 0)
                            + _w(_MOE + "w2", 1), "intermediate", per_expert=True)  # fmt: skip
_QWEN_EXPERT = ModuleMap("expert", _w("mlp.experts.{e}.gate_proj", 0)
                         + _w("mlp.experts.{e}.up_proj", 0) + _w("mlp.experts.{e}.down_proj", 1),
                         "moe_intermediate", per_expert=True)  # fmt: skip
_register(FamilyMap(
    "mixtral", ("mixtral",), "model.layers.{i}.",
    _ATTN + (_MIXTRAL_EXPERT, _whole_experts(_MIXTRAL_EXPERT)),
    {}, _NEVER_RESET + (f"*.{_MIXTRAL_ROUTER[0]}.weight",), router=_MIXTRAL_ROUTER,
))  # fmt: skip
_register(FamilyMap(
    "qwen-moe", ("qwen2_moe", "qwen3_moe"), "model.layers.{i}.",
    _ATTN + (
        _QWEN_EXPERT,
        # the shared expert is always active: never a whole-expert unit (its neurons are units)
        _whole_experts(_QWEN_EXPERT),
        ModuleMap("shared_expert", _w("mlp.shared_expert.gate_proj", 0)
                  + _w("mlp.shared_expert.up_proj", 0) + _w("mlp.shared_expert.down_proj", 1),
                  "shared_intermediate"),
    ),
    {}, _NEVER_RESET + (f"*.{_QWEN_MOE_ROUTER[0]}.weight", "*.mlp.shared_expert_gate.weight"),
    router=_QWEN_MOE_ROUTER,
))  # fmt: skip


# Families without a unit map whose output embedding is not `lm_head.weight` (the names
# save_pretrained writes; internlm2 and chatglm: their trust_remote_code modelling files).
EMBEDDINGS.update({
    "gpt_neox": Embeddings("gpt_neox.embed_in.weight", "embed_out.weight"),
    "gpt_neox_japanese": Embeddings("gpt_neox_japanese.embed_in.weight", "embed_out.weight"),
    "rwkv": Embeddings("rwkv.embeddings.weight", "head.weight"),
    "biogpt": Embeddings("biogpt.embed_tokens.weight", "output_projection.weight"),
    "modernbert-decoder": Embeddings("model.embeddings.tok_embeddings.weight", "decoder.weight"),
    "internlm2": Embeddings("model.tok_embeddings.weight", "output.weight"),
    "chatglm": Embeddings("transformer.embedding.word_embeddings.weight",
                          "transformer.output_layer.weight"),
})  # fmt: skip


def embeddings(config: dict) -> Embeddings:
    """The vocabulary matrices' names for a config's model_type (a wrapper's text_config
    model_type when the outer one is not listed); STANDARD_EMBEDDINGS for any other."""
    for cfg in (config, config.get("text_config") or {}):
        found = EMBEDDINGS.get(cfg.get("model_type"))
        if found is not None:
            return found
    return STANDARD_EMBEDDINGS


def stored_as(name: str, names) -> str | None:
    """The stored tensor that is `name` (a name from `Embeddings`): `name` itself, else the one
    name ending in "." + `name` (saved from a wrapper: "language_model.lm_head.weight").
    None when absent or ambiguous."""
    if name in names:
        return name
    found = [n for n in names if n.endswith("." + name)]
    return found[0] if len(found) == 1 else None


MODULE_NAMES = ("q", "k", "v", "o", "mlp", "expert", "shared_expert", "whole_expert")
_MLP_KINDS = ("mlp", "expert", "shared_expert")
# gate, up and down make one MLP unit (docs/method.md section 2: reset together, so the unit is
# replaced as a whole): naming any of them selects the MLP units, experts' included.
_MODULE_ALIASES = {"mlp": _MLP_KINDS, "gate": _MLP_KINDS, "up": _MLP_KINDS, "down": _MLP_KINDS}
MODULE_CHOICES = ("q", "k", "v", "o", "mlp", "gate", "up", "down", "expert", "shared_expert",
                  "whole_expert")  # fmt: skip


def resolve_modules(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Canonical module names for user-given ones (aliases expanded); ValueError if unknown,
    or if both the neuron-level `expert` and `whole_expert` are asked for (the same tensors)."""
    unknown = [n for n in names if n not in MODULE_CHOICES]
    if unknown:
        raise ValueError(
            f"unknown module {', '.join(map(repr, unknown))} "
            f"(choose from {', '.join(MODULE_CHOICES)})"
        )
    picked = {m for n in names for m in _MODULE_ALIASES.get(n, (n,))}
    if {"expert", "whole_expert"} <= picked:
        via = [n for n in dict.fromkeys(names) if "expert" in _MODULE_ALIASES.get(n, (n,))]
        shown = ", ".join(n if n == "expert" else f"{n} (includes expert)" for n in via)
        raise ValueError(
            f"{shown} and whole_expert both reset the routed experts' tensors (expert: single "
            "neurons, whole_expert: whole experts); choose one (whole_expert combines with q, "
            "k, v, o and shared_expert)"
        )
    return tuple(m for m in MODULE_NAMES if m in picked)


def family_map(config: dict) -> FamilyMap:
    """The unit map for a config's model_type, or ArchError listing the supported families."""
    model_type = config.get("model_type")
    fm = FAMILIES.get(model_type)
    if fm is None:
        raise ArchError(
            f"no unit map for model_type {model_type!r}, so units cannot be reset (fusion still "
            f"works: --reset 0, or --recipe fusion-only). Supported: {', '.join(sorted(FAMILIES))}"
        )
    return fm


_SIZE_KEYS = ("hidden_size", "n_embd", "num_attention_heads", "n_head", "head_dim",
              "num_key_value_heads", "intermediate_size", "n_inner", "moe_intermediate_size",
              "shared_expert_intermediate_size")  # fmt: skip
MAX_UNITS = 2**31 - 1


def part_sizes(config: dict) -> dict[str, int]:
    """Sizes (units per module) from config.json: q rows, k/v rows, MLP widths.

    ArchError when a size is not a whole number (a typo such as "32" or 10**30, or a per-layer
    list this unit map cannot use) or the head count and size cannot be worked out."""
    cfg = config.get("text_config") or config
    for key in _SIZE_KEYS:
        v = cfg.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)
                              or not 0 <= v <= MAX_UNITS):  # fmt: skip
            shown = repr(v) if len(repr(v)) <= 40 else f"{repr(v)[:37]}..."
            raise ArchError(f"config.json {key}: must be an integer from 0 to {MAX_UNITS} to "
                            f"size the units (got {shown})")  # fmt: skip
    hidden = cfg.get("hidden_size") or cfg.get("n_embd")
    heads = cfg.get("num_attention_heads") or cfg.get("n_head")
    head_dim = cfg.get("head_dim") or (hidden // heads if hidden and heads else None)
    kv_heads = cfg.get("num_key_value_heads") or heads
    inter = cfg.get("intermediate_size") or cfg.get("n_inner") or (4 * hidden if hidden else None)
    if not heads or not head_dim or not inter:
        raise ArchError("config.json gives no attention head count and size or no MLP width "
                        "(num_attention_heads, head_dim or hidden_size, intermediate_size): "
                        "cannot size the units")  # fmt: skip
    return {
        "q": heads * head_dim,
        "kv": kv_heads * head_dim,
        "intermediate": inter,
        "moe_intermediate": cfg.get("moe_intermediate_size") or inter,
        "shared_intermediate": cfg.get("shared_expert_intermediate_size") or inter,
    }


@dataclass(frozen=True)
class ModuleInstance:
    """One module in one layer (and expert): its units and where each slice lives."""

    key: str  # e.g. "layers.3.mlp", "layers.0.expert.2", "layers.1.whole_expert"
    module: ModuleMap
    layer: int
    expert: int | None
    n_units: int
    # (full tensor name, slice, offset along axis); for a whole-tensor slice (`Slice.whole`)
    # the third field is the unit that owns the tensor (whole_expert: the expert index).
    tensors: tuple[tuple[str, Slice, int], ...]


def module_instances(fm: FamilyMap, config: dict, names: set[str], n_layers: int,
                     n_experts: int = 0) -> list[ModuleInstance]:  # fmt: skip
    """Every module instance present in `names` (a checkpoint's tensor names)."""
    sizes = part_sizes(config)
    out = []
    for i in range(n_layers):
        prefix = fm.layer_prefix.format(i=i)
        for m in fm.modules:
            if m.whole_experts:
                out.extend(_whole_expert_instance(m, prefix, i, names, n_experts))
                continue
            for e in range(n_experts) if m.per_expert else [None]:
                tensors = []
                for s in m.slices:
                    rel = s.tensor.format(e=e)
                    name = prefix + rel
                    if name not in names:
                        if s.optional:
                            continue
                        break
                    tensors.append((name, s, _offset(fm, rel, s.part, sizes)))
                else:
                    key = f"layers.{i}.{m.name}" + (f".{e}" if e is not None else "")
                    out.append(ModuleInstance(key, m, i, e, sizes[m.size], tuple(tensors)))
    return out


def _whole_expert_instance(m: ModuleMap, prefix: str, layer: int, names: set[str],
                           n_experts: int) -> list[ModuleInstance]:  # fmt: skip
    """Layer `layer`'s whole experts as one instance: unit e = all tensors of expert e.

    The experts are 0..n-1, up to the first one that lacks a required tensor: a layer without
    experts (a dense layer of Qwen2-MoE) has no instance, and experts after a gap are not
    whole-expert units."""
    tensors = []
    n_units = 0
    for e in range(n_experts):
        found = [(prefix + s.tensor.format(e=e), s, e) for s in m.slices]
        if any(name not in names and not s.optional for name, s, _ in found):
            break
        tensors.extend(f for f in found if f[0] in names)
        n_units = e + 1
    if not n_units:
        return []
    return [ModuleInstance(f"layers.{layer}.{m.name}", m, layer, None, n_units, tuple(tensors))]


# Which config size measures each fused part.
_PART_SIZE = {"q": "q", "k": "kv", "v": "kv", "gate": "intermediate", "up": "intermediate"}


def _offset(fm: FamilyMap, rel: str, part: str | None, sizes: dict[str, int]) -> int:
    """Where a fused part starts along its axis: the sizes of the parts stored before it."""
    if part is None:
        return 0
    parts = fm.fused_parts[rel.rsplit(".", 1)[0]]
    return sum(sizes[_PART_SIZE[p]] for p in parts[: parts.index(part)])


def count_experts(names: set[str]) -> int:
    found = {int(m.group(1)) for n in names if (m := re.search(r"\.experts\.(\d+)\.", n))}
    return max(found) + 1 if found else 0


def unaccounted(fm: FamilyMap, names: set[str], instances: list[ModuleInstance]) -> list[str]:
    """Tensors that are neither part of a unit nor known never-reset tensors (norms, routers,
    the embeddings...)."""
    covered = {name for inst in instances for name, _, _ in inst.tensors}
    # The embeddings' modules, weight and any bias, under any wrapper prefix: *lm_head*.
    vocab = tuple(f"*{e.rpartition('.')[0]}*" for e in (fm.embeddings.input, fm.embeddings.output))
    return sorted(
        n for n in names
        if n not in covered and not any(fnmatch.fnmatchcase(n, g) for g in fm.never_reset + vocab)
    )  # fmt: skip


def misfits(instances: list[ModuleInstance], shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Slices that do not fit their tensor's shape (the config and the weights disagree)."""
    problems = []
    for inst in instances:
        for name, s, offset in inst.tensors:
            if s.whole:  # any shape: the tensor is reset whole
                continue
            shape = shapes[name]
            extent = shape[s.axis] if s.axis < len(shape) else None
            fits = extent == inst.n_units if s.part is None else (
                extent is not None and extent >= offset + inst.n_units)  # fmt: skip
            if not fits:
                want = inst.n_units if s.part is None else f">= {offset + inst.n_units}"
                problems.append(
                    f"'{name}' has shape {tuple(shape)}: expected {want} along axis {s.axis} "
                    f"for {inst.n_units} {inst.module.name} units (config.json sizes)"
                )
    return problems
