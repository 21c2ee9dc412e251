"""Streaming Δ statistics equal a direct float64 computation over the whole tensor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rejuv_cli.ops.moments import DeltaMoments


def direct(b: np.ndarray, s: np.ndarray) -> dict[str, float]:
    d = s - b
    k = math.ceil(0.001 * d.size)
    top = np.sort(d**2)[::-1][:k]
    c = d - d.mean()
    return {
        "rel_drift": np.linalg.norm(d) / np.linalg.norm(b),
        "cosine": float(b @ s / (np.linalg.norm(b) * np.linalg.norm(s))),
        "msd": float((d**2).mean()),
        "kurtosis": float((c**4).mean() / (c**2).mean() ** 2),
        "top_share": float(top.sum() / (d**2).sum()),
        "max_over_std": float(np.abs(d).max() / d.std()),
    }


@pytest.mark.parametrize("chunk", [997, 4096, 50_000])
def test_streamed_moments_match_direct_computation(chunk):
    gen = torch.Generator().manual_seed(0)
    b = torch.randn(50_000, generator=gen)
    s = b + 0.01 * torch.randn(50_000, generator=gen) + 0.003  # a mean shift: central moments
    s[[17, 30_001, 49_999]] += torch.tensor([0.5, -0.8, 0.3])  # spikes: kurtosis, top share
    m = DeltaMoments(b.numel())
    d, d2 = torch.empty(chunk), torch.empty(chunk)
    for lo in range(0, b.numel(), chunk):
        hi = min(lo + chunk, b.numel())
        m.update(b[lo:hi], s[lo:hi], d[: hi - lo], d2[: hi - lo])
    got = m.result()
    want = direct(b.double().numpy(), s.double().numpy())
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=2e-4), key
    assert got["kurtosis"] > 50 and got["top_share"] > 0.15  # spikes: 3 entries, 16% of ‖Δ‖²


def test_identical_tensors_have_zero_drift():
    b = torch.randn(1000)
    m = DeltaMoments(1000)
    m.update(b, b.clone(), torch.empty(1000), torch.empty(1000))
    r = m.result()
    assert r["rel_drift"] == 0 and r["msd"] == 0 and r["top_share"] == 0
    assert r["cosine"] == pytest.approx(1.0)
