"""`rejuv diagnose BASE SFT`: a plasticity report for an SFT checkpoint, usable as a CI gate."""

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
from rejuv_cli.jsonio import json_safe

HELP = """Measure how rigid an SFT checkpoint is before RL, and what a fuse changed.

Weight space (streams both checkpoints, any size): drift, cosine, spikiness per tensor, layer
and module, per-unit drift. Output space (forward passes on calibration data, teacher-forced
on the responses): entropy, max-probability, over-confident share, KL to BASE, NLL and skill
retained (the share of SFT's NLL gain over BASE kept); unit activity (dormant and saturated
units) and random-direction sharpness. The verdict (rigid / watch / ok)
is a heuristic with the reasons that fired; thresholds are in the README. Every verdict comes
with a next step: for watch and rigid a `rejuv sweep` line; for ok, RL with SFT as it is, and
this diagnose as a CI gate (--fail-on verdict.label==rigid).

The report goes to stderr; --json and --html write it for machines and people. Shares are
shown as percentages (JSON and --fail-on keep the fraction: 59.1% is 0.591); entropy, NLL, KL
and sharpness are in nats; the terms a table uses are defined under it.

Metric definitions and verdict thresholds: docs/method.md, section 5.

Examples:

  rejuv diagnose ./base ./sft

  rejuv diagnose ./base ./sft --candidate ./sft-rejuv --html report.html

  rejuv diagnose ./base ./sft --weights-only --json - --fail-on "weights.drift_max>0.5"

  rejuv diagnose ./base ./sft --calib data.jsonl --json report.json \\
      --fail-on "output.entropy_mean<0.18" --fail-on "verdict.label==rigid"
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
    fail_on: Annotated[list[str] | None, _opt(
        "--fail-on", metavar="EXPR", show_default=False,
        help='Exit 3 when EXPR holds, e.g. "output.entropy_mean<0.18" (repeatable; grammar in '
        "the README).")] = None,
    quiet: QuietFlag = False,
    **values,
) -> None:  # fmt: skip
    from rejuv_cli.diagnostics.run import DiagnoseJob, run_diagnose
    from rejuv_cli.report.gates import describe, evaluate, parse_gate

    calib, max_memory, sharpness_draws = (values[k] for k in ("calib", "max_memory",
                                                              "sharpness_draws"))  # fmt: skip
    gates = [parse_gate(text) for text in fail_on or []]
    memory = parse_max_memory(max_memory)
    if memory is not None and weights_only:
        raise UsageError("--max-memory: --weights-only runs no forward passes (it streams)")
    _check_gates(gates, weights_only, candidate, rank, sharpness_draws, generate)
    check_writable(None if json_out in (None, "-") else Path(json_out), "--json")
    check_writable(html_out, "--html")
    if generate and weights_only:
        raise UsageError("--generate: --weights-only runs no model; drop one of them")
    if not weights_only:
        check_calib(values)
    if generate:
        check_checkable(values)
    outputs = report_outputs(json_out, html_out)
    _check_outputs(base, sft, candidate, calib, outputs)
    console = stderr_console(quiet)
    job = DiagnoseJob(base, sft, candidate, weights_only=weights_only, rank=rank, generate=generate,
                      max_memory=memory, outputs=outputs,
                      **{k: values[k] for k in DIAGNOSE_SETTINGS if k != "max_memory"})  # fmt: skip
    show = not quiet and sys.stderr.isatty()
    with progress_bars(console, show) as progress:
        report = run_diagnose(job, progress)

    report = json_safe(report)
    try:
        results = evaluate(gates, report) if gates else []
    except UsageError:
        write_report(report, json_out, html_out, _html)  # the measurements are still worth keeping
        raise
    report["gates"] = [{"gate": r.gate.text, "actual": r.actual, "tripped": r.tripped}
                       for r in results]  # fmt: skip
    write_report(report, json_out, html_out, _html)
    from rejuv_cli.report.console import render_warnings
    from rejuv_cli.report.diagnose_console import render_diagnose

    render_warnings(console, report["warnings"])  # and the report: stderr, whatever --json does
    render_diagnose(console, report)
    err = stderr_console(False)  # gate results show even under --quiet: they decide the exit
    for r in results:
        err.print(f"rejuv: {describe(r)}")
    tripped = [r for r in results if r.tripped]
    if tripped:
        err.print(f"rejuv: {len(tripped)} of {len(results)} --fail-on gate(s) tripped; exit 3")
        raise typer.Exit(3)


diagnose_command = guarded(diagnose_command)


def _check_gates(gates, weights_only: bool, candidate: str | None, rank: bool,
                 sharpness_draws: int, generate: bool) -> None:  # fmt: skip
    """Refuse, before any work, gates that this run cannot evaluate: a path that is not in the
    report's structure, a section these flags leave out, a value of the wrong kind."""
    from rejuv_cli.report.schema import RunFlags, check_gate

    flags = RunFlags(weights_only=weights_only, candidate=candidate is not None, rank=rank,
                     sharpness=sharpness_draws > 0, generate=generate)  # fmt: skip
    for g in gates:
        check_gate(g, flags)


def _check_outputs(base, sft, candidate, calib: str, outputs: tuple) -> None:
    """No report file may overwrite, or sit inside, an input or the other report; checked
    again by run_diagnose once Hub ids are resolved."""
    from rejuv_cli.checkpoint.preflight import check_outputs

    calib_file = None if calib.startswith("builtin:") else calib
    check_outputs({"BASE": base, "SFT": sft, "CANDIDATE": candidate, "--calib": calib_file},
                  outputs)  # fmt: skip


def _html(report: dict) -> str:
    from rejuv_cli.report.html import render_html

    return render_html(report)
