"""config.json, read and checked once: every later reader can trust the fields rejuv uses.

Checked: the file is UTF-8 JSON holding an object; no byte-order mark (transformers cannot read
one); no NaN or Infinity (not standard JSON, and rejuv copies config.json into its output); and
the fields rejuv reads for every model (layer counts, vocab_size, model_type,
tie_word_embeddings, text_config, quantization_config; inside text_config too) have the JSON
type transformers expects: `"num_hidden_layers": "two"` or `"tie_word_embeddings": "yes"` would
otherwise make rejuv guess and transformers refuse the output. Counts are bounded, so a typo
such as 10**30 layers is one line rather than an attempt to allocate per layer. Widths and head
counts, which only a unit map reads, are checked where it reads them (arch/units.part_sizes);
other fields are left to transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

from rejuv_cli.errors import CheckpointError
from rejuv_cli.jsonio import first_non_finite

MAX_CONFIG_BYTES = 64 * 1024 * 1024  # the largest real configs are a few hundred KB
MAX_LAYERS = 100_000
MAX_SIZE = 2**31 - 1  # widths, heads, vocabulary: what an int32 index can address

# field -> smallest value; null is always allowed (transformers then derives a default)
_LAYER_FIELDS = {"num_hidden_layers": 0, "n_layer": 0, "num_layers": 0,
                 "num_nextn_predict_layers": 0}  # fmt: skip
# Widths and head counts only matter to a unit map; arch/units.part_sizes checks them there, so
# an unmapped family with, say, a per-layer list of widths still fuses.
_SIZE_FIELDS = {"vocab_size": 1}
_STRING_FIELDS = ("model_type",)
_BOOL_FIELDS = ("tie_word_embeddings",)
_OBJECT_FIELDS = ("text_config", "quantization_config")


def read_config(path: Path, label: str) -> dict:
    """config.json at `path` as a dict; CheckpointError (one line naming the file and the
    field) when it cannot be read or does not hold what rejuv relies on."""

    def fail(problem: str) -> CheckpointError:
        return CheckpointError(f"{label}: {path}: {problem}")

    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise fail(f"larger than {MAX_CONFIG_BYTES >> 20} MiB; not a model config")
        raw = path.read_bytes()
    except OSError as e:
        raise fail(f"cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise fail(f"not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    if text.startswith("\ufeff"):  # transformers' json.loads refuses it too
        raise fail("starts with a byte-order mark (U+FEFF), which transformers cannot read; "
                   "save the file as UTF-8 without BOM")  # fmt: skip
    try:
        config = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as e:
        raise fail(f"not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    except _NonStandard as e:
        where, _ = first_non_finite(json.loads(text), "")
        raise fail(f"{where or 'a value'} is {e}, which is not standard JSON (and rejuv writes "
                   "only standard JSON); replace it with a number or null") from None  # fmt: skip
    except RecursionError:
        raise fail("not valid JSON: nested too deeply") from None
    except ValueError as e:  # an integer with more digits than Python converts
        raise fail(f"not valid JSON: a number is too long ({str(e).split(':')[0]})") from None
    if not isinstance(config, dict):
        raise fail(f"must hold a JSON object, not {_kind(config)}")
    problem = config_problem(config)
    if problem is not None:
        raise fail(problem)
    return config


def vocab_size(config: dict) -> int | None:
    """The vocabulary size config.json declares, at the top level or in `text_config`
    (multimodal models), or None."""
    for cfg in (config, config.get("text_config") or {}):
        if isinstance(cfg.get("vocab_size"), int):
            return cfg["vocab_size"]
    return None


def config_problem(config: dict, prefix: str = "") -> str | None:
    """The first field rejuv reads that has the wrong type or an impossible value, as
    "FIELD: must be ... (got ...)", or None."""
    for key, lo in (_LAYER_FIELDS | _SIZE_FIELDS).items():
        value = config.get(key)
        hi = MAX_LAYERS if key in _LAYER_FIELDS else MAX_SIZE
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi
        ):
            return f"{prefix}{key}: must be an integer from {lo} to {hi} (got {_show(value)})"
    for keys, kind, types in ((_STRING_FIELDS, "a string", str), (_BOOL_FIELDS, "true or false",
                              bool), (_OBJECT_FIELDS, "an object", dict)):  # fmt: skip
        for key in keys:
            value = config.get(key)
            if value is not None and not isinstance(value, types):
                return f"{prefix}{key}: must be {kind} or null (got {_show(value)})"
    text_config = config.get("text_config")
    if isinstance(text_config, dict) and not prefix:
        return config_problem(text_config, "text_config.")
    return None


class _NonStandard(ValueError):
    pass


def _refuse_constant(name: str):
    raise _NonStandard(name)


def _kind(value) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _show(value) -> str:
    if isinstance(value, dict | list):
        return _kind(value) if not isinstance(value, dict) else "an object"
    try:
        text = json.dumps(value)
    except ValueError:  # an int with more digits than Python converts to text
        return "a number too long to show"
    return text if len(text) <= 40 else f"{text[:37]}..."
