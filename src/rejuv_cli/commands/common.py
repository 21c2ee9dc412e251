"""Options shared by several commands, and the one place errors become exit codes."""

from __future__ import annotations

import functools
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from rejuv_cli.errors import RejuvError

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
QuietFlag = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress, tables or warnings on stderr.")
]
# The streams, one rule for every command. stdout carries data only: the JSON when --json asks
# for it on stdout, else the table that inspect, recipes and validate exist to show (fuse,
# diagnose and sweep show none there). stderr is for people: progress bars (on a terminal),
# warnings (one line each), notes, and the human report or table, also when stdout carries
# JSON; --quiet silences all of that, never the error lines (nor diagnose's gate results).
OutOption = Annotated[
    Path,
    typer.Option(
        "--out",
        "-o",
        help="Output directory (written atomically; refused if it exists).",
        file_okay=False,
        show_default=False,
    ),
]


EXIT_CODES_HELP = (
    "Exit codes: 0 ok, 1 error (one line on stderr; REJUV_DEBUG=1 shows the traceback), "
    "2 usage error, 3 a --fail-on gate tripped, 130 interrupted."
)


def print_error(e: RejuvError) -> None:
    """A rejuv error on stderr, `rejuv: error: ...` (REJUV_DEBUG=1 re-raises before this)."""
    for line in str(e).splitlines() or [type(e).__name__]:
        print(f"rejuv: error: {line}", file=sys.stderr)


def guarded(fn):
    """Run a command body: RejuvError -> its message on stderr and its exit code; Ctrl-C -> 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RejuvError as e:
            if os.environ.get("REJUV_DEBUG"):
                raise
            print_error(e)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            if os.environ.get("REJUV_DEBUG"):
                raise
            print("rejuv: interrupted; nothing was written to the output", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper


def stderr_console(quiet: bool = False):
    """A Rich console on stderr, for people: silent with --quiet."""
    from rich.console import Console

    return Console(stderr=True, quiet=quiet, soft_wrap=False, highlight=False)


def print_json(data) -> None:
    from rejuv_cli.jsonio import dumps

    write_stdout(dumps(data, "--json") + "\n")


# Widest line a table on a pipe may have before Rich wraps a cell (in effect: never).
PIPE_WIDTH = 1 << 20


def print_table(renderable) -> None:
    """A table (any Rich renderable) on stdout, as data. On a terminal: its width, colours and
    borders. On a pipe or a file: plain text, no colour codes, no borders, each row on one line
    however long (not cut to 80 columns), columns two spaces apart, no trailing spaces. Written
    by `write_stdout`, so a reader that left (`| head`) is one error line."""
    import copy

    from rich.console import Console
    from rich.table import Table

    if sys.stdout is None:  # descriptor 1 closed: write_stdout says so
        write_stdout("")
    tty = _is_terminal(sys.stdout)
    wide = {} if tty else {"width": PIPE_WIDTH, "color_system": None, "force_terminal": False}
    if not tty and isinstance(renderable, Table):
        renderable = copy.copy(renderable)
        renderable.box, renderable.pad_edge = None, False
    console = Console(file=sys.stdout, highlight=False, soft_wrap=False, emoji=False, **wide)
    with console.capture() as captured:
        console.print(renderable)
    text = captured.get()
    write_stdout(text if tty else "".join(line.rstrip() + "\n" for line in text.splitlines()))


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, OSError, ValueError):  # no isatty, or a closed file
        return False


def show_result(table, data, json_out: bool, quiet: bool, warnings: list[str] = ()) -> None:
    """What inspect, recipes and validate exist to show: with --json, `data` as JSON on stdout
    and the table on stderr for people; without, the table on stdout. Warnings on stderr before
    the table. Nothing on stderr with --quiet."""
    from rejuv_cli.report.console import render_warnings

    console = stderr_console(quiet)
    if json_out:
        print_json(data)
    render_warnings(console, list(warnings))
    if json_out:
        console.print(table)
    else:
        print_table(table)


def write_stdout(text: str) -> None:
    """Write data to stdout. A closed stdout, a reader that left (`| head`) or a full device is
    one OutputError line, and Python's exit-time flush is silenced (no "Exception ignored")."""
    import errno

    from rejuv_cli.checkpoint.disk import describe_os_error
    from rejuv_cli.errors import OutputError

    try:
        if sys.stdout is None:  # started with descriptor 1 closed (`>&-`)
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        sys.stdout.write(text)
        sys.stdout.flush()
    except (OSError, ValueError) as e:  # ValueError: the file object was closed
        _stdout_to_devnull()
        code = getattr(e, "errno", None) or errno.EBADF
        hint = {errno.EPIPE: "the program reading it exited before the end; let it read "
                "everything, or redirect stdout to a file",
                errno.EBADF: "stdout is closed; redirect it to a file"}.get(code)  # fmt: skip
        line = describe_os_error(OSError(code, os.strerror(code)), "stdout")
        raise OutputError(f"{line.rpartition(';')[0]}; {hint}" if hint else line) from None


def _stdout_to_devnull() -> None:
    """Point descriptor 1 at /dev/null so the data still buffered in sys.stdout is dropped
    quietly at exit (the recipe in Python's signal docs); only when sys.stdout is descriptor 1."""
    try:
        if sys.stdout is None or sys.stdout.fileno() != 1:
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    except (OSError, ValueError):
        pass


@contextmanager
def torchrun_ranks(device: str):
    """Under torchrun (WORLD_SIZE > 1): join the process group for the command's work, one
    rank per process (on CUDA each rank uses the GPU LOCAL_RANK names), and leave it together
    when the work succeeded; a failing rank just exits and torchrun stops the others.
    Without torchrun: rank 0 of 1, nothing joined."""
    from rejuv_cli import dist
    from rejuv_cli.checkpoint.stream import pick_device

    ranks = dist.init_from_env(pick_device(device).type)
    try:
        yield ranks
    finally:
        if not dist.unwinding():
            dist.shutdown()


@contextmanager
def progress_bars(console, show: bool):
    """Yields add(label, total, unit="bytes") -> advance(n) callback; bars on a terminal only.

    unit "bytes" shows sizes and speed; any other unit (e.g. "batches") shows counts.
    """
    if not show:
        yield lambda label, total, unit="bytes": lambda n: None
        return
    from rich.filesize import decimal
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description:>10}"), BarColumn(), TextColumn("{task.fields[n]}"),
                  TimeRemainingColumn(), console=console, transient=True) as progress:  # fmt: skip

        def add(label: str, total: int, unit: str = "bytes"):
            task = progress.add_task(label, total=total, n="")

            def advance(n: int) -> None:
                progress.advance(task, n)
                t = progress.tasks[task]
                done = int(t.completed)
                if unit == "bytes":
                    speed = f" {decimal(int(t.speed))}/s" if t.speed else ""
                    text = f"{decimal(done)}/{decimal(int(total))}{speed}"
                else:
                    text = f"{done}/{total} {unit}"
                progress.update(task, n=text)

            return advance

        yield add


def check_writable(path: Path | None, flag: str) -> None:
    """Fail before a long run, not after it, when a report file cannot be written."""
    from rejuv_cli.errors import UsageError

    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a directory; give a file name")
    if not path.parent.is_dir():
        raise UsageError(f"{flag} {path}: directory {path.parent} does not exist")


def report_outputs(json_out: str | None, html_out: Path | None) -> tuple:
    """The report files (preflight.Output) of --json FILE and --html FILE; None where absent."""
    from rejuv_cli.checkpoint.preflight import Output

    return (None if json_out in (None, "-") else Output("--json", Path(json_out)),
            None if html_out is None else Output("--html", html_out))  # fmt: skip


def write_report(report: dict, json_out: str | None, html_out: Path | None, render_html) -> None:
    """--json FILE|- and --html FILE of a JSON-safe report; `render_html(report) -> str`."""
    from rejuv_cli.checkpoint.output import write_file
    from rejuv_cli.jsonio import dumps

    text = dumps(report, "--json", default=str) + "\n"
    if json_out == "-":
        write_stdout(text)
    elif json_out is not None:
        write_file(Path(json_out), text, "--json")
    if html_out is not None:
        write_file(html_out, render_html(report), "--html")
