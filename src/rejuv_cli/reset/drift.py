"""The weights-only `drift` scorer: one streaming pass over both checkpoints."""

from __future__ import annotations

import time

from rejuv_cli.arch.layout import UnitLayout
from rejuv_cli.checkpoint.source import TensorSource
from rejuv_cli.ops.reset import drift_scores
from rejuv_cli.reset.norms import gather, stream_norms
from rejuv_cli.reset.scores import UnitScores


def score_drift(layout: UnitLayout, base: TensorSource, sft: TensorSource, device,
                on_bytes=None, settings=None, max_memory=None) -> UnitScores:  # fmt: skip
    """Unit j scores its joint relative drift sqrt(Σ‖Δ_slice‖²) / (sqrt(Σ‖θ_b,slice‖²) + ε)
    over all its slices (docs/method.md section 3; `ops.reset.drift_scores`).
    It streams tensor by tensor, so `max_memory` (the model budget of the data scorers) does
    not apply; it reads no `settings`."""
    t0 = time.perf_counter()
    norms = stream_norms(base, sft, layout.tensor_axes(), device, on_bytes)
    deltas, bases = gather(layout, norms, "delta_sq"), gather(layout, norms, "base_sq")
    scores = [drift_scores(d_in, b_in, d_out, b_out)
              for (d_in, d_out), (b_in, b_out) in zip(deltas, bases, strict=True)]  # fmt: skip
    base_norm_sq = [b_in + b_out for b_in, b_out in bases]
    return UnitScores(scores, base_norm_sq, norms, time.perf_counter() - t0)
