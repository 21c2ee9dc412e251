"""`rejuv sweep BASE SFT`: measure the fusion at several α and recommend one."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from rejuv_cli.commands.common import (
    QuietFlag,
    check_calib,
    check_checkable,
    check_writable,
    guarded,
    parse_max_memory,
    progress_bars,
    report_outputs,
    stderr_console,
    write_report,
)
from rejuv_cli.commands.options import with_settings
from rejuv_cli.errors import UsageError
from rejuv_cli.settings import SETTINGS

HELP = """Choose α from evidence: fuse at each α in memory (with the same reset as
`rejuv fuse`), measure each candidate on the calibration data, and recommend one.

Per α, and for BASE and SFT: entropy of the response tokens, H/H_base, KL to BASE, NLL and
skill retained (the share of SFT's NLL gain over BASE kept). With --generate and data that
states its answers (builtin:math, or an "answer" field): greedy accuracy, and from
--group-size samples per prompt at temperature 1, pass@1, pass@k and the learnable share
(prompts whose samples have mixed outcomes: the groups that give GRPO a non-zero advantage).

The recommendation (a heuristic; README, "Choosing α"): among the α that keep at least
--min-skill of SFT's skill (accuracy with --generate, NLL otherwise), the one with the highest
learnable share (entropy without --generate), if it is more plastic than SFT (for the
learnable share, by more than its sampling noise); else no surgery.

The rule, its thresholds and what it rests on: docs/method.md, "Choosing α".

Cost: one model in memory at a time (BASE, then SFT, which becomes each α's candidate in
place), plus BASE's response logits in a temporary file (response tokens × vocabulary × 4
bytes). Forward passes: 2 + the number of α, over the calibration data. --generate adds
(1 + --group-size) generated answers of up to --max-new-tokens tokens per checkable example
and model: with the defaults, 9 × 128 = 1152 sequences per model, 11 models: usually far more
than the forward passes.

Examples:

  rejuv sweep ./base ./sft

  rejuv sweep ./base ./sft --alphas 0.3,0.5,0.7,1 --calib builtin:math --generate

  rejuv sweep ./base ./sft --json sweep.json --html sweep.html --out ./rejuvenated
"""

# The fuse settings a sweep takes (its α comes from --alphas), then its own.
FUSE_FLAGS = ("recipe", "dtype", "shard_size", "fraction", "select", "calib", "samples",
              "max_tokens", "prompt_field", "response_field", "answer_field", "messages_field",
              "modules", "max_per_module", "protect", "mode", "omega", "noise", "seed", "mask",
              "device", "max_memory", "config_from")  # fmt: skip
SWEEP_SETTINGS = ("alphas", *FUSE_FLAGS, "batch_tokens", "min_skill", "group_size",
                  "max_new_tokens", "checker")  # fmt: skip


def _opt(*names: str, **kw):
    return typer.Option(*names, show_default=False, **kw)


@with_settings("sweep", SWEEP_SETTINGS, after="sft")
def sweep_command(
    base: Annotated[str, typer.Argument(metavar="BASE", show_default=False,
                                        help="Base model: directory or Hub id[@revision].")],
    sft: Annotated[str, typer.Argument(metavar="SFT", show_default=False,
                                       help="SFT model: directory or Hub id[@revision].")],
    generate: Annotated[bool, _opt(
        "--generate", help="Also generate answers: accuracy, pass@k, learnable share (slow; "
        "see the cost above).")] = False,
    out: Annotated[Path | None, _opt(
        "--out", "-o", file_okay=False,
        help="Write the recommended candidate here, as `rejuv fuse` would (nothing is written "
        "when the recommendation is no surgery).")] = None,
    overwrite: Annotated[bool, _opt("--overwrite", help="Replace OUT if it exists.")] = False,
    json_out: Annotated[str | None, _opt(
        "--json", metavar="FILE|-", help="Write the sweep as JSON to FILE, or to stdout with -."
    )] = None,
    html_out: Annotated[Path | None, _opt(
        "--html", metavar="FILE", dir_okay=False,
        help="Write a self-contained HTML page with the trade-off plotted.")] = None,
    quiet: QuietFlag = False,
    **values,
) -> None:  # fmt: skip
    from rejuv_cli.recipe import Recipe, find_recipe, load_recipe
    from rejuv_cli.reset.registry import check_scorer_modules
    from rejuv_cli.settings import command_line
    from rejuv_cli.sweep.job import SweepJob
    from rejuv_cli.sweep.run import run_sweep

    v = values
    alphas = SETTINGS["alphas"].parse_flag(v["alphas"])
    loaded = load_recipe(find_recipe(v["recipe"])) if v["recipe"] else Recipe(source=None)
    recipe = loaded.with_flags(v)
    if v["mask"] is not None:
        clash = [SETTINGS[k].flag for k in ("fraction", "select", "modules", "max_per_module",
                 "protect") if v[k] is not None]  # fmt: skip
        if clash:
            raise UsageError(f"--mask fixes which units are reset; drop {', '.join(clash)}")
    elif recipe.reset.fraction > 0:
        check_scorer_modules(recipe.reset.select, recipe.reset.modules)
    check_calib(recipe.reset)
    if generate:
        check_checkable(recipe.reset)
    if overwrite and out is None:
        raise UsageError("--overwrite: there is no --out to replace")
    check_writable(None if json_out in (None, "-") else Path(json_out), "--json")
    check_writable(html_out, "--html")
    outputs = report_outputs(json_out, html_out)
    _check_sweep_outputs(base, sft, recipe, outputs, out, overwrite)
    words = ["rejuv", "sweep", base, sft]
    job = SweepJob(
        base, sft, recipe, alphas,
        fuse_values={k: v[k] for k in FUSE_FLAGS},
        device=v["device"], batch_tokens=v["batch_tokens"],
        max_memory=parse_max_memory(v["max_memory"]), min_skill=v["min_skill"],
        generate=generate, group_size=v["group_size"], max_new_tokens=v["max_new_tokens"],
        checker=v["checker"],
        mask_in=v["mask"], out=out, overwrite=overwrite, config_from=v["config_from"],
        command=command_line(words, v, "sweep") + (" --generate" if generate else ""),
        outputs=tuple(o for o in outputs if o is not None),
    )  # fmt: skip
    console = stderr_console(quiet)
    show = not quiet and sys.stderr.isatty()
    with progress_bars(console, show) as progress:
        report = run_sweep(job, progress)
    from rejuv_cli.jsonio import json_safe

    report = json_safe(report)
    write_report(report, json_out, html_out, _html)
    from rejuv_cli.report.console import render_warnings
    from rejuv_cli.report.sweep_console import render_sweep

    render_warnings(console, report["warnings"])  # and the table: stderr, whatever --json does
    render_sweep(console, report)


sweep_command = guarded(sweep_command)


def _html(report: dict) -> str:
    from rejuv_cli.report.html.sweep import render_sweep_html

    return render_sweep_html(report)


def _check_sweep_outputs(base, sft, recipe, outputs: tuple, out: Path | None,
                         overwrite: bool) -> None:  # fmt: skip
    from rejuv_cli.checkpoint.preflight import Output, check_outputs

    calib = recipe.reset.calib
    calib_file = None if calib.startswith("builtin:") else calib
    files = [o for o in outputs if o is not None]
    if out is not None:
        files.append(Output("--out", out, directory=True))
    check_outputs({"BASE": base, "SFT": sft, "--calib": calib_file, "--recipe": recipe.source},
                  files, overwrite)  # fmt: skip
