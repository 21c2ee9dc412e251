"""Per-unit activation statistics: dormant (ReDo) and saturated units (docs/method.md
sections 3, 5).

A unit's activation h_j is the input channel j of an output-side projection (`down_proj`,
`o_proj`, ...) at one token. `ActivityStats` accumulates Σ|h_j| and Σh_j² over tokens in
bounded memory; the scores are pure functions of those sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

TAUS = (0.01, 0.025, 0.1)  # ReDo thresholds reported (Sokar et al. use 0.025 for their nets)
EPS = 1e-12
# "Saturated" (ours, a heuristic): at least the layer's mean activity, and nearly the same
# magnitude on every token (coefficient of variation of |h| at most 0.25).
SATURATED_MIN_REL = 1.0
SATURATED_MAX_CV = 0.25
PERCENTILES = (1, 5, 50, 95, 99)


@dataclass
class ActivityStats:
    """Sums over tokens for the units of one module instance (float64, on the model's device)."""

    sum_abs: torch.Tensor  # [U]
    sum_sq: torch.Tensor  # [U]
    tokens: int = 0

    @classmethod
    def zeros(cls, n_units: int, device) -> ActivityStats:
        z = torch.zeros(n_units, dtype=torch.float64, device=device)
        return cls(z, z.clone())

    def update(self, h: torch.Tensor) -> None:
        """h: [T, U] activations of T real tokens, any float dtype."""
        h = h.float()
        # .to(): with an offloaded model a layer may run on another device than the sums
        self.sum_abs += h.abs().sum(0).double().to(self.sum_abs.device)
        self.sum_sq += h.square().sum(0).double().to(self.sum_sq.device)
        self.tokens += h.shape[0]

    def mean_abs(self) -> np.ndarray:
        return (self.sum_abs / max(self.tokens, 1)).cpu().numpy()

    def cv(self) -> np.ndarray:
        """std|h_j| / E|h_j| across tokens, per unit."""
        n = max(self.tokens, 1)
        mean = self.sum_abs.cpu().numpy() / n
        var = np.maximum(self.sum_sq.cpu().numpy() / n - mean * mean, 0.0)
        return np.sqrt(var) / (mean + EPS)


def redo_scores(mean_abs: np.ndarray) -> np.ndarray:
    """ReDo score s_j = E|h_j| / mean_k E|h_k| (1 = an average unit, 0 = dead). [U] -> [U]."""
    return mean_abs / (mean_abs.mean() + EPS)


def saturated_scores(redo: np.ndarray, cv: np.ndarray) -> np.ndarray:
    """Always-on score (ours): relative mean activity / (CV + ε); highest = most saturated."""
    return redo / (cv + 1e-3)


def saturated_flags(redo: np.ndarray, cv: np.ndarray) -> np.ndarray:
    """Units counted as saturated in reports: busy (≥ layer mean) and steady (CV ≤ 0.25)."""
    return (redo >= SATURATED_MIN_REL) & (cv <= SATURATED_MAX_CV)


def dormant_fractions(redo: np.ndarray) -> dict[str, float]:
    """Share of units with s_j ≤ τ, for each τ in TAUS (keys are the τ as text)."""
    return {str(t): float((redo <= t).mean()) if redo.size else 0.0 for t in TAUS}


def percentiles(values: np.ndarray) -> dict[str, float]:
    if not values.size:
        return {f"p{q}": 0.0 for q in PERCENTILES}
    return {
        f"p{q}": float(v)
        for q, v in zip(PERCENTILES, np.percentile(values, PERCENTILES), strict=True)
    }
