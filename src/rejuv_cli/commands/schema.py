"""`rejuv schema NAME`: print the JSON Schema of a report rejuv writes."""

from __future__ import annotations

from typing import Annotated

import typer

from rejuv_cli.commands.common import guarded, write_stdout
from rejuv_cli.errors import UsageError

NAMES_HELP = "diagnose (rejuv diagnose --json), sweep (rejuv sweep --json) or rejuv.json (the " \
    "provenance rejuv fuse writes next to a checkpoint)"  # fmt: skip


def schema_command(
    name: Annotated[str, typer.Argument(metavar="NAME", show_default=False, help=NAMES_HELP)],
) -> None:
    """Print the JSON Schema (draft 2020-12) of a report: diagnose, sweep or rejuv.json.

    The schema is the file the package ships (rejuv_cli/schemas/). A report's `schema_version`
    is part of its schema: a new version means the structure changed. Validate a report with
    any JSON Schema (2020-12) validator, for example check-jsonschema (pip install
    check-jsonschema):

      rejuv schema diagnose > diagnose.schema.json

      check-jsonschema --schemafile diagnose.schema.json report.json
    """
    from importlib import resources

    from rejuv_cli.report.json_schemas import NAMES, schema_file

    if name not in NAMES:
        raise UsageError(f"no schema named {name!r}; choose one of {', '.join(NAMES)}")
    text = (resources.files("rejuv_cli") / "schemas" / schema_file(name)).read_text("utf-8")
    write_stdout(text)


schema_command = guarded(schema_command)
