"""Targeted neuron reset: exactly the selected slices change, to the right values, chosen right.

Where each unit lives is written out by hand here (`unit_slices`), independently of the unit
maps in rejuv_cli.arch, so a wrong map entry fails these tests.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import FAMILIES, bits, load_dir, read_json, reference_fuse, run_cli
from safetensors.torch import load_file, save_file

from rejuv_cli.checkpoint.reader import Checkpoint
from rejuv_cli.ops.reset import protected_units, select_units
from rejuv_cli.plan import build_plan
from rejuv_cli.recipe import Recipe
from rejuv_cli.reset.drift import score_drift
from rejuv_cli.reset.layout import unit_layout
from rejuv_cli.testing.synth import make_pair

Q, KV, INTER = 32, 16, 64  # the tiny configs in rejuv_cli.testing.synth


def fuse(base, sft, out, *extra, code: int = 0):
    result = run_cli("fuse", base, sft, "--out", out, "--quiet", *extra)
    assert result.exit_code == code, result.stderr
    return result


def unit_slices(family: str, key: str, names) -> list[tuple[str, int, int]]:
    """(tensor, axis, offset) of every slice of a unit of instance `key` ("layers.1.mlp")."""
    parts = key.split(".")
    i, module = int(parts[1]), parts[2]
    if family == "gpt2":  # Conv1D is [in, out]: output channels are columns
        p = f"transformer.h.{i}."
        if module in ("q", "k", "v"):
            off = {"q": 0, "k": 32, "v": 64}[module]
            return [(p + "attn.c_attn.weight", 1, off), (p + "attn.c_attn.bias", 0, off)]
        if module == "o":
            return [(p + "attn.c_proj.weight", 0, 0)]
        return [(p + "mlp.c_fc.weight", 1, 0), (p + "mlp.c_fc.bias", 0, 0),
                (p + "mlp.c_proj.weight", 0, 0)]  # fmt: skip
    p = f"model.layers.{i}."
    if module == "o":
        return [(p + "self_attn.o_proj.weight", 1, 0)]
    if family == "phi3":  # qkv_proj = [q; k; v] rows, gate_up_proj = [gate; up] rows
        if module in ("q", "k", "v"):
            off = {"q": 0, "k": Q, "v": Q + KV}[module]
            return [(p + "self_attn.qkv_proj.weight", 0, off)]
        return [(p + "mlp.gate_up_proj.weight", 0, 0), (p + "mlp.gate_up_proj.weight", 0, INTER),
                (p + "mlp.down_proj.weight", 1, 0)]  # fmt: skip
    if module in ("q", "k", "v"):
        w = p + f"self_attn.{module}_proj."
        return [(w + "weight", 0, 0)] + ([(w + "bias", 0, 0)] if w + "bias" in names else [])
    if module == "expert" and family == "mixtral":
        e = p + f"block_sparse_moe.experts.{parts[3]}."
        return [(e + "w1.weight", 0, 0), (e + "w3.weight", 0, 0), (e + "w2.weight", 1, 0)]
    m = {"mlp": "mlp.", "shared_expert": "mlp.shared_expert."}.get(module)
    m = m or f"mlp.experts.{parts[3]}."
    return [(p + m + "gate_proj.weight", 0, 0), (p + m + "up_proj.weight", 0, 0),
            (p + m + "down_proj.weight", 1, 0)]  # fmt: skip


def expected_after_reset(family, fused, base, mask) -> tuple[dict, set]:
    """Fusion-only output with the masked units' slices set to their base values."""
    expected = {n: t.clone() for n, t in fused.items()}
    touched = set()
    for key, sel in mask.items():
        units = torch.nonzero(sel).flatten()
        for name, axis, offset in unit_slices(family, key, base):
            idx = units + offset
            if axis == 0:
                expected[name][idx] = base[name][idx]
            else:
                expected[name][:, idx] = base[name][:, idx]
            touched.add(name)
    return expected, touched


@pytest.fixture(scope="module")
def moe_pair(tmp_path_factory):
    return make_pair(tmp_path_factory.mktemp("moe"), "qwen2_moe", seed=11)


@pytest.mark.parametrize("family", FAMILIES + ["qwen2_moe"])
def test_reset_changes_exactly_the_selected_slices_to_base(pairs, moe_pair, family, tmp_path):
    base_dir, sft_dir = moe_pair if family == "qwen2_moe" else pairs[family]
    fuse(base_dir, sft_dir, tmp_path / "fused", "--reset", "0")
    mask_file = tmp_path / "m.safetensors"
    fuse(base_dir, sft_dir, tmp_path / "reset", "--reset", "0.05", "--save-mask", mask_file)
    base, fused, reset = (
        load_dir(base_dir),
        load_dir(tmp_path / "fused"),
        load_dir(tmp_path / "reset"),
    )
    mask = load_file(mask_file)
    units = sum(m.numel() for m in mask.values())
    selected = sum(int(m.sum()) for m in mask.values())
    assert selected == round(0.05 * units) > 0
    expected, touched = expected_after_reset(family, fused, base, mask)
    for name in fused:
        assert bits(reset[name]) == bits(expected[name]), name
    changed = {n for n in fused if bits(reset[n]) != bits(fused[n])}
    assert changed and changed <= touched
    summary = read_json(tmp_path / "reset" / "rejuv.json")["reset"]
    assert summary["selected"] == selected and summary["units"] == units
    assert sum(m["reset"] for m in summary["by_module"].values()) == selected
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "reset")
    logits = model(torch.tensor([[1, 5, 9, 2]])).logits
    assert torch.isfinite(logits).all()


def rewrite(ckpt_dir, edit) -> None:
    """Apply edit(state) to every tensor of a checkpoint, keeping its sharding."""
    for f in sorted(ckpt_dir.glob("*.safetensors")):
        state = load_file(f)
        edit(state)
        save_file(state, f, metadata={"format": "pt"})


L0K = "model.layers.0.self_attn.k_proj.weight"
L1 = "model.layers.1.mlp."


def plant(base_dir, sft_dir) -> None:
    """SFT drift ×5 on layer-0 k unit 3 and ×6 on layer-1 MLP unit 7 (joint relative drift 5
    and 6); layer-1 MLP unit 20 gets the largest base norm (×20) and drift ×10: the top scorer,
    but protected."""
    full_base = load_dir(base_dir)

    def base_edit(state):
        for n in ("gate_proj.weight", "up_proj.weight"):
            if L1 + n in state:
                state[L1 + n][20] *= 20
        if L1 + "down_proj.weight" in state:
            state[L1 + "down_proj.weight"][:, 20] *= 20

    rewrite(base_dir, base_edit)
    b = load_dir(base_dir)
    assert torch.equal(b[L0K], full_base[L0K])

    def sft_edit(state):
        for name in state:
            state[name] = b[name].clone()  # start from BASE: all other drift is zero
        if L0K in state:
            state[L0K][3] = b[L0K][3] * 6
        for unit, factor in ((7, 7), (20, 11)):
            for n in ("gate_proj.weight", "up_proj.weight"):
                if L1 + n in state:
                    state[L1 + n][unit] = b[L1 + n][unit] * factor
            if L1 + "down_proj.weight" in state:
                state[L1 + "down_proj.weight"][:, unit] = (
                    b[L1 + "down_proj.weight"][:, unit] * factor
                )

    rewrite(sft_dir, sft_edit)


def chosen(mask_file) -> set[tuple[str, int]]:
    return {
        (k, int(j)) for k, m in load_file(mask_file).items() for j in torch.nonzero(m).flatten()
    }


def test_planted_drift_is_selected_first_and_protected_units_never(llama_copy, tmp_path):
    base_dir, sft_dir = llama_copy
    plant(base_dir, sft_dir)
    # 320 units: 0.00625 -> 2 units. Unit 20 scores highest but has the largest base norm.
    m = tmp_path / "m.safetensors"
    fuse(base_dir, sft_dir, tmp_path / "a", "--reset", "0.00625", "--save-mask", m)
    assert chosen(m) == {("layers.1.mlp", 7), ("layers.0.k", 3)}
    fuse(base_dir, sft_dir, tmp_path / "b", "--reset", "0.00625", "--protect", "0",
         "--save-mask", m)  # fmt: skip
    assert chosen(m) == {("layers.1.mlp", 20), ("layers.1.mlp", 7)}
    # Protection is per module: the largest base-norm unit of every module is kept out.
    fuse(base_dir, sft_dir, tmp_path / "c", "--reset", "0.5", "--max-per-module", "1",
         "--save-mask", m)  # fmt: skip
    assert ("layers.1.mlp", 20) not in chosen(m) and ("layers.1.mlp", 7) in chosen(m)


def test_drift_scores_match_a_direct_computation(llama):
    base_dir, sft_dir = llama
    with Checkpoint.open(base_dir, "BASE") as base, Checkpoint.open(sft_dir, "SFT") as sft:
        layout = unit_layout(sft, build_plan(base, sft, Recipe()), None)
        scores = score_drift(layout, base, sft, torch.device("cpu"))
    b, s = load_dir(base_dir), load_dir(sft_dir)

    def norm(t):  # float64 row norms
        return np.linalg.norm(t.to(torch.float64).numpy(), axis=-1)

    by_key = dict(zip([i.key for i in layout.instances], scores.scores, strict=True))
    p = "model.layers.1."
    gate, up, down = (p + f"mlp.{n}_proj.weight" for n in ("gate", "up", "down"))
    # the joint relative drift of neuron j: rows j of gate and up, column j of down together
    delta = {n: (s[n].to(torch.float64) - b[n].to(torch.float64)).numpy() for n in (gate, up, down)}
    base = {n: b[n].to(torch.float64).numpy() for n in (gate, up, down)}
    want = np.array([
        np.sqrt((np.concatenate([delta[gate][j], delta[up][j], delta[down][:, j]]) ** 2).sum())
        / (np.sqrt((np.concatenate([base[gate][j], base[up][j], base[down][:, j]]) ** 2).sum())
           + 1e-6)
        for j in range(base[gate].shape[0])
    ])  # fmt: skip
    np.testing.assert_allclose(by_key["layers.1.mlp"], want, rtol=1e-5)
    o = p + "self_attn.o_proj.weight"
    want_o = norm((s[o].float() - b[o].float()).T) / (norm(b[o].T) + 1e-6)
    np.testing.assert_allclose(by_key["layers.1.o"], want_o, rtol=1e-5)


def greedy(scores, eligible, fraction, cap):
    """Reference selection: walk the global ranking, skipping units of full modules."""
    flat = [(-s, m, j) for m, arr in enumerate(scores) for j, s in enumerate(arr) if eligible[m][j]]
    target = int(fraction * sum(len(a) for a in scores) + 0.5)
    taken, per = set(), [0] * len(scores)
    for _, m, j in sorted(flat):
        if len(taken) == target:
            break
        if per[m] < int(cap * len(scores[m]) + 1e-9):
            taken.add((m, j))
            per[m] += 1
    return taken


@pytest.mark.parametrize("seed", range(5))
def test_selection_is_the_greedy_global_ranking_with_caps(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(5, 60, size=6)
    scores = [rng.random(n) * rng.choice([1, 10]) for n in sizes]
    scores[0][:3] = scores[0][3]  # ties resolve by module, then unit index
    eligible = [rng.random(n) > 0.1 for n in sizes]
    masks, target = select_units(scores, eligible, 0.15, 0.2)
    got = {(m, int(j)) for m, mask in enumerate(masks) for j in np.flatnonzero(mask)}
    assert got == greedy(scores, eligible, 0.15, 0.2)
    assert target == int(0.15 * sizes.sum() + 0.5)


def test_protected_units_are_the_largest_base_norms():
    norms = np.array([1.0, 9.0, 3.0, 9.0, 2.0] * 40)  # 200 units
    mask = protected_units(norms, 0.005)  # ceil(1.0) = 1 unit: the first of the ties
    assert np.flatnonzero(mask).tolist() == [1]
    assert protected_units(norms, 0.0).sum() == 0
    assert protected_units(norms, 0.02).sum() == 4


def test_deterministic_and_a_saved_mask_reproduces_the_checkpoint(llama, tmp_path):
    base_dir, sft_dir = llama
    m1, m2 = tmp_path / "m1.safetensors", tmp_path / "m2.safetensors"
    fuse(base_dir, sft_dir, tmp_path / "a", "--reset", "0.05", "--save-mask", m1)
    fuse(base_dir, sft_dir, tmp_path / "b", "--reset", "0.05", "--save-mask", m2)
    fuse(base_dir, sft_dir, tmp_path / "c", "--mask", m1)
    assert m1.read_bytes() == m2.read_bytes()
    a = load_dir(tmp_path / "a")
    for other in ("b", "c"):
        o = load_dir(tmp_path / other)
        assert all(bits(a[n]) == bits(o[n]) for n in a), other
    c = read_json(tmp_path / "c" / "rejuv.json")["reset"]
    assert c["source"] == f"mask {m1}" and c["selected"] == len(chosen(m1))


def test_omega_blends_base_and_fused_in_float32(llama, tmp_path):
    base_dir, sft_dir = llama
    m = tmp_path / "m.safetensors"
    fuse(base_dir, sft_dir, tmp_path / "o", "--reset", "0.05", "--omega", "0.25",
         "--alpha", "0.4", "--save-mask", m)  # fmt: skip
    b, s, out = load_dir(base_dir), load_dir(sft_dir), load_dir(tmp_path / "o")
    fused = {n: reference_fuse(b[n], s[n], 0.4) for n in b}
    for key, sel in load_file(m).items():
        units = torch.nonzero(sel).flatten()
        if not units.numel():
            continue
        for name, axis, _ in unit_slices("llama", key, b):
            pick = (lambda t: t[units]) if axis == 0 else (lambda t: t[:, units])  # noqa: B023
            b32 = pick(b[name]).float().numpy()
            f32 = (pick(b[name]).float() + np.float32(0.4) * (pick(s[name]).float()
                   - pick(b[name]).float())).numpy()  # fmt: skip
            want = torch.from_numpy(np.float32(0.25) * b32 + np.float32(0.75) * f32)
            assert bits(pick(out[name])) == bits(want.to(torch.bfloat16)), name
    assert any(bits(out[n]) != bits(fused[n]) for n in out)


def test_fp32_output_resets_to_base_values_exactly(llama, tmp_path):
    base_dir, sft_dir = llama
    m = tmp_path / "m.safetensors"
    fuse(base_dir, sft_dir, tmp_path / "o", "--dtype", "fp32", "--reset", "0.05",
         "--save-mask", m)  # fmt: skip
    b, out = load_dir(base_dir), load_dir(tmp_path / "o")
    for key, sel in load_file(m).items():
        units = torch.nonzero(sel).flatten()
        for name, axis, _ in unit_slices("llama", key, b):
            got = out[name][units] if axis == 0 else out[name][:, units]
            want = b[name][units] if axis == 0 else b[name][:, units]
            assert got.dtype == torch.float32 and bits(got) == bits(want.float())


def test_random_modes_are_seeded_and_touch_only_selected_slices(pairs, tmp_path):
    base_dir, sft_dir = pairs["qwen2"]  # q/k/v biases: reinit zeroes them
    m = tmp_path / "m.safetensors"
    fuse(base_dir, sft_dir, tmp_path / "f", "--reset", "0")
    fused, base = load_dir(tmp_path / "f"), load_dir(base_dir)
    args = ("--reset", "0.05", "--max-per-module", "0.25")
    fuse(base_dir, sft_dir, tmp_path / "sp1", *args, "--reset-mode", "shrink-perturb",
         "--omega", "0.6", "--save-mask", m)  # fmt: skip
    fuse(base_dir, sft_dir, tmp_path / "sp2", "--mask", m, "--reset-mode", "shrink-perturb",
         "--omega", "0.6")  # fmt: skip
    fuse(base_dir, sft_dir, tmp_path / "sp3", "--mask", m, "--reset-mode", "shrink-perturb",
         "--omega", "0.6", "--seed", "1")  # fmt: skip
    sp1, sp2, sp3 = (load_dir(tmp_path / d) for d in ("sp1", "sp2", "sp3"))
    mask = load_file(m)
    _, touched = expected_after_reset("qwen2", fused, base, mask)
    assert all(bits(sp1[n]) == bits(sp2[n]) for n in sp1)  # same seed: same bytes
    assert any(bits(sp1[n]) != bits(sp3[n]) for n in touched)  # another seed: other noise
    assert all(bits(sp1[n]) == bits(fused[n]) for n in fused if n not in touched)

    fuse(base_dir, sft_dir, tmp_path / "ri", "--mask", m, "--reset-mode", "reinit")
    ri = load_dir(tmp_path / "ri")
    for key, sel in mask.items():
        units = torch.nonzero(sel).flatten()
        for name, axis, offset in unit_slices("qwen2", key, base):
            got = ri[name][units + offset] if axis == 0 else ri[name][:, units + offset]
            if name.endswith("bias") or name.endswith(("o_proj.weight", "down_proj.weight")):
                assert not got.any(), name  # outgoing weights and biases: zero
            elif units.numel():
                assert got.float().std() > 0, name  # incoming weights: redrawn
    assert all(bits(ri[n]) == bits(fused[n]) for n in fused if n not in touched)


def test_modules_flag_limits_the_reset(llama, tmp_path):
    base_dir, sft_dir = llama
    m = tmp_path / "m.safetensors"
    fuse(base_dir, sft_dir, tmp_path / "a", "--modules", "k,v", "--reset", "0.1", "--save-mask", m)
    assert {k.split(".")[2] for k in load_file(m)} == {"k", "v"}
    fuse(base_dir, sft_dir, tmp_path / "b", "--modules", "down", "--save-mask", m)
    assert {k.split(".")[2] for k in load_file(m)} == {"mlp"}  # gate/up/down: one MLP unit
    r = fuse(base_dir, sft_dir, tmp_path / "c", "--modules", "k,ffn", code=2)
    assert "--modules: unknown module 'ffn'" in r.stderr


def test_dry_run_with_save_mask_writes_only_the_mask(llama, tmp_path):
    base_dir, sft_dir = llama
    m = tmp_path / "sub" / "m.safetensors"
    r = fuse(base_dir, sft_dir, tmp_path / "o", "--dry-run", "--json", "--save-mask", m)
    plan = json.loads(r.stdout)
    assert not (tmp_path / "o").exists() and m.is_file()
    assert plan["reset"]["selected"] == len(chosen(m)) == round(0.01 * 320)
    r = fuse(base_dir, sft_dir, tmp_path / "o", "--dry-run", "--json")
    assert json.loads(r.stdout)["reset"]["target"] == 3 and "selected" not in r.stdout


def test_summary_json_card_and_provenance_report_counts(llama, tmp_path):
    base_dir, sft_dir = llama
    r = fuse(base_dir, sft_dir, tmp_path / "o", "--reset", "0.05", "--json")
    summary = json.loads(r.stdout)["reset"]
    assert summary["selected"] == 16 and summary["units"] == 320
    assert summary["by_module"]["mlp"]["units"] == 128
    assert sum(summary["by_layer"].values()) == 16 == sum(summary["by_instance"].values())
    assert read_json(tmp_path / "o" / "rejuv.json")["reset"]["by_module"] == summary["by_module"]
    card = (tmp_path / "o" / "README.md").read_text()
    n = summary["by_module"]["mlp"]["reset"]
    assert "16 of 320 units" in card and f"| mlp | 128 | {n} |" in card
    table = run_cli("fuse", base_dir, sft_dir, "--out", tmp_path / "o2").stderr
    assert "reset mlp" in table and "16 of 320" not in table  # default 1%: 3 units
    assert "3 of 320 units" in table


def write_mask_for(family_pair, path, tmp_path) -> None:
    base_dir, sft_dir = family_pair
    fuse(base_dir, sft_dir, tmp_path / "o", "--dry-run", "--save-mask", path)


def test_bad_masks_are_refused_with_a_clear_message(pairs, llama, tmp_path):
    base_dir, sft_dir = llama

    def refused(mask, *needles, code=2):
        r = fuse(base_dir, sft_dir, tmp_path / "out", "--mask", mask, code=code)
        for needle in needles:
            assert needle in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()

    gpt2_mask = tmp_path / "gpt2.safetensors"
    fuse(*pairs["gpt2"], tmp_path / "g", "--dry-run", "--save-mask", gpt2_mask)
    refused(gpt2_mask, "made for a 'gpt2' model with 2 layers, but SFT is a 'llama'")

    wide = make_pair(tmp_path / "wide", "llama", config_overrides={"intermediate_size": 96})
    wide_mask = tmp_path / "wide.safetensors"
    fuse(*wide, tmp_path / "w", "--dry-run", "--save-mask", wide_mask)
    refused(wide_mask, "'layers.0.mlp' is bool[96] but SFT has 64 units")

    refused(next(sft_dir.glob("*.safetensors")), "not a rejuv mask")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    refused(junk, "not a readable safetensors file")
    refused(tmp_path / "missing.safetensors", "no such file")
    r = fuse(base_dir, sft_dir, tmp_path / "out", "--mask", junk, "--reset", "0.02", code=2)
    assert "--mask fixes which units are reset; drop --reset" in r.stderr


def test_models_without_a_unit_map_fuse_but_refuse_an_explicit_reset(llama_copy, tmp_path):
    base_dir, sft_dir = llama_copy
    for d in (base_dir, sft_dir):
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps(cfg | {"model_type": "mystery"}))
    r = fuse(base_dir, sft_dir, tmp_path / "a")
    assert (tmp_path / "a" / "config.json").is_file()
    r = run_cli("fuse", base_dir, sft_dir, "--out", tmp_path / "b")
    assert r.exit_code == 0 and "reset skipped, fusion only: no unit map for model_type" in r.stderr
    assert read_json(tmp_path / "b" / "rejuv.json")["reset"] is None
    r = fuse(base_dir, sft_dir, tmp_path / "c", "--reset", "0.01", code=1)
    assert "no unit map for model_type 'mystery'" in r.stderr and "llama, mistral" in r.stderr
    r = fuse(base_dir, sft_dir, tmp_path / "d", "--recipe", "paper", code=1)
    assert "Supported:" in r.stderr


def test_reset_flag_usage_errors(llama, tmp_path):
    base_dir, sft_dir = llama
    cases = {
        (
            "--select",
            "magic",
        ): "--select: must be one of attribution, dormant, drift, saturated (got 'magic')",
        ("--max-per-module", "0"): "--max-per-module: must be > 0.0 and <= 1.0 (got 0.0)",
        ("--reset", "0", "--save-mask", str(tmp_path / "m")): "nothing to save with --reset 0",
        (
            "--reset",
            "0.9",
        ): "--reset: must be >= 0.0 and <= 0.5 (got 0.9)",
    }
    for args, needle in cases.items():
        r = fuse(base_dir, sft_dir, tmp_path / "o", *args, code=2)
        assert needle in r.stderr, (args, r.stderr)
