"""One rule for the streams of every command (issue #17): stdout carries data only, the JSON
when --json asks for it there, else the table inspect, recipes and validate exist to show;
stderr is for people: warnings one line each, notes, and the human report or table, also when
stdout carries JSON. --quiet silences stderr but for error lines."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import read_json, run_cli
from safetensors.torch import save_file

from rejuv_cli.recipe import bundled_recipes

# Longer than 80 columns once "warning: " is in front: one line each, never wrapped.
EXTRA = "model.an_extra_tensor_that_only_this_sft_checkpoint_holds.weight"
WARNING = f"'{EXTRA}' exists only in SFT: copied from SFT"
# diagnose copies nothing: it says what its weight statistics do with the tensor
DIAGNOSE_WARNING = (
    f"'{EXTRA}' exists only in SFT: not compared (the weight statistics leave it out)"
)


@pytest.fixture(scope="module")
def warned(llama, tmp_path_factory):
    """The llama pair with a tensor only in SFT (every command that pairs them warns), and an
    SFT whose config.json declares 1 layer where its weights hold 2 (inspect warns)."""
    root = tmp_path_factory.mktemp("warned")
    base, sft, short = root / "base", root / "sft", root / "short"
    shutil.copytree(llama[0], base)
    shutil.copytree(llama[1], sft)
    save_file({EXTRA: torch.ones(2, 3, dtype=torch.bfloat16)}, sft / "extra.safetensors",
              metadata={"format": "pt"})  # fmt: skip
    index = read_json(sft / "model.safetensors.index.json")
    index["weight_map"][EXTRA] = "extra.safetensors"
    (sft / "model.safetensors.index.json").write_text(json.dumps(index))
    shutil.copytree(llama[1], short)
    config = read_json(short / "config.json") | {"num_hidden_layers": 1}
    (short / "config.json").write_text(json.dumps(config))
    return base, sft, short


def _commands(warned, out) -> dict[str, tuple[list, str, str]]:
    """command -> (arguments with JSON on stdout, a warning line, a line of the human report)."""
    base, sft, short = warned
    sweep = ["--alphas", "0.5", "--samples", "2", "--max-tokens", "48", "--reset", "0"]
    inspect_warning = "transformers ignores layer 1 when it loads the model"
    return {
        "fuse": (["fuse", base, sft, "-o", out, "--reset", "0", "--json"], WARNING,
                 "rejuv fuse: done"),
        "fuse --dry-run": (["fuse", base, sft, "-o", out, "--dry-run", "--json"], WARNING,
                           "rejuv fuse --dry-run: plan"),
        "diagnose": (["diagnose", base, sft, "--weights-only", "--json", "-"],
                     DIAGNOSE_WARNING, "rejuv diagnose: SFT"),
        "sweep": (["sweep", base, sft, *sweep, "--json", "-"], WARNING, "rejuv sweep: SFT"),
        "inspect": (["inspect", short, "--json"], inspect_warning, "rejuv inspect:"),
    }  # fmt: skip


@pytest.mark.parametrize("command", ["fuse", "fuse --dry-run", "diagnose", "sweep", "inspect"])
def test_json_on_stdout_warnings_and_report_on_stderr_quiet_silences_them(
    command, warned, tmp_path
):
    args, warning, report = _commands(warned, tmp_path / "o")[command]
    r = run_cli(*args)
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)  # stdout holds the JSON and nothing else
    assert any(warning in w for w in data["warnings"])
    lines = r.stderr.splitlines()
    warned_lines = [line for line in lines if warning in line]
    assert len(warned_lines) == 1 and warned_lines[0].startswith("warning: "), r.stderr
    assert report in r.stderr  # the human report still goes to people, on stderr
    shutil.rmtree(tmp_path / "o", ignore_errors=True)
    quiet = run_cli(*args, "--quiet")
    assert quiet.exit_code == 0, quiet.stderr
    assert json.loads(quiet.stdout).keys() == data.keys()
    assert quiet.stderr == ""


def test_diagnose_json_file_keeps_the_report_on_stderr(warned, tmp_path):
    base, sft, _ = warned
    r = run_cli("diagnose", base, sft, "--weights-only", "--json", tmp_path / "r.json")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "" and "warnings" in read_json(tmp_path / "r.json")
    assert f"warning: {DIAGNOSE_WARNING}" in r.stderr.splitlines()
    assert "rejuv diagnose: SFT" in r.stderr


def test_inspect_table_on_stdout_warnings_on_stderr(warned):
    _, _, short = warned
    r = run_cli("inspect", short)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith(f"rejuv inspect: {short}\n")
    assert ["family", "llama (unit map: llama-like)"] in [
        line.split(None, 1) for line in r.stdout.splitlines()
    ]
    assert "warning" not in r.stdout and "\x1b[" not in r.stdout  # plain text on a pipe
    assert [line for line in r.stderr.splitlines() if line.startswith("warning: ")] == [
        line for line in r.stderr.splitlines() if "transformers ignores layer 1" in line
    ]
    quiet = run_cli("inspect", short, "--quiet")
    assert quiet.stdout == r.stdout and quiet.stderr == ""


def test_recipes_table_on_stdout_is_whole_on_a_pipe():
    """Not a terminal: no colour codes, no borders, one line per recipe however long (not cut
    to 80 columns, whatever COLUMNS says), no trailing spaces."""
    rows = json.loads(run_cli("recipes", "--json", "--quiet").stdout)
    r = run_cli("recipes", env={"COLUMNS": "40"})
    assert r.exit_code == 0 and r.stderr == ""
    lines = r.stdout.splitlines()
    assert lines[0] == "bundled recipes" and lines[1].split() == [
        "name",
        "α",
        "reset",
        "intent",
        "command",
    ]
    for row, line in zip(rows, lines[2:], strict=True):
        assert line.startswith(row["name"]) and row["intent"] in line
        assert line.endswith(row["command"])
    assert max(map(len, lines)) > 80 and "\x1b[" not in r.stdout
    assert all(line == line.rstrip() for line in lines)
    assert not any(c in r.stdout for c in "│┃━─")


def test_recipes_json_on_stdout_table_on_stderr():
    r = run_cli("recipes", "--json")
    assert r.exit_code == 0 and {row["name"] for row in json.loads(r.stdout)} >= {"paper"}
    assert "bundled recipes" in r.stderr
    quiet = run_cli("recipes", "--json", "--quiet")
    assert quiet.stdout == r.stdout and quiet.stderr == ""


def test_validate_results_on_stdout_problems_on_stderr(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("fuse:\n  alpha: 0.45\n")
    bad.write_text("fuse:\n  alpha: 2\n")
    problem = f"rejuv: error: {bad}: fuse.alpha: must be >= 0.0 and <= 1.0 (got 2)"
    r = run_cli("validate", good, bad)
    assert r.exit_code == 1
    assert r.stdout == f"ok: {good}\ninvalid: {bad}\n"
    assert r.stderr == problem + "\n"
    r = run_cli("validate", good, bad, "--json")
    assert r.exit_code == 1 and [x["ok"] for x in json.loads(r.stdout)] == [True, False]
    assert f"invalid: {bad}" in r.stderr and problem in r.stderr.splitlines()
    quiet = run_cli("validate", good, bad, "--json", "--quiet")
    assert quiet.stdout == r.stdout and quiet.stderr == problem + "\n"  # errors always show
    ok = run_cli("validate", *bundled_recipes(), "--quiet")
    assert ok.exit_code == 0 and ok.stderr == ""
    assert ok.stdout.splitlines() == [f"ok: {p}" for p in bundled_recipes()]


def test_a_table_on_a_terminal_keeps_its_borders(monkeypatch):
    import io
    import sys

    from rich.table import Table

    from rejuv_cli.commands.common import print_table

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    table = Table("a", "b", title="t")
    table.add_row("x" * 200, "y")
    print_table(table)
    assert "│" in terminal.getvalue() or "┃" in terminal.getvalue()
    assert "y" in terminal.getvalue()
