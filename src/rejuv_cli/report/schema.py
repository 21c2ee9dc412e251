"""The structure of the `rejuv diagnose` report, declared once: every value's path, its kind,
the readable label the reports show beside the path, and when a section exists.

The report builder (diagnostics/) takes labels and the reasons a section is null from here; the
terminal and HTML reports print each metric's gate path next to its label; `--fail-on` paths
are checked against this before the run (`check_gate`), so a typo or a section this run will
not measure is a usage error at once rather than after an hour of forward passes. A test
checks that every path of real reports is declared here and every declared path occurs.

The declaration itself is data in `report/schema_spec.py`; this module walks it with the
paths of `report/paths.py`. Pure standard library; no torch.
"""

from __future__ import annotations

import math

from rejuv_cli.errors import UsageError
from rejuv_cli.report.gates import Gate
from rejuv_cli.report.paths import format_path, parse_path
from rejuv_cli.report.schema_spec import (
    ANY,
    CONDITIONS,
    EACH,
    ROLES,
    RUNTIME,
    SCHEMA,
    TAUS,
    Condition,
    Leaf,
    RunFlags,
)

__all__ = ["ANY", "CONDITIONS", "EACH", "ROLES", "RUNTIME", "SCHEMA", "TAUS", "Condition", "Leaf",
           "RunFlags", "check_gate", "explain_nulls", "fill_declared", "label", "leaf_patterns",
           "node_at", "parse_path", "pattern_of", "unit", "unmet"]  # fmt: skip


def _matches(part, key) -> bool:
    if key == ANY:
        return isinstance(part, str)
    if key == EACH:
        return isinstance(part, int)
    return part == key


def node_at(path) -> object | None:
    """The schema node (a Leaf or a dict of children) a concrete path names, or None."""
    pattern = pattern_of(path)
    if pattern is None:
        return None
    node: object = SCHEMA
    for key in pattern:
        node = node[key]
    return node


def leaf_patterns(node: dict | None = None, prefix: tuple = ()) -> dict[tuple, Leaf]:
    """Every declared scalar: pattern -> Leaf."""
    out = {}
    for key, child in (SCHEMA if node is None else node).items():
        if isinstance(child, Leaf):
            out[prefix + (key,)] = child
        else:
            out.update(leaf_patterns(child, prefix + (key,)))
    return out


def pattern_of(path) -> tuple | None:
    """The declared pattern a concrete path matches (ANY / EACH in place of its keys)."""
    node, out = SCHEMA, []
    for part in path:
        if not isinstance(node, dict):
            return None
        key = part if part in node and part not in (ANY, EACH) else next(
            (k for k in node if k in (ANY, EACH) and _matches(part, k)), None)  # fmt: skip
        if key is None:
            return None
        out.append(key)
        node = node[key]
    return tuple(out)


def unmet(path, flags: RunFlags) -> str | None:
    """Why these flags leave out the value at `path` ("'output' is not measured with
    --weights-only"), or None when they do not."""
    pattern = pattern_of(path) or ()
    for i in range(1, len(pattern) + 1):
        conditions = CONDITIONS.get(pattern[:i], ())
        for c in conditions if isinstance(conditions, tuple) else (conditions,):
            if not flags.holds(c.flag):
                return f"'{format_path(pattern[:i])}' {c.absent}"
    return None


def label(*path) -> str:
    """The readable label of the value at a concrete path ('' when it has none)."""
    node = node_at(path)
    return node.label if isinstance(node, Leaf) else ""


def unit(*path) -> str:
    """How the reports show the number at a concrete path: Leaf.unit ('' when undeclared)."""
    node = node_at(path)
    return node.unit if isinstance(node, Leaf) else ""


def check_gate(gate: Gate, flags: RunFlags) -> None:
    """Refuse, before the run, a gate whose path is not in the report's structure, names a
    section these flags leave out, or compares a value of the wrong kind."""

    def fail(message: str) -> UsageError:
        return UsageError(f"--fail-on {gate.text!r}: {message}")

    node: object = SCHEMA
    for depth, part in enumerate(gate.path):
        here = format_path(gate.path[:depth])
        under = f"under '{here}'" if depth else "at the top level"
        if not isinstance(node, dict):
            raise fail(f"'{here}' is a {node.kind}, not an object; it has no {part!r}")
        child = node_at(gate.path[: depth + 1])
        if child is None:
            raise fail(f"{_show(part)} is not a key of the report {under}; {_keys(node)}")
        node = child
    if why := unmet(gate.path, flags):
        raise fail(why)
    where = format_path(gate.path)
    if isinstance(node, dict):
        raise fail(f"'{where}' is an object or list, not a number or string; {_keys(node)}")
    text = isinstance(gate.value, str)
    if text and node.kind != "string":
        raise fail(f"'{where}' is a {node.kind}, but the gate compares it with the string "
                   f"{gate.value!r}; use a number")  # fmt: skip
    if not text and node.kind == "string":
        raise fail(f"'{where}' is a string, but the gate compares it with a number; use == "
                   "or != with a word")  # fmt: skip


def _show(part) -> str:
    return f"[{part}]" if isinstance(part, int) else repr(part)


def _keys(node: dict) -> str:
    names = []
    for k in node:
        names.append({ANY: "any key (e.g. a tensor name or layer number)",
                      EACH: "a list index [n]"}.get(k, k))  # fmt: skip
    return "available: " + ", ".join(names)


def fill_declared(report: dict) -> dict:
    """Give every declared key of every object in `report` a value: a key this run did not
    measure is set to null (`explain_nulls` then says why), so a consumer finds every key the
    schema declares, null or not, whatever the flags were. Objects that are themselves null
    stay null. Returns `report`, changed in place."""

    def walk(node, spec) -> None:
        if isinstance(node, dict) and isinstance(spec, dict):
            for key, child in spec.items():
                if key == ANY:
                    for value in node.values():
                        walk(value, child)
                elif key != EACH:
                    node.setdefault(key, None)
                    walk(node[key], child)
        elif isinstance(node, list) and isinstance(spec, dict) and EACH in spec:
            for value in node:
                walk(value, spec[EACH])

    walk(report, SCHEMA)
    return report


def explain_nulls(report: dict, flags: RunFlags, known: dict[str, str]) -> dict[str, str]:
    """`known` (reasons the builder recorded, by gate path) plus a reason for every other null
    or non-finite number in `report`: the flag that leaves it out, the declared reason it may
    be null, or "not a finite number". Keys are canonical gate paths; a reason for a section
    covers everything inside it."""
    out = dict(known)

    def covered(path: tuple) -> bool:
        return any(format_path(path[:i]) in out for i in range(1, len(path) + 1))

    def walk(node, path: tuple) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if path or key != "null_reasons":
                    walk(value, (*path, key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, (*path, i))
        elif isinstance(node, float) and not math.isfinite(node):
            if not covered(path):
                out[format_path(path)] = f"not a finite number ({node}); JSON has none"
        elif node is None and not covered(path):
            leaf = node_at(path)
            declared = leaf.nullable if isinstance(leaf, Leaf) else ""
            pattern = pattern_of(path) or ()
            out[format_path(path)] = (
                unmet(path, flags) or declared or RUNTIME.get(pattern) or "not measured"
            )

    walk(report, ())
    return out
