"""The data-driven reset scorers (METHOD.md section 3): `dormant`, `saturated`, `attribution`.

Each returns `UnitScores` like the weights-only `drift` scorer, so selection, the per-module
cap, protection and masks go through the same code. Protection still ranks units by their
BASE weight norms, from one streaming BASE pass. Activations come from the SFT model on the
calibration data (`reset.calib`, `--calib`), loaded once with transformers on the device.
"""

from __future__ import annotations

import time

import numpy as np

from rejuv_cli.ops import activity as act


def _base_norms(layout, base, device, on_bytes):
    from rejuv_cli.scoring import gather, stream_norms

    norms = stream_norms(base, None, layout.tensor_axes(), device, on_bytes)
    return norms, [b_in + b_out for b_in, b_out in gather(layout, norms, "base_sq")]


def _activity_scores(kind: str, layout, base, sft, device, on_bytes=None, settings=None):
    from rejuv_cli.calib.forward import (
        activation_sites,
        load_model,
        prepare_calibration,
        record_activity,
    )
    from rejuv_cli.scoring import UnitScores

    t0 = time.perf_counter()
    norms, base_norm_sq = _base_norms(layout, base, device, on_bytes)
    calib = prepare_calibration(settings.calib, settings.samples, settings.max_tokens,
                                sft.root, device)  # fmt: skip
    model = load_model(sft.root, "SFT", device)
    sites = activation_sites(layout)
    recorder = record_activity(model, calib, sites, device)
    scores = []
    for inst in layout.instances:
        stats = recorder.stats.get(inst.key)
        if stats is None:  # no such module in the loaded model: never chosen
            scores.append(np.full(inst.n_units, np.nan))
            continue
        redo = act.redo_scores(stats.mean_abs())
        # selection takes the highest scores: dormant ranks the lowest ReDo score first
        scores.append(-redo if kind == "dormant" else act.saturated_scores(redo, stats.cv()))
    info = {"calib": settings.calib, "samples": calib.samples,
            "response_tokens": calib.response_tokens, "not_measured": recorder.missing,
            "warnings": calib.warnings}  # fmt: skip
    return UnitScores(scores, base_norm_sq, norms, time.perf_counter() - t0, info)


def score_dormant(layout, base, sft, device, on_bytes=None, settings=None):
    """ReDo scores of the SFT model, lowest (most dormant) first."""
    return _activity_scores("dormant", layout, base, sft, device, on_bytes, settings)


def score_saturated(layout, base, sft, device, on_bytes=None, settings=None):
    """Always-on units: relative mean activity / (CV + ε), highest first."""
    return _activity_scores("saturated", layout, base, sft, device, on_bytes, settings)


def score_attribution(layout, base, sft, device, on_bytes=None, settings=None):
    """The paper's scorer: units' contributions to SFT's top-1 logit at the response positions
    where SFT's and BASE's next-token entropies differ most (METHOD.md section 3)."""
    from rejuv_cli.calib.attribution import (
        attribution_scores,
        entropy_gaps,
        select_positions,
        target_positions,
    )
    from rejuv_cli.calib.forward import activation_sites, load_model, prepare_calibration
    from rejuv_cli.scoring import UnitScores

    t0 = time.perf_counter()
    norms, base_norm_sq = _base_norms(layout, base, device, on_bytes)
    calib = prepare_calibration(settings.calib, settings.samples, settings.max_tokens,
                                sft.root, device)  # fmt: skip
    sft_model = load_model(sft.root, "SFT", device)
    base_model = load_model(base.root, "BASE", device)
    gaps = entropy_gaps(base_model, sft_model, calib.batches, device)
    del base_model  # only the entropies were needed from BASE
    masks = [target_positions(b) for b in calib.batches]
    positions = select_positions(gaps, masks=masks)
    result = attribution_scores(sft_model, calib.batches, positions, activation_sites(layout),
                                device)  # fmt: skip
    scores = [result.scores.get(inst.key, np.full(inst.n_units, np.nan))
              for inst in layout.instances]  # fmt: skip
    info = {"calib": settings.calib, "samples": calib.samples,
            "response_tokens": calib.response_tokens, "positions": result.positions,
            "reconstruction": result.reconstruction, "not_measured": result.missing,
            "warnings": calib.warnings}  # fmt: skip
    return UnitScores(scores, base_norm_sq, norms, time.perf_counter() - t0, info)
