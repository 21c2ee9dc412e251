"""Random-direction sharpness of the calibration loss (METHOD.md section 5; ours).

    sharpness = E_u[L(θ + u)] − L(θ),   u_W ~ N(0, (σ_rel · ‖W‖_F / √numel W)²) per matrix W

L is the mean teacher-forced NLL over response tokens. Draw d uses the same seed for every
model (common random numbers), so BASE and SFT are probed along the same directions up to each
tensor's own scale, and their ratio is less noisy than two independent estimates.
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
    """Perturb the model's matrices in place `draws` times, measuring the loss each time, and
    restore the exact original weights afterwards (a CPU copy of every matrix is kept, so this
    needs one extra model's worth of host memory).

    `loss`: L(θ) if already measured on the same batches. Returns JSON-ready numbers.
    """
    params = list(perturbable(model))
    originals = [p.detach().to("cpu", copy=True) for _, p in params]
    stds = [noise_std(p, sigma_rel) for _, p in params]
    base_loss = mean_nll(model, batches, device, vocab_limit) if loss is None else loss
    perturbed = []
    try:
        for d in range(draws):
            gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + d)
            with torch.no_grad():
                for (_, p), std in zip(params, stds, strict=True):
                    noise = torch.randn(p.shape, generator=gen, device=device, dtype=torch.float32)
                    p.add_(noise.mul_(std).to(p.dtype))
            perturbed.append(mean_nll(model, batches, device, vocab_limit, on_batch))
            _restore(params, originals)
    finally:
        _restore(params, originals)
    mean = sum(perturbed) / len(perturbed) if perturbed else base_loss
    return {"loss": base_loss, "perturbed": perturbed, "value": mean - base_loss}


def _restore(params, originals) -> None:
    with torch.no_grad():
        for (_, p), orig in zip(params, originals, strict=True):
            p.copy_(orig)
