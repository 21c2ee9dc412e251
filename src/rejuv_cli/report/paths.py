"""Metric paths into a report: one grammar, one reader.

A path names one value of a report (the JSON `rejuv diagnose --json` writes) the way
`--fail-on` spells it::

    path    := key ( "." key | "[" int "]" | "[" quoted "]" )*
    key     := [A-Za-z_][A-Za-z0-9_]*
    int     := -?[0-9]+                 list index; negative counts from the end
    quoted  := "..." or '...'           any characters but the quote itself; no escapes

`resolve` is the one reader of a path on a real report: the verdict rules, the before/after
comparison rows (`lookup`, which reads a missing or null value as None) and `--fail-on`
(`report/gates.py`, which wants to know why a value is missing) all go through it. The
report's declared structure (`report/schema.py`) is walked with the same parsed paths before
the run. Pure standard library; imports nothing from the project but `rejuv_cli.errors`.
"""

from __future__ import annotations

import re

from rejuv_cli.errors import UsageError

Path = tuple[str | int, ...]
EXAMPLE = '--fail-on "output.entropy_mean<0.18"'
MAX_LISTED = 15
KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT = re.compile(r"-?[0-9]+")


class PathError(ValueError):
    """A path that does not lead to a scalar of the report; the message says why."""


class Scanner:
    """A cursor over one `--fail-on` expression; `path()` reads the path grammar above."""

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

    def path(self) -> Path:
        self.skip_space()
        key = self.match(KEY)
        if key is None:
            raise self.fail("expected a key")
        parts: list[str | int] = [key]
        while True:
            self.skip_space()
            c = self.peek()
            if c == ".":
                self.pos += 1
                self.skip_space()
                key = self.match(KEY)
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

    def end(self) -> None:
        self.skip_space()
        if self.pos < len(self.text):
            raise self.fail("expected the end of the expression")


def parse_path(text: str) -> Path:
    """A path in gate syntax (`units.dormant["0.025"]`) as a tuple of keys and indexes."""
    scanner = Scanner(text)
    path = scanner.path()
    scanner.end()
    return path


def format_path(path: Path | list[str | int]) -> str:
    """Canonical text of a path: `a.b`, `a["x.y"]`, `a[0]`."""
    out: list[str] = []
    for i, part in enumerate(path):
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif KEY.fullmatch(part):
            out.append(part if i == 0 else f".{part}")
        else:
            quote = "'" if '"' in part and "'" not in part else '"'
            out.append(f"[{quote}{part}{quote}]")
    return "".join(out)


def kind(value: object) -> str:
    """'a number', 'an object', ... for messages (booleans are not numbers here)."""
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


def resolve(report: dict, path: Path) -> bool | int | float | str:
    """The scalar at `path` in `report`. Every way of not finding one (a missing key or index,
    a null, with the report's `null_reasons` entry for it, an object or a list) is a
    PathError whose message names the place and what is there instead."""
    node: object = report
    for depth, part in enumerate(path):
        here = format_path(path[:depth])
        under = f"under '{here}'" if depth else "at the top level"
        if isinstance(part, int):
            if isinstance(node, list):
                if not -len(node) <= part < len(node):
                    raise PathError(
                        f"index {part} not found {under} (a list of {_items(len(node))})"
                    )
                node = node[part]
            elif isinstance(node, dict):
                raise PathError(f"'{here}' is an object, not a list; {_available(node)}")
            else:
                raise PathError(f"'{here}' is {kind(node)}, not a list; it has no [{part}]")
        elif isinstance(node, dict):
            if part not in node:
                raise PathError(f"'{part}' not found {under}; {_available(node)}")
            node = node[part]
        elif isinstance(node, list):
            example = format_path((*path[:depth], 0))
            raise PathError(
                f"'{here}' is a list ({_items(len(node))}), not an object; index it, e.g. {example}"
            )
        else:
            raise PathError(f"'{here}' is {kind(node)}, not an object; it has no '{part}'")
        if node is None:
            where = format_path(path[: depth + 1])
            # The diagnose report says why each of its nulls is null (report/schema.py).
            why = (report.get("null_reasons") or {}).get(where) or "not measured in this run"
            raise PathError(f"'{where}' is null in this report ({why})")

    where = format_path(path)
    if isinstance(node, dict):
        raise PathError(f"'{where}' is an object, not a number or string; {_available(node)}")
    if isinstance(node, list):
        if not node:
            raise PathError(f"'{where}' is an empty list, not a number or string")
        example = format_path((*path, 0))
        raise PathError(
            f"'{where}' is a list ({_items(len(node))}), not a number or string; "
            f"index it, e.g. {example}"
        )
    if not isinstance(node, (bool, int, float, str)):
        raise PathError(f"'{where}' is {kind(node)}, not a number or string")
    return node


def lookup(report: dict, path: Path | str) -> bool | int | float | str | None:
    """The scalar at `path` (a tuple or its text), or None where `resolve` finds none (a
    section this run did not measure, a key it does not have)."""
    try:
        return resolve(report, parse_path(path) if isinstance(path, str) else path)
    except PathError:
        return None


def model_blocks(section: str, block: dict) -> list[tuple[str, Path, dict | None]]:
    """(model, path, its block) for BASE, SFT and the candidate in a per-model section such as
    `output` or `units`: SFT's numbers sit at the section's root, the others under their name."""
    return [
        ("base", (section, "base"), block.get("base")),
        ("sft", (section,), block),
        ("candidate", (section, "candidate"), block.get("candidate")),
    ]
