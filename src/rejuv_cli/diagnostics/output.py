"""Output-space and unit-activity diagnostics from teacher-forced passes (docs/method.md section 5).

BASE, SFT and the candidate see each batch in turn (all loaded at once): the KL to BASE needs
both full next-token distributions at the same positions, and keeping BASE's for the whole
data set instead would cost tokens × vocabulary floats. Per response token we keep entropy,
max-probability, NLL and KL; per unit, activation sums (see ops/activity.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from rejuv_cli import dist
from rejuv_cli.calib.forward import ActivityRecorder, Batch, Site, response_logits
from rejuv_cli.calib.routing import RoutingRecord, RoutingRecorder
from rejuv_cli.ops import activity as act
from rejuv_cli.ops.tokens import CONFIDENT, block_rows, kl_divergence, log_probs, token_stats

HIST_BINS = 40


@dataclass
class ModelRecord:
    """Per-token arrays (response tokens in data order), per-site activity and MoE routing
    counts (calib/routing.py) of one model."""

    entropy: list[np.ndarray] = field(default_factory=list)
    p_max: list[np.ndarray] = field(default_factory=list)
    nll: list[np.ndarray] = field(default_factory=list)
    kl: list[np.ndarray] = field(default_factory=list)  # KL(model ‖ BASE); empty for BASE
    activity: dict = field(default_factory=dict)  # site key -> ActivityStats
    missing_sites: list[str] = field(default_factory=list)
    routing: RoutingRecord = field(default_factory=RoutingRecord)  # MoE routers (all real tokens)

    def array(self, name: str) -> np.ndarray:
        parts = getattr(self, name)
        return np.concatenate(parts) if parts else np.zeros(0)

    def gather_ranks(self) -> ModelRecord:
        """Under torchrun, where each rank ran a contiguous share of the batches: every rank's
        per-token arrays, in rank order, which is data order (a few floats per token). The
        activity and routing sums were reduced when their recorders closed."""
        if dist.current().active:
            parts = dist.all_gather({k: self.array(k) for k in TOKEN_ARRAYS})
            for k in TOKEN_ARRAYS:
                setattr(self, k, [part[k] for part in parts if part[k].size])
        return self


TOKEN_ARRAYS = ("entropy", "p_max", "nll", "kl")


def calibration_pass(
    models: dict[str, torch.nn.Module],
    batches: list[Batch],
    sites: list[Site],
    device: torch.device,
    on_batch: Callable[[], None] | None = None,
    vocab_limit: int | None = None,
) -> dict[str, ModelRecord]:
    """Run every batch through every model ("base" first); KL is taken against "base".

    `vocab_limit`: compare on the first V' tokens only (see `response_logits`). Under
    torchrun `batches` is this rank's share (`Calibration.mine`) and the records returned hold
    every rank's data.
    """
    records = {role: ModelRecord() for role in models}
    recorders = {role: ActivityRecorder(m, sites, device) for role, m in models.items()}
    routers = {role: RoutingRecorder(m) for role, m in models.items()}
    try:
        with torch.inference_mode():
            for batch in batches:
                base_logits = None
                for role, model in models.items():
                    recorders[role].token_mask = batch[1].to(device).bool()
                    routers[role].token_mask = recorders[role].token_mask
                    logits, targets = response_logits(model, batch, device, vocab_limit)
                    if role == "base":
                        base_logits = logits  # [N, V], kept for the others' KL
                    token_records(records[role], logits, targets,
                                  None if role == "base" else base_logits)  # fmt: skip
                    del logits
                if on_batch is not None:
                    on_batch()
    finally:
        for role, recorder in recorders.items():
            recorder.close()
            records[role].activity = recorder.stats
            records[role].missing_sites = recorder.missing
            records[role].routing = routers[role].close()
    return {role: rec.gather_ranks() for role, rec in records.items()}


def token_records(rec: ModelRecord, logits, targets, base_logits) -> None:
    """Per-token statistics in blocks of rows (`block_rows`), so float32 temporaries stay
    bounded whatever the batch size and vocabulary."""
    rows = block_rows(logits.shape[-1])
    for i in range(0, logits.shape[0], rows):
        logp = log_probs(logits[i : i + rows])
        stats = token_stats(logp, targets[i : i + rows])
        for key in ("entropy", "p_max", "nll"):
            getattr(rec, key).append(stats[key].double().cpu().numpy())
        if base_logits is not None:
            kl = kl_divergence(logp, log_probs(base_logits[i : i + rows]))
            rec.kl.append(kl.double().cpu().numpy())


class LogitCache:
    """BASE's response logits of each batch ([N, V] as `response_logits` returns them), kept in
    a temporary directory so that later models' KL to BASE needs no BASE forward pass and no
    RAM: tokens × vocabulary × 4 bytes on disk (float32 on CPU), e.g. 25k response tokens at a
    32k vocabulary take 3.3 GB. Removed by `close` (and when garbage-collected)."""

    def __init__(self):
        import tempfile

        self._dir = tempfile.TemporaryDirectory(prefix="rejuv-base-logits-")

    def _path(self, index: int):
        from pathlib import Path

        return Path(self._dir.name) / f"batch-{index:06d}.pt"

    def put(self, index: int, logits: torch.Tensor) -> None:
        torch.save(logits.detach().cpu(), self._path(index))

    def get(self, index: int, device: torch.device) -> torch.Tensor:
        return torch.load(self._path(index), map_location=device, weights_only=True)

    def close(self) -> None:
        self._dir.cleanup()


def cached_pass(
    model: torch.nn.Module,
    batches: list[Batch],
    device: torch.device,
    cache: LogitCache,
    store: bool,
    on_batch: Callable[[], None] | None = None,
    vocab_limit: int | None = None,
) -> ModelRecord:
    """One model's token statistics, one model at a time: `store=True` is BASE's pass (its
    logits go to `cache`, no KL); otherwise KL is taken against the cached BASE logits. Gives
    the same numbers as `calibration_pass` (the same logits, the same arithmetic). Under
    torchrun `batches` is this rank's share and the cache holds this rank's logits."""
    rec = ModelRecord()
    with torch.inference_mode():
        for index, batch in enumerate(batches):
            logits, targets = response_logits(model, batch, device, vocab_limit)
            if store:
                cache.put(index, logits)
                token_records(rec, logits, targets, None)
            else:
                token_records(rec, logits, targets, cache.get(index, logits.device))
            del logits
            if on_batch is not None:
                on_batch()
    return rec.gather_ranks()


def output_summary(rec: ModelRecord, base: ModelRecord | None, edges: np.ndarray) -> dict:
    """JSON-ready token statistics of one model; `base` None for BASE itself."""
    entropy = rec.array("entropy")
    out = {
        "entropy_mean": _mean(entropy),
        "p_max_mean": _mean(rec.array("p_max")),
        "confident_share": _mean(rec.array("p_max") > CONFIDENT),
        "nll_mean": _mean(rec.array("nll")),
        "tokens": int(entropy.size),
        "entropy_hist": {
            "edges": [float(e) for e in edges],
            "counts": [int(c) for c in np.histogram(entropy, bins=edges)[0]],
        },
    }
    if base is not None:
        base_h = _mean(base.array("entropy"))
        out["kl_mean"] = _mean(rec.array("kl"))
        out["entropy_ratio"] = out["entropy_mean"] / base_h if base_h > 0 else None
    return out


# Below this SFT-over-BASE NLL gain (nats/token) the skill ratio is noise over noise: its
# denominator is about the size of bf16 forward-pass jitter, so we report null instead.
MIN_NLL_GAIN = 0.01


def skill_retained(
    nll_base: float | None, nll_sft: float | None, nll_model: float | None
) -> tuple[float | None, str | None]:
    """Share of SFT's NLL gain over BASE a model keeps: (NLL_base − NLL_m) / (NLL_base −
    NLL_sft); 1 = all of it (SFT itself), 0 = back to BASE, < 0 = worse than BASE.

    Returns (value, None), or (None, why) when SFT did not improve on BASE by MIN_NLL_GAIN."""
    if nll_base is None or nll_sft is None or nll_model is None:
        return None, "not measured: an NLL is missing"
    gain = nll_base - nll_sft
    if not gain > MIN_NLL_GAIN:
        return None, (
            f"SFT's NLL ({nll_sft:.4g}) is not below BASE's ({nll_base:.4g}) by more than "
            f"{MIN_NLL_GAIN:g} nats/token, so there is no SFT skill on this calibration data to "
            "retain; compare output.nll_mean values instead, or use data SFT was trained for"
        )
    return (nll_base - nll_model) / gain, None


def share_noise(p: float, q: float | None, n: int) -> float:
    """One standard error of the difference of two shares p and q, each measured on the same
    n prompts (unpaired, so conservative); 0 when q or n is unknown."""
    if q is None or n <= 0:
        return 0.0
    return math.sqrt((p * (1 - p) + q * (1 - q)) / n)


def accuracy_retained(acc_base: float | None, acc_sft: float | None, acc_model: float | None,
                      checked: int = 0) -> float | None:  # fmt: skip
    """Share of SFT's greedy-accuracy gain over BASE a model keeps: (acc_m − acc_base) /
    (acc_sft − acc_base). None when an accuracy is missing or SFT's gain is not above the
    sampling noise of the two accuracies over `checked` prompts (`share_noise`; any gain when
    `checked` is 0): a ratio over a noise-sized gain says nothing (0.02 / 0.008 = 2.5)."""
    if acc_base is None or acc_sft is None or acc_model is None:
        return None
    if not acc_sft - acc_base > share_noise(acc_sft, acc_base, checked):
        return None
    return (acc_model - acc_base) / (acc_sft - acc_base)


def entropy_edges(records: dict[str, ModelRecord]) -> np.ndarray:
    """Shared histogram bin edges: 0 to the largest entropy seen, HIST_BINS bins."""
    top = max((float(r.array("entropy").max(initial=0.0)) for r in records.values()), default=0.0)
    return np.linspace(0.0, max(top, 1e-6) * 1.0001, HIST_BINS + 1)


def units_summary(rec: ModelRecord, sites: list[Site]) -> dict:
    """Dormant fractions (ReDo) and saturated shares per layer × module and overall. An
    expert's statistics are over the tokens routed to it; experts that received none are
    listed in `unrouted` and left out of the fractions."""
    layers, all_redo, all_sat, unrouted = [], [], [], []
    for site in sites:
        stats = rec.activity.get(site.key)
        if stats is None:
            continue
        if stats.tokens == 0:  # an expert no calibration token reached: unknown, not dormant
            unrouted.append(site.key)
            continue
        redo = act.redo_scores(stats.mean_abs())
        saturated = act.saturated_flags(redo, stats.cv())
        all_redo.append(redo)
        all_sat.append(saturated)
        layers.append({
            "layer": site.layer,
            "module": site.module,
            "key": site.key,
            "units": int(redo.size),
            "dormant": act.dormant_fractions(redo),
            "saturated": float(saturated.mean()) if redo.size else 0.0,
            "percentiles": act.percentiles(redo),
        })  # fmt: skip
    redo = np.concatenate(all_redo) if all_redo else np.zeros(0)
    sat = np.concatenate(all_sat) if all_sat else np.zeros(0, dtype=bool)
    return {
        "taus": list(act.TAUS),
        "dormant": act.dormant_fractions(redo),
        "saturated": float(sat.mean()) if sat.size else 0.0,
        "units": int(redo.size),
        "layers": layers,
        "not_measured": rec.missing_sites,
        "unrouted": unrouted,
    }


def _mean(x: np.ndarray) -> float | None:
    return float(np.mean(x)) if np.size(x) else None  # None: JSON null, "not measured"
