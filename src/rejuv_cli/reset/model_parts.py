"""The model structure the `attribution` scorer needs: final norm, lm_head, the residual
writers of each layer, and a straight-through final norm with its scale frozen (see
`reset.attribution` for the linearisation this serves)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

NORM_MATCH = 2e-2  # max |frozen recomputation − real norm output| / max |output| to accept it
ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
MLP_NAMES = ("mlp", "block_sparse_moe", "feed_forward", "ffn")
NORM_NAMES = ("norm", "ln_f", "final_layernorm", "final_norm", "norm_f")


@dataclass
class _Parts:
    lm_head: torch.nn.Module
    norm: torch.nn.Module
    first_layer: torch.nn.Module
    # (block, writer) module names for every attention / MLP block: the writer's output is what
    # the block adds to the residual (the block itself, or its post-norm in Gemma-2/3, OLMo-2).
    writers: list[tuple[str, str]]
    post_norms: set[str]  # writers that are norms (their scale is frozen like the final one)
    write_scale: float  # what the layer multiplies each write by (Granite's residual_multiplier)

    def writer_for(self, path: str) -> str:
        """The writer of the block that contains the projection at `path`; the projection
        itself when no block contains it (then its output is taken to reach the residual)."""
        inside = [(b, w) for b, w in self.writers if path.startswith(b + ".")]
        return max(inside, key=lambda bw: len(bw[0]))[1] if inside else path


def _parts(model) -> _Parts:
    """Find the final norm, the lm_head, the decoder layers and their attention / MLP blocks."""
    base = model.base_model
    layers = max(
        (c for c in base.children() if isinstance(c, torch.nn.ModuleList)), key=len, default=None
    )
    norm = next((getattr(base, n) for n in NORM_NAMES if hasattr(base, n)), None)
    lm_head = model.get_output_embeddings()
    if not layers or norm is None or not isinstance(lm_head, torch.nn.Linear):
        raise ValueError(
            f"{type(model).__name__}: attribution needs decoder layers, a final norm and a "
            "linear lm_head, and this model's layout is not recognised"
        )
    names = {id(m): n for n, m in model.named_modules()}
    writers, post_norms = [], set()
    for layer in layers:
        # Post-norm layers normalise each block's output before adding it to the residual
        # (Gemma-2/3 and OLMo-2 name them so; in Llama `post_attention_layernorm` is the MLP's
        # input norm, and there is no `post_feedforward_layernorm`).
        post = hasattr(layer, "post_feedforward_layernorm")
        for group, norm_name in ((ATTN_NAMES, "post_attention_layernorm"),
                                 (MLP_NAMES, "post_feedforward_layernorm")):  # fmt: skip
            child = next((getattr(layer, n) for n in group if hasattr(layer, n)), None)
            if child is None:
                continue
            writer = names[id(getattr(layer, norm_name))] if post else names[id(child)]
            writers.append((names[id(child)], writer))
            if post:
                post_norms.add(writer)
    scale = float(getattr(model.config, "residual_multiplier", None) or 1.0)
    return _Parts(lm_head, norm, layers[0], writers, post_norms, scale)


def _first(x):
    return x[0] if isinstance(x, tuple | list) else x


def _as_btd(x: torch.Tensor, b: int, t: int) -> torch.Tensor | None:
    """x as [B, T, D]: as is, or from the [B·T, D] that MoE blocks pass their experts."""
    if x.dim() == 3 and x.shape[:2] == (b, t):
        return x
    if x.dim() == 2 and x.shape[0] == b * t:
        return x.view(b, t, -1)
    return None


def _frozen_norm(module, h: torch.Tensor, y: torch.Tensor):
    """A straight-through stand-in for the final norm's output: value y exactly, gradient that
    of the norm with its per-position scale frozen (linear in h).

    Norms of the form y = gain ⊙ C(h) · s + β are recognised: C = identity (RMSNorm) or
    centring (LayerNorm), gain = weight, 1 + weight (Gemma) or 1, β = the norm's bias or 0.
    The scale s [.., 1] is fitted per position from the real output by least squares (so the
    norm's eps and its placement need not be known) and detached; the candidate that fits y
    best is used when within NORM_MATCH of it. Returns (y', β [D] float32 or None,
    description); for an unrecognised norm y' is None (the model keeps its real output and
    gradient, described "unrecognised"), and the reconstruction error shows the effect.
    """
    from accelerate.utils import align_module_device

    x = h.float()
    yf = y.detach().float()
    with align_module_device(module):  # an offloaded norm's weights are on "meta" after forward
        weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    gains = [("1", None)]
    if isinstance(weight, torch.Tensor) and weight.shape == x.shape[-1:]:
        gains = [("w", weight.float()), ("1+w", 1 + weight.float())]
    beta = bias.float() if isinstance(bias, torch.Tensor) and bias.shape == x.shape[-1:] else None
    target = yf if beta is None else yf - beta
    scale = max(float(yf.abs().max()), 1e-30)
    best = None
    for centred in (False, True):
        xc = x - x.mean(-1, keepdim=True) if centred else x
        for label, gain in gains:
            base = xc if gain is None else xc * gain  # [.., D], y − β ≈ base · s
            with torch.no_grad():  # the fit only picks the constant; no gradient through it
                s = (target * base).sum(-1, keepdim=True) / base.pow(2).sum(-1, keepdim=True)
                s = torch.nan_to_num(s)
                err = float((base * s - target).abs().max()) / scale
            if best is None or err < best[0]:
                best = (err, base * s, f"{'LayerNorm' if centred else 'RMSNorm'} gain={label}")
    err, lin, kind = best
    if err > NORM_MATCH:
        return None, None, "unrecognised"
    # Value: exactly the model's y; gradient: only that of the frozen linear map (y's own
    # graph is cut, else the unfrozen Jacobian would be added to it).
    return y.detach() + (lin - lin.detach()).to(y.dtype), beta, kind
