"""One formatter per kind of quantity, and one before/after vocabulary, for every report: the
diagnose and sweep tables in the terminal and in HTML. Pure standard library (no rich, no torch).

Kinds (a schema Leaf's `unit`, report/schema_spec.py):

- SHARE, a fraction of a count or a total (units, tokens, prompts, ‖Δ‖²): a percentage, with one
  decimal from 1% up ("59.1%", "100.0%", and "0.0%" for zero) and two significant digits below
  ("0.16%", "0.078%"), so a share that is not zero never reads as zero. JSON and `--fail-on`
  keep the fraction (59.1% is 0.591).
- NATS (entropy, NLL, KL, sharpness), RELATIVE (drift, ratios, skill retained) and plain
  numbers: 4 significant digits; the unit is in the label, not the cell.
- integers: thousands separators; sizes in bytes: `human_bytes`.
"""

from __future__ import annotations

import math

from rejuv_cli.report.schema_spec import SHARE

DASH = "–"


def number(x: object, digits: int = 4) -> str:
    """4 significant digits for floats (more where that would round a cosine of 0.99998 to 1),
    full integers with thousands separators, "–" for None / NaN, "yes" / "no" for booleans;
    anything else as text (not escaped)."""
    if x is None:
        return DASH
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if math.isnan(x):
            return DASH
        if math.isinf(x):
            return "∞" if x > 0 else "−∞"
        if x == 0:
            return "0"
        text = f"{x:.{digits}g}"
        if text in ("1", "-1") and abs(x) != 1:  # a cosine of 0.99998 is not 1
            text = f"{x:.7g}"
        return text
    return str(x)


def percent(x: object) -> str:
    """A share as a percentage: one decimal from 1% up (and for 0), two significant digits
    below."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or math.isnan(x):
        return DASH
    if math.isinf(x):
        return number(float(x))
    p = 100.0 * x
    if p == 0 or abs(p) >= 1:
        return f"{p:.1f}%"
    return f"{p:.2g}%"


def show(x: object, unit: str = "") -> str:
    """A value as the reports show a quantity of this kind (see the module docstring)."""
    if unit == SHARE and not isinstance(x, bool) and isinstance(x, (int, float)):
        return percent(x)
    return number(x)


def shown_at(path, x: object) -> str:
    """`x` formatted by the kind the report schema declares at `path` (keys)."""
    from rejuv_cli.report.schema import unit

    return show(x, unit(*path))


# The before/after vocabulary (terminal, HTML and the JSON comparison rows' `change`).
BETTER, WORSE, SAME = "better", "worse", "no change"


def change(before: object, after: object, better: str) -> str:
    """The candidate (`after`) against SFT (`before`) for a metric where `better` ("higher" or
    "lower") is better: "better", "worse" or "no change" (equal, or either not a number)."""
    nums = [v for v in (before, after) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(nums) < 2 or any(math.isnan(v) for v in nums) or after == before:
        return SAME
    up = after > before  # type: ignore[operator]
    return BETTER if up == (better == "higher") else WORSE
