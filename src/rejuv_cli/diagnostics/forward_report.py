"""The report sections that need forward passes: output, units, routing and sharpness.

Loads the calibration data (tokenized with the SFT model's tokenizer and chat template), then
BASE, SFT and the candidate with transformers, all on the device at once (see output.py).
"""

from __future__ import annotations

from rejuv_cli.calib.fields import Fields
from rejuv_cli.calib.forward import activation_sites, prepare_calibration
from rejuv_cli.calib.models import load_model, offloaded_share, shared_vocab
from rejuv_cli.calib.vocab import unseen_note
from rejuv_cli.diagnostics.output import (
    calibration_pass,
    entropy_edges,
    output_summary,
    skill_retained,
    units_summary,
)
from rejuv_cli.diagnostics.routing import routing_section
from rejuv_cli.diagnostics.sharpness import SEED, sharpness
from rejuv_cli.dist import share_label

ACTIVITY_MODULES = ("o", "mlp", "expert", "shared_expert")  # units with an input-side site


def forward_sections(job, report, dirs, layout, device, progress, warnings) -> None:
    """Fill report["output"], ["units"], ["routing"], ["sharpness"] and the calibration
    inputs. dirs: role -> the directory transformers loads that model from."""
    calib = prepare_calibration(job.calib, job.samples, job.max_tokens, dirs["sft"],
                                device, job.batch_tokens, Fields.of(job))  # fmt: skip
    warnings.extend(calib.warnings)
    batches = calib.mine()  # all of them, or this torchrun rank's share (then reduced)
    report["inputs"] |= {
        "samples": calib.samples,
        "response_tokens": calib.response_tokens,
        "batches": len(calib.batches),
        "batch_tokens": calib.batch_tokens,
        "dtype": "bfloat16" if device.type == "cuda" else "float32",
        "unk_share": calib.unk_share,
    }
    nulls = report["null_reasons"]  # why a value is null, where the schema cannot tell

    loaded = progress("loading", len(dirs), "models")
    models = {}
    # KL needs every model's distribution on the same batch, so all are loaded at once and
    # share the --max-memory budget.
    budget = None if job.max_memory is None else job.max_memory // len(dirs)
    for role, path in dirs.items():
        models[role] = load_model(path, role.upper(), device, budget, warnings)
        loaded(1)
    vocab, note = shared_vocab(models)
    if note:
        warnings.append(note)
    sites = []
    if layout is not None:
        sites = [s for s in activation_sites(layout) if s.module in ACTIVITY_MODULES]
    n_models = len(models)
    step = progress(share_label("forward"), len(batches) * n_models, "model × batch passes")
    records = calibration_pass(
        models, batches, sites, device, on_batch=lambda: step(n_models), vocab_limit=vocab
    )
    warnings.extend(n for role, m in models.items() if (n := unseen_note(role.upper(), m)))
    edges = entropy_edges(records)
    output = output_summary(records["sft"], records["base"], edges)
    output["base"] = output_summary(records["base"], None, edges)
    units = units_summary(records["sft"], sites) if sites else None
    if units is not None:
        units["base"] = units_summary(records["base"], sites)
        units["dormant_increase"] = units["dormant"]["0.025"] - units["base"]["dormant"]["0.025"]
    if "candidate" in records:
        output["candidate"] = output_summary(records["candidate"], records["base"], edges)
        if units is not None:
            cand = units["candidate"] = units_summary(records["candidate"], sites)
            cand["dormant_increase"] = cand["dormant"]["0.025"] - units["base"]["dormant"]["0.025"]
    _skill(output, nulls)
    if job.generate:
        from rejuv_cli.diagnostics.generation import generation_sections

        generation_sections(job, models, dirs["sft"], device, output, report, progress)
    report["output"], report["units"] = output, units
    if units is None:
        nulls["units"] = ("not measured: no unit map for this architecture (see warnings)"
                          if layout is None else "not measured: no attention-output or MLP "
                          "units in the unit map")  # fmt: skip
    report["routing"], why = routing_section(records, models["sft"].config, warnings)
    if why is not None:
        nulls["routing"] = why

    offloaded = [role.upper() for role, model in models.items() if offloaded_share(model) > 0]
    if job.sharpness_draws > 0 and offloaded:
        why = (f"sharpness not measured: {', '.join(offloaded)} offloaded (it perturbs "
               "weights in place, which needs them resident)")  # fmt: skip
        warnings.append(why)
        nulls["sharpness"] = why
    elif job.sharpness_draws == 0:
        nulls["sharpness"] = "not measured: --sharpness-draws 0"
    else:
        draws = job.sharpness_draws  # each direction is probed as +u and −u: two passes
        step = progress(share_label("sharpness"), 2 * draws * len(batches) * len(models),
                        "model × batch passes")  # fmt: skip
        sharp = {}
        for role, model in models.items():
            loss = output["nll_mean"] if role == "sft" else output[role]["nll_mean"]
            sharp[role] = sharpness(model, batches, device, loss=loss, draws=draws,
                                    sigma_rel=job.sharpness_sigma, vocab_limit=vocab,
                                    on_batch=lambda: step(1))  # fmt: skip
        report["sharpness"] = sharpness_section(sharp, job, nulls)


def _skill(output: dict, nulls: dict) -> None:
    """Skill retained by BASE (0), SFT (1) and the candidate, from their response NLLs; a null
    records why under its gate path."""
    base, sft = output["base"]["nll_mean"], output["nll_mean"]
    blocks = {"output.base": output["base"], "output": output}
    if "candidate" in output:
        blocks["output.candidate"] = output["candidate"]
    for path, block in blocks.items():
        block["skill_retained"], why = skill_retained(base, sft, block["nll_mean"])
        if why is not None:
            nulls[f"{path}.skill_retained"] = why


def sharpness_section(sharp: dict, job, nulls: dict) -> dict:
    """The report's sharpness block; a ratio it cannot form is null, and `nulls` says why."""
    base = sharp["base"]["value"]

    def ratio(role):
        if role not in sharp:
            return None
        if base <= 0:
            key = "sharpness.ratio" if role == "sft" else "sharpness.candidate_ratio"
            nulls[key] = (
                f"BASE's sharpness is {base:.3g} (≤ 0: on average the calibration loss did not "
                f"rise under the weight noise, σ_rel {job.sharpness_sigma}, "
                f"{job.sharpness_draws} draw(s) of ±u), so a ratio to it is undefined; gate on "
                f"sharpness.{role} instead, or raise --sharpness-draws or --sharpness-sigma"
            )
            return None
        return sharp[role]["value"] / base

    return {
        "sft": sharp["sft"]["value"],
        "base": base,
        "ratio": ratio("sft"),
        "candidate": sharp["candidate"]["value"] if "candidate" in sharp else None,
        "candidate_ratio": ratio("candidate"),
        "sigma_rel": job.sharpness_sigma,
        "draws": job.sharpness_draws,
        "seed": SEED,
        "per_model": sharp,
    }
