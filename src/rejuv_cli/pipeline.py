"""`rejuv fuse` end to end: resolve -> open -> plan -> execute -> finalize.

The API (api/fuse.py) calls `prepare_fuse` and `run_fuse`; this module does no rendering. The
job and the prepared fuse are declared in fuse_job.py, the summaries a run reports and rejuv.json
built in fuse_summary.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rejuv_cli import dist
from rejuv_cli.arch.layout import UnitLayout
from rejuv_cli.checkpoint.formats import open_source
from rejuv_cli.checkpoint.resolve import resolve_model
from rejuv_cli.checkpoint.source import ModelSource
from rejuv_cli.errors import ArchError, CheckpointError
from rejuv_cli.fuse_job import FuseJob, Prepared
from rejuv_cli.plan import FusePlan, build_plan
from rejuv_cli.reset.layout import unit_layout

__all__ = ["FuseJob", "Prepared", "choose_reset", "fuse_paths", "prepare_fuse", "run_fuse",
           "select_reset"]  # fmt: skip


def prepare_fuse(job: FuseJob) -> Prepared:
    """Resolve and open both checkpoints and plan every tensor; reads headers only."""
    from rejuv_cli.checkpoint.preflight import check_outputs

    t0 = time.perf_counter()
    inputs, outputs = fuse_paths(job)
    check_outputs(inputs, outputs, job.overwrite)  # before a Hub download, too
    base_model = resolve_model(job.base, "BASE")
    sft_model = resolve_model(job.sft, "SFT")
    resolved = {"BASE": base_model.path, "SFT": sft_model.path}
    check_outputs(inputs | resolved, outputs, job.overwrite)  # Hub ids are now snapshot dirs
    base = open_source(base_model.path, "BASE", config_from=job.config_from)
    sft = open_source(sft_model.path, "SFT", base=base, config_from=job.config_from)
    if sft.meta_root is None or not (sft.meta_root / "config.json").is_file():
        raise CheckpointError(
            f"SFT {sft.root} has no config.json; the output needs it to load in transformers. "
            "Pass --config-from DIR, a directory with the model's config.json and tokenizer"
        )
    plan = build_plan(base, sft, job.recipe, alpha_flag=job.alpha_from_flag)
    layout = _reset_layout(job, sft, plan)
    return Prepared(job, base_model, sft_model, base, sft, plan, time.perf_counter() - t0, layout)


def fuse_paths(job: FuseJob) -> tuple[dict, list]:
    """What `rejuv fuse` reads (label -> path) and writes, for `check_outputs`."""
    from rejuv_cli.checkpoint.preflight import Output

    calib = job.recipe.reset.calib
    calib_file = None if calib is None or calib.startswith("builtin:") else calib
    inputs = {"BASE": job.base, "SFT": job.sft, "--mask": job.mask_in,
              "--recipe": job.recipe.source, "--calib": calib_file}  # fmt: skip
    outputs = [Output("--out", job.out, directory=True)] if job.out is not None else []
    if job.mask_out is not None:
        outputs.append(Output("--save-mask", job.mask_out))
    return inputs, outputs


def _reset_layout(job: FuseJob, sft: ModelSource, plan: FusePlan) -> UnitLayout | None:
    """The units to reset, or None for fusion only. A model without a unit map is an error
    when the reset was asked for (flag, recipe, mask) and a warning under the default."""
    from rejuv_cli.reset.masks import mask_modules
    from rejuv_cli.reset.registry import check_scorer_modules

    settings = job.recipe.reset
    if job.mask_in is None and settings.fraction == 0:
        return None
    if job.mask_in is None:
        check_scorer_modules(settings.select, settings.modules)
    asked = settings.explicit or job.mask_in is not None
    try:
        # a mask's own modules where it holds opt-in ones (whole experts), else the defaults
        modules = mask_modules(job.mask_in) if job.mask_in else settings.modules
        layout = unit_layout(sft, plan, modules)
    except ArchError as e:
        if asked:
            raise
        plan.warnings.append(f"reset skipped, fusion only: {e}")
        return None
    plan.warnings.extend(layout.warnings)
    if not layout.instances:
        raise ArchError(
            f"no resettable units in SFT for modules {', '.join(settings.modules or ['all'])}; "
            "choose others with --modules, or use --reset 0"
        )
    if job.mask_in is None:
        plan.warnings.extend(_capped_out(layout, settings.max_per_module))
    return layout


def _capped_out(layout: UnitLayout, cap: float) -> list[str]:
    """Warnings for the chosen modules of which --max-per-module lets no unit be reset:
    floor(cap · n) = 0 in every instance (whole experts, 8 per layer, under the default 0.1).
    A UsageError when that is every chosen module: nothing could be reset."""
    import math

    from rejuv_cli.errors import UsageError
    from rejuv_cli.ops.reset import module_cap

    largest: dict[str, int] = {}
    for inst in layout.instances:
        largest[inst.module.name] = max(largest.get(inst.module.name, 0), inst.n_units)
    lines = []
    for m, n in largest.items():
        if module_cap(cap, n) == 0:
            whole = m == "whole_expert"
            lines.append(
                f"--max-per-module {cap:g} lets no {m} unit be reset: at most floor({cap:g} × "
                f"{n}) = 0 of the {n} {'experts of a layer' if whole else 'units of an instance'}"
                f"; use {math.ceil(1e4 / n) / 1e4:g} or more for one"
            )
    if lines and len(lines) == len(largest):
        raise UsageError("; ".join(lines))
    return lines


def select_reset(p: Prepared, device, on_bytes: Callable[[int], None] | None = None):
    """Score and select units (or load --mask); saves --save-mask. Returns (mask, moments, s).

    `moments`: per-tensor BASE mean and std, which the noise-drawing reset modes need.
    """
    from rejuv_cli.reset.masks import load_mask, save_mask
    from rejuv_cli.reset.norms import stream_norms
    from rejuv_cli.reset.registry import SCORERS
    from rejuv_cli.reset.select import select_mask
    from rejuv_cli.reset.tensors import selected_tensors

    t0 = time.perf_counter()
    settings, layout = p.job.recipe.reset, p.layout
    if p.job.mask_in is not None:
        mask = load_mask(p.job.mask_in, layout)
    else:
        scores = SCORERS[settings.select](layout, p.base, p.sft, device, on_bytes, settings,
                                          p.job.max_memory)  # fmt: skip
        inputs = {"base": p.job.base, "sft": p.job.sft}
        inputs |= {f"{k}_commit": m.commit for k, m in
                   (("base", p.base_model), ("sft", p.sft_model)) if m.commit}  # fmt: skip
        if settings.select != "drift":
            from rejuv_cli.calib.fields import Fields
            from rejuv_cli.reset.registry import CALIB_PARAMS

            inputs |= {"calib": settings.calib, "samples": str(settings.samples),
                       "max_tokens": str(settings.max_tokens)}  # fmt: skip
            # the data's field names, where they are not the format's own
            inputs |= {k: v for k, v in Fields.of(settings).params().items()
                       if v != CALIB_PARAMS[k]}  # fmt: skip
        # Every rank holds the same reduced scores; rank 0's selection is still broadcast, so
        # that no last-bit difference between ranks' arithmetic can make their masks differ.
        mask = dist.broadcast(select_mask(layout, scores, settings, inputs))
        mask.info = {k: v for k, v in scores.info.items() if k != "warnings"}
        p.plan.warnings.extend(scores.info.get("warnings", []))
    if p.job.mask_out is not None and dist.current().main:
        save_mask(mask, p.job.mask_out)
    moments = None
    if settings.mode != "base":  # noise is scaled by each tensor's spread: one BASE pass
        touched = {name: {0} for name in selected_tensors(layout, mask)}
        moments = stream_norms(p.base, None, touched, device)
    return mask, moments, time.perf_counter() - t0


@dataclass
class ResetChoice:
    """The units a fuse resets and the per-tensor slices and values that does (independent of
    α, so `rejuv sweep` chooses them once for every α)."""

    mask: object  # reset.select.ResetMask
    resets: dict  # tensor name -> reset.tensors.TensorReset
    seconds: float


def choose_reset(p: Prepared, device, on_bytes: Callable[[int], None] | None = None) -> ResetChoice:
    """`select_reset`, then the tensor slices each chosen unit covers (and the noise values of
    the modes that draw some)."""
    from rejuv_cli.reset.tensors import tensor_resets

    mask, norms, seconds = select_reset(p, device, on_bytes)
    shapes = {n: t.shape for n, t in p.sft.tensors.items()}
    return ResetChoice(mask, tensor_resets(p.layout, mask, p.job.recipe.reset, shapes, norms),
                       seconds)  # fmt: skip


def run_fuse(
    p: Prepared,
    on_bytes: Callable[[int], None] | None = None,
    on_score_bytes: Callable[[int], None] | None = None,
    say: Callable[[str], None] | None = None,
    chosen: ResetChoice | None = None,
    extra: dict | None = None,
) -> dict:
    """Write the fused checkpoint atomically at job.out; returns the run summary.

    `say` receives one-line notes (leftovers of killed runs that were cleaned up). `chosen`:
    units already selected for this plan (`choose_reset`), so none are scored here. `extra`:
    sections added to rejuv.json and the model card (rejuv sweep's table).
    """
    from rejuv_cli.checkpoint.card import write_card_and_provenance
    from rejuv_cli.checkpoint.disk import check_free_space
    from rejuv_cli.checkpoint.files import copy_side_dirs, write_config
    from rejuv_cli.checkpoint.output import note_to_stderr, output_dir
    from rejuv_cli.checkpoint.stream import pick_device
    from rejuv_cli.checkpoint.writer import write_index
    from rejuv_cli.executor import checkpoint_digest, write_shards
    from rejuv_cli.fuse_summary import output_bytes_needed, plan_summary, provenance, reset_summary

    check_free_space(p.job.out, output_bytes_needed(p))  # before a long scoring pass
    device = pick_device(p.job.device)
    t0 = time.perf_counter()
    if p.resetting and chosen is None:
        chosen = choose_reset(p, device, on_score_bytes)
    resets, mask, reset_seconds = (chosen.resets, chosen.mask, chosen.seconds) if chosen else \
        (None, None, None)  # fmt: skip
    if not dist.current().main:  # another torchrun rank: its shards, into rank 0's directory
        tmp = Path(dist.broadcast(None))
        write_shards(p.plan, p.base, p.sft, device, tmp, on_bytes, resets, p.job.recipe.reset)
        return {}
    with output_dir(p.job.out, p.job.overwrite, say or note_to_stderr) as tmp:
        dist.broadcast(str(tmp))  # the shared temporary directory every rank writes into
        stats, writers = write_shards(p.plan, p.base, p.sft, device, tmp, on_bytes, resets,
                                      p.job.recipe.reset)  # fmt: skip
        write_index(tmp, p.plan.shards)
        dtypes = set(p.plan.out_dtypes())
        explicit = p.job.recipe.dtype != "auto" and len(dtypes) == 1
        write_config(p.sft, tmp, dtypes.pop() if explicit else None, p.plan.quantization_config)
        side_files = copy_side_dirs(p.sft.side_dirs(), tmp)
        summary = plan_summary(p)
        summary["reset"] = reset_summary(p, mask, reset_seconds)
        summary["counts"]["reset"] = len(resets or {})
        summary["base"]["tensor_digest"] = checkpoint_digest(stats.digests["base"], p.base)
        summary["sft"]["tensor_digest"] = checkpoint_digest(stats.digests["sft"], p.sft)
        total = time.perf_counter() - t0 + p.plan_seconds
        summary["seconds"] = {
            "plan": round(p.plan_seconds, 3),
            "score": round(reset_seconds or 0.0, 3),
            "write": round(stats.seconds, 3),
            "total": round(total, 3),
        }
        summary["throughput_mb_s"] = round(stats.bytes_written / 1e6 / max(stats.seconds, 1e-9), 1)
        summary["device"] = str(device)
        summary["side_files"] = side_files
        if dist.current().active:  # torchrun: who wrote what (single-process runs: absent)
            summary["ranks"] = {"world_size": dist.current().world, "shards": writers}
        write_card_and_provenance(tmp, provenance(p, summary) | (extra or {}))
    return summary
