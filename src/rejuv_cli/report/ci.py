"""The CI report files, `--markdown FILE` (diagnose, sweep, fuse) and `--junit FILE` (diagnose):
which paths they are, for `preflight.check_outputs`, and writing them. No torch.

A command declares the flags, checks the paths with the other report files before any work,
and calls one `write_*` function where it writes `--json`: diagnose also when a gate trips
(exit 3) or cannot be evaluated (exit 2), since the measurements are what CI wants to keep.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rejuv_cli.errors import UsageError
from rejuv_cli.report.gates import Gate, evaluate


@dataclass(frozen=True)
class GateOutcome:
    """One `--fail-on` gate against the report: status "passed", "tripped" or "not evaluated"
    (`error` says why: the message the command exits 2 with)."""

    gate: Gate
    status: str
    actual: float | str | None = None
    error: str = ""

    @property
    def text(self) -> str:
        """The expression as typed, runs of spaces made one (a stable test-case name)."""
        return " ".join(self.gate.text.split())


def gate_outcomes(gates: list[Gate], report: dict) -> list[GateOutcome]:
    """Each gate evaluated on its own (report/gates.evaluate), so that one that cannot be
    evaluated does not hide the outcome of the others."""
    out = []
    for gate in gates:
        try:
            (result,) = evaluate([gate], report)
        except UsageError as e:
            out.append(GateOutcome(gate, "not evaluated", error=str(e)))
            continue
        out.append(GateOutcome(gate, "tripped" if result.tripped else "passed", result.actual))
    return out


def ci_outputs(markdown: Path | None, junit: Path | None = None) -> tuple:
    """The files (preflight.Output) of --markdown and --junit; None where absent."""
    from rejuv_cli.checkpoint.preflight import Output

    return (None if markdown is None else Output("--markdown", markdown),
            None if junit is None else Output("--junit", junit))  # fmt: skip


def check_fuse_markdown(markdown: Path | None, dry_run: bool, paths: tuple[dict, list],
                        overwrite: bool) -> None:  # fmt: skip
    """fuse --markdown, before any work: refused with --dry-run (no card is written), and
    checked with fuse's own inputs and outputs (`paths`: pipeline.fuse_paths), so that it
    neither overwrites an input nor sits inside OUT, which is replaced whole."""
    if markdown is None:
        return
    if dry_run:
        raise UsageError("--markdown: --dry-run writes no checkpoint, so there is no model card "
                         "to summarise; drop one of them")  # fmt: skip
    from rejuv_cli.checkpoint.preflight import check_outputs

    inputs, outputs = paths
    check_outputs(inputs, [*outputs, *ci_outputs(markdown)], overwrite)


def write_diagnose_ci(report: dict, gates: list[Gate], rules: dict[str, list],
                      markdown: Path | None, junit: Path | None) -> None:  # fmt: skip
    """--markdown and --junit of a JSON-safe diagnose report. `rules`: model ("" for SFT,
    "candidate") -> diagnostics/verdict.RuleCheck of every rule, as the verdict applied them."""
    if markdown is None and junit is None:
        return
    from rejuv_cli.checkpoint.output import write_file

    outcomes = gate_outcomes(gates, report)
    if markdown is not None:
        from rejuv_cli.report.markdown import diagnose_markdown

        write_file(markdown, diagnose_markdown(report, outcomes), "--markdown")
    if junit is not None:
        from rejuv_cli.report.junit import gate_cases, render_junit, rule_cases

        cases = gate_cases(outcomes)
        for model, checks in rules.items():
            cases += rule_cases(report, checks, model)
        write_file(junit, render_junit(cases, report), "--junit")


def write_sweep_markdown(report: dict, markdown: Path | None) -> None:
    """--markdown of a JSON-safe sweep report."""
    if markdown is None:
        return
    from rejuv_cli.checkpoint.output import write_file
    from rejuv_cli.report.markdown_sweep import sweep_markdown

    write_file(markdown, sweep_markdown(report), "--markdown")


def write_fuse_markdown(out: Path, markdown: Path | None) -> None:
    """--markdown of a finished fuse: the model card's sections, rendered by the card's own code
    from the provenance the card was written from (OUT/rejuv.json)."""
    if markdown is None:
        return
    import json

    from rejuv_cli.checkpoint.output import write_file
    from rejuv_cli.report.markdown_fuse import fuse_markdown

    provenance = json.loads((out / "rejuv.json").read_text())
    write_file(markdown, fuse_markdown(provenance, out), "--markdown")
