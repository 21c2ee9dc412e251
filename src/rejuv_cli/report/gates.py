"""CI gates for `rejuv diagnose --fail-on EXPR`: parse, evaluate against the report, describe.

Each `--fail-on` expression describes a *failure* condition on one scalar of the diagnose
report (the JSON written by `--json`); the gate trips when the comparison is true, and any
tripped gate makes the command fail. `--fail-on` is repeatable; gates are independent.

Grammar (whitespace is allowed around every token)::

    gate    := path op value
    path    := key ( "." key | "[" int "]" | "[" quoted "]" )*     (report/paths.py)
    quoted  := "..." or '...'           any characters but the quote itself; no escapes
    op      := <  |  <=  |  >  |  >=  |  ==  |  !=
    value   := number | word | quoted
    number  := [+-]? digits [. digits] [e|E [+-] digits]   also true (1) and false (0)
    word    := [A-Za-z_][A-Za-z0-9_.-]*  a bare string, e.g. rigid

Examples::

    output.entropy_mean<0.18
    units.dormant["0.025"] > 0.3
    weights.tensors["model.layers.0.mlp.up_proj.weight"].rel_drift>=0.05
    verdict.reasons[0].id != ok
    verdict.label==rigid

Rules:

* `<`, `<=`, `>`, `>=` need a number; strings (words or quoted) compare only with `==`, `!=`.
* Values must be finite: `nan`, `inf` and overflowing literals such as `1e999` are refused.
* The path must name a number, a boolean (true counts as 1, false as 0) or a string in the
  report. A missing key, a null (a section that was not measured in this run; the message
  gives the report's `null_reasons` entry for it), an object or list, or a number compared
  with a string is a usage error (exit code 2), not a pass. `report/schema.py` checks paths
  against the report's declared structure before the run.
* A NaN in the report trips the gate whatever the comparison: a gate cannot vouch for it.

The path grammar and the reader of a path are `report/paths.py`'s, shared with the verdict
rules and the comparison rows. Pure standard library; no torch.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

from rejuv_cli.errors import UsageError
from rejuv_cli.report.paths import EXAMPLE, PathError, Scanner, format_path, kind, resolve

__all__ = ["EXAMPLE", "Gate", "GateResult", "describe", "evaluate", "format_path", "parse_gate"]
OPERATORS = ("<=", ">=", "==", "!=", "<", ">")  # two-character ones first
ORDERING = frozenset({"<", "<=", ">", ">="})

_COMPARE: dict[str, Callable[[object, object], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_SIGNED_WORD = re.compile(r"[+-]?[A-Za-z_][A-Za-z0-9_.\-]*")
_NON_FINITE = frozenset({"nan", "inf", "infinity"})
_BOOLEANS = {"true": 1.0, "false": 0.0}
_OP_LIST = "an operator (<, <=, >, >=, ==, !=)"


@dataclass(frozen=True)
class Gate:
    """One parsed `--fail-on` expression; `text` is exactly what the user typed."""

    text: str
    path: tuple[str | int, ...]
    op: str
    value: float | str


@dataclass
class GateResult:
    """`actual` is the report's value (bools as 0/1); `tripped` means the gate fails the run."""

    gate: Gate
    actual: float | str | None
    tripped: bool


# --------------------------------------------------------------------------------------------
# parsing


class _Parser(Scanner):
    """The path (paths.Scanner), then an operator and a value."""

    def op(self) -> str:
        self.skip_space()
        for op in OPERATORS:
            if self.text.startswith(op, self.pos):
                self.pos += len(op)
                return op
        c = self.peek()
        if c == "=":
            raise self.fail(f"expected {_OP_LIST}", hint="'=' alone is not one, use '=='")
        if c == "!":
            raise self.fail(f"expected {_OP_LIST}", hint="'!' alone is not one, use '!='")
        raise self.fail(f"expected {_OP_LIST}")

    def value(self, op: str) -> float | str:
        self.skip_space()
        start = self.pos
        wanted = "a number" if op in ORDERING else "a number, a word or a quoted string"
        expected = f"expected {wanted} after {op!r}"
        strings_hint = "strings compare only with == or !="

        word = _SIGNED_WORD.match(self.text, start)
        if word is not None and word.group().lstrip("+-").lower() in _NON_FINITE:
            hint = "" if op in ORDERING else "quote it to compare as a string"
            raise self.fail(f"expected a finite number after {op!r}", hint=hint)

        number = self.match(_NUMBER)
        if number is not None:
            value = float(number)
            if not math.isfinite(value):
                raise self.fail(f"expected a finite number after {op!r}", start)
            return value

        if self.peek() in ("'", '"'):
            if op in ORDERING:
                raise self.fail(expected, hint=strings_hint)
            return self.quoted()

        word_text = self.match(_WORD)
        if word_text is not None:
            if word_text.lower() in _BOOLEANS:
                return _BOOLEANS[word_text.lower()]
            if op in ORDERING:
                raise self.fail(expected, start, strings_hint)
            return word_text

        raise self.fail(expected)


def parse_gate(text: str) -> Gate:
    """Parse one `--fail-on` expression; a malformed one is a UsageError naming the column."""
    p = _Parser(text)
    path = p.path()
    op = p.op()
    value = p.value(op)
    p.end()
    return Gate(text=text, path=path, op=op, value=value)


# --------------------------------------------------------------------------------------------
# evaluation


def _resolve(gate: Gate, report: dict) -> object:
    """The value at gate.path; every way of not finding a scalar, or one of the wrong kind for
    the gate's value, is a UsageError."""

    def fail(message: str) -> UsageError:
        return UsageError(f"--fail-on {gate.text!r}: {message}")

    try:
        node = resolve(report, gate.path)
    except PathError as e:
        raise fail(str(e)) from None
    where = format_path(gate.path)
    if isinstance(gate.value, str) and not isinstance(node, str):
        raise fail(
            f"'{where}' is {kind(node)} ({_show(node)}), but the gate compares it with the "
            f"string {gate.value!r}; use a number"
        )
    if not isinstance(gate.value, str) and isinstance(node, str):
        raise fail(
            f"'{where}' is a string ({node!r}), but the gate compares it with a number; "
            f"use == or != with a word, e.g. {where}=={_example_word(node)}"
        )
    return node


def _example_word(value: str) -> str:
    return value if _WORD.fullmatch(value) and value.lower() not in _NON_FINITE else repr(value)


def evaluate(gates: list[Gate], report: dict) -> list[GateResult]:
    """One result per gate, in order; raises UsageError on the first gate that cannot apply."""
    results = []
    for gate in gates:
        actual = _resolve(gate, report)
        if isinstance(actual, bool):
            actual = int(actual)
        if isinstance(actual, float) and math.isnan(actual):
            tripped = True  # nothing compares with NaN; fail safe
        else:
            tripped = bool(_COMPARE[gate.op](actual, gate.value))
        results.append(GateResult(gate=gate, actual=actual, tripped=tripped))
    return results


def _show(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return repr(value)


def describe(result: GateResult) -> str:
    """One line: `gate tripped: output.entropy_mean<0.18 (actual 0.0241)`."""
    status = "tripped" if result.tripped else "passed"
    return f"gate {status}: {result.gate.text.strip()} (actual {_show(result.actual)})"
