"""Data-driven reset scorers: planted dead / always-on units rank first, and their masks go
through the same selection, mask and reset code as the drift scorer's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import bits, edit_checkpoint, kill_mlp_unit, load_dir, run_cli
from safetensors.torch import load_file

from rejuv_cli.checkpoint.reader import Checkpoint
from rejuv_cli.plan import build_plan
from rejuv_cli.recipe import Recipe, ResetSettings
from rejuv_cli.reset.layout import unit_layout
from rejuv_cli.reset.registry import SCORERS

FAST = ("--samples", "6")


def ranked_first(base_dir, sft_dir, scorer: str) -> tuple[str, int]:
    """(instance key, unit) with the highest score under `scorer`, over all units."""
    with Checkpoint.open(base_dir, "BASE") as base, Checkpoint.open(sft_dir, "SFT") as sft:
        layout = unit_layout(sft, build_plan(base, sft, Recipe()), None)
        settings = ResetSettings(select=scorer, samples=6, max_tokens=256)
        result = SCORERS[scorer](layout, base, sft, torch.device("cpu"), None, settings)
    flat = np.concatenate(result.scores)
    i = int(np.nanargmax(flat))
    sizes = np.cumsum([inst.n_units for inst in layout.instances])
    k = int(np.searchsorted(sizes, i, side="right"))
    return layout.instances[k].key, i - (int(sizes[k - 1]) if k else 0)


@pytest.fixture(scope="module")
def dead_llama(llama, tmp_path_factory):
    """llama SFT with MLP unit 5 of layer 1 dead: its gate and up rows are zero."""
    dst = tmp_path_factory.mktemp("dead") / "sft"
    kill_mlp_unit(llama[1], dst)
    return dst


def test_dead_unit_ranks_first_under_dormant(llama, dead_llama):
    assert ranked_first(llama[0], dead_llama, "dormant") == ("layers.1.mlp", 5)


def test_always_on_unit_ranks_first_under_saturated(pairs, tmp_path):
    """GPT-2 unit 7 of layer 0 gets a zero incoming column and bias 4: gelu(4) on every token."""
    base, sft = pairs["gpt2"]
    dst = tmp_path / "sft"

    def steady(state):
        if "transformer.h.0.mlp.c_fc.weight" not in state:
            return False
        state["transformer.h.0.mlp.c_fc.weight"][:, 7] = 0  # Conv1D: [in, out]
        state["transformer.h.0.mlp.c_fc.bias"][7] = 4.0
        return True

    edit_checkpoint(sft, dst, steady)
    assert ranked_first(base, dst, "saturated") == ("layers.0.mlp", 7)
    assert ranked_first(base, dst, "dormant") != ("layers.0.mlp", 7)


def test_data_scorer_masks_apply_through_the_same_path(llama, dead_llama, tmp_path):
    """fuse --select dormant == fuse --mask (its saved mask); the dead unit gets base bytes."""
    out, again, mask = tmp_path / "out", tmp_path / "again", tmp_path / "units.safetensors"
    args = ("--select", "dormant", "--reset", "0.004", "--protect", "0", *FAST)
    r = run_cli("fuse", llama[0], dead_llama, "--out", out, *args, "--save-mask", mask, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["reset"]["selected"] == 1
    assert summary["reset"]["scorer"]["samples"] == 6
    meta = load_file(mask)
    assert meta["layers.1.mlp"].nonzero().flatten().tolist() == [5]
    r = run_cli("fuse", llama[0], dead_llama, "--out", again, "--mask", mask, "-q")
    assert r.exit_code == 0, r.output
    a, b, base = load_dir(out), load_dir(again), load_dir(llama[0])
    assert all(bits(a[k]) == bits(b[k]) for k in a)
    for name in ("model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight"):
        assert bits(a[name][5]) == bits(base[name][5])
    down = "model.layers.1.mlp.down_proj.weight"
    assert bits(a[down][:, 5]) == bits(base[down][:, 5])


@pytest.mark.parametrize("scorer", ["saturated", "attribution"])
def test_every_scorer_saves_a_mask_that_reproduces_its_output(llama, scorer, tmp_path):
    out, again, mask = tmp_path / "out", tmp_path / "again", tmp_path / "units.safetensors"
    r = run_cli("fuse", *llama, "--out", out, "--select", scorer, *FAST, "--save-mask", mask,
                "--json")  # fmt: skip
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)["reset"]
    assert info["selected"] == info["target"] > 0
    if scorer == "attribution":
        assert info["scorer"]["positions"] > 0
        assert info["scorer"]["reconstruction"]["relative"] < 1e-4
    r = run_cli("fuse", *llama, "--out", again, "--mask", mask, "-q")
    assert r.exit_code == 0, r.output
    a, b = load_dir(out), load_dir(again)
    assert all(bits(a[k]) == bits(b[k]) for k in a)
    assert load_file(mask)  # one bool tensor per module instance, as with drift


def test_calibration_flags_need_a_data_scorer(llama, tmp_path):
    r = run_cli("fuse", *llama, "--out", tmp_path / "o", "--samples", "4")
    assert r.exit_code == 2 and "the drift scorer reads no data" in r.stderr
    recipe = tmp_path / "r.yaml"
    recipe.write_text("reset:\n  select: saturated\n  calib: builtin:tool_use\n  samples: 3\n")
    r = run_cli("fuse", *llama, "--out", tmp_path / "o", "--recipe", recipe, "--json", "-q")
    assert r.exit_code == 0, r.output
    scorer = json.loads(r.stdout)["reset"]["scorer"]
    assert scorer["calib"] == "builtin:tool_use" and scorer["samples"] == 3
