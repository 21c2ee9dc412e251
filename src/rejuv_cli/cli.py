"""The `rejuv` command line. Imports no torch at start-up so `rejuv --help` is instant."""

from __future__ import annotations

import math
import signal
import sys

import typer
from typer.core import TyperCommand, TyperGroup

from rejuv_cli import __version__
from rejuv_cli.commands.common import EXIT_CODES_HELP
from rejuv_cli.commands.diagnose import HELP as DIAGNOSE_HELP
from rejuv_cli.commands.diagnose import diagnose_command
from rejuv_cli.commands.fuse import HELP as FUSE_HELP
from rejuv_cli.commands.fuse import fuse_command
from rejuv_cli.commands.inspect import inspect_command
from rejuv_cli.commands.recipes import recipes_command, validate_command

# Click's base error class, reached through the subclass typer exports (recent typer vendors
# click, older typer re-exports it: either way this is the class its parser raises).
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class _Group(TyperGroup):
    """Usage errors found by the parser (a bad flag value, an unknown option) as one line,
    `rejuv: error: ...`, exit 2, like every other rejuv error; Click prints four."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except _CLICK_ERROR as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # `rejuv fuse` alone: the help
                e.show()
            else:
                print(f"rejuv: error: {_one_line(e)}", file=sys.stderr)
            sys.exit(e.exit_code)
        except typer.Abort:
            print("rejuv: error: aborted", file=sys.stderr)
            sys.exit(1)
        # non-standalone main returns a command's typer.Exit code, or the command's result
        sys.exit(code if isinstance(code, int) else 0)


def _one_line(e) -> str:
    text = " ".join(e.format_message().split()).rstrip(".")
    ctx = getattr(e, "ctx", None)
    if ctx is not None and ctx.command.get_help_option(ctx) is not None:
        text += f"; see '{ctx.command_path} {ctx.help_option_names[0]}'"
    return text


class _Command(TyperCommand):
    """Refuses a non-finite value (nan, inf, 1e400) of any float option before its range check:
    NaN compares false with every bound, and Typer's message for it would name a bound."""

    def parse_args(self, ctx, args):
        _refuse_non_finite(self, ctx, list(args))
        return super().parse_args(ctx, args)


def _is_float(param) -> bool:
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    return annotation is float or type(getattr(param, "type", None)).__name__ in (
        "FloatParamType",
        "FloatRange",
    )


def _refuse_non_finite(command, ctx, args: list[str]) -> None:
    try:
        opts, _, _ = command.make_parser(ctx).parse_args(args=args)
    except _CLICK_ERROR:
        return  # malformed arguments: the real parse reports them
    for param in command.get_params(ctx):
        raw = opts.get(param.name)
        if raw is None or not _is_float(param):
            continue
        for text in raw if isinstance(raw, list | tuple) else [raw]:
            try:
                value = float(text)
            except (TypeError, ValueError):
                continue  # not a number at all: the real parse says so
            if not math.isfinite(value):
                raise typer.BadParameter(f"must be a finite number (got {text!r})", ctx, param)


app = typer.Typer(
    name="rejuv",
    cls=_Group,
    help="Checkpoint surgery between SFT and RL: base-anchored fusion and targeted neuron "
    "reset (Rejuvenation, arXiv 2606.09932).\n\n"
    "Example: rejuv fuse ./base ./sft --out ./rejuvenated",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("fuse", cls=_Command, help=FUSE_HELP, epilog=EXIT_CODES_HELP, no_args_is_help=True)(
    fuse_command
)
app.command(
    "diagnose", cls=_Command, help=DIAGNOSE_HELP, epilog=EXIT_CODES_HELP, no_args_is_help=True
)(diagnose_command)
app.command("inspect", cls=_Command, no_args_is_help=True)(inspect_command)
app.command("recipes", cls=_Command)(recipes_command)
app.command("validate", cls=_Command, no_args_is_help=True)(validate_command)


def _version(value: bool) -> None:
    if value:
        print(f"rejuv {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    pass


def _terminate(signum, frame):
    # CI cancels jobs with SIGTERM, a closed terminal or ssh session sends SIGHUP: unwind like
    # Ctrl-C so the temporary output is removed.
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    app()
