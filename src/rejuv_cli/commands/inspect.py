"""`rejuv inspect MODEL`: family, layers, units per module, dtype, size, unmapped tensors."""

from __future__ import annotations

from typing import Annotated

import typer

from rejuv_cli.commands.common import JsonFlag, QuietFlag, guarded, show_result
from rejuv_cli.commands.options import with_settings


@with_settings("inspect", ("config_from",), after="model")
def inspect_command(
    model: Annotated[
        str,
        typer.Argument(metavar="MODEL", show_default=False, help="Directory or Hub id[@revision]."),
    ],  # fmt: skip
    base: Annotated[
        str | None,
        typer.Option(
            "--base",
            metavar="BASE",
            show_default=False,
            help="For a LoRA adapter: the model it was trained on, to see the model "
            "the adapter makes (without it, the adapter's own facts).",
        ),
    ] = None,  # fmt: skip
    json_out: JsonFlag = False,
    quiet: QuietFlag = False,
    **values,
) -> None:
    """Show what rejuv sees in a checkpoint: family and unit map, layers, units per module,
    dtypes, parameter count, size on disk, and tensors the unit map does not account for.

    The table goes to stdout (to stderr with --json, which puts the report on stdout); warnings
    go to stderr. Reads headers only. MODEL may be any input rejuv reads: a Hugging Face
    checkpoint, an FP8 release, a PEFT LoRA adapter, FSDP shards (verl) or a DCP directory;
    the input form is reported first. Example: rejuv inspect ./sft --json
    """
    from rejuv_cli.checkpoint.resolve import resolve_model
    from rejuv_cli.inspection import inspect_input
    from rejuv_cli.report.console import inspect_table

    resolved = resolve_model(model, "MODEL")
    base_path = resolve_model(base, "BASE").path if base is not None else None
    report = inspect_input(resolved.path, base_path, values["config_from"])
    report |= {"spec": model, "commit": resolved.commit}
    show_result(inspect_table(report), report, json_out, quiet, report["warnings"])


inspect_command = guarded(inspect_command)
