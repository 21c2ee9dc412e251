"""Streaming statistics of the SFT update Δ = θ_s − θ_b (docs/method.md section 5, weight space).

`DeltaMoments` takes a tensor chunk by chunk and keeps only sums, the largest |Δ| and the
top 0.1% of Δ² (a threshold keeps that set small), so any tensor size fits in bounded memory.
Pure: no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

TOP_SHARE = 0.001  # "spikiness": the share of ‖Δ‖² held by the top 0.1% of entries


@dataclass
class DeltaMoments:
    """Sums over the elements seen so far (float64), for one tensor or a group of tensors."""

    numel: int  # the tensor's total element count (fixes the top-0.1% size up front)
    n: int = 0
    sum_b2: float = 0.0
    sum_s2: float = 0.0
    sum_bs: float = 0.0
    sum_d: float = 0.0
    sum_d2: float = 0.0
    sum_d3: float = 0.0
    sum_d4: float = 0.0
    max_abs: float = 0.0
    top: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # largest Δ², ≤ k of them

    @property
    def k(self) -> int:
        return max(1, math.ceil(TOP_SHARE * self.numel))

    def update(self, b: torch.Tensor, s: torch.Tensor, d: torch.Tensor, d2: torch.Tensor) -> None:
        """Add one chunk. b, s: [n] float32, same device; d, d2: [n] float32 scratch.

        Chunk sums run in float32 (pairwise or blocked dot products, ~1e-6 relative), then
        accumulate in float64.
        """
        if not b.numel():
            return
        torch.sub(s, b, out=d)
        torch.mul(d, d, out=d2)
        self.n += d.numel()
        self.sum_b2 += float(torch.dot(b, b))
        self.sum_s2 += float(torch.dot(s, s))
        self.sum_bs += float(torch.dot(b, s))
        self.sum_d += float(d.sum())
        self.sum_d2 += float(d2.sum())
        self.sum_d3 += float(torch.dot(d2, d))
        self.sum_d4 += float(torch.dot(d2, d2))
        self.max_abs = max(self.max_abs, math.sqrt(float(d2.max())))
        self._keep_top(d2)

    def _keep_top(self, d2: torch.Tensor) -> None:
        # Only entries above the current k-th largest can enter the top set: after the first
        # chunks almost none do, so this costs one comparison per element.
        if self.top.numel() >= self.k:
            d2 = d2[d2 > self.top[-1]]
        if d2.numel():
            merged = torch.cat([self.top.to(d2.device), d2.float()])
            self.top = torch.topk(merged, min(self.k, merged.numel())).values  # descending

    def result(self) -> dict[str, float]:
        """Relative drift, cosine, mean squared difference and spikiness of Δ."""
        n = max(self.n, 1)
        mean = self.sum_d / n
        var = max(self.sum_d2 / n - mean * mean, 0.0)
        m4 = (self.sum_d4 - 4 * mean * self.sum_d3 + 6 * mean**2 * self.sum_d2) / n - 3 * mean**4
        std = math.sqrt(var)
        norm_b, norm_s = math.sqrt(self.sum_b2), math.sqrt(self.sum_s2)
        return {
            "rel_drift": math.sqrt(self.sum_d2) / norm_b if norm_b else 0.0,
            "cosine": self.sum_bs / (norm_b * norm_s) if norm_b and norm_s else 1.0,
            "msd": self.sum_d2 / n,
            "kurtosis": m4 / var**2 if var > 0 else 0.0,
            "top_share": float(self.top.double().sum()) / self.sum_d2 if self.sum_d2 else 0.0,
            "max_over_std": self.max_abs / std if std > 0 else 0.0,
        }
