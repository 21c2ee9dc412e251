"""Whole experts as reset units (`--modules whole_expert`, docs/method.md sections 2-4).

A whole expert is one unit: every tensor of expert e of one layer, reset whole to BASE's exact
bytes; routers and shared experts are fused, never reset. Which tensors belong to an expert is
written out here by name (`expert_names`), independently of the unit maps in rejuv_cli.arch,
and scores and norms are recomputed here in float64 from the tensors themselves.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import bits, edit_checkpoint, fails, load_dir, read_json, reference_fuse, run_cli
from safetensors import safe_open
from safetensors.torch import load_file

MOE = ("mixtral", "qwen2_moe", "qwen3_moe")
PLANT = (1, 2)  # (layer, expert) whose SFT update is scaled ×20


def fuse(base, sft, out, *extra):
    result = run_cli("fuse", base, sft, "--out", out, "--quiet", *extra)
    assert result.exit_code == 0, result.stderr
    return result


def shape_of(sft_dir) -> tuple[int, int]:
    """(layers, experts per layer) from config.json."""
    config = read_json(sft_dir / "config.json")
    return config["num_hidden_layers"], config.get("num_local_experts") or config["num_experts"]


def expert_names(family: str, names, layer: int, expert: int) -> set[str]:
    """Every stored tensor of one routed expert (its weights and any biases)."""
    moe = "block_sparse_moe" if family == "mixtral" else "mlp"
    prefix = f"model.layers.{layer}.{moe}.experts.{expert}."
    return {n for n in names if n.startswith(prefix)}


def plant(family: str, base_dir, sft_dir, dst, layer: int = PLANT[0], expert: int = PLANT[1]):
    """A copy of SFT in `dst` whose expert (layer, expert) moved 20 times as far from BASE."""
    base = load_dir(base_dir)
    chosen = expert_names(family, base, layer, expert)
    assert len(chosen) == 3

    def scale(state):
        hit = chosen & set(state)
        for n in hit:
            b = base[n].double()
            state[n] = (b + 20 * (state[n].double() - b)).to(state[n].dtype)
        return bool(hit)

    edit_checkpoint(sft_dir, dst, scale)
    return dst


@pytest.fixture(scope="module")
def planted(moe_pairs, tmp_path_factory):
    """family -> (base_dir, planted SFT dir)."""
    root = tmp_path_factory.mktemp("planted")
    return {f: (b, plant(f, b, s, root / f)) for f, (b, s) in moe_pairs.items()}


def expert_stats(family: str, base_dir, sft_dir) -> dict[tuple[int, int], tuple[float, float]]:
    """(layer, expert) -> (joint relative drift, joint BASE norm), float64 over all its tensors."""
    base, sft = load_dir(base_dir), load_dir(sft_dir)
    layers, experts = shape_of(sft_dir)
    out = {}
    for i in range(layers):
        for e in range(experts):
            names = expert_names(family, base, i, e)
            d2 = sum(float((sft[n].double() - base[n].double()).square().sum()) for n in names)
            b2 = sum(float(base[n].double().square().sum()) for n in names)
            out[(i, e)] = (math.sqrt(d2) / math.sqrt(b2), math.sqrt(b2))
    return out


@pytest.mark.parametrize("family", MOE)
def test_the_planted_expert_is_reset_whole_and_everything_else_is_fused(planted, family,
                                                                        tmp_path):  # fmt: skip
    base_dir, sft_dir = planted[family]
    layers, experts = shape_of(sft_dir)
    share = 1 / (layers * experts)  # one expert's share of all the model's experts
    out = tmp_path / "out"
    fuse(base_dir, sft_dir, out, "--modules", "whole_expert", "--reset", repr(share),
         "--max-per-module", "0.25", "--protect", "0")  # fmt: skip
    base, sft, got = load_dir(base_dir), load_dir(sft_dir), load_dir(out)
    reset = expert_names(family, base, *PLANT)
    assert got.keys() == sft.keys()
    for n in got:
        want = base[n] if n in reset else reference_fuse(base[n], sft[n], 0.5)
        assert bits(got[n]) == bits(want), n
    # the routers (and Qwen2-MoE's shared expert and its gate) are fused like any other tensor
    routers = [n for n in got if n.endswith((".gate.weight", ".shared_expert_gate.weight"))]
    assert len(routers) >= layers and not reset & set(routers)
    summary = read_json(out / "rejuv.json")["reset"]
    assert summary["modules"] == ["whole_expert"] and summary["units"] == layers * experts
    assert (summary["target"], summary["selected"]) == (1, 1)
    assert summary["by_instance"] == {f"layers.{PLANT[0]}.whole_expert": 1}
    assert summary["by_module"] == {"whole_expert": {"units": layers * experts, "reset": 1}}


@pytest.mark.parametrize(
    "reset, cap, protect, target, selected, protected",
    [
        # mixtral: 3 layers x 4 experts = 12 units
        ("0.25", "0.25", "0", 3, 3, 0),  # round(0.25·12) = 3; cap floor(0.25·4) = 1 per layer
        ("0.05", "0.5", "0", 1, 1, 0),  # round(0.6) = 1: the highest drift of the model
        ("0.5", "0.25", "0.005", 6, 3, 3),  # the cap leaves 3 of 6; ceil(0.005·4) = 1 protected
        ("0.5", "0.5", "0.25", 6, 6, 3),  # cap 2 per layer, 1 protected per layer
        ("0.5", "1", "0.5", 6, 6, 6),  # 2 protected per layer: the other 2 are all there is
    ],
)
def test_fraction_cap_and_protection_count_whole_experts(moe_pairs, tmp_path, reset, cap,
                                                         protect, target, selected,
                                                         protected):  # fmt: skip
    base_dir, sft_dir = moe_pairs["mixtral"]
    mask_file = tmp_path / "m.safetensors"
    r = run_cli("fuse", base_dir, sft_dir, "--out", tmp_path / "o", "--dry-run", "--json",
                "--modules", "whole_expert", "--reset", reset, "--max-per-module", cap,
                "--protect", protect, "--save-mask", mask_file)  # fmt: skip
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)["reset"]
    assert summary["units"] == 12
    assert (summary["target"], summary["selected"], summary["protected"]) == (
        target, selected, protected)  # fmt: skip
    mask = load_file(mask_file)
    assert sorted(mask) == [f"layers.{i}.whole_expert" for i in range(3)]
    stats = expert_stats("mixtral", base_dir, sft_dir)
    n_protect = math.ceil(float(protect) * 4 - 1e-9)
    picked = []
    for i in range(3):
        m = mask[f"layers.{i}.whole_expert"]
        assert m.dtype == torch.bool and m.shape == (4,)
        assert int(m.sum()) <= math.floor(float(cap) * 4 + 1e-9)  # the per-layer cap
        by_norm = sorted(range(4), key=lambda e: -stats[(i, e)][1])
        assert not m[by_norm[:n_protect]].any()  # the largest joint BASE norms are never reset
        picked += [(i, e) for e in range(4) if m[e]]
    # the chosen experts are the highest joint relative drifts among those the rules allow
    eligible = [(i, e) for i in range(3)
                for e in sorted(range(4), key=lambda e: -stats[(i, e)][1])[n_protect:]]  # fmt: skip
    ranked = sorted(eligible, key=lambda u: -stats[u][0])
    per_layer, expected = {}, []
    for u in ranked:
        if len(expected) < target and per_layer.get(u[0], 0) < math.floor(float(cap) * 4 + 1e-9):
            expected.append(u)
            per_layer[u[0]] = per_layer.get(u[0], 0) + 1
    assert sorted(picked) == sorted(expected)


def test_drift_scores_are_the_joint_relative_drift_of_each_expert(moe_pairs):
    from rejuv_cli.checkpoint.reader import Checkpoint
    from rejuv_cli.plan import build_plan
    from rejuv_cli.recipe import Recipe
    from rejuv_cli.reset.drift import score_drift
    from rejuv_cli.reset.layout import unit_layout

    base_dir, sft_dir = moe_pairs["qwen2_moe"]
    stats = expert_stats("qwen2_moe", base_dir, sft_dir)
    with Checkpoint.open(base_dir, "BASE") as base, Checkpoint.open(sft_dir, "SFT") as sft:
        layout = unit_layout(sft, build_plan(base, sft, Recipe()), ("whole_expert",))
        scores = score_drift(layout, base, sft, torch.device("cpu"))
    assert [i.key for i in layout.instances] == [f"layers.{i}.whole_expert" for i in range(2)]
    for inst, s, b2 in zip(layout.instances, scores.scores, scores.base_norm_sq, strict=True):
        for e in range(inst.n_units):
            drift, norm = stats[(inst.layer, e)]
            assert s[e] == pytest.approx(drift, rel=1e-5)
            assert math.sqrt(b2[e]) == pytest.approx(norm, rel=1e-5)


def test_a_saved_mask_reproduces_the_checkpoint(moe_pairs, tmp_path):
    base_dir, sft_dir = moe_pairs["qwen3_moe"]
    mask_file = tmp_path / "m.safetensors"
    args = ("--reset", "0.25", "--max-per-module", "0.5", "--modules", "whole_expert,q")
    fuse(base_dir, sft_dir, tmp_path / "a", *args, "--save-mask", mask_file)
    fuse(base_dir, sft_dir, tmp_path / "b", "--mask", mask_file)
    a, b = load_dir(tmp_path / "a"), load_dir(tmp_path / "b")
    assert a.keys() == b.keys() and all(bits(a[n]) == bits(b[n]) for n in a)
    with safe_open(mask_file, "pt") as f:
        assert f.metadata()["modules"] == "q,whole_expert"
        keys = set(f.keys())
    assert {"layers.0.whole_expert", "layers.1.whole_expert", "layers.0.q"} <= keys
    again = read_json(tmp_path / "b" / "rejuv.json")["reset"]
    first = read_json(tmp_path / "a" / "rejuv.json")["reset"]
    assert again["modules"] == ["q", "whole_expert"] and again["units"] == first["units"]
    assert again["by_instance"] == first["by_instance"] and first["selected"] > 0


def test_mixed_with_neurons_the_ranking_is_one(planted, tmp_path):
    # 3 layers x 64 q units + 12 experts = 204 units; round(0.01·204) = 2: the planted
    # expert (its relative drift is 20 times the others') and the highest q neuron
    base_dir, sft_dir = planted["mixtral"]
    fuse(base_dir, sft_dir, tmp_path / "o", "--modules", "q,whole_expert",
         "--max-per-module", "0.25", "--protect", "0")  # fmt: skip
    summary = read_json(tmp_path / "o" / "rejuv.json")["reset"]
    assert summary["units"] == 204 and summary["selected"] == 2
    assert summary["by_module"] == {"q": {"units": 192, "reset": 1},
                                    "whole_expert": {"units": 12, "reset": 1}}  # fmt: skip
    assert summary["by_instance"][f"layers.{PLANT[0]}.whole_expert"] == 1


def test_reinit_redraws_the_expert_and_zeroes_its_output(planted, tmp_path):
    base_dir, sft_dir = planted["mixtral"]
    fuse(base_dir, sft_dir, tmp_path / "o", "--modules", "whole_expert", "--reset", "0.05",
         "--max-per-module", "0.25", "--protect", "0", "--reset-mode", "reinit")  # fmt: skip
    base, sft, got = load_dir(base_dir), load_dir(sft_dir), load_dir(tmp_path / "o")
    reset = expert_names("mixtral", base, *PLANT)
    for n in got:
        if n not in reset:
            assert bits(got[n]) == bits(reference_fuse(base[n], sft[n], 0.5)), n
        elif n.endswith("w2.weight"):  # outgoing: zero
            assert not got[n].any()
        else:  # incoming: redrawn from the BASE tensor's mean and std
            std, want = float(got[n].float().std()), float(base[n].float().std())
            assert std == pytest.approx(want, rel=0.1)
            assert bits(got[n]) != bits(base[n])


@pytest.mark.parametrize("modules", ["expert,whole_expert", "mlp,whole_expert",
                                     "whole_expert,gate"])  # fmt: skip
def test_neuron_and_whole_experts_together_is_one_line_error(moe_pairs, tmp_path, modules):
    base_dir, sft_dir = moe_pairs["mixtral"]
    r = run_cli("fuse", base_dir, sft_dir, "--out", tmp_path / "o", "--modules", modules)
    line = fails(r, 2, "whole_expert", "choose one", one_line=True)
    assert line.startswith("rejuv: error: --modules: ")
    assert not (tmp_path / "o").exists()


def test_the_conflict_is_refused_in_a_recipe_too(tmp_path):
    from rejuv_cli.errors import RecipeError
    from rejuv_cli.recipe import load_recipe

    p = tmp_path / "r.yaml"
    p.write_text("reset:\n  modules: [expert, whole_expert]\n")
    with pytest.raises(RecipeError, match=r"reset\.modules: expert and whole_expert both"):
        load_recipe(p)


def test_a_dense_model_has_no_whole_experts(pairs, tmp_path):
    base_dir, sft_dir = pairs["llama"]
    r = run_cli("fuse", base_dir, sft_dir, "--out", tmp_path / "o", "--modules", "whole_expert")
    line = fails(r, 1, one_line=True)
    assert "--modules whole_expert: SFT (model_type 'llama')" in line
    assert "no whole experts to reset" in line and "mixtral, qwen2_moe, qwen3_moe" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("scorer", ["dormant", "saturated", "attribution"])
@pytest.mark.parametrize("command", ["fuse", "sweep"])
def test_data_scorers_refuse_whole_experts_before_reading_models(tmp_path, scorer, command):
    out = ("--out", tmp_path / "o") if command == "fuse" else ()
    r = run_cli(command, tmp_path / "missing-base", tmp_path / "missing-sft", *out,
                "--modules", "whole_expert", "--select", scorer)  # fmt: skip
    line = fails(r, 2, one_line=True)
    assert f"the {scorer} scorer ranks single neurons" in line and "--select drift" in line


def test_a_cap_that_allows_no_expert_is_an_error(moe_pairs, tmp_path):
    base_dir, sft_dir = moe_pairs["mixtral"]  # 4 experts per layer: floor(0.1 x 4) = 0
    r = run_cli("fuse", base_dir, sft_dir, "--out", tmp_path / "o", "--modules", "whole_expert")
    line = fails(r, 2, one_line=True)
    assert "--max-per-module 0.1 lets no whole_expert unit be reset" in line
    assert "use 0.25 or more" in line
    # with other modules beside it, a warning: the others can still be reset
    r = run_cli("fuse", base_dir, sft_dir, "--out", tmp_path / "o", "--dry-run",
                "--modules", "k,whole_expert")  # fmt: skip
    assert r.exit_code == 0 and "lets no whole_expert unit be reset" in r.stderr


def test_inspect_lists_whole_experts_as_opt_in(moe_pairs):
    r = run_cli("inspect", moe_pairs["qwen2_moe"][1], "--json")
    report = json.loads(r.stdout)
    whole = report["modules"]["whole_expert"]
    assert (whole["units_per_instance"], whole["instances"], whole["opt_in"]) == (4, 2, True)
    assert whole["tensors"] == ["mlp.experts.{e}.down_proj.weight",
                                "mlp.experts.{e}.gate_proj.weight",
                                "mlp.experts.{e}.up_proj.weight"]  # fmt: skip
    assert report["units_total"] == sum(
        m["units"] for k, m in report["modules"].items() if k != "whole_expert")  # fmt: skip
    assert "opt-in" in run_cli("inspect", moe_pairs["qwen2_moe"][1]).stdout
