"""What every entry point checks before any work: the settings a call was given, the
calibration data, and the flag combinations that make no sense. The CLI's commands and the
Python functions (rejuv_cli.api) run the same checks. No torch."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from rejuv_cli.errors import UsageError
from rejuv_cli.settings import SETTINGS, Invalid, flag_default

# progress(label, total, unit) -> advance(n): how long work reports itself; unit "bytes" or a
# noun such as "batches"
Progress = Callable[[str, int, str], Callable[[int], None]]


def no_progress(label: str, total: int, unit: str = "bytes") -> Callable[[int], None]:
    return lambda n: None


def settings_for(command: str, given: dict) -> dict:
    """Every setting `command` takes (settings.SETTINGS), as the command line hands them to the
    command: a value that was given checked by its setting's validator (a list for a comma-list
    setting joined into its text), the flag's own default for the others (None where a recipe
    may supply the value). Raises UsageError naming an unknown setting or a bad value."""
    names = [name for name, s in SETTINGS.items() if command in s.commands]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise UsageError(f"{command}: unknown setting(s) {', '.join(unknown)}; the settings of "
                         f"{command} are {', '.join(names)}")  # fmt: skip
    values = {}
    for name in names:
        s, value = SETTINGS[name], given.get(name)
        if value is None:
            values[name] = flag_default(s, command)
            continue
        if s.comma_list and isinstance(value, list | tuple):
            value = ",".join(str(item) for item in value)
        if s.type is Path:
            value = Path(value)
        elif s.type is str and isinstance(value, os.PathLike):  # --calib, --recipe as a Path
            value = os.fspath(value)
        try:
            checked = s.parse_flag(value)
        except Invalid as e:
            raise UsageError(f"{name} ({s.flag}): {e}") from None
        values[name] = value if s.keep_text else checked
    return values


def check_calib(settings) -> None:
    """Parse the calibration data now, so malformed data is one line before any model is read
    (the forward code parses it again later; that costs milliseconds). `settings` holds calib,
    samples and the field names (ResetSettings, or a command's values as a dict). A table is
    read as far as `samples` rows; a Hub dataset is downloaded here."""
    from rejuv_cli.calib.data import load_examples
    from rejuv_cli.calib.fields import Fields

    get = settings.get if isinstance(settings, dict) else settings.__getattribute__
    load_examples(get("calib"), get("samples"), Fields.of(settings))


def check_checkable(settings) -> None:
    """--generate needs examples with a reference answer; refused before any model is read.
    `settings` as for `check_calib`."""
    from rejuv_cli.calib.data import load_examples
    from rejuv_cli.calib.fields import Fields

    get = settings.get if isinstance(settings, dict) else settings.__getattribute__
    calib = get("calib")
    examples = load_examples(calib, get("samples"), Fields.of(settings))
    if not any(e.answer is not None for e in examples):
        raise UsageError(
            f"--generate: none of the {len(examples)} examples of {calib} has a reference answer "
            'to check; add an "answer" field to each line (or end each response with a line '
            "'Answer: X'), or use builtin:math, or drop --generate"
        )


def parse_max_memory(text: str | int | None) -> int | None:
    """--max-memory in bytes (None: not given); its setting's validator already checked it."""
    from rejuv_cli.checkpoint.writer import parse_size

    return None if text is None else parse_size(text)


def check_mask_settings(values: dict, command: str = "fuse") -> None:
    """--mask fixes the units: the unit-selection settings and --save-mask make no sense with
    it."""
    if values.get("mask") is None:
        return
    clash = [SETTINGS[k].flag for k in ("fraction", "select", "modules", "max_per_module",
             "protect") if values[k] is not None]  # fmt: skip
    if clash:
        raise UsageError(f"--mask fixes which units are reset; drop {', '.join(clash)}")
    if values.get("save_mask") is not None:
        raise UsageError("--mask and --save-mask: the mask already exists; copy the file")
