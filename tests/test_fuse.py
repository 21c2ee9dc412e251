"""End-to-end `rejuv fuse` on tiny real checkpoints of every family: values, coverage, loading."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FAMILIES, bits, load_dir, read_json, reference_fuse, run_cli

from rejuv_cli.testing.synth import make_pair


def fuse(base, sft, out, *extra):
    """Fusion only (--reset 0): these tests check the fusion against its reference."""
    result = run_cli("fuse", base, sft, "--out", out, "--quiet", "--reset", "0", *extra)
    assert result.exit_code == 0, result.stderr
    return result


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_values_coverage_and_loading(pairs, family, tmp_path):
    base_dir, sft_dir = pairs[family]
    out = tmp_path / "out"
    fuse(base_dir, sft_dir, out, "--shard-size", "24KB")

    base, sft, fused = load_dir(base_dir), load_dir(sft_dir), load_dir(out)
    # Coverage: exactly the SFT tensor set, same shapes and dtypes.
    assert sorted(fused) == sorted(sft)
    for name, s in sft.items():
        assert fused[name].shape == s.shape and fused[name].dtype == s.dtype, name
        assert bits(fused[name]) == bits(reference_fuse(base[name], s, 0.5)), name
    # Fusion really moved something: the output is neither input.
    some = next(n for n in sft if n.endswith("weight") and sft[n].numel() > 100)
    assert bits(fused[some]) not in (bits(base[some]), bits(sft[some]))

    # Shards: limit respected (whole file), index complete, pt metadata.
    index = read_json(out / "model.safetensors.index.json")
    files = sorted(out.glob("model-*.safetensors"))
    assert len(files) > 1 and all(f.stat().st_size <= 24_000 for f in files)
    assert set(index["weight_map"]) == set(sft)
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in fused.values()
    )
    from safetensors import safe_open

    with safe_open(files[0], "pt") as f:
        assert f.metadata() == {"format": "pt"}

    # Side files come from SFT.
    for name in (
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ):
        assert (out / name).read_bytes() == (sft_dir / name).read_bytes(), name
    assert read_json(out / "config.json") == read_json(sft_dir / "config.json")

    # Loads in transformers and gives finite logits.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 6, 7, 2]])).logits
    assert torch.isfinite(logits).all()
    state = model.state_dict()
    for name, t in fused.items():
        if name in state:
            assert torch.equal(state[name].to(t.dtype), t), name


def test_alpha_zero_and_one_reproduce_inputs_bit_for_bit(llama, tmp_path):
    base_dir, sft_dir = llama
    fuse(base_dir, sft_dir, tmp_path / "a0", "--alpha", "0")
    fuse(base_dir, sft_dir, tmp_path / "a1", "--alpha", "1")
    base, sft = load_dir(base_dir), load_dir(sft_dir)
    a0, a1 = load_dir(tmp_path / "a0"), load_dir(tmp_path / "a1")
    assert all(bits(a0[n]) == bits(base[n]) for n in sft)
    assert all(bits(a1[n]) == bits(sft[n]) for n in sft)


def test_alpha_one_with_the_default_reset_counts_the_tensors_it_changes(llama, tmp_path):
    """α = 1 gives SFT's bytes only with --reset 0: under the default reset the tensors holding
    reset units differ from SFT, and counts.reset says how many (counted here from the bytes)."""
    base_dir, sft_dir = llama
    result = run_cli("fuse", base_dir, sft_dir, "--out", tmp_path / "o", "--alpha", "1",
                     "--json", "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    counts = json.loads(result.stdout)["counts"]
    sft, out = load_dir(sft_dir), load_dir(tmp_path / "o")
    changed = [n for n in sft if bits(out[n]) != bits(sft[n])]
    assert 0 < len(changed) < len(sft)
    assert counts["reset"] == len(changed)
    assert counts["from_sft"] == counts["tensors"] == len(sft)
    assert counts["fused"] == counts["from_base"] == counts["copied"] == 0
    assert read_json(tmp_path / "o" / "rejuv.json")["counts"] == counts


def test_other_alpha_matches_float32_reference_and_fp32_output(llama, tmp_path):
    base_dir, sft_dir = llama
    fuse(base_dir, sft_dir, tmp_path / "o", "--alpha", "0.37", "--dtype", "fp32")
    base, sft, out = load_dir(base_dir), load_dir(sft_dir), load_dir(tmp_path / "o")
    for n, s in sft.items():
        assert out[n].dtype == torch.float32
        assert bits(out[n]) == bits(reference_fuse(base[n], s, 0.37, torch.float32)), n
    assert read_json(tmp_path / "o" / "config.json")["dtype"] == "float32"


def test_float32_checkpoints_fuse_exactly(tmp_path):
    """fp32 inputs: α=0/1 must not round-trip through arithmetic (base + 1·(s−b) ≠ s in fp32)."""
    base_dir, sft_dir = make_pair(tmp_path / "p", "qwen2", dtype="float32", max_shard_size="40KB")
    fuse(base_dir, sft_dir, tmp_path / "a1", "--alpha", "1")
    fuse(base_dir, sft_dir, tmp_path / "a", "--alpha", "0.5")
    base, sft = load_dir(base_dir), load_dir(sft_dir)
    a1, a = load_dir(tmp_path / "a1"), load_dir(tmp_path / "a")
    assert all(bits(a1[n]) == bits(sft[n]) for n in sft)
    assert all(bits(a[n]) == bits(reference_fuse(base[n], sft[n], 0.5)) for n in sft)


def test_same_inputs_give_byte_identical_outputs(llama, tmp_path):
    base_dir, sft_dir = llama
    fuse(base_dir, sft_dir, tmp_path / "x", "--shard-size", "30KB")
    fuse(base_dir, sft_dir, tmp_path / "y", "--shard-size", "30KB")
    for f in sorted((tmp_path / "x").iterdir()):
        if f.name == "rejuv.json":  # holds timings
            continue
        other = (tmp_path / "y" / f.name).read_bytes()
        if f.name == "README.md":  # the card quotes the command, which names OUT
            other = other.replace(str(tmp_path / "y").encode(), str(tmp_path / "x").encode())
        assert f.read_bytes() == other, f.name


def test_added_tokens_keep_sft_rows_and_fuse_shared_rows(tmp_path):
    base_dir, sft_dir = make_pair(tmp_path / "p", "llama", added_tokens=3)
    out = tmp_path / "out"
    result = run_cli("fuse", base_dir, sft_dir, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert "'lm_head.weight': rows 128..130 exist only in SFT (added tokens)" in result.stderr
    base, sft, fused = load_dir(base_dir), load_dir(sft_dir), load_dir(out)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        b, s, f = base[name], sft[name], fused[name]
        assert s.shape[0] == b.shape[0] + 3 and f.shape == s.shape
        assert bits(f[: b.shape[0]]) == bits(reference_fuse(b, s[: b.shape[0]], 0.5))
        assert bits(f[b.shape[0] :]) == bits(s[b.shape[0] :])
    rejuv = read_json(out / "rejuv.json")
    assert rejuv["counts"]["added_token_rows"] == 6
    assert rejuv["tensors"]["lm_head.weight"]["base_rows"] == b.shape[0]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert len(AutoTokenizer.from_pretrained(out)) == len(AutoTokenizer.from_pretrained(sft_dir))
    assert (
        AutoModelForCausalLM.from_pretrained(out).get_input_embeddings().weight.shape[0]
        == s.shape[0]
    )


def test_tied_embeddings_stay_tied(pairs, tmp_path):
    base_dir, sft_dir = pairs["gemma2"]  # tie_word_embeddings=True: no lm_head tensor stored
    fuse(base_dir, sft_dir, tmp_path / "o")
    fused = load_dir(tmp_path / "o")
    assert "lm_head.weight" not in fused
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(tmp_path / "o")
    assert m.lm_head.weight.data_ptr() == m.get_input_embeddings().weight.data_ptr()


def test_untied_sft_from_tied_base_fuses_lm_head_with_base_embeddings(tmp_path):
    """A tied BASE stores no lm_head; its effective lm_head is its input embedding."""
    base_dir, _ = make_pair(
        tmp_path / "tied", "qwen2", config_overrides={"tie_word_embeddings": True}
    )
    _, sft_dir = make_pair(
        tmp_path / "untied", "qwen2", config_overrides={"tie_word_embeddings": False}
    )
    result = run_cli("fuse", base_dir, sft_dir, "--out", tmp_path / "o")
    assert result.exit_code == 0, result.stderr
    base, sft, fused = load_dir(base_dir), load_dir(sft_dir), load_dir(tmp_path / "o")
    assert "lm_head.weight" not in base
    ref = reference_fuse(base["model.embed_tokens.weight"], sft["lm_head.weight"], 0.5)
    assert bits(fused["lm_head.weight"]) == bits(ref)


def test_tensors_only_in_one_side_are_copied_or_left_out_with_warnings(llama_copy, tmp_path):
    from safetensors.torch import load_file, save_file

    base_dir, sft_dir = llama_copy
    # Plant an extra tensor in SFT and one in BASE (single-file rewrites keep things simple).
    for d, extra in ((sft_dir, "model.extra_sft.weight"), (base_dir, "model.extra_base.weight")):
        state = load_dir(d)
        state[extra] = torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)
        state["model.step_counter"] = torch.tensor([7], dtype=torch.int64)
        for f in d.glob("model*.safetensors*"):
            f.unlink()
        save_file(state, d / "model.safetensors", metadata={"format": "pt"})
    result = run_cli("fuse", base_dir, sft_dir, "--out", tmp_path / "o")
    assert result.exit_code == 0, result.stderr
    assert "'model.extra_sft.weight' exists only in SFT: copied from SFT" in result.stderr
    assert "'model.extra_base.weight' exists only in BASE" in result.stderr
    fused = load_file(tmp_path / "o" / "model.safetensors")
    assert "model.extra_base.weight" not in fused
    assert torch.equal(fused["model.extra_sft.weight"], load_dir(sft_dir)["model.extra_sft.weight"])
    assert (
        fused["model.step_counter"].dtype == torch.int64 and fused["model.step_counter"].item() == 7
    )
    counts = read_json(tmp_path / "o" / "rejuv.json")["counts"]
    assert counts["copied"] == 2 and counts["sft_only"] == 1  # extra_sft and the int64 counter
    assert counts["fused"] + counts["from_base"] + counts["from_sft"] + counts["copied"] == len(
        load_dir(sft_dir)
    )


def test_recipe_rules_and_depth_interpolation(llama, tmp_path):
    base_dir, sft_dir = llama
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "fuse:\n  alpha: 0.5\n  rules:\n"
        "    - match: '*.mlp.*'\n      alpha: [0.2, 0.8]\n"
        "    - match: '*norm*'\n      alpha: 1.0\n"
    )
    fuse(base_dir, sft_dir, tmp_path / "o", "--recipe", recipe)
    base, sft, out = load_dir(base_dir), load_dir(sft_dir), load_dir(tmp_path / "o")
    expect = {
        "model.layers.0.mlp.up_proj.weight": 0.2,  # first of 2 layers
        "model.layers.1.mlp.up_proj.weight": 0.8,  # last layer
        "model.layers.0.self_attn.q_proj.weight": 0.5,  # no rule: global alpha
        "model.norm.weight": 1.0,
    }
    for name, alpha in expect.items():
        assert bits(out[name]) == bits(reference_fuse(base[name], sft[name], alpha)), name
    rejuv = read_json(tmp_path / "o" / "rejuv.json")
    assert rejuv["tensors"]["model.layers.1.mlp.up_proj.weight"]["alpha_source"] == "rules[0]"
    # A CLI flag overrides the recipe's global alpha but keeps its rules.
    fuse(base_dir, sft_dir, tmp_path / "o2", "--recipe", recipe, "--alpha", "0.3")
    out2 = load_dir(tmp_path / "o2")
    q = "model.layers.0.self_attn.q_proj.weight"
    assert bits(out2[q]) == bits(reference_fuse(base[q], sft[q], 0.3))
    assert bits(out2["model.norm.weight"]) == bits(sft["model.norm.weight"])


def test_model_card_and_provenance(llama, tmp_path):
    base_dir, sft_dir = llama
    fuse(base_dir, sft_dir, tmp_path / "o", "--recipe", "paper")
    card = (tmp_path / "o" / "README.md").read_text()
    # local directories are not Hub ids: no base_model in the front matter (tests/test_card.py)
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert "base_model" not in card.split("---\n")[1]
    assert "tags:" in card and "arXiv 2606.09932" in card and "alpha: 0.5" in card
    assert f"rejuv fuse {base_dir} {sft_dir} --out {tmp_path / 'o'} --recipe paper" in card
    rejuv = read_json(tmp_path / "o" / "rejuv.json")
    assert rejuv["recipe"]["fuse"]["alpha"] == 0.5
    assert rejuv["recipe_source"].endswith("recipes/paper.yaml")
    assert len(rejuv["inputs"]["sft"]["tensor_digest"]) == 32
    assert rejuv["counts"]["tensors"] == len(load_dir(sft_dir))
    assert set(rejuv["seconds"]) == {"plan", "score", "write", "total"}
    assert rejuv["reset"] is None and "reset** (paper): not applied" in card


def test_content_digest_ignores_sharding_but_sees_values(llama, tmp_path):
    """Same weights resharded digest alike; one changed element changes the digest."""
    base_dir, sft_dir = llama
    fuse(base_dir, sft_dir, tmp_path / "resharded", "--alpha", "1", "--shard-size", "1GB")
    fuse(base_dir, sft_dir, tmp_path / "o1")
    fuse(base_dir, tmp_path / "resharded", tmp_path / "o2")
    d1 = read_json(tmp_path / "o1" / "rejuv.json")["inputs"]["sft"]["tensor_digest"]
    d2 = read_json(tmp_path / "o2" / "rejuv.json")["inputs"]["sft"]["tensor_digest"]
    assert d1 == d2
    f = tmp_path / "resharded" / "model.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 0x01
    f.write_bytes(bytes(raw))
    fuse(base_dir, tmp_path / "resharded", tmp_path / "o3")
    assert read_json(tmp_path / "o3" / "rejuv.json")["inputs"]["sft"]["tensor_digest"] != d1


def test_dry_run_json_writes_nothing(llama, tmp_path):
    base_dir, sft_dir = llama
    result = run_cli(
        "fuse",
        base_dir,
        sft_dir,
        "--out",
        tmp_path / "o",
        "--dry-run",
        "--json",
        "--shard-size",
        "30KB",
    )
    assert result.exit_code == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["dry_run"] is True and plan["counts"]["tensors"] == len(load_dir(sft_dir))
    assert plan["counts"]["reset"] is None  # units are chosen when the run scores them
    assert plan["counts"]["shards"] == len(plan["shards"]) > 1
    assert plan["out_dtypes"] == {"BF16": plan["counts"]["tensors"]}
    assert not (tmp_path / "o").exists()


def test_json_summary_on_stdout_and_table_on_stderr(llama, tmp_path):
    base_dir, sft_dir = llama
    result = run_cli("fuse", base_dir, sft_dir, "--out", tmp_path / "o", "--json")
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert summary["counts"]["fused"] == summary["counts"]["tensors"]
    assert summary["device"] == "cpu"
    result = run_cli("fuse", base_dir, sft_dir, "--out", tmp_path / "o2")
    assert result.stdout == "" and "rejuv fuse: done" in result.stderr


def test_bin_checkpoints_load_with_weights_only(llama, tmp_path):
    base_dir, sft_dir = llama
    bin_dir = tmp_path / "sft_bin"
    bin_dir.mkdir()
    for f in sft_dir.iterdir():
        if not f.name.startswith("model"):
            (bin_dir / f.name).write_bytes(f.read_bytes())
    sft = load_dir(sft_dir)
    torch.save(sft, bin_dir / "pytorch_model.bin")
    fuse(base_dir, bin_dir, tmp_path / "o")
    base, fused = load_dir(base_dir), load_dir(tmp_path / "o")
    assert all(bits(fused[n]) == bits(reference_fuse(base[n], sft[n], 0.5)) for n in sft)
