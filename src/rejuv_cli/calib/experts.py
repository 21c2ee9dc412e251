"""Expert neurons of mixture-of-experts layers whose experts run as one fused module.

transformers 5 keeps a layer's experts as 3-D parameters of one module (`gate_up_proj`
[E, 2I, H], `down_proj` [E, H, I]) and computes every expert inside its forward, so no
submodule exists whose input is an expert's hidden activation. Checkpoints on disk still
hold one tensor per expert (`experts.{e}.w1.weight`, ...), which is what the unit map
describes. To measure expert e's neurons we take the module's own inputs (the tokens
[N, H] and the router's choice [N, k]) and recompute, for the tokens routed to e only,
what the expert computes before its down projection: act(gate) · up, [n_e, I]. One expert
at a time, so the extra memory is one expert's activations, never all experts × all tokens.

transformers 4 kept one module per expert and called it on the routed tokens only, in the
order its MoE block gathers them; `per_expert_module` and `routed_order` let the hooks map
those rows back to the batch's tokens (to keep only real ones). (docs/method.md section 5)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

_EXPERT_IN_PATH = re.compile(r"^(?P<parent>.+\.experts)\.(?P<e>\d+)\.[^.]+$")


@dataclass(frozen=True)
class FusedExpert:
    """Expert `index` of the fused experts module at `path`."""

    path: str
    index: int


def fused_experts_modules(modules: dict[str, torch.nn.Module]) -> dict[str, torch.nn.Module]:
    """The model's fused experts modules, by module name."""
    return {name: m for name, m in modules.items() if is_fused_experts(m)}


def fused_expert(fused: dict[str, torch.nn.Module], path: str) -> FusedExpert | None:
    """The fused experts module (one of `fused_experts_modules`) that holds the per-expert
    projection at `path`, a checkpoint name from the unit map such as
    "model.layers.0.block_sparse_moe.experts.2.w2"; None when there is none.

    The module's name may differ from the checkpoint's: transformers 5 renames Mixtral's
    `block_sparse_moe` to `mlp` when loading (and back when saving). So the module is looked
    up at the same path first, else as the one fused experts module of the same layer."""
    m = _EXPERT_IN_PATH.match(path)
    if m is None:
        return None
    parent = m["parent"]
    if parent not in fused:
        layer = parent.rpartition(".")[0].rpartition(".")[0]  # "model.layers.0"
        inside = [name for name in fused if name.startswith(layer + ".")]
        if len(inside) != 1:
            return None
        parent = inside[0]
    e = int(m["e"])
    return FusedExpert(parent, e) if e < fused[parent].down_proj.shape[0] else None


@dataclass(frozen=True)
class ExpertModule:
    """Expert `index` of an MoE block (at `block`) that keeps one module per expert."""

    block: str
    index: int
    top_k: int


def per_expert_module(modules: dict[str, torch.nn.Module], path: str) -> ExpertModule | None:
    """For a per-expert projection that exists as a module (transformers 4: a ModuleList of
    expert MLPs inside a block with a `gate` router and `top_k`), where its rows come from."""
    m = _EXPERT_IN_PATH.match(path)
    if m is None or not isinstance(modules.get(m["parent"]), torch.nn.ModuleList):
        return None
    block_path = m["parent"].rpartition(".")[0]
    block = modules.get(block_path)
    top_k = getattr(block, "top_k", None)
    if not isinstance(getattr(block, "gate", None), torch.nn.Module) or not isinstance(top_k, int):
        return None
    return ExpertModule(block_path, int(m["e"]), top_k)


def watch_router(modules: dict[str, torch.nn.Module], expert: ExpertModule,
                 selected: dict[str, torch.Tensor]):  # fmt: skip
    """Hook the router of `expert`'s MoE block once per `selected`: every call stores its top-k
    choice [N, k] (of the logits, as transformers 4's block takes it) in
    selected[expert.block]. Returns the hook's handle, or None when the block is hooked."""
    if expert.block in selected:
        return None
    selected[expert.block] = torch.empty(0)

    def hook(_module, _args, output):
        logits = output[0] if isinstance(output, tuple | list) else output  # [N, E]
        selected[expert.block] = logits.topk(expert.top_k, dim=-1).indices

    return modules[expert.block].gate.register_forward_hook(hook)


def routed_order(selected: torch.Tensor, e: int) -> torch.Tensor:
    """The tokens a transformers-4 MoE block passes to expert e, in its order: it takes
    `torch.where` over the [k, N] one-hot of the top-k choice, so slot-major, token-minor.
    selected [N, k] -> token indices [n_e]."""
    return torch.where(torch.eq(selected.T, e))[1]


def is_fused_experts(module: torch.nn.Module) -> bool:
    """True for transformers' fused experts modules we can recompute: 3-D `down_proj` and
    `gate_up_proj` (gated) or `up_proj` (not gated), without a post-expert norm."""
    down = getattr(module, "down_proj", None)
    up = getattr(module, "gate_up_proj" if _gated(module) else "up_proj", None)
    return (
        isinstance(down, torch.Tensor) and down.dim() == 3
        and isinstance(up, torch.Tensor) and up.dim() == 3
        and not getattr(module, "has_post_expert_norm", False)
    )  # fmt: skip


def _gated(module) -> bool:
    return bool(getattr(module, "has_gate", True))


def routing_args(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden [N, H], top_k_index [N, k]) from a fused experts module's call: transformers
    calls experts(hidden_states, top_k_index, top_k_weights), positionally or by name."""
    names = ("hidden_states", "top_k_index")
    values = list(args[:2]) + [kwargs[n] for n in names[len(args[:2]) :]]
    return values[0], values[1]


def expert_hidden(module: torch.nn.Module, x: torch.Tensor, e: int) -> torch.Tensor:
    """What expert e of a fused experts module computes before its down projection, for the
    tokens x [n, H] routed to it: act(x W_gate^T) · (x W_up^T) (+ biases) -> [n, I].

    The gate/up split is the module's own `_apply_gate` (concatenated or interleaved layouts),
    the weight orientation its `is_transposed` flag: the same arithmetic as its forward."""
    gated = _gated(module)
    weight = (module.gate_up_proj if gated else module.up_proj)[e]
    bias = None
    if getattr(module, "has_bias", False):
        bias = (module.gate_up_proj_bias if gated else module.up_proj_bias)[e]
    x = x.to(weight.dtype)
    out = x @ weight if getattr(module, "is_transposed", False) else x @ weight.T
    if bias is not None:
        out = out + bias
    return module._apply_gate(out) if gated else module.act_fn(out)
