"""JSON as rejuv writes it: standard JSON only, never NaN or Infinity.

Python's json module writes `NaN` and `Infinity` by default, which strict parsers (jq, JSON
Schema validators, JavaScript's JSON.parse, Go, Rust's serde_json) reject. Every JSON file and
every `--json` output of rejuv goes through `dumps`, which refuses them; a report whose numbers
can legitimately be undefined passes through `json_safe` first (non-finite -> null).

Pure standard library; imports nothing from the project but `rejuv_cli.errors`.
"""

from __future__ import annotations

import json
import math

from rejuv_cli.errors import RejuvError


def json_safe(value):
    """NaN and ±inf become null (JSON has no such numbers; null reads "not measured")."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def dumps(data, what: str, **kwargs) -> str:
    """`data` as standard JSON text (json.dumps with `kwargs`, default indent=2).

    A NaN or infinity anywhere in `data` is a RejuvError naming `what` (the file or stream)
    and the key: such a value means a setting or measurement slipped past its check, and a
    file that strict parsers reject is worse than no file.
    """
    kwargs.setdefault("indent", 2)
    try:
        return json.dumps(data, allow_nan=False, **kwargs)
    except ValueError:
        where, value = first_non_finite(data, "")
        if where is None:
            raise
        raise RejuvError(
            f"{what}: {where or 'the value'} is {value}, which standard JSON cannot represent; "
            "nothing was written (this is a bug in rejuv: please report it)"
        ) from None


def first_non_finite(value, path: str = "") -> tuple[str | None, float | None]:
    """(dotted path, value) of the first NaN/±inf inside `value`, or (None, None)."""
    if isinstance(value, float) and not math.isfinite(value):
        return path, value
    if isinstance(value, dict):
        items = ((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
    elif isinstance(value, list | tuple):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return None, None
    for sub, v in items:
        found = first_non_finite(v, sub)
        if found[0] is not None:
            return found
    return None, None
