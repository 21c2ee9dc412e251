"""`rejuv inspect MODEL`: family, layers, units per module, dtype, size, unmapped tensors."""

from __future__ import annotations

from typing import Annotated

import typer

from rejuv_cli.commands.common import JsonFlag, QuietFlag, guarded, show_result


def inspect_command(
    model: Annotated[
        str,
        typer.Argument(metavar="MODEL", show_default=False, help="Directory or Hub id[@revision]."),
    ],  # fmt: skip
    json_out: JsonFlag = False,
    quiet: QuietFlag = False,
) -> None:
    """Show what rejuv sees in a checkpoint: family and unit map, layers, units per module,
    dtypes, parameter count, size on disk, and tensors the unit map does not account for.

    The table goes to stdout (to stderr with --json, which puts the report on stdout); warnings
    go to stderr. Reads headers only. Example: rejuv inspect ./sft --json
    """
    from rejuv_cli.checkpoint.reader import Checkpoint
    from rejuv_cli.checkpoint.resolve import resolve_model
    from rejuv_cli.inspection import inspect_checkpoint
    from rejuv_cli.report.console import inspect_table

    resolved = resolve_model(model, "MODEL")
    with Checkpoint.open(resolved.path, "MODEL") as ckpt:
        report = inspect_checkpoint(ckpt) | {"spec": model, "commit": resolved.commit}
    show_result(inspect_table(report), report, json_out, quiet, report["warnings"])


inspect_command = guarded(inspect_command)
