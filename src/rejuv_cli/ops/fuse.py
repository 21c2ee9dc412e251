"""Base-anchored fusion (METHOD.md section 1)."""

from __future__ import annotations

import torch


def fuse(
    base: torch.Tensor, sft: torch.Tensor, alpha: float, out_dtype: torch.dtype
) -> torch.Tensor:
    """θ_b + α·(θ_s − θ_b), computed in float32 and rounded once to `out_dtype`.

    base, sft: same shape, any floating dtype (bf16/fp16/fp32/...), same device.
    Returns a new tensor of that shape in `out_dtype`. α = 0 returns the base values and α = 1
    the SFT values exactly (no float32 round trip that could flip -0.0 or lose fp32 bits).
    The float32 steps are the three separate ops sub, mul, add: no fused multiply-add, so
    CPU and GPU give the same bits as a plain float32 reference.
    """
    if alpha == 0.0:
        return base.to(out_dtype, copy=True)
    if alpha == 1.0:
        return sft.to(out_dtype, copy=True)
    b32 = base.to(torch.float32)
    delta = sft.to(torch.float32, copy=True)
    delta.sub_(b32).mul_(alpha).add_(b32)
    return delta.to(out_dtype)


def all_finite(t: torch.Tensor) -> bool:
    """True when no element is NaN or ±inf (float8 is checked through float32)."""
    if not t.is_floating_point():
        return True
    if t.element_size() == 1:
        t = t.to(torch.float32)
    return bool(torch.isfinite(t).all())
