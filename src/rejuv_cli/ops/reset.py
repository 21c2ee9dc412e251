"""Targeted neuron reset (docs/method.md sections 3-4): unit scores, selection, reset values.

Pure functions on arrays and tensors: no I/O, no config, no logging.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from rejuv_cli.ops.fuse import fuse

# Keeps a unit whose base slices are all zero from dividing by zero (norms of real weights are
# many orders larger).
DRIFT_EPS = 1e-6


def drift_scores(
    delta_in_sq: np.ndarray,
    base_in_sq: np.ndarray,
    delta_out_sq: np.ndarray,
    base_out_sq: np.ndarray,
    eps: float = DRIFT_EPS,
) -> np.ndarray:
    """The unit's joint relative drift over all its slices (docs/method.md section 3):
    s_j = sqrt(‖Δ_in,j‖² + ‖Δ_out,j‖²) / (sqrt(‖θ_b,in,j‖² + ‖θ_b,out,j‖²) + ε).

    All inputs: [n_units] float64 squared norms over the unit's incoming slices (rows of
    q/k/v/gate/up with their biases) and outgoing slices (columns of o/down); a module without
    outgoing slices passes zeros there. One ratio over the whole unit, so a unit with both
    kinds of slice (MLP) and one with a single kind (q, k, v, o) compare on the same scale: the
    earlier sum of an incoming and an outgoing ratio scored MLP units about twice as high under
    uniform drift. Returns [n_units] float64.
    """
    return np.sqrt(delta_in_sq + delta_out_sq) / (np.sqrt(base_in_sq + base_out_sq) + eps)


def protected_units(base_norm_sq: np.ndarray, fraction: float) -> np.ndarray:
    """[n_units] bool: the ceil(fraction·n) units with the largest base norm (ties: lower index).

    These are the massive-activation / "super weight" candidates that a reset could break.
    """
    n = base_norm_sq.shape[0]
    k = min(n, math.ceil(fraction * n - 1e-9)) if fraction > 0 else 0
    mask = np.zeros(n, dtype=bool)
    if k:
        mask[np.argsort(-base_norm_sq, kind="stable")[:k]] = True
    return mask


def target_count(fraction: float, total: int) -> int:
    """Units a reset of `fraction` asks for: round(fraction · total), halves up."""
    return math.floor(fraction * total + 0.5)


def module_cap(max_per_module: float, n: int) -> int:
    """The most units selection takes from one module instance of n units:
    floor(max_per_module · n)."""
    return math.floor(max_per_module * n + 1e-9)


def select_units(
    scores: list[np.ndarray], eligible: list[np.ndarray], fraction: float, max_per_module: float
) -> tuple[list[np.ndarray], int]:
    """Rank all units globally (highest score first), take the top `fraction` of all units,
    at most floor(max_per_module·n) from any one module.

    scores, eligible: one [n_units] array per module instance (float64, bool). Ties go to the
    earlier module and lower unit index, so the result is deterministic. Returns one bool mask
    per module and the target count round(fraction·total), which caps may leave unmet.
    """
    sizes = [s.shape[0] for s in scores]
    total = sum(sizes)
    target = target_count(fraction, total)
    masks = [np.zeros(n, dtype=bool) for n in sizes]
    if target == 0 or total == 0:
        return masks, target
    flat = np.concatenate(scores).astype(np.float64)
    ok = np.concatenate(eligible) & np.isfinite(flat)
    module = np.repeat(np.arange(len(sizes)), sizes)
    caps = np.array([module_cap(max_per_module, n) for n in sizes])

    order = np.flatnonzero(ok)
    order = order[np.argsort(-flat[order], kind="stable")]  # global rank among eligible units
    # Rank of each unit inside its own module, in global order: a unit survives the cap when
    # fewer than cap units of its module rank above it. Taking the first `target` survivors
    # is what a greedy walk down the global ranking would pick.
    by_module = np.argsort(module[order], kind="stable")
    sorted_modules = module[order][by_module]
    starts = np.searchsorted(sorted_modules, sorted_modules, side="left")
    rank_in_module = np.empty(order.shape[0], dtype=np.int64)
    rank_in_module[by_module] = np.arange(order.shape[0]) - starts
    survivors = order[rank_in_module < caps[module[order]]][:target]

    offsets = np.concatenate([[0], np.cumsum(sizes)])
    for i in np.unique(module[survivors]):
        masks[i][survivors[module[survivors] == i] - offsets[i]] = True
    return masks, target


def reset_values(
    base: torch.Tensor,
    sft: torch.Tensor,
    alpha: float,
    omega: float,
    out_dtype: torch.dtype,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """θ_r = ω·θ_b + (1−ω)·θ_f (+ noise), θ_f = θ_b + α(θ_s − θ_b); float32, rounded once.

    base, sft: the selected elements, same shape and device, any float dtype; noise: float32 of
    that shape (shrink-perturb) or None. ω = 1 without noise returns the base values exactly
    (cast only if `out_dtype` differs). Returns a new tensor in `out_dtype`.
    """
    if omega == 1.0 and noise is None:
        return base.to(out_dtype, copy=True)
    fused = fuse(base, sft, alpha, torch.float32)
    result = base.to(torch.float32, copy=True).mul_(omega).add_(fused.mul_(1.0 - omega))
    if noise is not None:
        result.add_(noise)
    return result.to(out_dtype)
