"""Calibration examples: the built-in sets, user files and Hub datasets, validated at load.

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

A Parquet file is read the same way, one row per example (`messages`: a list of
{role, content} structs); `Fields` renames the four keys or columns for data that calls them
otherwise (`--prompt-field` etc.). A Hub dataset id `org/name[@revision]` that is not a local
path reads one data file of the dataset (calib/hub.py, files.pick_data_file).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rejuv_cli.calib import files
from rejuv_cli.calib.fields import Fields
from rejuv_cli.calib.hub import dataset_id, download_dataset, hub_label
from rejuv_cli.errors import CalibError

BUILTIN: dict[str, str] = {
    "math": "arithmetic word problems with short step-by-step worked answers (prompt/response)",
    "tool_use": "chat dialogues with plain-text JSON tool calls, tool results and final answers",
}
ROLES = ("system", "user", "assistant", "tool")
MAX_PROBLEMS = 20  # lines shown in one error; the rest are counted


@dataclass(frozen=True)
class Example:
    """One conversation. `source` names where it came from, for warnings and errors downstream:
    `builtin:math:3`, `path/file.jsonl:12` (1-based line numbers), `path/file.parquet:row 0`
    (0-based row numbers, as pandas and datasets index), `hf://datasets/org/name/FILE:...`."""

    messages: tuple[dict, ...]  # each {"role": str, "content": str}
    source: str
    answer: str | None = None  # the reference answer (`reference_answer`), None: not checkable


def load_examples(
    spec: str, limit: int | None = None, fields: Fields | None = None,
    notes: list[str] | None = None,
) -> list[Example]:  # fmt: skip
    """Examples from `builtin:NAME`, a JSONL or Parquet file, or a Hub dataset id
    `org/name[@revision]`, in file order; the first `limit` if given.

    `fields` names the keys or columns of the user's data (not of the built-in sets). A note
    on what was read (the file chosen among a dataset's several) is appended to `notes`.
    Fewer than `limit` available is not an error (the caller reports the count). Raises
    CalibError for an unknown built-in, a missing or unreadable file, an empty file, or
    malformed lines (all of them listed, one `FILE:LINE: problem` per line). A JSONL file is
    validated whole; a table only as far as `limit` rows (a Hub dataset may have millions).
    """
    if limit is not None and limit < 1:
        raise CalibError(f"calibration limit must be at least 1 (got {limit})")
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name not in BUILTIN:
            raise CalibError(
                f"unknown built-in calibration set {name!r}; known: "
                f"{', '.join('builtin:' + n for n in sorted(BUILTIN))}, or pass the path of a "
                "JSONL or Parquet file"
            )
        # Package data: read through importlib.resources so it works from a wheel or zip too.
        text = (resources.files("rejuv_cli.calib") / "builtin" / f"{name}.jsonl").read_text(
            encoding="utf-8"
        )
        examples = parse_jsonl(text, spec)  # the built-in sets use the default names
        return examples if limit is None else examples[:limit]
    fields = fields or Fields()
    path = Path(spec).expanduser()
    hub = None if path.exists() else dataset_id(spec)  # a local path wins
    if hub is None:
        return _from_file(_check_file(path, spec), spec, fields, limit)
    snapshot = download_dataset(spec, *hub)
    name, note = files.pick_data_file(snapshot, spec)
    if note and notes is not None:
        notes.append(note)
    return _from_file(snapshot / name, hub_label(*hub, name), fields, limit)


def _check_file(path: Path, spec: str) -> Path:
    """`path` when it is a file; the error for a missing path or a directory otherwise."""
    if not path.exists():
        hint = f"builtin:{spec}" if spec in BUILTIN else "builtin:math"
        raise CalibError(
            f"calibration file {spec!r} does not exist; pass a JSONL or Parquet file of "
            "prompt/response or messages examples, a Hub dataset id org/name[@revision], or a "
            f"built-in set such as {hint}"
        )
    if path.is_dir():
        raise CalibError(f"calibration data {spec!r} is a directory; pass a JSONL or Parquet file")
    return path


def _from_file(path: Path, label: str, fields: Fields, limit: int | None) -> list[Example]:
    if files.is_parquet(path):
        wanted = (fields.prompt, fields.response, fields.answer, fields.messages)
        names, rows = files.read_parquet(path, label, wanted, limit)
        files.check_columns(names, label, fields)
        examples = parse_rows(rows, label, fields)
    else:
        text = files.read_text(path, label)
        files.refuse_json_array(text, label)
        examples = parse_jsonl(text, label, fields)
    return examples if limit is None else examples[:limit]


def parse_jsonl(text: str, label: str, fields: Fields | None = None) -> list[Example]:
    """Validate and convert JSONL text; `label` prefixes sources and error lines.

    Blank lines are skipped but still counted, so line numbers match an editor's.
    """
    fields = fields or Fields()
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
        _convert(obj, where, fields, "line", examples, problems)
    return _done(examples, problems, f"{label}: no examples (the file is empty or has only "
                 "blank lines)")  # fmt: skip


def parse_rows(rows: list[dict], label: str, fields: Fields | None = None) -> list[Example]:
    """Validate and convert a table's rows (dicts, null cells left out) like JSONL objects;
    sources are `LABEL:row N`, N from 0."""
    fields = fields or Fields()
    examples: list[Example] = []
    problems: list[str] = []
    for number, row in enumerate(rows):
        _convert(row, f"{label}:row {number}", fields, "row", examples, problems)
    return _done(examples, problems, f"{label}: no examples (the table has no rows)")


def _convert(obj, where: str, fields: Fields, unit: str, examples: list, problems: list) -> None:
    """One parsed object -> an Example appended to `examples`, or its problems to `problems`."""
    messages, found = _messages(obj, fields, unit)
    answer, bad = _answer(obj, fields)
    found += [bad] if bad else []
    problems += [f"{where}: {p}" for p in found]
    if not found:
        examples.append(Example(messages, where, answer or reference_answer(messages)))


def _done(examples: list[Example], problems: list[str], empty: str) -> list[Example]:
    if problems:
        shown = problems[:MAX_PROBLEMS]
        if len(problems) > MAX_PROBLEMS:
            shown.append(f"... and {len(problems) - MAX_PROBLEMS} more")
        raise CalibError("\n".join(shown))
    if not examples:
        raise CalibError(empty)
    return examples


def _messages(obj, f: Fields, unit: str = "line") -> tuple[tuple[dict, ...], list[str]]:
    """One parsed line or row -> (messages, problems); messages are only meaningful without
    problems. Problems name the fields as the data calls them (`f`)."""
    if not isinstance(obj, dict):
        return (), [f"expected a JSON object, got {_kind(obj)}"]
    pair = f.prompt in obj or f.response in obj
    if f.messages in obj and pair:
        return (), [f"has both {f.messages!r} and {f.prompt!r}/{f.response!r}; use one format "
                    f"per {unit}"]  # fmt: skip
    if pair:
        problems = [p for key in (f.prompt, f.response) if (p := _text(obj, key, key))]
        messages = (
            {"role": "user", "content": obj.get(f.prompt)},
            {"role": "assistant", "content": obj.get(f.response)},
        )
        return messages, problems
    if f.messages not in obj:
        keys = ", ".join(repr(k)[:40] for k in list(obj)[:8]) or "none"
        keys += f", ... ({len(obj) - 8} more)" if len(obj) > 8 else ""
        return (), [f"expected {f.messages!r} or {f.prompt!r} and {f.response!r} (keys found: "
                    f"{keys})"]  # fmt: skip
    raw = obj[f.messages]
    if not isinstance(raw, list) or not raw:
        return (), [f"{f.messages!r} must be a non-empty list (got {_kind(raw)})"]
    problems: list[str] = []
    messages = []
    for i, m in enumerate(raw):
        at = f"{f.messages}[{i}]"
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


def _answer(obj, f: Fields) -> tuple[str | None, str | None]:
    """A line's optional answer field as text, or a problem: a string or a number."""
    if not isinstance(obj, dict) or f.answer not in obj:
        return None, None
    value = obj[f.answer]
    if isinstance(value, str) and value.strip():
        return value.strip(), None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return json.dumps(value), None  # the number as the file wrote it (1.5, 12)
    return None, f"{f.answer}: must be a non-empty string or a number (got {_kind(value)})"


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
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
             int: "number", float: "number"}  # fmt: skip
    return names.get(type(value), type(value).__name__)  # a table's date, bytes, Decimal...
