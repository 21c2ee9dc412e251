"""Per-unit weight norms from one streaming pass: what the `drift` scorer ranks by, what
protection ranks by (BASE norms), and the BASE moments that scale reset noise."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rejuv_cli import dist
from rejuv_cli.arch.layout import UnitLayout
from rejuv_cli.checkpoint.source import TensorSource
from rejuv_cli.errors import ArchError


@dataclass
class TensorNorms:
    """Squared norms of Δ = θ_s − θ_b and of θ_b per index along each needed axis, plus
    moments of θ_b over the whole tensor (for the reset modes that draw noise)."""

    delta_sq: dict[int, np.ndarray]  # axis -> [extent] float64
    base_sq: dict[int, np.ndarray]
    base_sum: float = 0.0
    base_sumsq: float = 0.0
    numel: int = 0

    @property
    def base_std(self) -> float:
        mean = self.base_mean
        return math.sqrt(max(self.base_sumsq / max(self.numel, 1) - mean * mean, 0.0))

    @property
    def base_mean(self) -> float:
        return self.base_sum / max(self.numel, 1)


def stream_norms(
    base: TensorSource,
    sft: TensorSource | None,
    tensor_axes: dict[str, set[int]],
    device,
    on_bytes: Callable[[int], None] | None = None,
) -> dict[str, TensorNorms]:
    """One streaming pass over the listed tensors: per-row / per-column squared norms.

    With `sft` None only BASE is read, and the moments of θ_b (sum, sum of squares) are taken
    too, for the reset modes that draw noise; Δ norms then stay zero. With `sft`, the moments
    are skipped (the sum costs a third of the pass). Tensors are 1-D (biases: every element is
    a row) or 2-D.
    """
    import torch

    from rejuv_cli.checkpoint.stream import PairedStream, Scratch, TensorPair, row_length

    stream = PairedStream(base, sft, device)
    scratch = Scratch(device)  # reused float32 buffers: no allocation per chunk
    order = sorted(tensor_axes, key=lambda n: (str(base.tensors[n].file), base.tensors[n].offset))
    # Under torchrun each rank streams its share of the tensors (by bytes) and the per-tensor
    # results are gathered: a tensor's norms do not depend on which rank computed them, so
    # every rank ends with what one process computes, and selects the same units.
    every = order
    order = dist.mine({n: base.tensors[n].nbytes for n in every})
    result: dict[str, TensorNorms] = {}
    for name in order:
        shape = base.tensors[name].shape
        if len(shape) > 2:
            raise ArchError(f"tensor '{name}' has {len(shape)} dimensions; units need 1-D or 2-D")
        row_len = row_length(shape)
        axes = tensor_axes[name]
        norms = TensorNorms(
            {a: np.zeros(shape[a] if a < len(shape) else 1) for a in axes},
            {a: np.zeros(shape[a] if a < len(shape) else 1) for a in axes},
            numel=math.prod(shape),
        )
        pair = TensorPair(shape, name if sft is not None else None, name)
        for c in stream.chunks([pair]):
            r0, r1 = c.start // row_len, c.stop // row_len
            b = c.base.to(device, non_blocking=True)
            b2 = b.view(r1 - r0, row_len)
            base_sq = _sq_norms(b2, axes, scratch.get("work", b.numel()))
            for a, v in base_sq.items():
                _accumulate(norms.base_sq[a], a, r0, r1, v)
            if sft is None:
                norms.base_sum += float(b.sum(dtype=torch.float64))
                norms.base_sumsq += float(next(iter(base_sq.values())).sum())
            else:
                s = c.sft.to(device, non_blocking=True)
                delta = scratch.get("delta", s.numel()).copy_(s).sub_(b)  # Δ in float32
                work = scratch.get("work", s.numel())
                for a, v in _sq_norms(delta.view(r1 - r0, row_len), axes, work).items():
                    _accumulate(norms.delta_sq[a], a, r0, r1, v)
            if on_bytes is not None:
                on_bytes((c.stop - c.start) * b.element_size())
        result[name] = norms
    if dist.current().active:
        gathered = {k: v for part in dist.all_gather(result) for k, v in part.items()}
        result = {n: gathered[n] for n in every}
    return result


def _sq_norms(x2d, axes: set[int], work) -> dict[int, np.ndarray]:
    """Squared L2 norms of each row (axis 0) and/or each column (axis 1), as float64 numpy.

    x2d: [rows, row_len], any float dtype; work: float32 scratch of x2d.numel() elements.
    Columns go through square-then-sum(0): torch's vector_norm over dim 0 is ~8x slower on
    CPU (measured here: 0.88 ms vs 0.11 ms per 512K-element chunk).
    """
    import torch

    out = {}
    if 0 in axes:
        rows = torch.linalg.vector_norm(x2d, dim=1, dtype=torch.float32)
        out[0] = rows.double().square().cpu().numpy()
    if 1 in axes:
        squares = work.view_as(x2d).copy_(x2d).square_()
        out[1] = squares.sum(0).double().cpu().numpy()
    return out


def _accumulate(acc: np.ndarray, axis: int, r0: int, r1: int, v: np.ndarray) -> None:
    if axis == 0:
        acc[r0:r1] = v  # each row lies wholly inside one chunk
    else:
        acc += v  # column norms add up over the row chunks


def gather(layout: UnitLayout, norms: dict[str, TensorNorms], which: str) -> list[tuple]:
    """Per instance: (incoming, outgoing) squared norms summed over the unit's slices. A
    whole-tensor slice (`Slice.whole`) adds its whole tensor's squared norm (the sum of its
    rows') to the one unit that owns it."""
    out = []
    for inst in layout.instances:
        inc, outg = np.zeros(inst.n_units), np.zeros(inst.n_units)
        for name, sl, offset in inst.tensors:
            rows = getattr(norms[name], which)[sl.axis]
            if sl.whole:
                (outg if sl.out else inc)[offset] += rows.sum()
                continue
            v = rows[offset : offset + inst.n_units]
            if sl.out:
                outg += v
            else:
                inc += v
        out.append((inc, outg))
    return out
