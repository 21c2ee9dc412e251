"""`rejuv diagnose` end to end: weights (streaming) -> forward passes -> verdict -> report dict.

The report is plain JSON-ready data (`SCHEMA_VERSION`; JSON Schema: `rejuv schema diagnose`);
rendering lives in report/. Top-level sections describe SFT against BASE; BASE's and the
candidate's own numbers sit under `base` / `candidate` keys inside each section.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rejuv_cli import __version__
from rejuv_cli.checkpoint.formats import open_models
from rejuv_cli.checkpoint.preflight import check_outputs
from rejuv_cli.checkpoint.resolve import resolve_model
from rejuv_cli.checkpoint.source import ModelSource
from rejuv_cli.checkpoint.staging import drop_staged, loadable_dir
from rejuv_cli.diagnostics import verdict as V
from rejuv_cli.errors import ArchError
from rejuv_cli.pairing import pair_tensors
from rejuv_cli.report.json_schemas import VERSIONS
from rejuv_cli.report.numbers import change
from rejuv_cli.report.paths import lookup, parse_path
from rejuv_cli.report.schema import RunFlags, explain_nulls, fill_declared, label
from rejuv_cli.settings import SETTINGS

SCHEMA_VERSION = VERSIONS["diagnose"]  # its JSON Schema: rejuv schema diagnose

# progress(label, total, unit) -> advance(n); unit is "bytes" or a noun such as "batches"
Progress = Callable[[str, int, str], Callable[[int], None]]


@dataclass
class DiagnoseJob:
    base: str
    sft: str
    candidate: str | None = None
    calib: str = SETTINGS["calib"].default
    samples: int = SETTINGS["samples"].default  # the one default of fuse and diagnose
    max_tokens: int = SETTINGS["max_tokens"].default
    prompt_field: str = SETTINGS["prompt_field"].default  # the calibration data's names
    response_field: str = SETTINGS["response_field"].default
    answer_field: str = SETTINGS["answer_field"].default
    messages_field: str = SETTINGS["messages_field"].default
    weights_only: bool = False
    rank: bool = False
    device: str = SETTINGS["device"].default
    batch_tokens: int | None = None
    sharpness_draws: int = SETTINGS["sharpness_draws"].default
    sharpness_sigma: float = SETTINGS["sharpness_sigma"].default
    min_skill: float = SETTINGS["min_skill"].default  # the low_skill rule's threshold
    min_learnable: float = SETTINGS["min_learnable"].default  # the low_learnable rule's
    generate: bool = False  # accuracy, pass@k and learnable share (calib/generate.py)
    group_size: int = SETTINGS["group_size"].default
    max_new_tokens: int = SETTINGS["max_new_tokens"].default
    checker: str = SETTINGS["checker"].default
    max_memory: int | None = None  # bytes of model weights on the device, shared by the models
    config_from: Path | None = None  # --config-from: config/tokenizer for inputs with none
    outputs: tuple = ()  # report files (preflight.Output), checked against the resolved inputs


def _no_progress(label: str, total: int, unit: str):
    return lambda n: None


def run_diagnose(job: DiagnoseJob, progress: Progress = _no_progress) -> dict:
    """Measure everything the job asks for; returns the report dict."""
    from rejuv_cli.checkpoint.stream import pick_device

    t0 = time.perf_counter()
    device = pick_device(job.device)
    roles = {"base": job.base, "sft": job.sft} | ({"candidate": job.candidate}
                                                   if job.candidate else {})  # fmt: skip
    resolved = {role: resolve_model(spec, role.upper()) for role, spec in roles.items()}
    check_outputs({role.upper(): m.path for role, m in resolved.items()}, job.outputs)
    sources = open_models({role: m.path for role, m in resolved.items()}, job.config_from)
    warnings: list[str] = []
    try:
        weights, layout = _weights(job, sources, device, progress, warnings)
        report = _report(job, device, resolved, sources, weights, warnings)
        if not job.weights_only:
            from rejuv_cli.diagnostics.forward_report import forward_sections

            # transformers loads directories: inputs that are not one are written out first
            dirs = {role: loadable_dir(source) for role, source in sources.items()}
            forward_sections(job, report, dirs, layout, device, progress, warnings)
    finally:
        for source in sources.values():
            source.close()
            drop_staged(source)
    report["verdict"] = verdict_block(report, job)
    if job.candidate:
        report["comparison"] = comparison(report)
    report["seconds"] = round(time.perf_counter() - t0, 3)
    fill_declared(report)  # every key the schema declares is there, null when not measured
    report["null_reasons"] = explain_nulls(report, run_flags(job), report["null_reasons"])
    return report


def _report(job: DiagnoseJob, device, resolved: dict, sources: dict, weights: dict,
            warnings: list[str]) -> dict:  # fmt: skip
    """The report's skeleton: inputs and the weight section; the rest filled in later."""
    return {
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
            "models": {
                role: m.to_json() | sources[role].input_json(structured=False)
                for role, m in resolved.items()
            },
        },  # fmt: skip
        "verdict": None,
        "weights": weights,
        "output": None,
        "units": None,
        "routing": None,
        "sharpness": None,
        "comparison": None,
        "gates": [],  # the command fills it in once the gates are evaluated
        "warnings": warnings,
        "null_reasons": {},  # gate path -> why it is null (report/schema.explain_nulls)
    }


def run_flags(job: DiagnoseJob) -> RunFlags:
    """What the job's settings say will be measured (for the report schema)."""
    return RunFlags(weights_only=job.weights_only, candidate=bool(job.candidate), rank=job.rank,
                    sharpness=job.sharpness_draws > 0, generate=job.generate)  # fmt: skip


# The settings that change what diagnose measures, in the order a command line lists them.
# (--config-from changes no measurement, but the next command needs it to read the inputs.)
MEASUREMENT_SETTINGS = ("calib", "samples", "max_tokens", "device", "batch_tokens",
                        "sharpness_draws", "sharpness_sigma", "min_skill", "min_learnable",
                        "group_size", "max_new_tokens", "checker", "config_from")  # fmt: skip
READ_SETTINGS = ("device", "config_from")  # what --weights-only runs use too
GENERATION_SETTINGS = ("min_learnable", "group_size", "max_new_tokens", "checker")


def measurement_flags(job: DiagnoseJob, command: str = "diagnose") -> list[str]:
    """The flags of `command` (diagnose, or sweep for the suggested next step) that reproduce
    this job's measurements: every setting that differs from its default, so the next run
    measures the same way."""
    default = DiagnoseJob(job.base, job.sft)
    flags: list[str] = []
    for attr in MEASUREMENT_SETTINGS:
        value = getattr(job, attr)
        if command not in SETTINGS[attr].commands or value == getattr(default, attr):
            continue
        if (job.weights_only and attr not in READ_SETTINGS) or (attr in GENERATION_SETTINGS
                                                        and not job.generate):  # fmt: skip
            continue
        flags += [SETTINGS[attr].flag, str(value)]
    if job.max_memory is not None and not job.weights_only:
        flags += ["--max-memory", f"{job.max_memory}B"]
    flags += ["--generate"] if job.generate and not job.weights_only else []
    if command == "diagnose":
        flags += ["--weights-only"] if job.weights_only else []
        flags += ["--rank"] if job.rank else []
    return flags


def _weights(job, ckpts, device, progress, warnings):
    """Weight-space sections (SFT vs BASE, candidate vs BASE) and the unit layout."""
    from rejuv_cli.diagnostics.weights import delta_ranks, unit_drift, weight_drift
    from rejuv_cli.reset.layout import unit_layout

    base, sft = ckpts["base"], ckpts["sft"]
    plan = pair_tensors(base, sft, purpose="diagnose")  # what to compare: no fuse plan
    warnings.extend(plan.warnings)
    layout = None
    try:
        layout = unit_layout(sft, plan, None)
        warnings.extend(layout.warnings)
    except ArchError as e:
        warnings.append(f"per-unit statistics skipped: {e}")

    def section(other: ModelSource, label: str) -> dict:
        p = plan if other is sft else pair_tensors(base, other, purpose="diagnose")
        if other is not sft:  # found while opening it (tensors its index does not list)
            warnings.extend(other.warnings)
        total = sum(t.sft.nbytes for t in p.tensors if t.paired)
        w = weight_drift(base, other, p, device, progress(f"weights ({label})", total, "bytes"))
        w["units"] = None
        if layout is not None and _same_unit_tensors(layout, sft, other, label, warnings):
            w["units"] = unit_drift(layout, base, other, device)
        w["rank"] = delta_ranks(base, other, p, device) if job.rank else None
        return w

    weights = section(sft, "SFT")
    weights["candidate"] = section(ckpts["candidate"], "candidate") if "candidate" in ckpts \
        else None  # fmt: skip
    return weights, layout


def _same_unit_tensors(layout, sft: ModelSource, other: ModelSource, label: str,
                       warnings: list[str]) -> bool:  # fmt: skip
    """Whether `other` (the candidate) stores every unit tensor of SFT's layout with SFT's
    shape, so that SFT's unit map measures it too; a warning says why not."""
    for name in layout.tensor_axes():
        mine, theirs = sft.tensors[name], other.tensors.get(name)
        if theirs is None or theirs.shape != mine.shape:
            what = "no such tensor" if theirs is None else f"shape {list(theirs.shape)}"
            warnings.append(f"per-unit drift of the {label} not measured: its '{name}' has "
                            f"{what}, SFT's is {list(mine.shape)}")  # fmt: skip
            return False
    return True


def _measured(report: dict, job: DiagnoseJob) -> str:
    if job.weights_only:
        return "weights only"
    return ("weights, output, units" + (", routing" if report.get("routing") else "")
            + (", sharpness" if report["sharpness"] else "")
            + (", generation" if job.generate else ""))  # fmt: skip


def rule_checks(report: dict, job: DiagnoseJob) -> dict[str, list]:
    """Every verdict rule applied to the report (diagnostics/verdict.RuleCheck), by the model
    judged: "" for SFT, "candidate" with --candidate. The verdict and --junit read these."""
    thresholds = {"low_skill": job.min_skill, "low_learnable": job.min_learnable}
    checks = {"": V.check_rules(V.rule_metrics(report), thresholds=thresholds)}
    if job.candidate:
        paths = {sft: cand for sft, cand, _ in COMPARED} | CANDIDATE_RULE_PATHS
        checks["candidate"] = V.check_rules(V.rule_metrics(report, paths), paths, thresholds)
    return checks


def verdict_block(report: dict, job: DiagnoseJob) -> dict:
    checks = rule_checks(report, job)
    label, reasons = V.verdict_of(checks[""])
    block = {
        "label": label,
        "heuristic": True,
        "reasons": reasons,
        "suggested_command": V.suggested_command(
            label,
            job.base,
            job.sft,
            measurement_flags(job, "sweep"),
            measurement_flags(job, "diagnose"),
        ),
        "measured": _measured(report, job),
        "candidate": None,
    }
    if job.candidate:
        c_label, c_reasons = V.verdict_of(checks["candidate"])
        block["candidate"] = {"label": c_label, "reasons": c_reasons}
    return block


# The metrics set side by side, as (path of SFT's value, path of the candidate's value, which
# direction means "more plastic" or "closer to BASE"). Labels come from the report schema.
COMPARED = (
    ("output.entropy_mean", "output.candidate.entropy_mean", "higher"),
    ("output.entropy_ratio", "output.candidate.entropy_ratio", "higher"),
    ("output.confident_share", "output.candidate.confident_share", "lower"),
    ("output.p_max_mean", "output.candidate.p_max_mean", "lower"),
    ("output.kl_mean", "output.candidate.kl_mean", "lower"),
    ("output.nll_mean", "output.candidate.nll_mean", "lower"),
    ("output.skill_retained", "output.candidate.skill_retained", "higher"),
    ("output.accuracy", "output.candidate.accuracy", "higher"),
    ("output.pass_at_k", "output.candidate.pass_at_k", "higher"),
    ("output.learnable_share", "output.candidate.learnable_share", "higher"),
    ("weights.overall.rel_drift", "weights.candidate.overall.rel_drift", "lower"),
    ("weights.drift_max", "weights.candidate.drift_max", "lower"),
    ("weights.spikiness", "weights.candidate.spikiness", "lower"),
    ('units.dormant["0.025"]', 'units.candidate.dormant["0.025"]', "lower"),
    ("units.saturated", "units.candidate.saturated", "lower"),
    ("sharpness.ratio", "sharpness.candidate_ratio", "lower"),
    ("routing.dead_share", "routing.candidate.dead_share", "lower"),
    ("routing.kl_max", "routing.candidate.kl_max", "lower"),
)


# Rule metrics not in COMPARED, and where the candidate's value of each sits.
CANDIDATE_RULE_PATHS = {
    "units.dormant_increase": "units.candidate.dormant_increase",
    "routing.dead_increase": "routing.candidate.dead_increase",
}


def comparison(report: dict) -> list[dict]:
    """Before (SFT) / after (candidate) rows for the metrics measured in this run. `metric` is
    the gate path of SFT's value, `candidate_metric` the candidate's."""
    rows = []
    for path, after_path, better in COMPARED:
        before, after = lookup(report, path), lookup(report, after_path)
        if before is None or after is None:
            continue
        verdict = change(before, after, better)
        rows.append({"metric": path, "candidate_metric": after_path,
                     "label": label(*parse_path(path)), "sft": before, "candidate": after,
                     "better": better, "improved": verdict == "better",
                     "change": verdict})  # fmt: skip
    return rows
