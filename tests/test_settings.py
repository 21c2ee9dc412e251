"""Each setting declared once (rejuv_cli.settings): the recipe fields, the CLI options and the
provenance line all come from it, and a flag and a recipe key share one validator."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import typer
from conftest import run_cli

from rejuv_cli.cli import app
from rejuv_cli.errors import RecipeError
from rejuv_cli.recipe import Recipe, ResetSettings, load_recipe
from rejuv_cli.settings import BY_KEY, SETTINGS, command_line


def test_every_recipe_key_is_a_field_with_the_declared_default():
    fields = {f.name: f.default for f in dataclasses.fields(Recipe)}
    reset = {f.name: f.default for f in dataclasses.fields(ResetSettings)}
    for key, s in BY_KEY.items():
        where = reset if key.startswith("reset.") else fields
        assert s.name in where, key
        assert where[s.name] == s.default, key
    assert set(reset) - {"explicit"} == {k.split(".")[1] for k in BY_KEY if "reset." in k}


def test_every_declared_flag_is_an_option_of_its_commands():
    commands = typer.main.get_command(app).commands
    for s in SETTINGS.values():
        for name in s.commands:
            params = {p.name: p for p in commands[name].params}
            assert params[s.name].opts[0] == s.flag, (name, s.name)


@pytest.mark.parametrize(
    "key, yaml_value, flag_value",
    [
        ("reset.select", "magic", "magic"),
        ("reset.mode", "wild", "wild"),
        ("output.dtype", "int4", "int4"),
        ("reset.modules", "[k, ffn]", "k,ffn"),
        ("output.shard_size", "5XB", "5XB"),
        ("reset.calib", "''", ""),
        ("reset.samples", "0", "0"),
    ],
)
def test_a_flag_and_its_recipe_key_give_one_phrase(tmp_path, key, yaml_value, flag_value):
    s = BY_KEY[key]
    r = run_cli("fuse", "b", "s", "--out", tmp_path / "o", s.flag, flag_value)
    assert r.exit_code == 2, r.stderr
    problem = r.stderr.strip().removeprefix(f"rejuv: error: {s.flag}: ")
    section, field = key.split(".")
    p = tmp_path / "r.yaml"
    p.write_text(f"{section}:\n  {field}: {yaml_value}\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    assert str(e.value) == f"{p}: {key}: {problem}"


def test_provenance_line_lists_given_flags_in_declaration_order():
    values = {"mask": Path("m.st"), "alpha": 0.3, "modules": "k, v", "device": "auto",
              "recipe": None, "seed": 3}  # fmt: skip
    line = command_line(["rejuv", "fuse", "b", "my s", "--out", "o"], values)
    assert line == "rejuv fuse b 'my s' --out o --alpha 0.3 --modules 'k, v' --seed 3 --mask m.st"
