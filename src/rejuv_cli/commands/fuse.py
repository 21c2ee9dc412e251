"""`rejuv fuse BASE SFT --out OUT`: base-anchored fusion, streamed shard by shard."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from rejuv_cli.commands.common import (
    JsonFlag,
    OutOption,
    QuietFlag,
    check_writable,
    guarded,
    print_json,
    progress_bars,
    stderr_console,
    torchrun_ranks,
)
from rejuv_cli.commands.options import with_settings

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

  rejuv fuse ./base ./sft -o ./out --markdown "$GITHUB_STEP_SUMMARY"
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
    markdown_out: Annotated[
        Path | None,
        typer.Option(
            "--markdown",
            metavar="FILE",
            dir_okay=False,
            show_default=False,
            help="Write the model card's account of the fuse (what was done, inputs with "
            "digests, recipe, result) as markdown for CI (e.g. to $GITHUB_STEP_SUMMARY).",
        ),
    ] = None,
    quiet: QuietFlag = False,
    **values,
) -> None:
    from rejuv_cli.api.fuse import fuse_job, run_fuse_job
    from rejuv_cli.pipeline import fuse_paths
    from rejuv_cli.report.ci import check_fuse_markdown, write_fuse_markdown
    from rejuv_cli.report.console import render_plan, render_summary, render_warnings

    job = fuse_job(base, sft, out, overwrite=overwrite, **values)
    check_writable(markdown_out, "--markdown")
    check_fuse_markdown(markdown_out, dry_run, fuse_paths(job), overwrite)
    with torchrun_ranks(job.device) as ranks:
        quiet = quiet or not ranks.main  # one report, from rank 0
        console = stderr_console(quiet=quiet)

        def say(line: str) -> None:
            console.print(f"note: {line}", markup=False, soft_wrap=True)

        with progress_bars(console, not quiet and sys.stderr.isatty()) as progress:
            result = run_fuse_job(job, dry_run=dry_run, progress=progress, notes=say)
    if not ranks.main:
        return
    if not dry_run:
        write_fuse_markdown(out, markdown_out)
    if json_out:
        print_json(result.summary)
    render_warnings(console, result.summary["warnings"])
    (render_plan if dry_run else render_summary)(console, result.summary)


fuse_command = guarded(fuse_command)
