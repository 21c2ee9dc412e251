"""Models larger than the memory budget: --max-memory offloads weights (here to disk, on CPU)
and every forward-pass result stays what it is with the model fully resident."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

from rejuv_cli.calib.models import load_model, offload_note, offloaded_share
from rejuv_cli.checkpoint.reader import Checkpoint
from rejuv_cli.plan import build_plan
from rejuv_cli.recipe import Recipe, ResetSettings
from rejuv_cli.reset.layout import unit_layout
from rejuv_cli.reset.registry import SCORERS

CPU = torch.device("cpu")
NOTHING_FITS = 1  # bytes: every weight goes to disk


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids).logits.float()


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_offloaded_model_computes_the_same_logits(pairs, family):
    sft = pairs[family][1]
    resident = load_model(sft, "SFT", CPU)
    assert offloaded_share(resident) == 0 and offload_note("SFT", resident, CPU) is None
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    expected = logits_of(resident, ids)
    half = weight_bytes(resident) // 2
    for budget in (NOTHING_FITS, half):
        model = load_model(sft, "SFT", CPU, max_memory=budget)
        share = offloaded_share(model)
        assert share == 1.0 if budget == NOTHING_FITS else share > 0
        if family == "llama" and budget == half:  # accelerate splits it: some layers resident
            assert share < 1
        assert "offloaded to disk" in offload_note("SFT", model, CPU)
        torch.testing.assert_close(logits_of(model, ids), expected, rtol=0, atol=1e-6)
        folder = Path(model._rejuv_offload_dir.name)
        assert folder.is_dir()
        del model
        gc.collect()
        assert not folder.exists()  # the temporary offload folder goes with the model


def scores_of(base_dir, sft_dir, scorer: str, max_memory: int | None):
    with Checkpoint.open(base_dir, "BASE") as base, Checkpoint.open(sft_dir, "SFT") as sft:
        layout = unit_layout(sft, build_plan(base, sft, Recipe()), None)
        settings = ResetSettings(select=scorer, samples=4, max_tokens=256)
        return SCORERS[scorer](layout, base, sft, CPU, None, settings, max_memory)


@pytest.mark.parametrize(
    ("family", "scorer"),
    [
        ("llama", "dormant"),
        ("llama", "saturated"),
        ("llama", "attribution"),
        ("gemma2", "attribution"),
    ],  # fmt: skip
)
def test_data_scorers_give_the_same_scores_offloaded(pairs, family, scorer):
    """Attribution reads the lm_head rows and the norms' gains after the forward pass, when
    accelerate has put offloaded weights back on "meta": those reads must onload them."""
    resident = scores_of(*pairs[family], scorer, None)
    offloaded = scores_of(*pairs[family], scorer, NOTHING_FITS)
    for a, b in zip(resident.scores, offloaded.scores, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
    assert not any("offloaded" in w for w in resident.info["warnings"])
    assert any("SFT: 100% of the weights" in w for w in offloaded.info["warnings"])
    if scorer == "attribution":
        assert any("BASE: 100% of the weights" in w for w in offloaded.info["warnings"])
        assert offloaded.info["positions"] == resident.info["positions"] > 0
        assert offloaded.info["reconstruction"]["relative"] < 1e-4


def test_fuse_max_memory_selects_the_same_units(llama, tmp_path):
    masks = []
    for name, extra in (("resident", ()), ("offloaded", ("--max-memory", "1KB"))):
        mask = tmp_path / f"{name}.safetensors"
        r = run_cli("fuse", *llama, "--out", tmp_path / name, "--select", "dormant",
                    "--samples", "4", "--save-mask", mask, *extra)  # fmt: skip
        assert r.exit_code == 0, r.output
        assert ("offloaded to disk" in r.stderr) == bool(extra)
        masks.append(mask.read_bytes())
    assert masks[0] == masks[1]
    card = json.loads((tmp_path / "offloaded" / "rejuv.json").read_text())
    assert "--max-memory 1KB" in card["command"]


def test_diagnose_offloaded_matches_resident_and_skips_sharpness(llama, tmp_path):
    reports = {}
    for name, extra in (("resident", ()), ("offloaded", ("--max-memory", "2KB"))):
        out = tmp_path / f"{name}.json"
        r = run_cli("diagnose", *llama, "--samples", "4", "--sharpness-draws", "1",
                    "--json", out, "-q", *extra)  # fmt: skip
        assert r.exit_code == 0, r.output
        reports[name] = json.loads(out.read_text())
    resident, offloaded = reports["resident"], reports["offloaded"]
    for key in ("entropy_mean", "kl_mean", "nll_mean", "p_max_mean"):
        assert offloaded["output"][key] == pytest.approx(resident["output"][key], rel=1e-5)
    assert offloaded["units"]["dormant"] == resident["units"]["dormant"]
    assert resident["sharpness"] is not None and offloaded["sharpness"] is None
    warnings = " ".join(offloaded["warnings"])
    assert "sharpness not measured: BASE, SFT offloaded" in warnings
    assert offloaded["verdict"]["measured"] == "weights, output, units"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("fuse", "--select", "dormant", "--max-memory", "lots"), "--max-memory: not a size"),
        (("fuse", "--max-memory", "2GB"), "the drift scorer reads no data"),
        (("diagnose", "--weights-only", "--max-memory", "2GB"), "runs no forward passes"),
    ],
)
def test_max_memory_usage_errors(llama, tmp_path, args, message):
    command, *rest = args
    where = ("--out", tmp_path / "o") if command == "fuse" else ()
    r = run_cli(command, *llama, *where, *rest)
    assert r.exit_code == 2 and message in r.stderr, r.output


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_gpu_budget_below_one_block_is_detected(pairs, family):
    """On CUDA a budget below every block gives accelerate's map {"": "cpu"}, which installs no
    hooks: the model would stay on the CPU. load_model refuses that with the size needed: the
    largest decoder block, computed here from the layers themselves."""
    from rejuv_cli.calib.models import nothing_on_device

    model = load_model(pairs[family][1], "SFT", CPU)
    layers = model.model.layers if family == "llama" else model.transformer.h
    block = max(weight_bytes(layer) for layer in layers)
    cuda = torch.device("cuda", 0)
    model.hf_device_map = {"": "cpu"}
    assert nothing_on_device(model, cuda) == block > 0
    model.hf_device_map = {"model.embed_tokens": "cpu", "model.layers": "disk"}
    assert nothing_on_device(model, cuda) == block
    model.hf_device_map = {"model.embed_tokens": 0, "model.layers": "cpu"}
    assert nothing_on_device(model, cuda) == 0
    model.hf_device_map = {"": "cpu"}
    assert nothing_on_device(model, CPU) == 0  # the CPU offloads its overflow to disk
