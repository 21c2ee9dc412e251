"""`rejuv diagnose BASE SFT`: a plasticity report for an SFT checkpoint, usable as a CI gate."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

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

HELP = """Measure how rigid an SFT checkpoint is before RL, and what a fuse changed.

Weight space (streams both checkpoints, any size): drift, cosine, spikiness per tensor, layer
and module, per-unit drift. Output space (forward passes on calibration data, teacher-forced
on the responses): entropy, max-probability, over-confident share, KL to BASE, NLL and skill
retained (the share of SFT's NLL gain over BASE kept); unit activity (dormant and saturated
units) and random-direction sharpness. The verdict (rigid / watch / ok)
is a heuristic with the reasons that fired; thresholds are in the README. Every verdict comes
with a next step: for watch and rigid a `rejuv sweep` line; for ok, RL with SFT as it is, and
this diagnose as a CI gate (--fail-on verdict.label==rigid).

The report goes to stderr; --json and --html write it for machines and people, and for CI
--markdown a short summary (a GitHub step summary or merge-request comment) and --junit each
gate and verdict rule as a JUnit test case (failed: tripped or fired; skipped: not measured),
also when a gate trips. Shares are
shown as percentages (JSON and --fail-on keep the fraction: 59.1% is 0.591); entropy, NLL, KL
and sharpness are in nats; the terms a table uses are defined under it.

Metric definitions and verdict thresholds: docs/method.md, section 5.

Examples:

  rejuv diagnose ./base ./sft

  rejuv diagnose ./base ./sft --candidate ./sft-rejuv --html report.html

  rejuv diagnose ./base ./sft --weights-only --json - --fail-on "weights.drift_max>0.5"

  rejuv diagnose ./base ./sft --calib data.jsonl --json report.json \\
      --fail-on "output.entropy_mean<0.18" --fail-on "verdict.label==rigid"

  rejuv diagnose ./base ./sft --fail-on "verdict.label==rigid" \\
      --markdown "$GITHUB_STEP_SUMMARY" --junit rejuv-junit.xml
"""


def _opt(*names: str, **kw):
    return typer.Option(*names, show_default=kw.pop("show_default", True), **kw)


DIAGNOSE_SETTINGS = ("calib", "samples", "max_tokens", "device", "max_memory", "sharpness_draws",
                     "sharpness_sigma", "batch_tokens", "min_skill", "prompt_field",
                     "response_field", "answer_field", "messages_field", "min_learnable",
                     "group_size", "max_new_tokens", "checker", "config_from")  # fmt: skip


@with_settings("diagnose", DIAGNOSE_SETTINGS, after="candidate")
def diagnose_command(
    base: Annotated[str, typer.Argument(metavar="BASE", show_default=False,
                                        help="Base model: directory or Hub id[@revision].")],
    sft: Annotated[str, typer.Argument(metavar="SFT", show_default=False,
                                       help="SFT model: directory or Hub id[@revision].")],
    candidate: Annotated[str | None, _opt(
        "--candidate", "-c", show_default=False, metavar="DIR|ID",
        help="A rejuvenated checkpoint (e.g. rejuv fuse's output) to compare with SFT.")] = None,
    weights_only: Annotated[bool, _opt(
        "--weights-only", help="Weight space only: no forward passes, memory bounded like fuse."
    )] = False,
    generate: Annotated[bool, _opt(
        "--generate", help="Also generate answers to the calibration prompts that state one "
        "(builtin:math, or an \"answer\" field): greedy accuracy, and from --group-size samples "
        "at temperature 1, pass@1, pass@k and the learnable share. Costs (1 + group size) "
        "generated answers of up to --max-new-tokens tokens per checkable example and model "
        "(defaults: 9 × 128 per model), usually far more than the forward passes."
    )] = False,
    rank: Annotated[bool, _opt(
        "--rank", help="Also stable and effective rank of Δ per layer matrix (SVD; slow)."
    )] = False,
    json_out: Annotated[str | None, _opt(
        "--json", metavar="FILE|-", show_default=False,
        help="Write the report as JSON to FILE, or to stdout with -.")] = None,
    html_out: Annotated[Path | None, _opt(
        "--html", metavar="FILE", show_default=False, dir_okay=False,
        help="Write a self-contained HTML report with plots.")] = None,
    markdown_out: Annotated[Path | None, _opt(
        "--markdown", metavar="FILE", show_default=False, dir_okay=False,
        help="Write a short GitHub-flavoured markdown summary for CI: verdict, reasons, "
        "before/after, gates, next step (e.g. to $GITHUB_STEP_SUMMARY).")] = None,
    junit_out: Annotated[Path | None, _opt(
        "--junit", metavar="FILE", show_default=False, dir_okay=False,
        help="Write every --fail-on gate and verdict rule as a JUnit XML test case, for CI "
        "test reports.")] = None,
    fail_on: Annotated[list[str] | None, _opt(
        "--fail-on", metavar="EXPR", show_default=False,
        help='Exit 3 when EXPR holds, e.g. "output.entropy_mean<0.18" (repeatable; grammar in '
        "the README).")] = None,
    quiet: QuietFlag = False,
    **values,
) -> None:  # fmt: skip
    from rejuv_cli.api.diagnose import GateError, diagnose
    from rejuv_cli.report.ci import ci_outputs, write_diagnose_ci
    from rejuv_cli.report.gates import describe

    check_writable(None if json_out in (None, "-") else Path(json_out), "--json")
    check_writable(html_out, "--html")
    check_writable(markdown_out, "--markdown")
    check_writable(junit_out, "--junit")
    outputs = report_outputs(json_out, html_out) + ci_outputs(markdown_out, junit_out)
    console = stderr_console(quiet)
    with torchrun_ranks(values["device"]) as ranks:  # under torchrun: the batches split by rank
        show = not quiet and sys.stderr.isatty() and ranks.main
        try:
            with progress_bars(console, show) as progress:
                result = diagnose(base, sft, candidate=candidate, weights_only=weights_only,
                                  rank=rank, generate=generate, fail_on=fail_on or [],
                                  outputs=outputs, progress=progress, **values)  # fmt: skip
        except GateError as e:  # the measurements are still worth keeping
            if ranks.main:
                write_report(e.report, json_out, html_out, _html)
                write_diagnose_ci(e.report, e.gates, e.rules, markdown_out, junit_out)
            raise
    if not ranks.main:  # every rank holds the same report; rank 0 writes and judges it
        return
    report = result.report
    write_report(report, json_out, html_out, _html)
    write_diagnose_ci(report, [r.gate for r in result.gates], result.rules, markdown_out,
                      junit_out)  # fmt: skip
    from rejuv_cli.report.console import render_warnings
    from rejuv_cli.report.diagnose_console import render_diagnose

    render_warnings(console, report["warnings"])  # and the report: stderr, whatever --json does
    render_diagnose(console, report)
    err = stderr_console(False)  # gate results show even under --quiet: they decide the exit
    for r in result.gates:
        err.print(f"rejuv: {describe(r)}")
    if result.tripped:
        err.print(f"rejuv: {len(result.tripped)} of {len(result.gates)} --fail-on gate(s) "
                  "tripped; exit 3")  # fmt: skip
        raise typer.Exit(3)


diagnose_command = guarded(diagnose_command)


def _html(report: dict) -> str:
    from rejuv_cli.report.html import render_html

    return render_html(report)
