"""Independent float64 references for mixture-of-experts measurements (routing, expert
neurons): the MoE blocks' inputs captured with plain torch hooks, everything after them
computed from the tensors in the safetensors files, token by token and expert by expert."""

from __future__ import annotations

import numpy as np
import torch
from conftest import load_dir

# Where each family's per-expert tensors and router live in the checkpoint (what
# save_pretrained writes), relative to "model.layers.{i}.".
EXPERTS = {
    "mixtral": ("block_sparse_moe.experts.{e}.", "w1", "w3"),
    "qwen2_moe": ("mlp.experts.{e}.", "gate_proj", "up_proj"),
    "qwen3_moe": ("mlp.experts.{e}.", "gate_proj", "up_proj"),
}
ROUTER = {"mixtral": "block_sparse_moe.gate", "qwen2_moe": "mlp.gate", "qwen3_moe": "mlp.gate"}


def moe_inputs(model_dir, batches) -> list[torch.Tensor]:
    """Per layer: the MoE block's input (the post-attention norm's output) on the real tokens
    of `batches`, [N_real, H] float64, in batch order. The model runs in float32."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    decoder = model.model.layers
    captured: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(decoder))}
    masks: list[torch.Tensor] = []

    def keep(i):
        return lambda _m, _a, out: captured[i].append(out.detach())

    handles = [layer.post_attention_layernorm.register_forward_hook(keep(i))
               for i, layer in enumerate(decoder)]  # fmt: skip
    with torch.no_grad():
        for ids, attn, _ in batches:
            model(input_ids=ids, attention_mask=attn, use_cache=False)
            masks.append(attn.bool())
    for h in handles:
        h.remove()
    return [torch.cat([h[m] for h, m in zip(captured[i], masks, strict=True)]).double()
            for i in range(len(decoder))]  # fmt: skip


def expert_sums(model_dir, family: str, batches, top_k: int) -> dict[str, tuple]:
    """Σ|h_j|, Σh_j² and the token count per expert (key "layers.{i}.expert.{e}") and per
    shared expert ("layers.{i}.shared_expert"), over the real tokens routed to it:
    h = silu(x W_gate^T) · (x W_up^T), float64, one token at a time."""
    weights = {k: v.double() for k, v in load_dir(model_dir).items()}
    prefix, gate, up = EXPERTS[family]
    out = {}
    for i, x in enumerate(moe_inputs(model_dir, batches)):
        layer = f"model.layers.{i}."
        router = weights[layer + ROUTER[family] + ".weight"]  # [E, H]
        chosen = (x @ router.T).topk(top_k, dim=-1).indices  # [N, k]
        for e in range(router.shape[0]):
            p = layer + prefix.format(e=e)
            out[f"layers.{i}.expert.{e}"] = _sums(
                [x[t] for t in range(x.shape[0]) if e in chosen[t]],
                weights[p + gate + ".weight"], weights[p + up + ".weight"])  # fmt: skip
        shared = layer + "mlp.shared_expert."
        if shared + "gate_proj.weight" in weights:
            out[f"layers.{i}.shared_expert"] = _sums(
                list(x), weights[shared + "gate_proj.weight"], weights[shared + "up_proj.weight"]
            )
    return out


def _sums(tokens: list[torch.Tensor], w_gate, w_up) -> tuple[np.ndarray, np.ndarray, int]:
    sum_abs = torch.zeros(w_gate.shape[0], dtype=torch.float64)
    sum_sq = torch.zeros_like(sum_abs)
    for x in tokens:  # [H]
        h = torch.nn.functional.silu(w_gate @ x) * (w_up @ x)  # [I]
        sum_abs += h.abs()
        sum_sq += h * h
    return sum_abs.numpy(), sum_sq.numpy(), len(tokens)
