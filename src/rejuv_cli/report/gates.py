"""CI gates for `rejuv diagnose --fail-on EXPR`: parse, evaluate against the report, describe.

Each `--fail-on` expression describes a *failure* condition on one scalar of the diagnose
report (the JSON written by `--json`); the gate trips when the comparison is true, and any
tripped gate makes the command fail. `--fail-on` is repeatable; gates are independent.

Grammar (whitespace is allowed around every token)::

    gate    := path op value
    path    := key ( "." key | "[" int "]" | "[" quoted "]" )*
    key     := [A-Za-z_][A-Za-z0-9_]*
    int     := -?[0-9]+                 list index; negative counts from the end
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

Pure standard library; imports nothing from the project but `rejuv_cli.errors`.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

from rejuv_cli.errors import UsageError

EXAMPLE = '--fail-on "output.entropy_mean<0.18"'
OPERATORS = ("<=", ">=", "==", "!=", "<", ">")  # two-character ones first
ORDERING = frozenset({"<", "<=", ">", ">="})
MAX_LISTED = 15

_COMPARE: dict[str, Callable[[object, object], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT = re.compile(r"-?[0-9]+")
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


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, expected: str, pos: int | None = None, hint: str = "") -> UsageError:
        col = (self.pos if pos is None else pos) + 1
        hint = f"; {hint}" if hint else ""
        return UsageError(
            f"--fail-on {self.text!r}: {expected} at column {col}{hint}; example: {EXAMPLE}"
        )

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def match(self, pattern: re.Pattern[str]) -> str | None:
        m = pattern.match(self.text, self.pos)
        if m is None:
            return None
        self.pos = m.end()
        return m.group()

    def quoted(self) -> str:
        """A '...' or "..." string at the cursor (the cursor is on the opening quote)."""
        quote, start = self.peek(), self.pos
        end = self.text.find(quote, start + 1)
        if end < 0:
            raise self.fail(
                f"expected a closing {quote}",
                len(self.text),
                f"the string opened at column {start + 1} never ends",
            )
        self.pos = end + 1
        return self.text[start + 1 : end]

    def path(self) -> tuple[str | int, ...]:
        self.skip_space()
        key = self.match(_KEY)
        if key is None:
            raise self.fail("expected a key")
        parts: list[str | int] = [key]
        while True:
            self.skip_space()
            c = self.peek()
            if c == ".":
                self.pos += 1
                self.skip_space()
                key = self.match(_KEY)
                if key is None:
                    raise self.fail("expected a key after '.'")
                parts.append(key)
            elif c == "[":
                self.pos += 1
                self.skip_space()
                if self.peek() in ("'", '"'):
                    parts.append(self.quoted())
                else:
                    index = self.match(_INT)
                    if index is None:
                        raise self.fail("expected an integer index or a quoted key after '['")
                    if len(index.lstrip("-")) > 18:  # no report list is that long
                        raise self.fail("expected a list index of at most 18 digits")
                    parts.append(int(index))
                self.skip_space()
                if self.peek() != "]":
                    raise self.fail("expected ']'")
                self.pos += 1
            else:
                return tuple(parts)

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

    def end(self) -> None:
        self.skip_space()
        if self.pos < len(self.text):
            raise self.fail("expected the end of the expression")


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


def format_path(path: tuple[str | int, ...] | list[str | int]) -> str:
    """Canonical text of a path: `a.b`, `a["x.y"]`, `a[0]`."""
    out: list[str] = []
    for i, part in enumerate(path):
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif _KEY.fullmatch(part):
            out.append(part if i == 0 else f".{part}")
        else:
            quote = "'" if '"' in part and "'" not in part else '"'
            out.append(f"[{quote}{part}{quote}]")
    return "".join(out)


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


def _available(obj: dict) -> str:
    if not obj:
        return "it is empty"
    keys = sorted(str(k) for k in obj)
    listed = ", ".join(keys[:MAX_LISTED])
    more = len(keys) - MAX_LISTED
    return f"available: {listed}" + (f", ... ({more} more)" if more > 0 else "")


def _items(n: int) -> str:
    return "1 item" if n == 1 else f"{n} items"


def _resolve(gate: Gate, report: dict) -> object:
    """The value at gate.path; every way of not finding a scalar is a UsageError."""

    def fail(message: str) -> UsageError:
        return UsageError(f"--fail-on {gate.text!r}: {message}")

    node: object = report
    for depth, part in enumerate(gate.path):
        here = format_path(gate.path[:depth])
        under = f"under '{here}'" if depth else "at the top level"
        if isinstance(part, int):
            if isinstance(node, list):
                if not -len(node) <= part < len(node):
                    raise fail(f"index {part} not found {under} (a list of {_items(len(node))})")
                node = node[part]
            elif isinstance(node, dict):
                raise fail(f"'{here}' is an object, not a list; {_available(node)}")
            else:
                raise fail(f"'{here}' is {_kind(node)}, not a list; it has no [{part}]")
        elif isinstance(node, dict):
            if part not in node:
                raise fail(f"'{part}' not found {under}; {_available(node)}")
            node = node[part]
        elif isinstance(node, list):
            example = format_path((*gate.path[:depth], 0))
            raise fail(
                f"'{here}' is a list ({_items(len(node))}), not an object; index it, e.g. {example}"
            )
        else:
            raise fail(f"'{here}' is {_kind(node)}, not an object; it has no '{part}'")
        if node is None:
            where = format_path(gate.path[: depth + 1])
            # The diagnose report says why each of its nulls is null (report/schema.py).
            why = (report.get("null_reasons") or {}).get(where) or "not measured in this run"
            raise fail(f"'{where}' is null in this report ({why})")

    where = format_path(gate.path)
    if isinstance(node, dict):
        raise fail(f"'{where}' is an object, not a number or string; {_available(node)}")
    if isinstance(node, list):
        if not node:
            raise fail(f"'{where}' is an empty list, not a number or string")
        example = format_path((*gate.path, 0))
        raise fail(
            f"'{where}' is a list ({_items(len(node))}), not a number or string; "
            f"index it, e.g. {example}"
        )
    if not isinstance(node, (bool, int, float, str)):
        raise fail(f"'{where}' is {_kind(node)}, not a number or string")
    if isinstance(gate.value, str) and not isinstance(node, str):
        raise fail(
            f"'{where}' is {_kind(node)} ({_show(node)}), but the gate compares it with the "
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
