"""Expert neurons are measured (#18): unit activity and the data scorers see every expert's
MLP neurons, over the tokens routed to that expert, in the installed transformers (fused 3-D
expert parameters) and in transformers 4 (one module per expert; slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import kill_mlp_unit, run_cli
from moe_reference import EXPERTS, expert_sums
from test_data_scorers import ranked_first
from test_routing import plant_dead_expert

CALIB = "builtin:math"
SAMPLES = 6
FAMILIES = ["mixtral", "qwen2_moe", "qwen3_moe"]


def calibration_batches(model_dir) -> list:
    """diagnose's calibration batches (input_ids, attention_mask, response) for `model_dir`."""
    from rejuv_cli.calib.forward import prepare_calibration
    from rejuv_cli.settings import SETTINGS

    return prepare_calibration(CALIB, SAMPLES, SETTINGS["max_tokens"].default, Path(model_dir),
                               torch.device("cpu")).batches  # fmt: skip


def expert_sites(model_dir) -> list:
    from rejuv_cli.calib.forward import activation_sites
    from rejuv_cli.checkpoint.reader import Checkpoint
    from rejuv_cli.plan import build_plan
    from rejuv_cli.recipe import Recipe
    from rejuv_cli.reset.layout import unit_layout

    with Checkpoint.open(Path(model_dir), "SFT") as ckpt:
        layout = unit_layout(ckpt, build_plan(ckpt, ckpt, Recipe()), None)
    return [s for s in activation_sites(layout) if s.module in ("expert", "shared_expert")]


def attribution_of(model_dir, batches) -> tuple[dict, list[str]]:
    """rejuv's attribution scores of the expert neurons at the first 6 response targets of
    each batch (model loaded as the scorer loads it): site key -> [n_units], missing sites."""
    from rejuv_cli.calib.models import load_model
    from rejuv_cli.reset.attribution import attribution_scores, target_positions

    positions = [[tuple(p) for p in torch.nonzero(target_positions(b)).tolist()[:6]]
                 for b in batches]  # fmt: skip
    model = load_model(Path(model_dir), "SFT", torch.device("cpu"))
    res = attribution_scores(model, batches, positions, expert_sites(model_dir),
                             torch.device("cpu"))  # fmt: skip
    return {k: v.tolist() for k, v in res.scores.items()}, res.missing


def recorded_sums(model_dir, batches) -> tuple[dict, list[str]]:
    """rejuv's own activity recorder on `model_dir` (loaded as diagnose loads it) over
    `batches`: per site key (Σ|h|, Σh², tokens), and the missing sites."""
    from types import SimpleNamespace

    from rejuv_cli.calib.forward import record_activity
    from rejuv_cli.calib.models import load_model

    cpu = torch.device("cpu")
    model = load_model(Path(model_dir), "SFT", cpu)
    rec = record_activity(model, SimpleNamespace(batches=batches), expert_sites(model_dir), cpu)
    sums = {k: (s.sum_abs.numpy(), s.sum_sq.numpy(), s.tokens) for k, s in rec.stats.items()}
    return sums, rec.missing


@pytest.mark.parametrize("family", FAMILIES)
def test_expert_neuron_sums_match_a_float64_loop_over_experts_and_tokens(moe_pairs, family):
    sft = moe_pairs[family][1]
    batches = calibration_batches(sft)
    sums, missing = recorded_sums(sft, batches)
    config = json.loads((sft / "config.json").read_text())
    ref = expert_sums(sft, family, batches, config["num_experts_per_tok"])
    assert missing == []
    assert sorted(sums) == sorted(ref)
    n_experts = config.get("num_local_experts") or config["num_experts"]
    assert sum(k.count(".expert.") for k in ref) == config["num_hidden_layers"] * n_experts
    for key, (sum_abs, sum_sq, tokens) in ref.items():
        got_abs, got_sq, got_tokens = sums[key]
        assert got_tokens == tokens, key
        np.testing.assert_allclose(got_abs, sum_abs, rtol=2e-4, atol=1e-6, err_msg=key)
        np.testing.assert_allclose(got_sq, sum_sq, rtol=4e-4, atol=1e-8, err_msg=key)
    # Each real token goes to exactly k experts of each layer.
    k, real = config["num_experts_per_tok"], int(sum(b[1].sum() for b in batches))
    for i in range(config["num_hidden_layers"]):
        routed = sum(ref[f"layers.{i}.expert.{e}"][2] for e in range(n_experts))
        assert routed == k * real


@pytest.mark.parametrize("family", FAMILIES)
def test_diagnose_measures_every_unit_of_an_moe(moe_pairs, family):
    base, sft = moe_pairs[family]
    r = run_cli("diagnose", base, sft, "--samples", SAMPLES, "--sharpness-draws", "0",
                "--json", "-")  # fmt: skip
    assert r.exit_code == 0, r.output
    units = json.loads(r.stdout)["units"]
    assert units["not_measured"] == [] and units["unrouted"] == []
    config = json.loads((sft / "config.json").read_text())
    n_experts = config.get("num_local_experts") or config["num_experts"]
    layers = config["num_hidden_layers"]
    measured = {(row["layer"], row["module"]) for row in units["layers"]}
    assert sum(row["module"] == "expert" for row in units["layers"]) == layers * n_experts
    assert {m for _, m in measured} == {"o", "expert"} | (
        {"shared_expert"} if family == "qwen2_moe" else set())  # fmt: skip
    width = config.get("moe_intermediate_size") or config["intermediate_size"]
    experts_units = layers * n_experts * width
    shared = layers * config.get("shared_expert_intermediate_size", 0) * (family == "qwen2_moe")
    n_heads = config["num_attention_heads"]
    heads = n_heads * (config.get("head_dim") or config["hidden_size"] // n_heads)
    assert units["units"] == experts_units + shared + layers * heads


def _dry_run(base, sft, *flags) -> dict:
    """The units a fuse run would reset (`--dry-run --save-mask`), as its JSON reports them."""
    out = Path(sft).parent
    r = run_cli("fuse", base, sft, "-o", out / "out", "--dry-run", "--json", "--samples",
                SAMPLES, "--save-mask", out / "mask.safetensors", *flags)  # fmt: skip
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)["reset"]


def test_a_planted_dead_expert_neuron_ranks_first_under_dormant(moe_pairs, tmp_path):
    base, sft = moe_pairs["mixtral"]
    prefix, gate, up = EXPERTS["mixtral"]
    kill_mlp_unit(sft, tmp_path / "sft", layer=2, unit=17, mlp=prefix.format(e=3),
                  projections=(gate, up))  # fmt: skip
    assert ranked_first(base, tmp_path / "sft", "dormant") == ("layers.2.expert.3", 17)


def test_dormant_reaches_its_target_with_experts_in_the_ranking(moe_pairs):
    """Before #18 only attention units were ranked: 54 of a target of 86 on this pair."""
    base, sft = moe_pairs["mixtral"]
    reset = _dry_run(base, sft, "--select", "dormant", "--reset", "0.05")
    assert reset["selected"] == reset["target"] == round(0.05 * reset["units"])
    assert reset["by_module"]["expert"]["reset"] > 0


def test_an_expert_no_token_reached_is_unrouted_never_dormant(moe_pairs, tmp_path):
    base, sft = moe_pairs["mixtral"]
    plant_dead_expert(sft, tmp_path / "sft", "mixtral", layer=0, expert=1)
    r = run_cli("diagnose", base, tmp_path / "sft", "--samples", SAMPLES,
                "--sharpness-draws", "0", "--json", "-")  # fmt: skip
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    units = report["units"]
    # Exactly the experts the routing section saw no token go to (the planted one, and any
    # other the edited routers starve on this small sample).
    starved = [f"layers.{row['layer']}.expert.{e}" for row in report["routing"]["layers"]
               for e, share in enumerate(row["share"]) if share == 0]  # fmt: skip
    assert "layers.0.expert.1" in starved
    assert units["unrouted"] == starved
    assert not set(starved) & {row["key"] for row in units["layers"]}
    # dormant ranks every routed unit, never the unknown ones of the unrouted expert
    reset = _dry_run(base, tmp_path / "sft", "--select", "dormant", "--modules", "expert",
                     "--reset", "0.5", "--max-per-module", "1")  # fmt: skip
    assert "layers.0.expert.1" not in reset["by_instance"]


# --- transformers 4: one module per expert ------------------------------------------------

# transformers 4 and what it needs beyond this environment (installed without dependencies
# so that numpy, torch and safetensors stay the environment's own).
TRANSFORMERS_4 = ("transformers==4.57.3", "huggingface_hub==0.36.0", "tokenizers==0.22.1",
                  "requests==2.32.3", "urllib3==2.2.3", "idna==3.10", "charset-normalizer==3.4.0",
                  "certifi==2024.8.30")  # fmt: skip


@pytest.fixture(scope="session")
def transformers_4(tmp_path_factory):
    """A directory with transformers 4.57 (per-expert modules) installed from the package
    index, to put first on PYTHONPATH; skips where the index cannot be reached."""
    target = tmp_path_factory.mktemp("transformers4")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                        "--target", str(target), *TRANSFORMERS_4],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"cannot install {', '.join(TRANSFORMERS_4)}: {r.stderr.strip()[-300:]}")
    return target


_IN_TRANSFORMERS_4 = """
import json, sys, torch, transformers
sys.path.insert(0, {tests!r})
from test_moe_units import attribution_of, recorded_sums
batches = torch.load({batches!r})
sums, missing = recorded_sums({sft!r}, batches)
scores, not_scored = attribution_of({sft!r}, batches)
print(json.dumps({{"version": transformers.__version__, "missing": missing,
                  "sums": {{k: [a.tolist(), s.tolist(), n] for k, (a, s, n) in sums.items()}},
                  "attribution": scores, "not_scored": not_scored}}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_per_expert_modules_of_transformers_4_give_the_same_sums(moe_pairs, family, tmp_path,
                                                                 transformers_4):  # fmt: skip
    """The same checkpoint and batches (tokenized here: transformers 4 cannot read the
    tokenizer file transformers 5 writes), measured in both versions' module layouts: unit
    activity sums and attribution scores of every expert neuron."""
    sft = moe_pairs[family][1]
    batches = calibration_batches(sft)
    torch.save(batches, tmp_path / "batches.pt")
    code = _IN_TRANSFORMERS_4.format(tests=str(Path(__file__).parent), sft=str(sft),
                                     batches=str(tmp_path / "batches.pt"))  # fmt: skip
    env = os.environ | {"PYTHONPATH": f"{transformers_4}{os.pathsep}{Path(__file__).parent}"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    old = json.loads(r.stdout.strip().splitlines()[-1])
    assert old["version"].startswith("4."), old["version"]
    assert old["missing"] == []
    new, _ = recorded_sums(sft, batches)
    assert sorted(old["sums"]) == sorted(new)
    for key, (sum_abs, sum_sq, tokens) in new.items():
        o_abs, o_sq, o_tokens = old["sums"][key]
        assert o_tokens == tokens, key
        np.testing.assert_allclose(o_abs, sum_abs, rtol=2e-4, atol=1e-6, err_msg=key)
        np.testing.assert_allclose(o_sq, sum_sq, rtol=4e-4, atol=1e-8, err_msg=key)
    scores, not_scored = attribution_of(sft, batches)
    assert old["not_scored"] == not_scored == []
    assert sorted(old["attribution"]) == sorted(scores)
    assert sum(np.max(v) > 0 for v in scores.values()) > len(scores) // 2  # not all trivial
    for key, values in scores.items():
        np.testing.assert_allclose(old["attribution"][key], values, rtol=1e-3, atol=1e-6,
                                   err_msg=key)  # fmt: skip


# --- attribution: expert neurons inside fused experts modules -------------------------------


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_expert_contributions_equal_ablation_through_the_experts_own_forward(moe_pairs, family):
    """Expert neuron j's contribution at position t is the change of the target logit when j's
    outgoing weights (column j of its down projection) are zeroed and the experts module's own
    forward runs again on the same inputs and routing, pushed through the block's write (the
    shared expert's sigmoid gate has no effect on the routed experts' share), the frozen final
    norm and the lm_head. An expert not routed at t contributes nothing."""
    from test_attribution import all_targets, frozen_norm_map, load, math_batches, sites_of

    from rejuv_cli.reset.attribution import attribution_scores

    base_dir, sft_dir = moe_pairs[family]
    sft = load(sft_dir)
    batch = math_batches(sft_dir)[0]
    row, t = all_targets([batch])[0][5]
    layer = len(sft.model.layers) - 1
    experts = sft.model.layers[layer].mlp.experts
    seen = {}

    def keep_inputs(_m, args, _kwargs, out):
        seen["args"] = tuple(a.detach() for a in args)

    handles = [experts.register_forward_hook(keep_inputs, with_kwargs=True),
               sft.model.norm.register_forward_pre_hook(
                   lambda m, a: seen.__setitem__("h", a[0].detach()))]  # fmt: skip
    try:
        with torch.no_grad():
            logits = sft(input_ids=batch[0], attention_mask=batch[1]).logits
    finally:
        for h in handles:
            h.remove()
    hidden, top_k, weights = seen["args"]
    n = row * batch[0].shape[1] + t  # the position's row in the experts' [B·T, H] input
    routed = set(top_k[n].tolist())
    idle = next(e for e in range(experts.down_proj.shape[0]) if e not in routed)
    sites = {s.key: s for s in sites_of(base_dir, sft_dir)}
    target = int(logits[row, t].argmax())
    frozen, _ = frozen_norm_map(sft, seen["h"][row, t])
    w = sft.get_output_embeddings().weight[target]
    for e in sorted(routed):
        site = sites[f"layers.{layer}.expert.{e}"]
        res = attribution_scores(sft, [batch], [[(row, t)]], [site], CPU)
        assert res.missing == []
        expected = np.zeros(site.n_units)
        down = experts.down_proj.data
        with torch.no_grad():
            full = experts(hidden, top_k, weights)[n]
            for j in range(site.n_units):
                kept = down[e, :, j].clone()
                down[e, :, j] = 0
                delta = full - experts(hidden, top_k, weights)[n]  # what neuron j writes at t
                down[e, :, j] = kept
                expected[j] = abs(float(w @ frozen(delta)))
        np.testing.assert_allclose(res.scores[site.key], expected, rtol=1e-4, atol=1e-7)
        assert expected.max() > 1e-5
    site = sites[f"layers.{layer}.expert.{idle}"]
    res = attribution_scores(sft, [batch], [[(row, t)]], [site], CPU)
    assert res.missing == [] and not res.scores[site.key].any()


CPU = torch.device("cpu")
