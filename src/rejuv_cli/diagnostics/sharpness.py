"""Random-direction sharpness of the calibration loss (docs/method.md section 5; ours).

    sharpness = E_u[L(θ + u)] − L(θ),   u_W ~ N(0, (σ_rel · ‖W‖_F / √numel W)²) per matrix W

L is the mean teacher-forced NLL over response tokens. Draw d uses the same seed for every
model (common random numbers), so BASE and SFT are probed along the same directions up to each
tensor's own scale, and their ratio is less noisy than two independent estimates.

Estimator: antithetic pairs. Each draw measures both L(θ + u) and L(θ − u), and its estimate is
(L(θ + u) + L(θ − u)) / 2 − L(θ). u and −u are equally likely, so this has the same
expectation as L(θ + u) − L(θ) (the quantity of docs/method.md section 5); but the first-order term
gᵀu, whose sign is random and which dominates L(θ + u) − L(θ) wherever the gradient g on the
calibration data is not small (BASE on data it was not tuned on), cancels exactly in each pair.
What is left is ½ uᵀHu + O(u⁴): a random-projection (Hutchinson) estimate of the curvature,
whose noise shrinks as the dimension grows. One-sided draws made BASE's estimate negative on a
trained toy model (and so the SFT / BASE ratio undefined); the pairs cost two passes per draw.
The estimate is still negative where the loss curves down on average (θ not near a minimum of
the calibration loss); the report then says why the ratio is null.
"""

from __future__ import annotations

import math

import torch

from rejuv_cli.calib.forward import Batch, mean_nll, perturbable

SIGMA_REL = 0.02
DRAWS = 3
SEED = 0


def noise_std(weight: torch.Tensor, sigma_rel: float) -> float:
    """Per-element std of the perturbation for one matrix: σ_rel · RMS(W)."""
    w = weight.detach().float()
    return sigma_rel * float(torch.linalg.vector_norm(w)) / math.sqrt(max(w.numel(), 1))


def sharpness(
    model,
    batches: list[Batch],
    device: torch.device,
    *,
    loss: float | None = None,
    sigma_rel: float = SIGMA_REL,
    draws: int = DRAWS,
    seed: int = SEED,
    vocab_limit: int | None = None,
    on_batch=None,
) -> dict:
    """Perturb the model's matrices in place by +u and −u for each of `draws` directions u,
    measuring the loss each time, and restore the exact original weights afterwards (a CPU copy
    of every matrix is kept, so this needs one extra model's worth of host memory).

    `loss`: L(θ) if already measured on the same batches. Returns JSON-ready numbers:
    `perturbed` L(θ + u_d), `mirrored` L(θ − u_d), `draw_values` the per-draw estimates
    (L(θ + u_d) + L(θ − u_d)) / 2 − L(θ), `value` their mean and `stderr` its standard error
    (None with one draw).
    """
    params = list(perturbable(model))
    originals = [p.detach().to("cpu", copy=True) for _, p in params]
    stds = [noise_std(p, sigma_rel) for _, p in params]
    base_loss = mean_nll(model, batches, device, vocab_limit) if loss is None else loss
    plus: list[float] = []
    minus: list[float] = []
    try:
        for d in range(draws):
            for sign, out in ((1.0, plus), (-1.0, minus)):
                # The same generator state for both signs: −u is exactly the mirror of u.
                gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + d)
                with torch.no_grad():
                    for (_, p), std in zip(params, stds, strict=True):
                        noise = torch.randn(p.shape, generator=gen, device=device,
                                            dtype=torch.float32)  # fmt: skip
                        p.add_(noise.mul_(sign * std).to(p.dtype))
                out.append(mean_nll(model, batches, device, vocab_limit, on_batch))
                _restore(params, originals)
    finally:
        _restore(params, originals)
    values = [(a + b) / 2 - base_loss for a, b in zip(plus, minus, strict=True)]
    mean = sum(values) / len(values) if values else 0.0
    stderr = None
    if len(values) > 1:
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
        stderr = math.sqrt(var / len(values))
    return {"loss": base_loss, "perturbed": plus, "mirrored": minus, "draw_values": values,
            "value": mean, "stderr": stderr}  # fmt: skip


def _restore(params, originals) -> None:
    with torch.no_grad():
        for (_, p), orig in zip(params, originals, strict=True):
            p.copy_(orig)
