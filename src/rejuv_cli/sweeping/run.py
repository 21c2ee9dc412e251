"""`rejuv sweep` end to end: choose the reset once, then measure BASE, SFT and one candidate per α.

Order of work, one model in memory at a time:
1. Plan and choose the reset units (the scorers do not depend on α), as `rejuv fuse` does.
2. BASE: forward passes over the calibration data; its response logits go to a temporary
   cache (`LogitCache`) so every later model's KL to BASE needs no second BASE model.
3. SFT: the same passes, KL against the cache. The loaded SFT model then becomes the working
   model: for each α the fuse executor's output values (the bytes `rejuv fuse --alpha α` would
   write) are copied into it in place, and the passes repeat.
   When that is not possible (weights offloaded under --max-memory, or tensor names that
   transformers converts on load), each α is written to a temporary checkpoint by the same
   executor and loaded from there instead: slower, the same weights.
4. The rows, the recommendation (`recommend.py`) and, with --out, the recommended candidate
   written by the normal fuse path.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from rejuv_cli import __version__
from rejuv_cli.checkpoint.staging import loadable_dir
from rejuv_cli.diagnostics.output import accuracy_retained
from rejuv_cli.dist import share_label
from rejuv_cli.pipeline import Prepared, ResetChoice, choose_reset, prepare_fuse
from rejuv_cli.report.json_schemas import VERSIONS
from rejuv_cli.sweeping.job import SweepJob, fuse_command, fuse_job
from rejuv_cli.sweeping.recommend import recommend
from rejuv_cli.sweeping.weights import WorkingModel

SCHEMA_VERSION = VERSIONS["sweep"]  # its JSON Schema: rejuv schema sweep
Progress = Callable[[str, int, str], Callable[[int], None]]

# The measures of one row, in table order (JSON keys; labels in report/columns.py).
OUTPUT_KEYS = ("entropy_mean", "entropy_ratio", "kl_mean", "nll_mean", "skill_retained",
               "p_max_mean", "confident_share")  # fmt: skip
GENERATION_KEYS = ("accuracy", "accuracy_retained", "pass_at_1", "pass_at_k", "learnable_share",
                   "all_wrong_share", "all_right_share", "no_answer")  # fmt: skip


def _no_progress(label: str, total: int, unit: str):
    return lambda n: None


def run_sweep(job: SweepJob, progress: Progress = _no_progress) -> dict:
    """Measure every row, recommend an α, write --out; returns the report dict."""
    from rejuv_cli.checkpoint.stream import pick_device

    t0 = time.perf_counter()
    device = pick_device(job.device)
    warnings: list[str] = []
    prepared = prepare_fuse(fuse_job(job, job.alphas[0], None))
    try:
        from rejuv_cli.checkpoint.preflight import check_outputs

        check_outputs({"BASE": prepared.base_model.path, "SFT": prepared.sft_model.path},
                      job.outputs)  # fmt: skip
        chosen = None
        if prepared.resetting:
            scoring = progress(share_label("scoring"), prepared.score_bytes, "bytes")
            chosen = choose_reset(prepared, device, scoring)  # adds the scorer's warnings
        warnings.extend(prepared.plan.warnings)
        measured = _measure(job, prepared, chosen, device, progress, warnings)
    finally:
        prepared.close()
    rows, base_row, sft_row = measured["rows"], measured["base"], measured["sft"]
    rec = recommend(rows, sft_row, job.min_skill, measured["inputs"]["checkable"] or 0)
    report = {
        "schema_version": SCHEMA_VERSION,
        "tool": f"rejuv {__version__}",
        "command": job.command,
        "inputs": measured["inputs"],
        "settings": {
            "alphas": list(job.alphas),
            "recipe": job.recipe.to_json(),
            "recipe_source": job.recipe.source,
            "min_skill": job.min_skill,
            "generate": job.generate,
            "group_size": job.group_size if job.generate else None,
            "max_new_tokens": job.max_new_tokens if job.generate else None,
            "checker": job.checker if job.generate else None,
        },
        "reset": _reset_json(prepared, chosen),
        "base": base_row,
        "sft": sft_row,
        "rows": rows,
        "recommendation": rec.to_json(job.min_skill)
        | {"fuse_command": None if rec.alpha is None else fuse_command(job, rec.alpha, job.out)},
        "out": None,
        "warnings": warnings,
        "weights_in_memory": measured["in_memory"],
    }
    if job.out is not None and rec.alpha is not None:
        report["out"] = _write_recommended(job, rec.alpha, chosen, report, progress)
    elif job.out is not None:
        warnings.append(f"--out {job.out}: nothing written, the recommendation is no surgery")
    report["seconds"] = round(time.perf_counter() - t0, 3)
    return report


def _reset_json(p: Prepared, chosen: ResetChoice | None) -> dict | None:
    from rejuv_cli.fuse_summary import reset_summary

    return reset_summary(p, chosen.mask if chosen else None, chosen.seconds if chosen else None)


def _measure(job: SweepJob, p: Prepared, chosen, device, progress, warnings) -> dict:
    """Rows for BASE, SFT and each α (see the module docstring for the order of work)."""
    from rejuv_cli.calib.fields import Fields
    from rejuv_cli.calib.forward import prepare_calibration
    from rejuv_cli.calib.models import config_vocab, load_model, offloaded_share, shared_vocab_of
    from rejuv_cli.diagnostics.output import LogitCache, cached_pass

    calib = prepare_calibration(job.calib, job.samples, job.max_tokens, loadable_dir(p.sft),
                                device, job.batch_tokens, Fields.of(job.recipe.reset))  # fmt: skip
    warnings.extend(calib.warnings)
    vocab, note = shared_vocab_of({"BASE": config_vocab(loadable_dir(p.base), "BASE"),
                                   "SFT": config_vocab(loadable_dir(p.sft), "SFT")})  # fmt: skip
    if note:
        warnings.append(note)
    batches = calib.mine()  # all of them, or this torchrun rank's share (then gathered)
    n_batches = len(batches)
    _check_cache_space(calib.response_tokens, vocab, device)
    generation = _Generation(job, p, device) if job.generate else None
    cache = LogitCache()
    records: dict = {}
    try:
        step = progress(share_label("BASE"), n_batches, "batches")
        model = load_model(loadable_dir(p.base), "BASE", device, job.max_memory, warnings)
        records["base"] = cached_pass(model, batches, device, cache, True, partial(step, 1), vocab)
        gen = {"base": generation.measure(model, "BASE", progress)} if generation else {}
        del model
        step = progress(share_label("SFT"), n_batches, "batches")
        model = load_model(loadable_dir(p.sft), "SFT", device, job.max_memory, warnings)
        records["sft"] = cached_pass(model, batches, device, cache, False, partial(step, 1), vocab)
        if generation:
            gen["sft"] = generation.measure(model, "SFT", progress)
        working = WorkingModel(job, p, chosen, device, model, warnings)
        alpha_rows = []
        for alpha in job.alphas:
            label = f"α={alpha:g}"
            t_alpha = time.perf_counter()
            model = None  # a candidate loaded from disk frees the previous one first
            model = working.at(alpha, progress(f"{label} weights", p.plan.out_bytes, "bytes"))
            step = progress(share_label(label), n_batches, "batches")
            rec = cached_pass(model, batches, device, cache, False, partial(step, 1), vocab)
            row = {"alpha": alpha} | _output_row(rec, records)
            if generation:
                row |= generation.measure(model, label, progress)
            row["seconds"] = round(time.perf_counter() - t_alpha, 3)
            alpha_rows.append(row)
        in_memory = working.in_memory
        offloaded = offloaded_share(model) > 0
        working.close()
        del model
    finally:
        cache.close()
    base_row = {"alpha": None} | _output_row(records["base"], records) | gen.get("base", {})
    base_row |= {"entropy_ratio": 1.0, "kl_mean": 0.0}  # BASE against itself
    sft_row = {"alpha": None} | _output_row(records["sft"], records) | gen.get("sft", {})
    checked = generation.checkable if generation else 0
    for row in (base_row, sft_row, *alpha_rows):
        _skill(row, base_row, sft_row, checked)
    inputs = {
        "base": job.base,
        "sft": job.sft,
        "models": {
            "base": p.base_model.to_json() | p.base.input_json(structured=False),
            "sft": p.sft_model.to_json() | p.sft.input_json(structured=False),
        },
        "calib": job.calib,
        "samples": calib.samples,
        "response_tokens": calib.response_tokens,
        "max_tokens": job.max_tokens,
        "batches": len(calib.batches),
        "batch_tokens": calib.batch_tokens,
        "device": str(device),
        "dtype": "bfloat16" if device.type == "cuda" else "float32",
        "max_memory": job.max_memory,
        "offloaded": offloaded,
        "checkable": generation.checkable if generation else None,
    }
    return {"rows": alpha_rows, "base": base_row, "sft": sft_row, "inputs": inputs,
            "in_memory": in_memory}  # fmt: skip


def _check_cache_space(tokens: int, vocab: int, device) -> None:
    """Refuse before any model is loaded when the temporary directory cannot hold BASE's
    response logits (tokens × vocabulary, 4 bytes on CPU, 2 on CUDA)."""
    from rejuv_cli.checkpoint.disk import check_free_space

    needed = tokens * vocab * (2 if device.type == "cuda" else 4) + (1 << 20)
    check_free_space(Path(tempfile.gettempdir()), needed,
                     "BASE's logit cache in the temporary directory (TMPDIR)")  # fmt: skip


def _output_row(rec, records: dict) -> dict:
    """The token statistics of one model (diagnose's `output_summary`, without the histogram)."""
    from rejuv_cli.diagnostics.output import entropy_edges, output_summary

    base = None if rec is records["base"] else records["base"]
    summary = output_summary(rec, base, entropy_edges({"m": rec}))
    return {k: summary.get(k) for k in OUTPUT_KEYS if k != "skill_retained"} | {
        "tokens": summary["tokens"]}  # fmt: skip


def _skill(row: dict, base: dict, sft: dict, checked: int = 0) -> None:
    """skill_retained from the NLLs, accuracy_retained from the greedy accuracies."""
    from rejuv_cli.diagnostics.output import skill_retained

    row["skill_retained"], _ = skill_retained(base["nll_mean"], sft["nll_mean"], row["nll_mean"])
    if "accuracy" in row:
        row["accuracy_retained"] = accuracy_retained(base.get("accuracy"), sft.get("accuracy"),
                                                     row["accuracy"], checked)  # fmt: skip


class _Generation:
    """--generate: greedy accuracy and sampled RL-readiness of each model on the checkable
    examples (calib/generate.py)."""

    def __init__(self, job: SweepJob, p: Prepared, device):
        from rejuv_cli.calib.data import load_examples
        from rejuv_cli.calib.fields import Fields
        from rejuv_cli.calib.models import load_tokenizer

        self.job, self.device = job, device
        examples = load_examples(job.calib, job.samples, Fields.of(job.recipe.reset))
        self.examples = [e for e in examples if e.answer is not None]
        self.checkable = len(self.examples)
        self.tokenizer = load_tokenizer(loadable_dir(p.sft), "SFT")

    def measure(self, model, label: str, progress) -> dict:
        from rejuv_cli.calib.generate import generation_cost, generation_metrics

        job = self.job
        cost = generation_cost(self.checkable, job.group_size, job.max_new_tokens)
        step = progress(f"{label} generate", cost["sequences"], "sequences")
        m = generation_metrics(model, self.tokenizer, self.examples, self.device,
                               group_size=job.group_size, max_new_tokens=job.max_new_tokens,
                               checker=job.checker, on_step=step)  # fmt: skip
        return {key: m.get(key) for key in GENERATION_KEYS if key != "accuracy_retained"} | {
            "truncated": m["truncated"]}  # fmt: skip


def _write_recommended(job: SweepJob, alpha: float, chosen, report: dict, progress) -> dict:
    """--out: the recommended candidate through the normal `rejuv fuse` path (same bytes as
    `rejuv fuse --alpha <α>` with the same flags), the sweep table in its card and rejuv.json."""
    from rejuv_cli.pipeline import run_fuse

    prepared = prepare_fuse(fuse_job(job, alpha, job.out))
    try:
        table = {k: report[k] for k in ("settings", "base", "sft", "rows", "recommendation")}
        summary = run_fuse(prepared, on_bytes=progress("writing --out", prepared.plan.out_bytes,
                                                       "bytes"),
                           chosen=chosen, extra={"sweep": table})  # fmt: skip
    finally:
        prepared.close()
    if not summary:  # another torchrun rank wrote its shards; rank 0 reports the checkpoint
        return None
    return {"path": str(job.out), "alpha": alpha, "command": fuse_command(job, alpha, job.out),
            "shards": len(summary["shards"]), "bytes": summary["out_bytes"]}  # fmt: skip
