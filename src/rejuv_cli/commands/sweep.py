"""`rejuv sweep BASE SFT`: measure the fusion at several α and recommend one."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from rejuv_cli.api.sweep import FUSE_SETTINGS
from rejuv_cli.commands.common import (
    QuietFlag,
    check_writable,
    guarded,
    progress_bars,
    report_outputs,
    stderr_console,
    torchrun_ranks,
    write_report,
)
from rejuv_cli.commands.options import with_settings

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

  rejuv sweep ./base ./sft --markdown "$GITHUB_STEP_SUMMARY"
"""

# The fuse settings a sweep passes on to each candidate (its α comes from --alphas), then its own.
SWEEP_SETTINGS = ("alphas", *FUSE_SETTINGS, "batch_tokens", "min_skill", "group_size",
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
    markdown_out: Annotated[Path | None, _opt(
        "--markdown", metavar="FILE", dir_okay=False,
        help="Write a short GitHub-flavoured markdown summary for CI: the table, the "
        "recommendation and its fuse command (e.g. to $GITHUB_STEP_SUMMARY).")] = None,
    quiet: QuietFlag = False,
    **values,
) -> None:  # fmt: skip
    from rejuv_cli.api.sweep import sweep
    from rejuv_cli.report.ci import ci_outputs, write_sweep_markdown

    check_writable(None if json_out in (None, "-") else Path(json_out), "--json")
    check_writable(html_out, "--html")
    check_writable(markdown_out, "--markdown")
    outputs = report_outputs(json_out, html_out) + ci_outputs(markdown_out)
    console = stderr_console(quiet)
    with torchrun_ranks(values["device"]) as ranks:  # under torchrun: the batches split by rank
        show = not quiet and sys.stderr.isatty() and ranks.main
        with progress_bars(console, show) as progress:
            result = sweep(base, sft, out=out, overwrite=overwrite, generate=generate,
                           outputs=outputs, progress=progress, **values)  # fmt: skip
    if not ranks.main:  # every rank holds the same table; rank 0 writes and shows it
        return
    report = result.report
    write_report(report, json_out, html_out, _html)
    write_sweep_markdown(report, markdown_out)
    from rejuv_cli.report.console import render_warnings
    from rejuv_cli.report.sweep_console import render_sweep

    render_warnings(console, report["warnings"])  # and the table: stderr, whatever --json does
    render_sweep(console, report)


sweep_command = guarded(sweep_command)


def _html(report: dict) -> str:
    from rejuv_cli.report.html.sweep import render_sweep_html

    return render_sweep_html(report)
