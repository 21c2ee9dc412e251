"""Final answers of generated responses, checked against a reference. Pure text; no torch.

The rule (`grade` applies it; `extract_answer` and `is_correct` are its two halves):

1. **An `Answer:` line.** If the response contains `Answer:` (any case, also as in
   `Final answer:`), the answer is the text after the *first* one up to the end of that line,
   or the next non-empty line when nothing follows it on its own. The first, because a model
   that keeps going after answering tends to invent a further question and answer.
   For a numeric reference, when that text is not itself a number (`66 apples`, `= 66`), the
   answer is the last number in it; a line with no number stays as it is (and is wrong).
2. **Otherwise**, for a numeric reference, the last number in the whole response
   (`27+5=32` -> 32, the reward of the handoff toy task); for any other reference, the
   response's last non-empty line (a reply that is only the answer: `Paris`).
3. **No answer** (no number, an empty response, `Answer:` with nothing after it) is wrong;
   callers count these separately, as a sign of a format or length problem.

A *number* is an optional sign (`-`, `+`, `−`), an optional `$`, digits with optional comma
thousands separators (`1,234`) and an optional decimal part (`0.5`, `.5`), and an optional
trailing `%`, which is ignored. A `-` right after a digit, letter or `.` is a subtraction, not
a sign: `27-5` ends in the number 5. A reference is numeric when it is such a number
(surrounding punctuation aside).

**Correct** when predicted and reference both are numbers and |p − r| <= 1e-6 · max(1, |r|)
(`66` = `66.0` = `$66` = `66.`, `1,234` = `1234`); otherwise when their normalised texts are
equal: Unicode NFKC, case-folded, whitespace runs made one space, and surrounding whitespace,
quotes, brackets, `*`, `_` and `.,;:!?` stripped (`**(B).**` = `b`).
"""

from __future__ import annotations

import math
import re
import unicodedata

REL_TOL = 1e-6  # numbers are equal when |p - r| <= REL_TOL * max(1, |r|)

_ANSWER = re.compile(r"\banswer\s*:", re.IGNORECASE)
# A number inside text. The lookbehind keeps `27-5` from reading as 27 and -5, and `x2` or
# `1.5.2` from yielding a number mid-token. Thousands groups must be exactly three digits.
_NUMBER = re.compile(
    r"(?<![\w.])[-+\u2212]?\$?"
    r"(?:[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])(?:\.[0-9]+)?|[0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
)
_WHOLE_NUMBER = re.compile(
    r"[-+\u2212]?\s*\$?\s*(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)?(?:\.[0-9]+)?\s*%?"
)
# Stripped from both ends before comparing text (and around a number before parsing it).
_SURROUNDING = " \t\r\n\"'`*_()[]{}<>\u201c\u201d\u2018\u2019\u00ab\u00bb.,;:!?"
_TRAILING = ".,;:!?"  # a number keeps its leading `.` (`.5`) but not a trailing one (`66.`)


def normalise(text: str) -> str:
    """Text for exact-match comparison: NFKC, case-folded, whitespace runs as one space,
    surrounding quotes, brackets, markdown emphasis and `.,;:!?` stripped."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(text.split()).strip(_SURROUNDING)


def parse_number(text: str) -> float | None:
    """The value of `text` when all of it is one number (see the module docstring), else None.
    `$1,234.50` -> 1234.5; `66.` -> 66.0; `-.5` -> -0.5; `50%` -> 50.0; `1,23` -> None."""
    text = unicodedata.normalize("NFKC", text).strip()
    text = text.strip(_SURROUNDING.replace(".", "")).rstrip(_TRAILING).strip()
    if not re.search("[0-9]", text) or not _WHOLE_NUMBER.fullmatch(text):
        return None
    digits = re.sub(r"[\s$,%+]", "", text).replace("\u2212", "-")
    try:
        value = float(digits)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def last_number(text: str) -> str | None:
    """The last number in `text` as written (`$1,234`), or None when it has none."""
    found = _NUMBER.findall(text)
    return found[-1] if found else None


def extract_answer(text: str, numeric: bool = True) -> str | None:
    """The final answer a response states (rule 1 and 2 of the module docstring), or None.

    `numeric`: the reference is a number, so the answer is a number where one can be found
    (`grade` decides it from the reference). The answer is returned as written; compare it
    with `is_correct`.
    """
    match = _ANSWER.search(text)
    if match:
        rest = text[match.end() :].split("\n")
        line = rest[0].strip() or next((r.strip() for r in rest[1:] if r.strip()), "")
        if not line:
            return None
        if numeric and parse_number(line) is None:
            return last_number(line) or line
        return line
    if numeric:
        return last_number(text)
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    return lines[-1] if lines else None


# --checker: auto reads a reference that is a number as one (the rule above); number always
# does (a reference that is not a number is never matched); text never does (normalised text
# only: `66` and `66.0` differ, and the answer is the `Answer:` text or the last line).
CHECKERS = ("auto", "number", "text")


def is_correct(predicted: str | None, reference: str, checker: str = "auto") -> bool:
    """Whether `predicted` (from `extract_answer`; None: no answer) matches `reference`:
    numerically within REL_TOL when both are numbers (not with checker "text"), else as
    normalised text (not with checker "number")."""
    if predicted is None:
        return False
    p, r = parse_number(predicted), parse_number(reference)
    if checker == "number":
        return p is not None and r is not None and abs(p - r) <= REL_TOL * max(1.0, abs(r))
    if p is not None and r is not None and checker == "auto":
        return abs(p - r) <= REL_TOL * max(1.0, abs(r))
    return normalise(predicted) == normalise(reference)


def grade(response: str, reference: str, checker: str = "auto") -> tuple[str | None, bool]:
    """(the answer `response` states or None, whether it is correct) against `reference`,
    by one of CHECKERS."""
    if checker not in CHECKERS:
        raise ValueError(f"unknown checker {checker!r}; known: {', '.join(CHECKERS)}")
    numeric = {"auto": parse_number(reference) is not None, "number": True, "text": False}
    predicted = extract_answer(response, numeric=numeric[checker])
    return predicted, is_correct(predicted, reference, checker)
