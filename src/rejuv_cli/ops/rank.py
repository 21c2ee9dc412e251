"""Rank measures of an update matrix Δ from its singular values (docs/method.md section 5).

Pure functions; the caller computes the singular values (e.g. torch.linalg.svdvals).
"""

from __future__ import annotations

import math

import torch


def stable_rank(singular_values: torch.Tensor) -> float:
    """‖Δ‖²_F / ‖Δ‖²_2 = Σσ² / σ_max²: 1 for a rank-one update, up to min(m, n). [k] -> float."""
    s = singular_values.double()
    top = float(s.max()) if s.numel() else 0.0
    return float(s.square().sum()) / (top * top) if top > 0 else 0.0


def effective_rank(singular_values: torch.Tensor) -> float:
    """exp(entropy of σ_i / Σσ) (Roy & Vetterli 2007): how many directions carry the update."""
    s = singular_values.double()
    total = float(s.sum())
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return math.exp(float(-(p * p.log()).sum()))
