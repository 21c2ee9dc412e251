"""`rejuv fuse BASE SFT --out OUT`: base-anchored fusion, streamed shard by shard."""

from __future__ import annotations

import re
import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from rejuv_cli.commands.common import (
    DeviceOption,
    JsonFlag,
    MaxMemoryOption,
    OutOption,
    QuietFlag,
    check_calib,
    guarded,
    parse_max_memory,
    print_json,
    progress_bars,
    stderr_console,
)
from rejuv_cli.errors import UsageError


class DType(str, Enum):
    auto = "auto"
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"


class ResetMode(str, Enum):
    base = "base"
    shrink_perturb = "shrink-perturb"
    reinit = "reinit"


def _opt(*names: str, help: str, **kw):
    """A typer.Option in the "Reset" group whose default is shown in the help text itself
    (a recipe may supply the value, so the flag's own default is None)."""
    return typer.Option(*names, help=help, show_default=False, rich_help_panel="Reset", **kw)


HELP = """Rejuvenate an SFT checkpoint: base-anchored fusion θ = θ_base + α·(θ_sft − θ_base),
then a reset of the most rigid units (neurons) to their base values.

BASE and SFT are local directories or Hugging Face Hub ids (org/name[@revision]). Every
floating-point tensor is fused in float32 and rounded once to the output dtype. Then, by
default, 1% of units (rows of q/k/v, columns of o; MLP unit j = gate row j + up row j + down
column j) with the largest relative drift from BASE get θ = ω·θ_base + (1−ω)·θ_fused (ω = 1:
the base bytes). Norms, embeddings and routers are never reset. The output is a Hugging Face
checkpoint (shards, index, SFT's config/tokenizer/chat template, model card, rejuv.json) that
RL frameworks load directly. Memory stays bounded by a few chunk buffers.

Examples:

  rejuv fuse Qwen/Qwen2.5-1.5B ./sft-ckpt --out ./rejuvenated

  rejuv fuse ./base ./sft -o ./out --reset 0            # fusion only

  rejuv fuse ./base ./sft -o ./out --alpha 0.4 --reset 0.02 --modules k,v,mlp

  rejuv fuse ./base ./sft -o ./out --dry-run --save-mask units.safetensors

  rejuv fuse ./base ./sft2 -o ./out2 --mask units.safetensors
"""


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
    alpha: Annotated[
        float | None,
        typer.Option(
            "--alpha",
            "-a",
            min=0.0,
            max=1.0,
            help="Fusion coefficient: 0 = base, 1 = SFT [default: recipe's, else 0.5 (paper)].",
            show_default=False,
        ),
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option(
            "--recipe", "-r", help="Recipe file, or a bundled recipe name (see `rejuv recipes`)."
        ),
    ] = None,
    dtype: Annotated[
        DType | None,
        typer.Option(
            "--dtype",
            case_sensitive=False,
            help="Output dtype; auto keeps each SFT tensor's own [default: auto].",
            show_default=False,
        ),
    ] = None,
    shard_size: Annotated[
        str | None,
        typer.Option(
            "--shard-size",
            help="Largest output shard file, e.g. 5GB, 500MB [default: 5GB].",
            show_default=False,
        ),
    ] = None,
    reset: Annotated[
        float | None,
        _opt(
            "--reset",
            min=0.0,
            max=0.5,
            help="Share of units reset after fusion; 0 = fusion only [default: 0.01 (paper)].",
        ),
    ] = None,
    select: Annotated[
        str | None,
        _opt(
            "--select",
            help="How units are scored: drift (weights only), or from SFT's activations on "
            "--calib data: dormant (lowest ReDo score), saturated (always-on), attribution "
            "(the paper's; base + SFT forwards) [default: drift].",
        ),
    ] = None,
    calib: Annotated[
        str | None,
        _opt(
            "--calib",
            help="Data scorers: builtin:math, builtin:tool_use or a JSONL file "
            "[default: builtin:math].",
        ),
    ] = None,
    samples: Annotated[
        int | None,
        _opt("--samples", min=1, help="Data scorers: calibration examples [default: 128]."),
    ] = None,
    max_tokens: Annotated[
        int | None,
        _opt("--max-tokens", min=8, help="Data scorers: tokens per example [default: 1024]."),
    ] = None,
    modules: Annotated[
        str | None,
        _opt(
            "--modules",
            help="Comma list of q,k,v,o,mlp (gate/up/down name the MLP unit, "
            "which is reset whole; experts count as mlp) [default: all].",
        ),
    ] = None,
    max_per_module: Annotated[
        float | None,
        _opt(
            "--max-per-module",
            min=0.0,
            max=1.0,
            help="At most this share of any one module (one layer's k, one expert...) "
            "[default: 0.1].",
        ),
    ] = None,
    protect: Annotated[
        float | None,
        _opt(
            "--protect",
            min=0.0,
            max=0.5,
            help="Per module, this share of units with the largest base norm is never reset "
            "(super weights) [default: 0.005].",
        ),
    ] = None,
    reset_mode: Annotated[
        ResetMode | None,
        _opt(
            "--reset-mode",
            case_sensitive=False,
            help="base: ω·base + (1−ω)·fused; shrink-perturb: that plus seeded noise; reinit: "
            "incoming weights redrawn, outgoing zeroed (ReDo) [default: base].",
        ),
    ] = None,
    omega: Annotated[
        float | None,
        _opt(
            "--omega",
            min=0.0,
            max=1.0,
            help="Pull of reset units toward BASE; 1 writes the base bytes [default: 1.0].",
        ),
    ] = None,
    noise: Annotated[
        float | None,
        _opt(
            "--noise",
            min=0.0,
            max=10.0,
            help="shrink-perturb noise std, relative to each tensor's std [default: 0.01].",
        ),
    ] = None,
    seed: Annotated[
        int | None, _opt("--seed", min=0, help="Seed of the reset modes' noise [default: 0].")
    ] = None,
    save_mask: Annotated[
        Path | None,
        _opt(
            "--save-mask",
            dir_okay=False,
            help="Write the chosen units to FILE (safetensors); with --dry-run, only that.",
        ),
    ] = None,
    mask: Annotated[
        Path | None,
        _opt(
            "--mask",
            dir_okay=False,
            help="Reset the units in FILE (from --save-mask); skips scoring.",
        ),
    ] = None,
    device: DeviceOption = "auto",
    max_memory: MaxMemoryOption = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace OUT if it exists.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; write nothing.")
    ] = False,
    json_out: JsonFlag = False,
    quiet: QuietFlag = False,
) -> None:
    from rejuv_cli.checkpoint.writer import parse_size
    from rejuv_cli.pipeline import FuseJob, plan_summary, prepare_fuse
    from rejuv_cli.recipe import Recipe, find_recipe, load_recipe
    from rejuv_cli.report.console import render_plan, render_summary, render_warnings

    if shard_size is not None:
        try:
            parse_size(shard_size)
        except ValueError as e:
            raise UsageError(f"--shard-size: {e}") from None
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise UsageError(f"--device {device!r}: use auto, cpu, cuda or cuda:N")
    reset_flags = _reset_flags(reset, select, modules, max_per_module, protect, mask, save_mask)
    calib_flags = {"calib": calib, "samples": samples, "max_tokens": max_tokens}
    memory = parse_max_memory(max_memory)
    dtype = dtype.value if dtype is not None else None
    mode = reset_mode.value if reset_mode is not None else None
    loaded = load_recipe(find_recipe(recipe)) if recipe else Recipe(source=None)
    effective = loaded.with_overrides(alpha=alpha, dtype=dtype, shard_size=shard_size)
    effective = effective.with_reset(**reset_flags, mode=mode, omega=omega, noise=noise, seed=seed)
    effective = effective.with_reset(**calib_flags)
    _check_calib_flags(calib_flags | {"max_memory": max_memory}, effective.reset.select, mask)
    if _scores_from_data(effective.reset, mask):
        check_calib(effective.reset.calib)
    if save_mask is not None and mask is None and effective.reset.fraction == 0:
        raise UsageError("--save-mask: there is nothing to save with --reset 0")
    job = FuseJob(
        base,
        sft,
        out,
        effective,
        device,
        overwrite,
        alpha is not None,
        _command(base, sft, out, recipe=recipe, alpha=alpha, dtype=dtype, shard_size=shard_size,
                 reset=reset, select=select, modules=modules, max_per_module=max_per_module,
                 protect=protect, reset_mode=mode, omega=omega, noise=noise, seed=seed,
                 calib=calib, samples=samples, max_tokens=max_tokens,
                 save_mask=save_mask, mask=mask, device=None if device == "auto" else device,
                 max_memory=max_memory),
        mask_in=mask,
        mask_out=save_mask,
        max_memory=memory,
    )  # fmt: skip
    console = stderr_console(quiet=quiet)
    show_progress = not (quiet or json_out) and sys.stderr.isatty()
    prepared = prepare_fuse(job)
    try:
        if dry_run:
            summary = plan_summary(prepared) | {"dry_run": True}
            if not summary["disk"]["enough"]:
                summary["warnings"] = [_disk_warning(summary["disk"]), *summary["warnings"]]
            if save_mask is not None and prepared.resetting:
                summary["reset"] = _save_mask_only(prepared, console, show_progress)
            render_warnings(console, summary["warnings"])
            if json_out:
                print_json(summary)
            else:
                render_plan(console, summary)
            return
        summary = _run_with_progress(prepared, console, show_progress) | {"dry_run": False}
    finally:
        prepared.close()
    render_warnings(console, summary["warnings"])
    if json_out:
        print_json(summary)
    else:
        render_summary(console, summary)


def _scores_from_data(settings, mask) -> bool:
    from rejuv_cli.scoring import DATA_SCORERS

    return mask is None and settings.fraction > 0 and settings.select in DATA_SCORERS


def _check_calib_flags(flags: dict, select: str, mask) -> None:
    from rejuv_cli.scoring import DATA_SCORERS

    given = [f"--{k.replace('_', '-')}" for k, v in flags.items() if v is not None]
    if given and (mask is not None or select not in DATA_SCORERS):
        why = "--mask skips scoring" if mask is not None else f"the {select} scorer reads no data"
        raise UsageError(f"{', '.join(given)}: {why}; these set the calibration data and "
                         f"forward passes of --select {'|'.join(DATA_SCORERS)}")  # fmt: skip


def _reset_flags(reset, select, modules, max_per_module, protect, mask, save_mask) -> dict:
    """Check the unit-selection flags; returns the recipe overrides they make."""
    from rejuv_cli.arch.units import resolve_modules
    from rejuv_cli.scoring import SCORERS

    given = {"--reset": reset, "--select": select, "--modules": modules,
             "--max-per-module": max_per_module, "--protect": protect}  # fmt: skip
    if mask is not None:
        clash = [flag for flag, v in given.items() if v is not None]
        if clash:
            raise UsageError(f"--mask fixes which units are reset; drop {', '.join(clash)}")
        if save_mask is not None:
            raise UsageError("--mask and --save-mask: the mask already exists; copy the file")
    if select is not None and select not in SCORERS:
        raise UsageError(f"--select {select!r}: choose from {', '.join(sorted(SCORERS))}")
    if max_per_module == 0:
        raise UsageError("--max-per-module must be > 0 (use --reset 0 to switch the reset off)")
    names = None
    if modules is not None:
        try:
            names = resolve_modules([m.strip() for m in modules.split(",") if m.strip()])
        except ValueError as e:
            raise UsageError(f"--modules: {e}") from None
        if not names:
            raise UsageError("--modules: name at least one module, e.g. q,k,v,o,mlp")
    return {"fraction": reset, "select": select, "modules": names,
            "max_per_module": max_per_module, "protect": protect}  # fmt: skip


def _save_mask_only(prepared, console, show: bool) -> dict:
    """--dry-run --save-mask: score and select, write the mask, write no checkpoint."""
    from rejuv_cli.pipeline import reset_summary, select_reset
    from rejuv_cli.surgery import pick_device

    device = pick_device(prepared.job.device)
    with progress_bars(console, show) as progress:
        on_bytes = progress("scoring", _score_bytes(prepared))
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
        console.print(f"note: {line}", markup=False)

    with progress_bars(console, show) as progress:
        on_score = progress("scoring", _score_bytes(prepared)) if prepared.resetting else None
        on_bytes = progress("fusing", prepared.plan.out_bytes)
        return run_fuse(prepared, on_bytes=on_bytes, on_score_bytes=on_score, say=say)


def _score_bytes(prepared) -> int:
    """BASE bytes the scoring pass reads (it reads as many from SFT)."""
    return sum(prepared.base.tensors[n].nbytes for n in prepared.layout.tensor_axes())


def _command(base, sft, out, **options) -> str:
    """The exact command, with only the options that were given, for the card and rejuv.json."""
    args = ["rejuv", "fuse", base, sft, "--out", str(out)]
    for key, value in options.items():
        if value is not None:
            args += ["--" + key.replace("_", "-"), str(value)]
    return shlex.join(args)
