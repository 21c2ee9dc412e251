"""The `rejuv` command line. Imports no torch at start-up so `rejuv --help` is instant."""

from __future__ import annotations

import signal

import typer

from rejuv_cli import __version__
from rejuv_cli.commands.common import EXIT_CODES_HELP
from rejuv_cli.commands.diagnose import HELP as DIAGNOSE_HELP
from rejuv_cli.commands.diagnose import diagnose_command
from rejuv_cli.commands.fuse import HELP as FUSE_HELP
from rejuv_cli.commands.fuse import fuse_command
from rejuv_cli.commands.inspect import inspect_command
from rejuv_cli.commands.recipes import recipes_command, validate_command

app = typer.Typer(
    name="rejuv",
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
app.command("inspect", no_args_is_help=True)(inspect_command)
app.command("recipes")(recipes_command)
app.command("validate", no_args_is_help=True)(validate_command)


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
