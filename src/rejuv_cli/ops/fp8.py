"""Block-scaled FP8 (e4m3) math: dequantize rows, quantize whole row blocks. Pure torch.

The layout (DeepSeek-V3 README_WEIGHTS.md; transformers `FP8Linear`): a weight W [out, in] is
stored as codes Q [out, in] float8_e4m3fn and one scale per bm×bn block, S [ceil(out/bm),
ceil(in/bn)] (`weight_scale_inv`); W[i, j] = float(Q[i, j]) · S[i // bm, j // bn]. Blocks on the
bottom and right edges are partial (DeepSeek: "zero-padded to 128 before calculating the
scale").

Quantizing (`quantize_rows`) is DeepSeek-V3's `weight_quant_kernel` (inference/kernel.py: per
block scale = amax / 448, Q = W / scale) with transformers' `Fp8Quantize` guards: an all-zero
block gets scale 1, and Q is clamped to ±448 before the cast to e4m3 (round to nearest even).
transformers itself computes the scale as 1 / (448 / amax), which differs from amax / 448 in
the last bit for 6.8% of float32 values; amax / 448 is kept because it round-trips: quantizing
`dequantize(Q, S)` again gives Q and S bit for bit (the scale identity holds for every float32
mantissa, checked in tests/test_fp8.py), so re-quantizing an unchanged tensor is lossless.
"""

from __future__ import annotations

import functools

import torch

FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
FP8_DTYPE = torch.float8_e4m3fn


@functools.cache
def e4m3_table() -> torch.Tensor:
    """[256] float32 on the CPU: the value of every float8_e4m3fn bit pattern (torch's own
    conversion, so a table lookup gives the same bits as casting; NaN codes give NaN)."""
    return torch.arange(256, dtype=torch.uint8).view(FP8_DTYPE).to(torch.float32)


def block_grid(shape: tuple[int, int], block: tuple[int, int]) -> tuple[int, int]:
    """The scale grid of a [rows, cols] weight: (ceil(rows / bm), ceil(cols / bn))."""
    (rows, cols), (bm, bn) = shape, block
    return -(-rows // bm), -(-cols // bn)


def _scale_rows(s: torch.Tensor, row0: int, rows: int, bm: int) -> torch.Tensor:
    """[rows, sc] float32: the scale row of each weight row row0..row0+rows, from `s`, the scale
    rows row0 // bm onwards ([k, sc], any float dtype)."""
    first = row0 // bm
    idx = torch.arange(row0, row0 + rows, device=s.device) // bm - first
    return s.to(torch.float32)[idx]


def _per_block(t: torch.Tensor, srow: torch.Tensor, bn: int, op: str) -> None:
    """t[i, j] (op)= srow[i, j // bn] in place. t: [r, n] float32; srow: [r, ceil(n / bn)]."""
    n = t.shape[1]
    whole = n // bn
    if whole:
        main = t[:, : whole * bn].view(t.shape[0], whole, bn)  # row stride n, column stride 1
        getattr(main, op)(srow[:, :whole, None])
    if n % bn:
        getattr(t[:, whole * bn :], op)(srow[:, whole : whole + 1])


def dequantize_into(out: torch.Tensor, q: torch.Tensor, s: torch.Tensor,
                    block: tuple[int, int], row0: int = 0) -> None:  # fmt: skip
    """out = float(q) · its block scales, one float32 rounding per element.

    q: [r, n] float8_e4m3fn, rows row0..row0+r of a weight; s: [k, ceil(n / bn)] float32 or
    bfloat16, the weight's scale rows from row0 // bm on (k >= what the rows need); out: [r, n]
    float32, written in place (contiguous). float(q) is exact in float32 and the product is
    rounded once, so the result equals the exact product q·s rounded to float32 (with bf16
    scales the product fits float32 exactly).
    """
    bm, bn = block
    if q.device.type == "cpu":  # a 256-entry table: 3x faster than torch's per-element cast
        # (measured here: 1.4 ms against 5.6 ms for 0.9M codes on one core)
        codes = q.view(torch.uint8).reshape(-1).to(torch.int32)
        torch.index_select(e4m3_table(), 0, codes, out=out.view(-1))
    else:
        out.copy_(q)
    _per_block(out, _scale_rows(s, row0, q.shape[0], bm), bn, "mul_")


def dequantize(q: torch.Tensor, s: torch.Tensor, block: tuple[int, int],
               row0: int = 0) -> torch.Tensor:  # fmt: skip
    """float(q) · its block scales as a new [r, n] float32 tensor (see `dequantize_into`)."""
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    dequantize_into(out, q, s, block, row0)
    return out


def quantize_rows(w: torch.Tensor, block: tuple[int, int],
                  scale_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(Q, S) of rows that start on a block boundary: the codes and fresh per-block scales.

    w: [r, n] float32, finite, rows row0..row0+r of a weight with row0 % bm == 0 (the last
    block of rows may be partial: the weight's bottom edge). Returns Q [r, n] float8_e4m3fn and
    S [ceil(r / bm), ceil(n / bn)] in `scale_dtype` (float32 or bfloat16), where per block
    S = amax / 448 over its valid elements (computed in float32, then stored in scale_dtype;
    1.0 for an all-zero block) and Q = clamp(w / float(S), ±448) rounded to nearest even, the
    division using the stored scale so that Q · S is what a loader reconstructs.
    """
    bm, bn = block
    r, n = w.shape
    gr, gc = block_grid((r, n), block)
    a = w.abs().to(torch.float32)
    if r % bm or n % bn:  # zero padding: a partial block's amax is its valid region's
        padded = torch.zeros(gr * bm, gc * bn, dtype=torch.float32, device=w.device)
        padded[:r, :n] = a
        a = padded
    amax = a.view(gr, bm, gc, bn).amax(dim=3).amax(dim=1)
    del a
    # The floor only matters for amax < 5e-36 (amax / 448 would underflow to 0 and divide by it).
    tiny = torch.finfo(torch.float32).tiny
    scale = torch.where(amax > 0, (amax / FP8_MAX).clamp_(min=tiny), torch.ones_like(amax))
    scale = scale.to(scale_dtype)
    scaled = w.to(torch.float32, copy=True)
    _per_block(scaled, _scale_rows(scale, 0, r, bm), bn, "div_")
    q = scaled.clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale
