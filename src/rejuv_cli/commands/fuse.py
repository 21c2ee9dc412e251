"""`rejuv fuse BASE SFT --out OUT`: base-anchored fusion, streamed shard by shard."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from rejuv_cli import dist
from rejuv_cli.commands.common import (
    JsonFlag,
    OutOption,
    QuietFlag,
    check_calib,
    guarded,
    parse_max_memory,
    print_json,
    progress_bars,
    stderr_console,
)
from rejuv_cli.commands.options import with_settings
from rejuv_cli.errors import UsageError
from rejuv_cli.settings import SETTINGS

HELP = """Rejuvenate an SFT checkpoint: base-anchored fusion θ = θ_base + α·(θ_sft − θ_base),
then a reset of the most rigid units (neurons) to their base values.

BASE and SFT are local directories or Hugging Face Hub ids (org/name[@revision]). Every
floating-point tensor is fused in float32 and rounded once to the output dtype. Then, by
default, 1% of units (rows of q/k/v, columns of o; MLP unit j = gate row j + up row j + down
column j) with the largest relative drift from BASE get θ = ω·θ_base + (1−ω)·θ_fused (ω = 1:
the base bytes). Norms, embeddings and routers are never reset. The output is a Hugging Face
checkpoint (shards, index, SFT's config/tokenizer/chat template, model card, rejuv.json) that
RL frameworks load directly. Memory stays bounded by a few chunk buffers.

Method and defaults, each marked as the paper's or ours: docs/method.md.

Examples:

  rejuv fuse Qwen/Qwen2.5-1.5B ./sft-ckpt --out ./rejuvenated

  rejuv fuse ./base ./sft -o ./out --reset 0            # fusion only

  rejuv fuse ./base ./sft -o ./out --alpha 0.4 --reset 0.02 --modules k,v,mlp

  rejuv fuse ./base ./sft -o ./out --dry-run --save-mask units.safetensors

  rejuv fuse ./base ./sft2 -o ./out2 --mask units.safetensors
"""


FUSE_SETTINGS = ("alpha", "recipe", "dtype", "shard_size", "fraction", "select", "calib",
                 "samples", "max_tokens", "prompt_field", "response_field", "answer_field",
                 "messages_field", "modules", "max_per_module", "protect", "mode", "omega",
                 "noise", "seed", "save_mask", "mask", "device", "max_memory",
                 "config_from")  # fmt: skip


@with_settings("fuse", FUSE_SETTINGS, after="out")
def fuse_command(
    base: Annotated[
        str,
        typer.Argument(
            metavar="BASE", help="Base model: directory or Hub id[@revision].", show_default=False
        ),
    ],
    sft: Annotated[
        str,
        typer.Argument(
            metavar="SFT", help="SFT model: directory or Hub id[@revision].", show_default=False
        ),
    ],
    out: OutOption,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace OUT if it exists.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; write nothing.")
    ] = False,
    json_out: JsonFlag = False,
    quiet: QuietFlag = False,
    **values,
) -> None:
    from rejuv_cli.pipeline import FuseJob, plan_summary, prepare_fuse
    from rejuv_cli.recipe import Recipe, find_recipe, load_recipe
    from rejuv_cli.report.console import render_plan, render_summary, render_warnings
    from rejuv_cli.reset.registry import check_scorer_modules
    from rejuv_cli.settings import command_line

    v = values
    _check_mask_flags(v)
    loaded = load_recipe(find_recipe(v["recipe"])) if v["recipe"] else Recipe(source=None)
    effective = loaded.with_flags(v)
    mask, save_mask = v["mask"], v["save_mask"]
    calib_flags = {k: v[k] for k in ("calib", "samples", "max_tokens", "prompt_field",
                   "response_field", "answer_field", "messages_field", "max_memory")}  # fmt: skip
    _check_calib_flags(calib_flags, effective.reset.select, mask)
    if mask is None and effective.reset.fraction > 0:
        check_scorer_modules(effective.reset.select, effective.reset.modules)
    if _scores_from_data(effective.reset, mask):
        check_calib(effective.reset)
    if save_mask is not None and mask is None and effective.reset.fraction == 0:
        raise UsageError("--save-mask: there is nothing to save with --reset 0")
    words = ["rejuv", "fuse", base, sft, "--out", str(out)]
    job = FuseJob(base, sft, out, effective, v["device"], overwrite, v["alpha"] is not None,
                  command_line(words, v), mask_in=mask, mask_out=save_mask,
                  max_memory=parse_max_memory(v["max_memory"]),
                  config_from=v["config_from"])  # fmt: skip
    ranks = _join_ranks(v["device"], effective.reset, mask)
    quiet = quiet or not ranks.main  # one report, from rank 0
    json_out = json_out and ranks.main
    console = stderr_console(quiet=quiet)
    show_progress = not quiet and sys.stderr.isatty()
    prepared = prepare_fuse(job)
    try:
        if dry_run:
            summary = plan_summary(prepared) | {"dry_run": True}
            if not summary["disk"]["enough"]:
                summary["warnings"] = [_disk_warning(summary["disk"]), *summary["warnings"]]
            if save_mask is not None and prepared.resetting:
                summary["reset"] = _save_mask_only(prepared, console, show_progress)
            if json_out:
                print_json(summary)
            render_warnings(console, summary["warnings"])
            render_plan(console, summary)
            return
        summary = _run_with_progress(prepared, console, show_progress) | {"dry_run": False}
    finally:
        prepared.close()
        if sys.exc_info()[0] is None:  # every rank got here: leave the process group together
            dist.shutdown()
    if not ranks.main:
        return
    if json_out:
        print_json(summary)
    render_warnings(console, summary["warnings"])
    render_summary(console, summary)


def _join_ranks(device: str, settings, mask):
    """Under torchrun, join the process group (one rank per process; on CUDA each rank uses
    the GPU LOCAL_RANK names). The data scorers' forward passes are not split across ranks yet:
    refused there, with the way round."""
    from rejuv_cli.checkpoint.stream import pick_device

    ranks = dist.init_from_env(pick_device(device).type)
    if ranks.active and _scores_from_data(settings, mask):
        raise UsageError(
            f"--select {settings.select} under torchrun: the data scorers' forward passes do not "
            "run split across ranks yet; choose the units in one process first (rejuv fuse ... "
            "--dry-run --save-mask units.safetensors), then run torchrun with --mask "
            "units.safetensors"
        )
    return ranks


def _scores_from_data(settings, mask) -> bool:
    from rejuv_cli.reset.registry import DATA_SCORERS

    return mask is None and settings.fraction > 0 and settings.select in DATA_SCORERS


def _check_calib_flags(flags: dict, select: str, mask) -> None:
    from rejuv_cli.reset.registry import DATA_SCORERS

    given = [SETTINGS[k].flag for k, v in flags.items() if v is not None]
    if given and (mask is not None or select not in DATA_SCORERS):
        why = "--mask skips scoring" if mask is not None else f"the {select} scorer reads no data"
        raise UsageError(f"{', '.join(given)}: {why}; these set the calibration data and "
                         f"forward passes of --select {'|'.join(DATA_SCORERS)}")  # fmt: skip


def _check_mask_flags(v: dict) -> None:
    """--mask fixes the units: the unit-selection flags and --save-mask make no sense with it."""
    if v["mask"] is None:
        return
    clash = [SETTINGS[k].flag for k in ("fraction", "select", "modules", "max_per_module",
             "protect") if v[k] is not None]  # fmt: skip
    if clash:
        raise UsageError(f"--mask fixes which units are reset; drop {', '.join(clash)}")
    if v["save_mask"] is not None:
        raise UsageError("--mask and --save-mask: the mask already exists; copy the file")


def _save_mask_only(prepared, console, show: bool) -> dict:
    """--dry-run --save-mask: score and select, write the mask, write no checkpoint."""
    from rejuv_cli.checkpoint.stream import pick_device
    from rejuv_cli.pipeline import reset_summary, select_reset

    device = pick_device(prepared.job.device)
    with progress_bars(console, show) as progress:
        on_bytes = progress("scoring", prepared.score_bytes)
        mask, _, seconds = select_reset(prepared, device, on_bytes)
    return reset_summary(prepared, mask, seconds)


fuse_command = guarded(fuse_command)


def _disk_warning(disk: dict) -> str:
    from rejuv_cli.report.console import human_bytes

    return (f"the output needs {human_bytes(disk['needed_bytes'])} but the filesystem of "
            f"{disk['filesystem_of']} has {human_bytes(disk['free_bytes'])} free: "
            "the real run would stop before writing")  # fmt: skip


def _run_with_progress(prepared, console, show: bool) -> dict:
    from rejuv_cli.pipeline import run_fuse

    def say(line: str) -> None:
        console.print(f"note: {line}", markup=False, soft_wrap=True)

    with progress_bars(console, show) as progress:
        on_score = progress("scoring", prepared.score_bytes) if prepared.resetting else None
        on_bytes = progress("fusing", prepared.plan.out_bytes)
        return run_fuse(prepared, on_bytes=on_bytes, on_score_bytes=on_score, say=say)
