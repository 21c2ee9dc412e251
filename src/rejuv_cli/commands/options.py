"""Typer options generated from `settings.SETTINGS`: names, type, default, help and validator.

A command lists the settings it takes; `with_settings` adds one keyword parameter per setting to
its signature (Typer reads the signature), so the command body receives them in `**values`.
A flag's value is checked by its setting's validator while Click parses the command line, so
a bad value is a usage error (exit 2) before any work, with the recipe's phrase:
`--reset: must be >= 0.0 and <= 0.5 (got 0.7)`.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated

import typer

from rejuv_cli.errors import UsageError
from rejuv_cli.reset.registry import CALIB_PARAMS
from rejuv_cli.settings import SETTINGS, Invalid, Range, Setting, flag_default


def _callback(s: Setting):
    def validate(ctx, param, value):
        if value is None or ctx.resilient_parsing:
            return value
        try:
            checked = s.parse_flag(value)
        except Invalid as e:
            raise UsageError(f"{s.flag}: {e}") from None
        return value if s.keep_text else checked

    return validate


def _bounds(r: Range) -> str:
    """A range as Click wrote it in help texts before the settings table: 0.0<=x<=0.5, x>=1."""
    low = f"{r.lo}<x" if r.lo_open else f"{r.lo}<=x"
    if r.hi == float("inf"):
        return f"x>{r.lo}" if r.lo_open else f"x>={r.lo}"
    return f"{low}<={r.hi}"


def option(name: str, command: str):
    """The typer.Option of setting `name` in `command`, its default shown in the help text (a
    recipe may supply fuse's values, so there the flag's own default is None)."""
    s = SETTINGS[name]
    text = s.help
    if command == "fuse" and name in CALIB_PARAMS:  # fuse reads them only for these scorers
        text = f"Data scorers only. {text}"
    if "[default:" not in text and s.default_text() is not None:
        text += f" [default: {s.default_text()}]"
    if isinstance(s.check, Range):
        text += f" [{_bounds(s.check)}]"
    kw: dict = {}
    if s.type is Path:
        kw["dir_okay"], kw["file_okay"] = s.directory, not s.directory
    choices = getattr(s.check, "choices", None)
    if isinstance(choices, tuple):
        kw["metavar"] = f"[{'|'.join(choices)}]"
    if s.metavar:
        kw["metavar"] = s.metavar
    if s.panel and command in ("fuse", "sweep"):
        kw["rich_help_panel"] = s.panel
    return typer.Option(*s.flags, help=text, show_default=False, callback=_callback(s), **kw)


def with_settings(command: str, names: tuple[str, ...], after: str):
    """Decorator: add the settings `names` as keyword parameters after parameter `after`."""

    def decorate(fn):
        sig = inspect.signature(fn, eval_str=True)
        params = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        added = []
        for name in names:
            s = SETTINGS[name]
            default = flag_default(s, command)
            kind = s.type if default is not None else s.type | None
            annotation = Annotated[kind, option(name, command)]
            added.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                           annotation=annotation))  # fmt: skip
        at = [p.name for p in params].index(after) + 1
        keyword = [p.replace(kind=p.KEYWORD_ONLY) for p in params[at:]]
        fn.__signature__ = sig.replace(parameters=[*params[:at], *added, *keyword])
        return fn

    return decorate
