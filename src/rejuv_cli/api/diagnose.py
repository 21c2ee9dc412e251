"""`rejuv diagnose` as a function: `diagnose(base, sft, **settings)` -> DiagnoseResult."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rejuv_cli.api.checks import (
    Progress,
    check_calib,
    check_checkable,
    no_progress,
    parse_max_memory,
    settings_for,
)
from rejuv_cli.errors import UsageError


@dataclass(frozen=True)
class DiagnoseResult:
    """The report (`report`: what `rejuv diagnose --json` writes, `rejuv schema diagnose`),
    the gates as evaluated (report/gates.GateResult: gate, actual, tripped) and every verdict
    rule as applied (`rules`: diagnostics/verdict.RuleCheck, by model: "" SFT, "candidate")."""

    report: dict
    gates: list = field(default_factory=list)
    rules: dict = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        """rigid, watch or ok (a heuristic; the reasons say which rules fired)."""
        return self.report["verdict"]["label"]

    @property
    def reasons(self) -> list[dict]:
        return self.report["verdict"]["reasons"]

    @property
    def tripped(self) -> list:
        """The --fail-on gates that hold (the CLI exits 3 when there is one)."""
        return [g for g in self.gates if g.tripped]


class GateError(UsageError):
    """A --fail-on gate that the finished report cannot evaluate (a value that came out null,
    a tensor name that does not exist); `report` holds the measurements, `gates` the parsed
    gates (report/gates.Gate) and `rules` the verdict rules as applied."""

    def __init__(self, message: str, report: dict, gates: list, rules: dict):
        super().__init__(message)
        self.report, self.gates, self.rules = report, gates, rules


def diagnose(base: str | Path, sft: str | Path, *, candidate: str | Path | None = None,
             weights_only: bool = False, rank: bool = False, generate: bool = False,
             fail_on: Sequence[str] = (), outputs: tuple = (), progress: Progress | None = None,
             **settings) -> DiagnoseResult:  # fmt: skip
    """Measure SFT against BASE (and `candidate`, e.g. a fuse's output) and judge it.

    `settings` are `rejuv diagnose`'s, by name (calib="builtin:math", samples=64,
    sharpness_draws=0, device="cpu", min_skill=0.8, ...); `fail_on` the gate expressions of
    --fail-on. `outputs`: report files the caller will write (checkpoint.preflight.Output),
    refused before any work when one would overwrite an input. Gate paths are checked before
    the run (UsageError); a gate the finished report cannot evaluate raises GateError, which
    carries the report.

        from rejuv_cli import diagnose
        result = diagnose("./base", "./sft", weights_only=True, fail_on=["weights.drift_max>0.5"])
        print(result.verdict, [g.gate.text for g in result.tripped])
    """
    from rejuv_cli.diagnostics.run import DiagnoseJob, rule_checks, run_diagnose
    from rejuv_cli.jsonio import json_safe
    from rejuv_cli.report.gates import evaluate, parse_gate
    from rejuv_cli.report.schema import RunFlags, check_gate

    base, sft = str(base), str(sft)  # a directory or a Hub id, as on the command line
    candidate = None if candidate is None else str(candidate)
    v = settings_for("diagnose", settings)
    gates = [parse_gate(text) for text in fail_on]
    memory = parse_max_memory(v["max_memory"])
    if memory is not None and weights_only:
        raise UsageError("--max-memory: --weights-only runs no forward passes (it streams)")
    flags = RunFlags(weights_only=weights_only, candidate=candidate is not None, rank=rank,
                     sharpness=v["sharpness_draws"] > 0, generate=generate)  # fmt: skip
    for gate in gates:
        check_gate(gate, flags)
    if generate and weights_only:
        raise UsageError("--generate: --weights-only runs no model; drop one of them")
    if not weights_only:
        check_calib(v)
    if generate:
        check_checkable(v)
    _check_inputs(base, sft, candidate, v["calib"], outputs)
    job = DiagnoseJob(base, sft, candidate, weights_only=weights_only, rank=rank,
                      generate=generate, max_memory=memory, outputs=tuple(outputs),
                      **{k: x for k, x in v.items() if k != "max_memory"})  # fmt: skip
    report = json_safe(run_diagnose(job, progress or no_progress))
    rules = rule_checks(report, job)
    try:
        results = evaluate(gates, report)
    except UsageError as e:
        raise GateError(str(e), report, gates, rules) from None
    report["gates"] = [{"gate": r.gate.text, "actual": r.actual, "tripped": r.tripped}
                       for r in results]  # fmt: skip
    return DiagnoseResult(report, results, rules)


def _check_inputs(base, sft, candidate, calib: str, outputs: tuple) -> None:
    """No report file may overwrite, or sit inside, an input or another report; checked again
    by run_diagnose once Hub ids are resolved."""
    from rejuv_cli.checkpoint.preflight import check_outputs

    calib_file = None if calib.startswith("builtin:") else calib
    check_outputs({"BASE": base, "SFT": sft, "CANDIDATE": candidate, "--calib": calib_file},
                  outputs)  # fmt: skip
