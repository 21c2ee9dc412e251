"""The activation-based reset scorers (docs/method.md section 3): `dormant` and `saturated`, and
`CalibRun`, the set-up every data scorer (`attribution` too) shares.

Each returns `UnitScores` like the weights-only `drift` scorer, so selection, the per-module
cap, protection and masks go through the same code. Protection still ranks units by their
BASE weight norms, from one streaming BASE pass. Activations come from the SFT model on the
calibration data (`reset.calib`, `--calib`), loaded once with transformers on the device.
"""

from __future__ import annotations

import time

import numpy as np

from rejuv_cli.checkpoint.staging import loadable_dir
from rejuv_cli.ops import activity as act
from rejuv_cli.reset.norms import gather, stream_norms
from rejuv_cli.reset.scores import UnitScores


class CalibRun:
    """What every data scorer needs before its own pass: BASE norms for protection (one
    streaming BASE pass), the calibration batches, and the SFT model."""

    def __init__(self, layout, base, sft, device, on_bytes, settings, max_memory, load=True,
                 batch_tokens=None):  # fmt: skip
        from rejuv_cli.calib.fields import Fields
        from rejuv_cli.calib.forward import prepare_calibration

        self.t0 = time.perf_counter()
        self.layout, self.settings = layout, settings
        self.norms = stream_norms(base, None, layout.tensor_axes(), device, on_bytes)
        self.base_norm_sq = [b_in + b_out for b_in, b_out in gather(layout, self.norms, "base_sq")]
        self.calib = prepare_calibration(settings.calib, settings.samples, settings.max_tokens,
                                         loadable_dir(sft), device, batch_tokens,
                                         Fields.of(settings))  # fmt: skip
        self.device, self.max_memory = device, max_memory
        self.model = self.load(loadable_dir(sft), "SFT") if load else None

    def load(self, path, label: str):
        """A model for forward passes; an offload warning joins the scorer's warnings."""
        from rejuv_cli.calib.models import load_model

        return load_model(path, label, self.device, self.max_memory, self.calib.warnings)

    def result(self, by_key: dict, not_measured: list[str], **info):
        """UnitScores in layout order; units of modules that were not measured get NaN, which
        selection never picks."""
        scores = [by_key.get(inst.key, np.full(inst.n_units, np.nan))
                  for inst in self.layout.instances]  # fmt: skip
        info = {"calib": self.settings.calib, "samples": self.calib.samples,
                "response_tokens": self.calib.response_tokens, **info,
                "not_measured": not_measured, "warnings": self.calib.warnings}  # fmt: skip
        seconds = time.perf_counter() - self.t0
        return UnitScores(scores, self.base_norm_sq, self.norms, seconds, info)


def _activity_scores(kind: str, layout, base, sft, device, on_bytes, settings, max_memory):
    from rejuv_cli.calib.forward import activation_sites, record_activity

    run = CalibRun(layout, base, sft, device, on_bytes, settings, max_memory)
    recorder = record_activity(run.model, run.calib, activation_sites(layout), device)
    by_key, unrouted = {}, []
    for key, stats in recorder.stats.items():
        if stats.tokens == 0:  # an expert no calibration token reached: unknown, not dormant
            unrouted.append(key)
            continue
        redo = act.redo_scores(stats.mean_abs())
        # selection takes the highest scores: dormant ranks the lowest ReDo score first
        by_key[key] = -redo if kind == "dormant" else act.saturated_scores(redo, stats.cv())
    return run.result(by_key, recorder.missing, unrouted=unrouted)


def score_dormant(layout, base, sft, device, on_bytes=None, settings=None, max_memory=None):
    """ReDo scores of the SFT model, lowest (most dormant) first."""
    return _activity_scores("dormant", layout, base, sft, device, on_bytes, settings, max_memory)


def score_saturated(layout, base, sft, device, on_bytes=None, settings=None, max_memory=None):
    """Always-on units: relative mean activity / (CV + ε), highest first."""
    return _activity_scores("saturated", layout, base, sft, device, on_bytes, settings,
                            max_memory)  # fmt: skip
