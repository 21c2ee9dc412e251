"""What the shards hold against what the index, the other checkpoint and config.json say:
unlisted tensors, names that differ by a wrapper's prefix, layer counts that disagree.

Inputs are made by the tools that make them in the wild: save_pretrained shards with a
hand-edited index, state dicts of a real torch.compile / DistributedDataParallel wrapper saved
by huggingface_hub, config.json edited by hand.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import bits, fails, load_dir, read_json, reference_fuse, run_cli

from rejuv_cli.errors import CheckpointError

UNLISTED = "model.layers.1.mlp.down_proj.weight"


def fuse(base, sft, out, *extra):
    """Fusion only, in several output shards."""
    return run_cli("fuse", base, sft, "--out", out, "--reset", "0", "--shard-size", "24KB", *extra)


def drop_from_index(ckpt: Path, name: str, index: str = "model.safetensors.index.json") -> str:
    """Remove `name` from the checkpoint's index (the shard keeps it); returns its shard."""
    data = read_json(ckpt / index)
    shard = data["weight_map"].pop(name)
    (ckpt / index).write_text(json.dumps(data, indent=2))
    return shard


def set_config(ckpt: Path, **values) -> None:
    config = read_json(ckpt / "config.json")
    (ckpt / "config.json").write_text(json.dumps(config | values, indent=2))


# ---- 3. a tensor in a shard but not in the index -------------------------------------------
def test_unlisted_tensor_is_fused_with_a_warning(llama, llama_copy, tmp_path):
    base, sft = llama_copy
    shard = drop_from_index(sft, UNLISTED)
    r = fuse(base, sft, tmp_path / "o")
    assert r.exit_code == 0, r.stderr
    assert (f"SFT: 1 tensor is in a shard but not listed in model.safetensors.index.json: "
            f"'{UNLISTED}' ({shard}); included") in " ".join(r.stderr.split())  # fmt: skip
    # The output is exactly the output of the intact pair: same shards, byte for byte.
    assert fuse(*llama, tmp_path / "ref").exit_code == 0
    shards = sorted(p.name for p in (tmp_path / "ref").glob("*.safetensors"))
    assert shards == sorted(p.name for p in (tmp_path / "o").glob("*.safetensors"))
    for name in shards:
        assert (tmp_path / "o" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()
    fused, b, s = load_dir(tmp_path / "o"), load_dir(base), load_dir(sft)
    assert bits(fused[UNLISTED]) == bits(reference_fuse(b[UNLISTED], s[UNLISTED], 0.5))
    assert UNLISTED in read_json(tmp_path / "o" / "model.safetensors.index.json")["weight_map"]
    assert any(UNLISTED in w for w in read_json(tmp_path / "o" / "rejuv.json")["warnings"])


def test_unlisted_tensor_at_alpha_1_has_sfts_bytes(llama_copy, tmp_path):
    base, sft = llama_copy
    drop_from_index(sft, UNLISTED)
    drop_from_index(base, UNLISTED)  # unlisted on both sides: still paired
    assert fuse(base, sft, tmp_path / "o", "--alpha", "1").exit_code == 0
    assert bits(load_dir(tmp_path / "o")[UNLISTED]) == bits(load_dir(sft)[UNLISTED])


def test_unlisted_tensor_in_a_bin_checkpoint(llama, tmp_path):
    """pytorch_model-*.bin shards and index written by huggingface_hub's save_torch_state_dict."""
    from huggingface_hub import save_torch_state_dict

    sft = tmp_path / "sft"
    shutil.copytree(llama[1], sft, ignore=shutil.ignore_patterns("model*"))
    save_torch_state_dict(load_dir(llama[1]), sft, max_shard_size="20KB", safe_serialization=False)
    shard = drop_from_index(sft, UNLISTED, "pytorch_model.bin.index.json")
    r = fuse(llama[0], sft, tmp_path / "o", "--alpha", "1")
    assert r.exit_code == 0, r.stderr
    assert f"'{UNLISTED}' ({shard})" in " ".join(r.stderr.split())
    assert bits(load_dir(tmp_path / "o")[UNLISTED]) == bits(load_dir(llama[1])[UNLISTED])


def test_tensor_stored_in_two_shards_is_refused(llama_copy, tmp_path):
    from safetensors.torch import load_file, save_file

    base, sft = llama_copy
    index = read_json(sft / "model.safetensors.index.json")["weight_map"]
    home = index[UNLISTED]
    other = next(f for f in sorted(set(index.values())) if f != home)
    state = load_file(sft / other)
    state[UNLISTED] = load_file(sft / home)[UNLISTED]
    save_file(state, sft / other, metadata={"format": "pt"})
    first, second = sorted([home, other])
    fails(fuse(base, sft, tmp_path / "o"), 1,
          f"tensor '{UNLISTED}' is stored in 2 shards ({first}, {second})",
          one_line=True)  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_tensor_listed_in_another_shard_than_its_own(llama_copy, tmp_path):
    base, sft = llama_copy
    data = read_json(sft / "model.safetensors.index.json")
    home = data["weight_map"][UNLISTED]
    other = next(f for f in sorted(set(data["weight_map"].values())) if f != home)
    data["weight_map"][UNLISTED] = other
    (sft / "model.safetensors.index.json").write_text(json.dumps(data))
    fails(fuse(base, sft, tmp_path / "o"), 1,
          f"'{UNLISTED}' is listed in shard '{other}' but stored in '{home}'",
          one_line=True)  # fmt: skip


def test_inspect_counts_and_names_unlisted_tensors(llama_copy):
    _, sft = llama_copy
    drop_from_index(sft, UNLISTED)
    report = json.loads(run_cli("inspect", sft, "--json").stdout)
    assert report["tensors"] == len(load_dir(sft))
    assert len(report["warnings"]) == 1 and UNLISTED in report["warnings"][0]


# ---- 4. names that differ by a prefix ------------------------------------------------------
def trainer_saved(sft: Path, dst: Path, state: dict) -> Path:
    """SFT's config and tokenizer, and `state` saved as sharded safetensors by huggingface_hub
    (what accelerate and the Trainer call)."""
    from huggingface_hub import save_torch_state_dict

    shutil.copytree(sft, dst, ignore=shutil.ignore_patterns("model*"))
    save_torch_state_dict(state, dst, max_shard_size="20KB")
    return dst


def sft_model(sft: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(sft, dtype=torch.bfloat16)


def test_torch_compile_prefix_is_refused_naming_it(llama, tmp_path):
    compiled = torch.compile(sft_model(llama[1]))
    state = compiled.state_dict()
    assert all(k.startswith("_orig_mod.") for k in state)
    sft = trainer_saved(llama[1], tmp_path / "sft", state)
    line = fails(fuse(llama[0], sft, tmp_path / "o"), 1, one_line=True)
    assert line == (
        "rejuv: error: only 0 of 21 floating-point tensors of SFT have a same-named tensor in "
        "BASE, so almost nothing would be fused: BASE names look like "
        "'model.layers.0.input_layernorm.weight', SFT names like "
        "'_orig_mod.model.layers.0.input_layernorm.weight'; the names differ by a prefix: "
        "SFT's carry the prefix '_orig_mod.' (torch.compile) that BASE's lack. Rename the "
        "tensors so both sides match (e.g. save the unwrapped model with save_pretrained), "
        "then run again"
    )
    assert not (tmp_path / "o").exists()
    # diagnose pairs the same way and stops the same way
    fails(run_cli("diagnose", llama[0], sft, "--weights-only"), 1, "'_orig_mod.'",
          "(torch.compile)", one_line=True)  # fmt: skip


def test_ddp_prefix_is_refused_naming_it(llama, tmp_path):
    import torch.distributed as dist

    model = sft_model(llama[1])
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)  # fmt: skip
    try:
        state = torch.nn.parallel.DistributedDataParallel(model).state_dict()
    finally:
        dist.destroy_process_group()
    assert all(k.startswith("module.") for k in state)
    sft = trainer_saved(llama[1], tmp_path / "sft", state)
    fails(fuse(llama[0], sft, tmp_path / "o"), 1,
          "only 0 of 21 floating-point tensors of SFT",
          "SFT names like 'module.model.layers.0.input_layernorm.weight'",
          "SFT's carry the prefix 'module.' (DistributedDataParallel / DataParallel)",
          one_line=True)  # fmt: skip
    # BASE wrapped instead: the same check, the other way round
    base = trainer_saved(llama[0], tmp_path / "base", {f"module.{k}": v for k, v in
                                                       load_dir(llama[0]).items()})  # fmt: skip
    fails(fuse(base, llama[1], tmp_path / "o"), 1,
          "BASE's carry the prefix 'module.' (DistributedDataParallel / DataParallel) that "
          "SFT's lack", one_line=True)  # fmt: skip


def test_missing_model_prefix_is_refused_naming_it(llama, tmp_path):
    inner = sft_model(llama[1]).model.state_dict()  # the decoder alone: no 'model.', no lm_head
    sft = trainer_saved(llama[1], tmp_path / "sft", inner)
    fails(fuse(llama[0], sft, tmp_path / "o"), 1,
          "only 0 of 20 floating-point tensors of SFT",
          "BASE names look like 'model.layers.0.input_layernorm.weight', SFT names like "
          "'layers.0.input_layernorm.weight'",
          "BASE's carry the prefix 'model.' (the *ForCausalLM wrapper keeps the decoder under "
          "'model.') that SFT's lack", one_line=True)  # fmt: skip


META_NAMES = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
              "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
              "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
              "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm",
              "post_attention_layernorm": "ffn_norm", "embed_tokens": "tok_embeddings",
              "lm_head": "output"}  # fmt: skip


def test_unrelated_names_show_both_patterns(llama, tmp_path):
    """SFT in Meta's original Llama naming (layers.0.attention.wq.weight): no prefix explains
    it, so the message shows both patterns."""
    state = {}
    for name, t in load_dir(llama[1]).items():
        name = name.removeprefix("model.")
        for hf, meta in META_NAMES.items():
            name = name.replace(hf, meta)
        state[name] = t
    sft = trainer_saved(llama[1], tmp_path / "sft", state)
    fails(fuse(llama[0], sft, tmp_path / "o"), 1,
          "only 0 of 21 floating-point tensors of SFT have a same-named tensor in BASE",
          "BASE names look like 'model.layers.0.input_layernorm.weight', SFT names like "
          "'layers.0.attention.wk.weight'", "pairs tensors by name", one_line=True)  # fmt: skip


def test_threshold_is_half_of_sfts_float_tensors(llama_copy, tmp_path):
    """Half of SFT's 21 float tensors paired is enough (the rest copied); one fewer is not."""
    from safetensors.torch import save_file

    base, sft = llama_copy
    state = sorted(load_dir(sft).items())
    for renamed, code in ((10, 0), (11, 1)):  # 11 of 21 paired, then 10 of 21
        for f in sft.glob("model*"):
            f.unlink()
        save_file({(f"{n}.sft" if i < renamed else n): t for i, (n, t) in enumerate(state)},
                  sft / "model.safetensors", metadata={"format": "pt"})  # fmt: skip
        r = fuse(base, sft, tmp_path / f"o{renamed}")
        assert r.exit_code == code, r.stderr
    assert read_json(tmp_path / "o10" / "rejuv.json")["counts"]["sft_only"] == 10
    fails(r, 1, "only 10 of 21 floating-point tensors of SFT")


def test_untied_base_never_lends_its_input_embedding(llama_copy, tmp_path):
    """BASE is untied (config.json tie_word_embeddings false) and stores its output embedding,
    under another name than SFT's: SFT's lm_head is copied, never fused with BASE's
    embed_tokens."""
    from safetensors.torch import load_file, save_file

    base, sft = llama_copy
    data = read_json(base / "model.safetensors.index.json")
    shard = data["weight_map"].pop("lm_head.weight")
    data["weight_map"]["embed_out.weight"] = shard  # GPT-NeoX's name for it
    (base / "model.safetensors.index.json").write_text(json.dumps(data))
    state = load_file(base / shard)
    state["embed_out.weight"] = state.pop("lm_head.weight")
    save_file(state, base / shard, metadata={"format": "pt"})
    assert read_json(base / "config.json")["tie_word_embeddings"] is False
    r = fuse(base, sft, tmp_path / "o")
    assert r.exit_code == 0, r.stderr
    assert "'lm_head.weight' exists only in SFT: copied from SFT" in r.stderr
    assert bits(load_dir(tmp_path / "o")["lm_head.weight"]) == bits(load_dir(sft)["lm_head.weight"])
    # Said tied in config.json: now BASE's effective lm_head is its input embedding.
    set_config(base, tie_word_embeddings=True)
    r = fuse(base, sft, tmp_path / "tied")
    assert r.exit_code == 0, r.stderr
    b, s = load_dir(base), load_dir(sft)
    ref = reference_fuse(b["model.embed_tokens.weight"], s["lm_head.weight"], 0.5)
    assert bits(load_dir(tmp_path / "tied")["lm_head.weight"]) == bits(ref)


# ---- 6. config.json and the shards disagree on the layer count ------------------------------
def test_config_with_more_layers_than_the_shards_is_refused(llama_copy, tmp_path):
    base, sft = llama_copy
    set_config(sft, num_hidden_layers=3)
    expected = (f"SFT {sft}: config.json says 3 layers but its weights hold layers 0..1 of "
                "'model.layers', so transformers would initialise layer 2 at random")  # fmt: skip
    fails(fuse(base, sft, tmp_path / "o"), 1, expected, one_line=True)
    fails(fuse(base, sft, tmp_path / "o", "--select", "dormant", "--samples", "2"), 1, expected)
    set_config(base, num_hidden_layers=3)  # both edited: BASE is named first
    fails(run_cli("diagnose", base, sft, "--samples", "2"), 1,
          f"BASE {base}: config.json says 3 layers", one_line=True)  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_load_model_refuses_weights_it_would_initialise(llama_copy):
    from rejuv_cli.calib.models import load_model

    _, sft = llama_copy
    set_config(sft, num_hidden_layers=3)
    with pytest.raises(CheckpointError) as e:
        load_model(sft, "SFT", torch.device("cpu"))
    assert str(e.value) == (
        f"SFT {sft}: 9 weights of the model config.json describes are not in the checkpoint, "
        "so transformers would initialise them at random ('model.layers.2.input_layernorm.weight',"
        " 'model.layers.2.mlp.down_proj.weight', 'model.layers.2.mlp.gate_proj.weight' and 6 "
        "more; config.json says 3 layers). Fix config.json, or use the complete checkpoint"
    )


def test_a_weight_missing_from_the_shards_stops_the_forward_passes(llama_copy, tmp_path):
    """Layer count right, one tensor gone (shard and index): fusion warns, forward passes stop."""
    from safetensors.torch import load_file, save_file

    base, sft = llama_copy
    name = "model.layers.1.post_attention_layernorm.weight"
    shard = drop_from_index(sft, name)
    state = load_file(sft / shard)
    del state[name]
    save_file(state, sft / shard, metadata={"format": "pt"})
    fails(run_cli("diagnose", base, sft, "--samples", "2", "--sharpness-draws", "1"), 1,
          f"SFT {sft}: 1 weight of the model config.json describes is not in the checkpoint, "
          f"so transformers would initialise it at random ('{name}'; config.json says 2 layers)",
          one_line=True)  # fmt: skip


def test_config_with_fewer_layers_than_the_shards(llama_copy, tmp_path):
    base, sft = llama_copy
    set_config(base, num_hidden_layers=1)
    set_config(sft, num_hidden_layers=1)
    # Fusion keeps every tensor and says which layers transformers will ignore.
    r = fuse(base, sft, tmp_path / "o")
    assert r.exit_code == 0, r.stderr
    warning = (f"SFT {sft}: config.json says 1 layer but its weights hold layers 0..1 of "
               "'model.layers': transformers ignores layer 1 when it loads the model")  # fmt: skip
    assert warning in read_json(tmp_path / "o" / "rejuv.json")["warnings"]
    assert sorted(load_dir(tmp_path / "o")) == sorted(load_dir(sft))
    # Forward passes would run a one-layer model: refused.
    fails(run_cli("diagnose", base, sft, "--samples", "2"), 1,
          f"BASE {base}: 9 tensors of the checkpoint have no place in the model config.json "
          "describes, so transformers would ignore them ('model.layers.1.input_layernorm.weight'",
          "config.json says 1 layer)", one_line=True)  # fmt: skip


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2", "mixtral", "phi3"])
def test_fixture_families_load_without_notes(pairs, family):
    """No false alarms: rotary inv_freq and other non-persistent buffers, tied lm_heads."""
    from rejuv_cli.calib.models import load_model

    notes: list[str] = []
    load_model(pairs[family][1], "SFT", torch.device("cpu"), warnings=notes)
    assert notes == []
