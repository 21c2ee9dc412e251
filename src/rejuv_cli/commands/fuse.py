"""`rejuv fuse BASE SFT --out OUT`: base-anchored fusion, streamed shard by shard."""

from __future__ import annotations

import re
import shlex
import sys
from enum import Enum
from typing import Annotated

import typer

from rejuv_cli.commands.common import (
    DeviceOption,
    JsonFlag,
    OutOption,
    QuietFlag,
    guarded,
    print_json,
    stderr_console,
)
from rejuv_cli.errors import UsageError


class DType(str, Enum):
    auto = "auto"
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"


HELP = """Fuse an SFT checkpoint with its base model: θ = θ_base + α·(θ_sft − θ_base).

BASE and SFT are local directories or Hugging Face Hub ids (org/name[@revision]). Every
floating-point tensor is fused in float32 and rounded once to the output dtype; the output is a
Hugging Face checkpoint (shards, index, SFT's config/tokenizer/chat template, model card,
rejuv.json) that RL frameworks load directly. Memory stays bounded by a few chunk buffers.

Examples:

  rejuv fuse Qwen/Qwen2.5-1.5B ./sft-ckpt --out ./rejuvenated

  rejuv fuse ./base ./sft -o ./out --alpha 0.4 --dtype bf16 --shard-size 2GB

  rejuv fuse ./base ./sft -o ./out --recipe paper --dry-run --json
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
    device: DeviceOption = "auto",
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
    dtype = dtype.value if dtype is not None else None
    loaded = load_recipe(find_recipe(recipe)) if recipe else Recipe(source=None)
    effective = loaded.with_overrides(alpha=alpha, dtype=dtype, shard_size=shard_size)
    job = FuseJob(
        base,
        sft,
        out,
        effective,
        device,
        overwrite,
        alpha is not None,
        _command(base, sft, out, recipe, alpha, dtype, shard_size, device),
    )
    console = stderr_console(quiet=quiet)
    prepared = prepare_fuse(job)
    try:
        if dry_run:
            summary = plan_summary(prepared) | {"dry_run": True}
            render_warnings(console, summary["warnings"])
            if json_out:
                print_json(summary)
            else:
                render_plan(console, summary)
            return
        show_progress = not (quiet or json_out) and sys.stderr.isatty()
        summary = _run_with_progress(prepared, console, show_progress) | {"dry_run": False}
    finally:
        prepared.close()
    render_warnings(console, summary["warnings"])
    if json_out:
        print_json(summary)
    else:
        render_summary(console, summary)


fuse_command = guarded(fuse_command)


def _run_with_progress(prepared, console, show: bool) -> dict:
    from rejuv_cli.pipeline import run_fuse

    if not show:
        return run_fuse(prepared)
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("fusing"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("fuse", total=prepared.plan.out_bytes)
        return run_fuse(prepared, on_bytes=lambda n: progress.advance(task, n))


def _command(base, sft, out, recipe, alpha, dtype, shard_size, device) -> str:
    """The exact command, with only the options that were given, for the card and rejuv.json."""
    args = ["rejuv", "fuse", base, sft, "--out", str(out)]
    for flag, value in (
        ("--recipe", recipe),
        ("--alpha", alpha),
        ("--dtype", dtype),
        ("--shard-size", shard_size),
    ):
        if value is not None:
            args += [flag, str(value)]
    if device != "auto":
        args += ["--device", device]
    return shlex.join(args)
