"""`rejuv recipes` (list the bundled recipes) and `rejuv validate FILE...`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from rejuv_cli.commands.common import JsonFlag, QuietFlag, guarded, show_result
from rejuv_cli.errors import RecipeError


def recipes_command(json_out: JsonFlag = False, quiet: QuietFlag = False) -> None:
    """List the bundled recipes with their intent and the command that uses them.

    The table goes to stdout (to stderr with --json, which puts the list on stdout). Use one
    with `rejuv fuse BASE SFT --out OUT --recipe NAME`.
    """
    from rich.table import Table

    from rejuv_cli.recipe import bundled_recipes, load_recipe, recipe_header

    rows = []
    for path in bundled_recipes():
        header = recipe_header(path)
        command = next((h for h in header if h.startswith("rejuv ")), "")
        intent = " ".join(h for h in header if h and not h.startswith("rejuv "))
        recipe = load_recipe(path)
        rows.append({"name": path.stem, "path": str(path), "alpha": _alpha_text(recipe),
                     "reset": _reset_text(recipe.reset), "intent": intent,
                     "command": command})  # fmt: skip
    table = Table("name", "α", "reset", "intent", "command", title="bundled recipes",
                  title_justify="left")  # fmt: skip
    for r in rows:
        table.add_row(r["name"], r["alpha"], r["reset"], r["intent"], r["command"])
    show_result(table, rows, json_out, quiet)


def _alpha_text(recipe) -> str:
    """α as the recipe sets it: one number, or the default and its per-tensor rules."""
    if not recipe.rules:
        return f"{recipe.alpha:g}"
    return f"{recipe.alpha:g}, {len(recipe.rules)} rule(s)"


def _reset_text(reset) -> str:
    """What the reset does under this recipe: its settings or the defaults it keeps (a recipe
    without a `reset` section still resets 1% of units)."""
    if reset.fraction == 0:
        return "none"
    return f"{reset.fraction:.0%} of units, {reset.select}"


def validate_command(
    files: Annotated[list[Path], typer.Argument(help="Recipe files to check.", show_default=False)],
    json_out: JsonFlag = False,
    quiet: QuietFlag = False,
) -> None:
    """Check recipe files; every problem is reported with its file and key. Exit 1 if any fails.

    One line per file on stdout, `ok: FILE` or `invalid: FILE` (on stderr with --json, which
    puts the results on stdout); each problem is a `rejuv: error:` line on stderr.
    Example: rejuv validate recipes/*.yaml
    """
    from rich.text import Text

    from rejuv_cli.recipe import load_recipe

    results = []
    for path in files:
        try:
            load_recipe(path)
            results.append({"file": str(path), "ok": True, "errors": []})
        except RecipeError as e:
            results.append({"file": str(path), "ok": False, "errors": str(e).splitlines()})
    lines = "\n".join(f"{'ok' if r['ok'] else 'invalid'}: {r['file']}" for r in results)
    show_result(Text(lines), results, json_out, quiet)
    for r in results:
        for line in r["errors"]:
            print(f"rejuv: error: {line}", file=sys.stderr)
    if not all(r["ok"] for r in results):
        raise typer.Exit(1)


recipes_command = guarded(recipes_command)
validate_command = guarded(validate_command)
