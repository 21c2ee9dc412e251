"""`rejuv diagnose` end to end: weights (streaming) -> forward passes -> verdict -> report dict.

The report is plain JSON-ready data (schema in the README, `SCHEMA_VERSION`); rendering lives
in report/. Top-level sections describe SFT against BASE; BASE's and the candidate's own
numbers sit under `base` / `candidate` keys inside each section.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from rejuv_cli import __version__
from rejuv_cli.checkpoint.reader import Checkpoint
from rejuv_cli.checkpoint.resolve import resolve_model
from rejuv_cli.diagnostics import verdict as V
from rejuv_cli.errors import ArchError
from rejuv_cli.plan import build_plan
from rejuv_cli.recipe import Recipe

SCHEMA_VERSION = 1
ACTIVITY_MODULES = ("o", "mlp", "expert", "shared_expert")  # units with an input-side site

# progress(label, total, unit) -> advance(n); unit is "bytes" or a noun such as "batches"
Progress = Callable[[str, int, str], Callable[[int], None]]


@dataclass
class DiagnoseJob:
    base: str
    sft: str
    candidate: str | None = None
    calib: str = "builtin:math"
    samples: int = 64
    max_tokens: int = 512
    weights_only: bool = False
    rank: bool = False
    device: str = "auto"
    batch_tokens: int | None = None
    sharpness_draws: int = 3
    sharpness_sigma: float = 0.02
    max_memory: int | None = None  # bytes of model weights on the device, shared by the models


def _no_progress(label: str, total: int, unit: str):
    return lambda n: None


def run_diagnose(job: DiagnoseJob, progress: Progress = _no_progress) -> dict:
    """Measure everything the job asks for; returns the report dict."""
    from rejuv_cli.surgery import pick_device

    t0 = time.perf_counter()
    device = pick_device(job.device)
    roles = {"base": job.base, "sft": job.sft} | ({"candidate": job.candidate}
                                                   if job.candidate else {})  # fmt: skip
    resolved = {role: resolve_model(spec, role.upper()) for role, spec in roles.items()}
    ckpts = {role: Checkpoint.open(m.path, role.upper()) for role, m in resolved.items()}
    warnings: list[str] = []
    try:
        weights, layout = _weights(job, ckpts, device, progress, warnings)
    finally:
        for c in ckpts.values():
            c.close()
    report = {
        "schema_version": SCHEMA_VERSION,
        "tool": f"rejuv {__version__}",
        "inputs": {
            "base": job.base,
            "sft": job.sft,
            "candidate": job.candidate,
            "calib": None if job.weights_only else job.calib,
            "samples": None,
            "max_tokens": None if job.weights_only else job.max_tokens,
            "device": str(device),
            "weights_only": job.weights_only,
            "models": {role: m.to_json() for role, m in resolved.items()},
        },  # fmt: skip
        "verdict": None,
        "weights": weights,
        "output": None,
        "units": None,
        "sharpness": None,
        "comparison": None,
        "warnings": warnings,
    }
    if not job.weights_only:
        from rejuv_cli.diagnostics.forward_report import forward_sections

        forward_sections(job, report, resolved, layout, device, progress, warnings)
    report["verdict"] = verdict_block(report, job)
    if job.candidate:
        report["comparison"] = comparison(report)
    report["seconds"] = round(time.perf_counter() - t0, 3)
    return report


def _weights(job, ckpts, device, progress, warnings):
    """Weight-space sections (SFT vs BASE, candidate vs BASE) and the unit layout."""
    from rejuv_cli.diagnostics.weights import delta_ranks, unit_drift, weight_drift
    from rejuv_cli.scoring import unit_layout

    base, sft = ckpts["base"], ckpts["sft"]
    plan = build_plan(base, sft, Recipe())
    warnings.extend(plan.warnings)
    layout = None
    try:
        layout = unit_layout(sft, plan, None)
        warnings.extend(layout.warnings)
    except ArchError as e:
        warnings.append(f"per-unit statistics skipped: {e}")

    def section(other: Checkpoint, label: str) -> dict:
        p = plan if other is sft else build_plan(base, other, Recipe())
        total = sum(t.sft.nbytes for t in p.tensors if t.base is not None and not t.note)
        w = weight_drift(base, other, p, device, progress(f"weights ({label})", total, "bytes"))
        if layout is not None and other is sft:
            w["units"] = unit_drift(layout, base, other, device)
        if job.rank:
            w["rank"] = delta_ranks(base, other, p, device)
        return w

    weights = section(sft, "SFT")
    if "candidate" in ckpts:
        weights["candidate"] = section(ckpts["candidate"], "candidate")
    return weights, layout


def rule_metrics(weights: dict | None, output: dict | None, units: dict | None,
                 sharpness_ratio: float | None) -> dict[str, float | None]:  # fmt: skip
    """The values the verdict rules read, by path, for one model's sections."""
    weights, output, units = weights or {}, output or {}, units or {}
    return {
        "output.entropy_mean": output.get("entropy_mean"),
        "output.entropy_ratio": output.get("entropy_ratio"),
        "output.confident_share": output.get("confident_share"),
        "weights.spikiness": weights.get("spikiness"),
        "weights.drift_max": weights.get("drift_max"),
        "sharpness.ratio": sharpness_ratio,
        "units.dormant_increase": units.get("dormant_increase"),
    }


def _measured(report: dict, job: DiagnoseJob) -> str:
    if job.weights_only:
        return "weights only"
    return "weights, output, units" + (", sharpness" if report["sharpness"] else "")


def verdict_block(report: dict, job: DiagnoseJob) -> dict:
    output, units, sharp = report["output"], report["units"], report["sharpness"] or {}
    label, reasons = V.judge(rule_metrics(report["weights"], output, units, sharp.get("ratio")))
    block = {
        "label": label,
        "heuristic": True,
        "reasons": reasons,
        "suggested_command": V.suggested_command(label, job.base, job.sft),
        "measured": _measured(report, job),
        "candidate": None,
    }
    if job.candidate:
        c_label, c_reasons = V.judge(rule_metrics(
            report["weights"].get("candidate"), (output or {}).get("candidate"),
            (units or {}).get("candidate"), sharp.get("candidate_ratio"),
        ))  # fmt: skip
        block["candidate"] = {"label": c_label, "reasons": c_reasons}
    return block


# (metric name, its keys in the report, label, which direction means "more plastic" or
# "closer to BASE"). The candidate's value sits under the section's "candidate" block, except
# for sharpness, whose SFT and candidate ratios are siblings.
COMPARED = (
    ("output.entropy_mean", ("output", "entropy_mean"), "mean entropy (nats)", "higher"),
    ("output.entropy_ratio", ("output", "entropy_ratio"), "entropy / BASE entropy", "higher"),
    ("output.confident_share", ("output", "confident_share"),
     "share of tokens with p_max > 0.99", "lower"),
    ("output.p_max_mean", ("output", "p_max_mean"), "mean max-probability", "lower"),
    ("output.kl_mean", ("output", "kl_mean"), "KL to BASE (nats/token)", "lower"),
    ("output.nll_mean", ("output", "nll_mean"), "NLL of the calibration responses", "lower"),
    ("weights.overall.rel_drift", ("weights", "overall", "rel_drift"),
     "relative drift from BASE", "lower"),
    ("weights.drift_max", ("weights", "drift_max"), "largest tensor drift", "lower"),
    ("weights.spikiness", ("weights", "spikiness"), "spikiness (top-0.1% energy share)",
     "lower"),
    ("units.dormant_0.025", ("units", "dormant", "0.025"), "dormant units (ReDo ≤ 0.025)",
     "lower"),
    ("units.saturated", ("units", "saturated"), "saturated units", "lower"),
    ("sharpness.ratio", ("sharpness", "ratio"), "sharpness / BASE sharpness", "lower"),
)  # fmt: skip


def _dig(data, keys):
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def comparison(report: dict) -> list[dict]:
    """Before (SFT) / after (candidate) rows for the metrics measured in this run."""
    rows = []
    for path, keys, label, better in COMPARED:
        section, rest = keys[0], keys[1:]
        after_keys = (section, "candidate_ratio") if section == "sharpness" else (
            section, "candidate", *rest)  # fmt: skip
        before, after = _dig(report, keys), _dig(report, after_keys)
        if before is None or after is None:
            continue
        improved = after > before if better == "higher" else after < before
        rows.append({"metric": path, "label": label, "sft": before, "candidate": after,
                     "better": better, "improved": bool(improved)})  # fmt: skip
    return rows
