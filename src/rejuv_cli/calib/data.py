"""Calibration examples: the built-in sets and user JSONL files, validated at load.

A JSONL line is either `{"prompt": "...", "response": "..."}` (one user turn, one assistant
turn) or `{"messages": [{"role": ..., "content": ...}, ...]}` with roles system, user,
assistant and tool and plain-string contents. Assistant turns are what the calibration scores
(teacher-forced predictions); everything else is context. Other keys on a line or a message
are ignored, so structured fields such as `tool_calls` never reach a chat template that cannot
render them.

A line may add `"answer"` (a string or a number): the reference that `--generate` checks the
model's final answer against. Without it, a last assistant turn whose last line is
`Answer: X` supplies X (builtin:math is written that way); otherwise the example is not
checkable.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rejuv_cli.errors import CalibError

BUILTIN: dict[str, str] = {
    "math": "arithmetic word problems with short step-by-step worked answers (prompt/response)",
    "tool_use": "chat dialogues with plain-text JSON tool calls, tool results and final answers",
}
ROLES = ("system", "user", "assistant", "tool")
MAX_PROBLEMS = 20  # lines shown in one error; the rest are counted


@dataclass(frozen=True)
class Example:
    """One conversation. `source` names where it came from: `builtin:math:3` or
    `path/file.jsonl:12` (1-based line numbers), for warnings and errors downstream."""

    messages: tuple[dict, ...]  # each {"role": str, "content": str}
    source: str
    answer: str | None = None  # the reference answer (`reference_answer`), None: not checkable


def load_examples(spec: str, limit: int | None = None) -> list[Example]:
    """Examples from `builtin:NAME` or a JSONL file, in file order; the first `limit` if given.

    Fewer than `limit` available is not an error (the caller reports the count). Raises
    CalibError for an unknown built-in, a missing or unreadable file, an empty file, or
    malformed lines (all of them listed, one `FILE:LINE: problem` per line).
    """
    if limit is not None and limit < 1:
        raise CalibError(f"calibration limit must be at least 1 (got {limit})")
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name not in BUILTIN:
            raise CalibError(
                f"unknown built-in calibration set {name!r}; known: "
                f"{', '.join('builtin:' + n for n in sorted(BUILTIN))}, or pass the path of a "
                "JSONL file"
            )
        # Package data: read through importlib.resources so it works from a wheel or zip too.
        text = (resources.files("rejuv_cli.calib") / "builtin" / f"{name}.jsonl").read_text(
            encoding="utf-8"
        )
    else:
        text = _read_file(spec)
    examples = parse_jsonl(text, spec)
    return examples if limit is None else examples[:limit]


def _read_file(spec: str) -> str:
    path = Path(spec).expanduser()
    if not path.exists():
        hint = f"builtin:{spec}" if spec in BUILTIN else "builtin:math"
        raise CalibError(
            f"calibration file {spec!r} does not exist; pass a JSONL file of prompt/response "
            f"or messages lines, or a built-in set such as {hint}"
        )
    if path.is_dir():
        raise CalibError(f"calibration data {spec!r} is a directory; pass a JSONL file")
    try:
        # utf-8-sig: a byte-order mark (Windows editors write one) is not part of line 1
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise CalibError(f"{spec}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise CalibError(f"{spec}: cannot read calibration file: {e.strerror or e}") from None


def parse_jsonl(text: str, label: str) -> list[Example]:
    """Validate and convert JSONL text; `label` prefixes sources and error lines.

    Blank lines are skipped but still counted, so line numbers match an editor's.
    """
    examples: list[Example] = []
    problems: list[str] = []
    # split("\n"), not splitlines(): U+2028 and friends may appear raw inside JSON strings.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        where = f"{label}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{where}: not valid JSON at column {e.colno}: {e.msg}")
            continue
        except RecursionError:
            problems.append(f"{where}: not valid JSON: nested too deeply")
            continue
        except ValueError:  # an integer with more digits than Python converts
            problems.append(f"{where}: not valid JSON: a number has too many digits")
            continue
        messages, found = _messages(obj)
        answer, bad = _answer(obj)
        found += [bad] if bad else []
        problems += [f"{where}: {p}" for p in found]
        if not found:
            examples.append(Example(messages, where, answer or reference_answer(messages)))
    if problems:
        shown = problems[:MAX_PROBLEMS]
        if len(problems) > MAX_PROBLEMS:
            shown.append(f"... and {len(problems) - MAX_PROBLEMS} more")
        raise CalibError("\n".join(shown))
    if not examples:
        raise CalibError(f"{label}: no examples (the file is empty or has only blank lines)")
    return examples


def _messages(obj) -> tuple[tuple[dict, ...], list[str]]:
    """One parsed line -> (messages, problems); messages are only meaningful without problems."""
    if not isinstance(obj, dict):
        return (), [f"expected a JSON object, got {_kind(obj)}"]
    pair = "prompt" in obj or "response" in obj
    if "messages" in obj and pair:
        return (), ["has both 'messages' and 'prompt'/'response'; use one format per line"]
    if pair:
        problems = [p for key in ("prompt", "response") if (p := _text(obj, key, key))]
        messages = (
            {"role": "user", "content": obj.get("prompt")},
            {"role": "assistant", "content": obj.get("response")},
        )
        return messages, problems
    if "messages" not in obj:
        keys = ", ".join(repr(k)[:40] for k in list(obj)[:8]) or "none"
        keys += f", ... ({len(obj) - 8} more)" if len(obj) > 8 else ""
        return (), [f"expected 'messages' or 'prompt' and 'response' (keys found: {keys})"]
    raw = obj["messages"]
    if not isinstance(raw, list) or not raw:
        return (), [f"'messages' must be a non-empty list (got {_kind(raw)})"]
    problems: list[str] = []
    messages = []
    for i, m in enumerate(raw):
        at = f"messages[{i}]"
        if not isinstance(m, dict):
            problems.append(f"{at}: expected an object with 'role' and 'content', got {_kind(m)}")
            continue
        role = m.get("role")
        if "role" not in m:
            problems.append(f"{at}.role: missing")
        elif role not in ROLES:
            problems.append(f"{at}.role: {role!r} is not one of {', '.join(ROLES)}")
        if p := _text(m, "content", f"{at}.content"):
            problems.append(p)
        messages.append({"role": role, "content": m.get("content")})
    if not any(m["role"] == "assistant" for m in messages):
        problems.append("no assistant message (nothing to score)")
    return tuple(messages), problems


# A reference response whose last line is `Answer: X` states its answer (builtin:math's do).
_ANSWER_LINE = re.compile(r"^\s*Answer:\s*(\S.*?)\s*$")


def reference_answer(messages: tuple[dict, ...]) -> str | None:
    """The answer a conversation's last assistant turn states on its last line as `Answer: X`
    (X), or None. Used when an example has no `answer` field."""
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    lines = replies[-1].strip().split("\n") if replies else []
    match = _ANSWER_LINE.match(lines[-1]) if lines else None
    return match.group(1) if match else None


def _answer(obj) -> tuple[str | None, str | None]:
    """A line's optional `answer` field as text, or a problem: a string or a number."""
    if not isinstance(obj, dict) or "answer" not in obj:
        return None, None
    value = obj["answer"]
    if isinstance(value, str) and value.strip():
        return value.strip(), None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return json.dumps(value), None  # the number as the file wrote it (1.5, 12)
    return None, f"answer: must be a non-empty string or a number (got {_kind(value)})"


def _text(obj: dict, key: str, name: str) -> str | None:
    """Problem with obj[key] as a non-empty string, or None."""
    if key not in obj:
        return f"{name}: missing"
    value = obj[key]
    if not isinstance(value, str):
        return f"{name}: must be a string (got {_kind(value)})"
    if not value.strip():
        return f"{name}: is empty"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # a JSON escape such as "\ud800" without its pair
        return (f"{name}: not valid Unicode text (lone surrogate \\u{ord(value[e.start]):04x} "
                f"at character {e.start}); no tokenizer can encode it")  # fmt: skip
    return None


def _kind(value) -> str:
    """JSON's name for a parsed value's type, as the user wrote it."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")
