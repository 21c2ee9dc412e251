"""Recipes: validation (all errors at once), alpha selection, bundled recipes, the CLI commands."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import run_cli

from rejuv_cli.errors import RecipeError
from rejuv_cli.recipe import (
    FuseRule,
    Recipe,
    bundled_recipes,
    interpolate,
    load_recipe,
    recipe_header,
)


def test_every_bundled_recipe_loads_and_documents_itself():
    paths = bundled_recipes()
    assert {p.stem for p in paths} >= {"paper", "ood", "depth"}
    for path in paths:
        load_recipe(path)
        header = recipe_header(path)
        assert header and any(
            h.startswith(f"rejuv fuse BASE SFT --out OUT --recipe {path.stem}") for h in header
        ), path
    paper = load_recipe(next(p for p in paths if p.stem == "paper"))
    assert paper.alpha == 0.5 and paper.rules == () and paper.dtype == "auto"
    # The paper recipe spells out the defaults: the same settings as no recipe, but explicit.
    assert paper.reset == dataclasses.replace(Recipe().reset, explicit=True)
    assert load_recipe(next(p for p in paths if p.stem == "fusion-only")).reset.fraction == 0


def test_interpolate_over_depth():
    assert interpolate((0.2, 0.8), 0, 5) == 0.2
    assert interpolate((0.2, 0.8), 4, 5) == 0.8
    assert interpolate((0.2, 0.8), 2, 5) == pytest.approx(0.5)
    assert interpolate((0.0, 1.0, 0.0), 2, 5) == pytest.approx(1.0)  # middle point of three
    assert interpolate((0.0, 1.0, 0.0), 1, 5) == pytest.approx(0.5)
    assert interpolate((0.3,), 7, 9) == 0.3


def test_first_matching_rule_wins_and_lists_skip_layerless_tensors():
    r = Recipe(
        alpha=0.5,
        rules=(
            FuseRule("*.mlp.*", (0.2, 0.8)),
            FuseRule("*mlp*", 0.9),
            FuseRule("*embed*", (0.1, 0.1)),
        ),
    )
    assert r.alpha_for("model.layers.3.mlp.up_proj.weight", 3, 4) == (0.8, "rules[0]")
    assert r.alpha_for("model.mlp_head.weight", None, 4) == (0.9, "rules[1]")
    # A depth list does not apply outside numbered layers: falls through to the global alpha.
    assert r.alpha_for("model.embed_tokens.weight", None, 4) == (0.5, "alpha")


def test_validation_reports_every_error_with_file_and_key(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(
        "fuse:\n  alpha: -0.1\n  beta: 3\n  rules:\n    - match: ''\n      alpha: 0.5\n"
        "    - {match: '*.mlp.*'}\n    - 7\noutput:\n  shard_size: huge\ncolour: red\n"
        "reset:\n  fraction: 1.5\n  mode: wild\n  select: magic\n  modules: [q, gate, ffn]\n"
        "  max_per_module: 0\n  seed: -1\n  omega: yes\n  frac: 0.1\n  samples: 0\n"
        "  calib: ''\n  prompt_field: 3\n"
    )
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    lines = str(e.value).splitlines()
    assert lines == [
        f"{p}: colour: unknown key (allowed: description, fuse, output, reset)",
        f"{p}: fuse.beta: unknown key (allowed: alpha, rules)",
        f"{p}: reset.frac: unknown key (allowed: answer_field, calib, fraction, "
        "max_per_module, max_tokens, messages_field, mode, modules, noise, omega, prompt_field, "
        "protect, response_field, samples, seed, select)",
        f"{p}: fuse.alpha: must be >= 0.0 and <= 1.0 (got -0.1)",
        f"{p}: fuse.rules[0].match: must be a non-empty glob string, e.g. '*.mlp.*'",
        f"{p}: fuse.rules[1].alpha: is required",
        f"{p}: fuse.rules[2]: must be a mapping with 'match' and 'alpha'",
        f"{p}: reset.fraction: must be >= 0.0 and <= 0.5 (got 1.5)",
        f"{p}: reset.max_per_module: must be > 0.0 and <= 1.0 (got 0)",
        f"{p}: reset.omega: must be a number (got True)",
        f"{p}: reset.seed: must be an integer >= 0 (got -1)",
        f"{p}: reset.samples: must be an integer >= 1 (got 0)",
        f"{p}: reset.calib: must be builtin:NAME, a JSONL or Parquet path, or a Hub dataset id "
        "(got '')",
        f"{p}: reset.prompt_field: must be a key or column name (got 3)",
        f"{p}: reset.mode: must be one of base, shrink-perturb, reinit (got 'wild')",
        f"{p}: reset.select: must be one of attribution, dormant, drift, saturated (got 'magic')",
        f"{p}: reset.modules: unknown module 'ffn' (choose from q, k, v, o, mlp, gate, up, "
        "down, expert, shared_expert, whole_expert)",
        f"{p}: output.shard_size: not a size: 'huge' (use e.g. 5GB, 500MB, 2GiB)",
    ]


def test_yaml_syntax_error_is_one_line(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("fuse: [unclosed\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    assert str(e.value).startswith(f"{p}: not valid YAML") and "\n" not in str(e.value)


def test_validate_command(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("fuse:\n  alpha: 0.45\n")
    bad.write_text("fuse:\n  alpha: 2\n")
    r = run_cli("validate", good)
    assert r.exit_code == 0 and r.stdout == f"ok: {good}\n"
    r = run_cli("validate", good, bad, "--json")
    assert r.exit_code == 1
    assert json.loads(r.stdout) == [
        {"file": str(good), "ok": True, "errors": []},
        {
            "file": str(bad),
            "ok": False,
            "errors": [f"{bad}: fuse.alpha: must be >= 0.0 and <= 1.0 (got 2)"],
        },
    ]


def test_recipes_command_lists_bundled_recipes():
    r = run_cli("recipes", "--json")
    assert r.exit_code == 0
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["paper"]["command"] == "rejuv fuse BASE SFT --out OUT --recipe paper"
    assert "0.5" in rows["paper"]["intent"]
    # What each recipe resets, read from the recipe as fuse would apply it: ood and depth have
    # no reset section and keep the default 1% (README, "Recipes").
    assert {name: (row["alpha"], row["reset"]) for name, row in rows.items()} == {
        "paper": ("0.5", "1% of units, drift"),
        "fusion-only": ("0.5", "none"),
        "ood": ("0.4", "1% of units, drift"),
        "depth": ("0.5, 2 rule(s)", "1% of units, drift"),
    }


def test_unknown_recipe_name_lists_bundled(llama, tmp_path):
    r = run_cli("fuse", *llama, "--out", tmp_path / "o", "--recipe", "nonesuch")
    assert r.exit_code == 1 and "not a bundled recipe (depth, fusion-only, ood, paper)" in r.stderr
