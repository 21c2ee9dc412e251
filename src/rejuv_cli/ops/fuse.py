"""Base-anchored fusion (docs/method.md section 1)."""

from __future__ import annotations

import torch


def fuse(
    base: torch.Tensor, sft: torch.Tensor, alpha: float, out_dtype: torch.dtype
) -> torch.Tensor:
    """θ_b + α·(θ_s − θ_b), computed in float32 and rounded once to `out_dtype`.

    base, sft: same shape, any floating dtype, same device. Returns a new tensor in `out_dtype`.
    Allocates float32 temporaries: for whole tensors and tests; the streaming path uses
    `fuse_into`, which gives the same bits without allocating.
    """
    out = torch.empty(sft.shape, dtype=out_dtype, device=sft.device)
    fuse_into(out, base, sft, alpha, torch.empty(sft.shape, dtype=torch.float32, device=sft.device))
    return out


def fuse_into(
    out: torch.Tensor, base: torch.Tensor, sft: torch.Tensor, alpha: float, scratch: torch.Tensor
) -> None:
    """Write θ_b + α·(θ_s − θ_b) into `out`, using `scratch` (float32) for the arithmetic.

    out, base, sft, scratch: same shape and device; base/sft any floating dtype, scratch float32.
    α = 0 copies the base values and α = 1 the SFT values exactly (no float32 round trip that
    could turn -0.0 into +0.0 or lose float32 bits). Otherwise the float32 steps are three
    separate ops, sub, mul, add: no fused multiply-add, so CPU and GPU match a plain float32
    reference bit for bit. Mixed-dtype in-place ops upcast `base` on the fly (exactly) instead of
    materialising a float32 copy; preallocated buffers avoid page faults on every chunk
    (measured here: 0.35 ms vs 3.3 ms per million bf16 elements).
    """
    if alpha == 0.0:
        out.copy_(base)
    elif alpha == 1.0:
        out.copy_(sft)
    else:
        scratch.copy_(sft)
        scratch.sub_(base).mul_(alpha).add_(base)
        out.copy_(scratch)  # the one rounding to the output dtype (round to nearest even)


def all_finite(t: torch.Tensor) -> bool:
    """True when no element is NaN or ±inf.

    A sum is non-finite whenever any element is (inf and NaN propagate), and is ~30x cheaper
    than an element-wise isfinite; only when the sum itself overflows do we look element-wise.
    """
    if not t.is_floating_point() or t.numel() == 0:
        return True
    if t.element_size() > 1 and bool(torch.isfinite(t.sum())):
        return True
    wide = t.to(torch.float32) if t.element_size() == 1 else t  # float8 has no isfinite kernel
    return bool(torch.isfinite(wide).all())
