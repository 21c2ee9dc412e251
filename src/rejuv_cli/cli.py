"""The `rejuv` command line. Imports no torch at start-up so `rejuv --help` is instant."""

from __future__ import annotations

import os
import signal
import sys

import typer
from typer.core import TyperGroup

from rejuv_cli import __version__
from rejuv_cli.commands.common import EXIT_CODES_HELP, print_error
from rejuv_cli.commands.diagnose import HELP as DIAGNOSE_HELP
from rejuv_cli.commands.diagnose import diagnose_command
from rejuv_cli.commands.fuse import HELP as FUSE_HELP
from rejuv_cli.commands.fuse import fuse_command
from rejuv_cli.commands.inspect import inspect_command
from rejuv_cli.commands.recipes import recipes_command, validate_command
from rejuv_cli.commands.schema import schema_command
from rejuv_cli.commands.sweep import HELP as SWEEP_HELP
from rejuv_cli.commands.sweep import sweep_command
from rejuv_cli.errors import RejuvError

# Click's base error class, reached through the subclass typer exports (recent typer vendors
# click, older typer re-exports it: either way this is the class its parser raises).
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class _Group(TyperGroup):
    """Usage errors found by the parser (a bad flag value, an unknown option) as one line,
    `rejuv: error: ...`, exit 2, like every other rejuv error; Click prints four. A flag's
    value is checked by its setting's validator (commands/options.py), which raises UsageError."""

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
        except RejuvError as e:  # a setting's validator, run by Click while parsing a flag
            if os.environ.get("REJUV_DEBUG"):
                raise
            print_error(e)
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
app.command("fuse", help=FUSE_HELP, epilog=EXIT_CODES_HELP, no_args_is_help=True)(fuse_command)
app.command("diagnose", help=DIAGNOSE_HELP, epilog=EXIT_CODES_HELP, no_args_is_help=True)(
    diagnose_command
)
app.command("sweep", help=SWEEP_HELP, epilog=EXIT_CODES_HELP, no_args_is_help=True)(sweep_command)
app.command("inspect", no_args_is_help=True)(inspect_command)
app.command("recipes")(recipes_command)
app.command("validate", no_args_is_help=True)(validate_command)
app.command("schema", no_args_is_help=True)(schema_command)


def _version(value: bool) -> None:
    """`rejuv --version`: a `NAME VERSION` line for rejuv, then for torch and transformers,
    whose versions change what rejuv reads and computes, so a bug report needs them too."""
    if not value:
        return
    # Installed metadata, not `import torch`: the import takes seconds, --version is instant.
    from importlib import metadata

    print(f"rejuv {__version__}")
    for name in ("torch", "transformers"):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "not installed"
        print(f"{name} {installed}")
    raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_version,
        is_eager=True,
        help="Print the versions of rejuv, torch and transformers, and exit.",
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
