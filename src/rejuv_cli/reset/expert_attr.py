"""Attribution of expert neurons that live inside a fused experts module (transformers 5):
they have no module of their own to hook, so their contributions are computed from the
experts module's captured inputs, routing and output (see `reset.logit_attr` for the rest of
the method and docs/method.md section 5, "Expert neurons")."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from rejuv_cli.calib.forward import Site

if TYPE_CHECKING:
    from rejuv_cli.reset.model_parts import _Parts


def fused_sites(modules: dict, sites: list[Site]) -> dict:
    """Site key -> FusedExpert for the expert sites computed inside a fused experts module
    (calib/experts.py), which have no module of their own."""
    from rejuv_cli.calib.experts import fused_expert, fused_experts_modules

    experts = [s for s in sites if s.where == "input" and s.path not in modules]
    fused_modules = fused_experts_modules(modules) if experts else {}
    found = {s.key: fused_expert(fused_modules, s.path) for s in experts}
    return {key: f for key, f in found.items() if f is not None}


def experts_direct(cap, parts: _Parts, model, sites: list[Site], fused: dict,
                    u: torch.Tensor, scores) -> set[str]:  # fmt: skip
    """`cap`: reset.logit_attr's capture of the batch (not imported: logit_attr imports this).

    Expert neurons of fused experts modules: at each selected position t routed to expert
    e with weight r_e(t), the block write holds r_e(t) · W_down_e h_e(t), so neuron j
    contributes h_j(t) · r_e(t) · ⟨W_down_e[:, j], g_t⟩, with g_t = ∂⟨u_t, write(t)⟩/∂(the
    experts' output at t), taken by autograd from the block's write (shared-expert gates and
    post-norms included). h_e(t) is recomputed for the selected positions routed to e only.
    Returns the keys of sites whose block output is not laid out per token (not scored)."""
    from rejuv_cli.calib.experts import expert_hidden

    unplaced = set()
    by_module: dict[str, list[tuple[Site, int]]] = {}
    for s in sites:
        by_module.setdefault(fused[s.key].path, []).append((s, fused[s.key].index))
    flat = cap.rows * cap.t + cap.ts  # [P] the positions' rows in the experts' [B·T, H] input
    for path, group in by_module.items():
        writer = parts.writer_for(path)
        if writer not in cap.outs or path not in cap.experts:
            unplaced |= {s.key for s, _ in group}
            continue
        hidden, top_k, weights, out = cap.experts[path]
        if hidden.shape[0] != cap.b * cap.t:
            unplaced |= {s.key for s, _ in group}
            continue
        write = cap.outs[writer]
        (g,) = torch.autograd.grad(write, [out], grad_outputs=u.to(write.dtype), retain_graph=True,
                                   allow_unused=True)  # fmt: skip
        if g is None:
            continue  # no path from these experts to the write: contribution 0
        g, x = g[flat].float(), hidden[flat].detach()  # [P, H] each
        chosen, r = top_k[flat], weights[flat].float()  # [P, k] each
        module = model.get_submodule(path)
        for s, e in group:
            slot = chosen == e  # [P, k]
            routed = slot.any(-1)
            if not routed.any():
                continue
            with torch.no_grad():
                h = expert_hidden(module, x[routed], e).float()  # [P_e, I]
                down = module.down_proj[e].float()  # [H, I], or [I, H] if transposed
                g_units = g[routed] @ (down.T if getattr(module, "is_transposed", False)
                                       else down)  # [P_e, I]  # fmt: skip
                r_e = (r[routed] * slot[routed]).sum(-1, keepdim=True)  # [P_e, 1]
                contrib = (h * r_e * g_units).abs()[:, s.offset : s.offset + s.n_units]
            np.maximum(scores[s.key], contrib.max(0).values.cpu().double().numpy(),
                       out=scores[s.key])  # fmt: skip
    return unplaced
