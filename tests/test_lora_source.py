"""LoraAdapter: a PEFT LoRA adapter read as SFT over BASE, against PEFT's own merge.

Fixtures come from the producer (tests/producers_peft.py: get_peft_model + save_pretrained over
tiny transformers models); the oracle is PeftModel.from_pretrained(fresh float32 BASE, adapter)
.merge_and_unload(). Every tensor is read through `read_into` in chunks of 3 rows and compared
bit for bit: each fixture tensor fits in one delta block, so rejuv runs the same single GEMM
B @ A as PEFT (test_blocks_* covers tensors spanning several blocks, where it cannot).
"""

from __future__ import annotations

import json
import math

import numpy as np
import peft
import pytest
import torch
from producers_peft import peft_merged, save_adapter, save_base
from safetensors.torch import load_file

from rejuv_cli.checkpoint import lora
from rejuv_cli.checkpoint.dtypes import ITEMSIZE, torch_dtype
from rejuv_cli.checkpoint.formats import open_source
from rejuv_cli.checkpoint.lora_config import pattern_key
from rejuv_cli.checkpoint.lora_keys import delta_layout
from rejuv_cli.checkpoint.reader import Checkpoint
from rejuv_cli.errors import CheckpointError, UsageError

LoraConfig = peft.LoraConfig


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_bases")
    return {f: save_base(root / f, f) for f in ("llama", "qwen2", "gpt2")}


def open_pair(adapter, base_dir, **kw):
    base = Checkpoint.open(base_dir, "BASE")
    return open_source(adapter, "SFT", base=base, **kw), base


def rows_of(info) -> tuple[int, int]:
    return (info.shape[0] if info.shape else 1), (math.prod(info.shape[1:]) or 1)


def read(src, name, start, stop) -> torch.Tensor:
    info = src.tensors[name]
    out = np.empty((stop - start) * ITEMSIZE[info.dtype], dtype=np.uint8)
    src.read_into(name, start, stop, out)
    return torch.from_numpy(out).view(torch_dtype(info.dtype))


def read_chunked(src, name, rows_per_chunk=3) -> torch.Tensor:
    """The whole tensor, read in whole-row chunks as checkpoint/stream.py does."""
    info = src.tensors[name]
    n, row = rows_of(info)
    parts = [read(src, name, r * row, min(r + rows_per_chunk, n) * row)
             for r in range(0, n, rows_per_chunk)]  # fmt: skip
    return torch.cat(parts).reshape(info.shape)


def assert_matches_merge(src, base, oracle) -> set[str]:
    """Every tensor of `src` equals PEFT's merge bit for bit (3-row chunks and one range that
    starts and ends inside rows); returns the names whose values differ from BASE's."""
    changed = set()
    for name, info in src.tensors.items():
        got = read_chunked(src, name)
        want = oracle[name]
        assert got.shape == want.shape, name
        assert torch.equal(got.to(want.dtype), want), name
        n, row = rows_of(info)
        if n * row > 2 * row + 12:  # a range that is not whole rows
            start, stop = row + 5, n * row - 7
            assert torch.equal(read(src, name, start, stop), got.reshape(-1)[start:stop]), name
        if info is not base.tensors[name]:
            changed.add(name)
            base_t = read_chunked(base, name).float()
            same_shape = base_t.shape == want.shape
            assert not same_shape or not torch.equal(base_t, want.float()), f"{name} unchanged"
    extra = set(oracle) - set(src.tensors)
    assert extra <= {"lm_head.weight"} and (not extra or src.config["tie_word_embeddings"])
    return changed


LAYERS = range(2)
ATTN = "model.layers.{}.self_attn.{}.{}"


def names(pattern, mods, kind="weight"):
    return {pattern.format(i, m, kind) for i in LAYERS for m in mods}


MLP = "model.layers.{}.mlp.{}.{}"
GPT2 = "transformer.h.{}.{}.{}"
CASES = {
    # (a) plain LoRA: q, v, down projections
    "llama-qvd": ("llama", dict(target_modules=["q_proj", "v_proj", "down_proj"]), {},
                  names(ATTN, ["q_proj", "v_proj"]) | names(MLP, ["down_proj"])),
    # (b) rsLoRA with per-module rank and alpha
    "llama-rslora-patterns": (
        "llama",
        dict(target_modules=["q_proj", "v_proj", "down_proj"], use_rslora=True,
             rank_pattern={"q_proj": 2}, alpha_pattern={"v_proj": 3}),
        {}, names(ATTN, ["q_proj", "v_proj"]) | names(MLP, ["down_proj"])),
    # (c) modules_to_save (a trained lm_head copy) and bias="lora_only" (q_proj has a bias)
    "qwen2-save-bias": (
        "qwen2", dict(target_modules=["q_proj", "o_proj"], modules_to_save=["lm_head"],
                      bias="lora_only"), {},
        names(ATTN, ["q_proj", "o_proj"]) | names(ATTN, ["q_proj"], "bias") | {"lm_head.weight"}),
    # bias="all" saves every bias; lora_bias adds s·lora_B.bias on top
    "qwen2-lora-bias": (
        "qwen2", dict(target_modules=["q_proj", "v_proj"], bias="all", lora_bias=True), {},
        names(ATTN, ["q_proj", "v_proj"]) | names(ATTN, ["q_proj", "k_proj", "v_proj"], "bias")),
    # (d) trainable token rows
    "llama-tokens": ("llama", dict(target_modules=["q_proj"], trainable_token_indices=[3, 7, 11]),
                     {}, names(ATTN, ["q_proj"]) | {"model.embed_tokens.weight"}),
    # (e) the input embedding as a LoRA target (saved whole too: base_layer.weight)
    "llama-embed": ("llama", dict(target_modules=["embed_tokens", "q_proj"]), {},
                    names(ATTN, ["q_proj"]) | {"model.embed_tokens.weight"}),
    # added vocabulary: PEFT saves both resized embeddings whole (136 rows, BASE 128)
    "llama-resized": ("llama", dict(target_modules=["q_proj"]), {"resize_to": 136},
                      names(ATTN, ["q_proj"]) | {"model.embed_tokens.weight", "lm_head.weight"}),
    # (f) GPT-2 Conv1D ([in, out] weights, attn.c_proj square) and a tied input embedding
    "gpt2-conv1d": ("gpt2", dict(target_modules=["c_attn", "c_proj", "wte"]), {},
                    names(GPT2, ["attn.c_attn", "attn.c_proj", "mlp.c_proj"])
                    | {"transformer.wte.weight"}),
    "gpt2-tokens": ("gpt2", dict(target_modules=["c_attn"], trainable_token_indices=[0, 127]), {},
                    names(GPT2, ["attn.c_attn"]) | {"transformer.wte.weight"}),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_matches_peft_merge(case, bases, tmp_path):
    family, cfg, kw, expect_changed = CASES[case]
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, **cfg)
    adapter = save_adapter(bases[family], tmp_path / "adapter", config, **kw)
    config_from = None
    if "resize_to" in kw:  # added tokens: the fine-tuned config (BASE's would not fit)
        with pytest.raises(CheckpointError, match=r"pass --config-from DIR with the fine-tuned"):
            open_pair(adapter, bases[family])
        config_from = tmp_path / "fine-tuned"
        config_from.mkdir()
        cfg_json = json.loads((bases[family] / "config.json").read_text())
        (config_from / "config.json").write_text(json.dumps(cfg_json | {"vocab_size": 136}))
    src, base = open_pair(adapter, bases[family], config_from=config_from)
    assert src.format == "peft-lora" and list(src.tensors) == list(base.tensors)
    oracle = peft_merged(bases[family], adapter, kw.get("resize_to"))
    assert assert_matches_merge(src, base, oracle) == expect_changed
    for name in expect_changed:  # LoRA targets read as F32, written back in BASE's dtype
        info = src.tensors[name]
        if src.edits[name].lora is not None:
            assert (info.dtype, info.out_dtype) == ("F32", base.tensors[name].dtype)
    if config_from is None:
        assert src.config == base.config and src.meta_root == base.meta_root
    else:
        assert src.config["vocab_size"] == 136 and src.meta_root == config_from
    facts = src.describe()
    assert facts["modules_to_save"] == cfg.get("modules_to_save", [])
    assert facts["trainable_token_rows"] == len(cfg.get("trainable_token_indices", []))
    src.close()
    base.close()


def test_scale_and_rank_resolved_as_peft(bases, tmp_path):
    """Per-module r and s = alpha/sqrt(r) (rsLoRA, rank_pattern, alpha_pattern) equal the
    values PEFT's loaded layers hold; describe() reports them."""
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, use_rslora=True,
                        target_modules=["q_proj", "v_proj", "down_proj"],
                        rank_pattern={"layers.1.self_attn.q_proj": 2, "q_proj": 3},
                        alpha_pattern={"v_proj": 3})  # fmt: skip
    adapter = save_adapter(bases["llama"], tmp_path / "a", config)
    src, _ = open_pair(adapter, bases["llama"])
    from peft import PeftModel
    from producers_peft import load_base

    model = PeftModel.from_pretrained(load_base(bases["llama"]), adapter)
    layers = {n: m for n, m in model.base_model.model.named_modules()
              if isinstance(m, peft.tuners.lora.LoraLayer)}  # fmt: skip
    assert len(layers) == 6
    for module, layer in layers.items():
        edit = src.edits[module + ".weight"]
        assert edit.rank == layer.r["default"] and edit.scale == layer.scaling["default"]
    assert src.edits["model.layers.1.self_attn.q_proj.weight"].rank == 2
    assert src.edits["model.layers.0.self_attn.q_proj.weight"].rank == 3
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert src.describe() == {
        "format": "peft-lora",
        "rank": {"default": 4, "per_module": {"model.layers.0.self_attn.q_proj": 3,
                                              "model.layers.1.self_attn.q_proj": 2}},
        "lora_alpha": {"default": 8, "per_module": {"v_proj": 3}},
        "use_rslora": True,
        "targets": ["down_proj", "q_proj", "v_proj"],
        "target_tensors": 6,
        "modules_to_save": [],
        "trainable_token_rows": 0,
        "base_model_name_or_path": str(bases["llama"]),
    } | ({"peft_version": saved["peft_version"]} if "peft_version" in saved else {})  # fmt: skip


def test_pattern_key_is_peft_get_pattern_key():
    from peft.utils.other import get_pattern_key

    keys = ["q_proj", "layers.1.self_attn.v_proj", r"layers\.[01]\.mlp\..*", "proj"]
    for module in ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj",
                   "model.layers.0.self_attn.v_proj", "model.layers.1.mlp.down_proj",
                   "q_proj", "model.layers.0.self_attn.o_proj", "model.xq_proj"]:  # fmt: skip
        assert pattern_key(keys, module) == get_pattern_key(keys, module), module


def test_bf16_base(tmp_path):
    """BASE in bf16: LoRA targets read as F32 = bf16 BASE + s·B·A in float32 (unrounded),
    out_dtype BF16; float32 token rows over a bf16 embedding read as F32 too; the rest is
    BASE's bytes. Checked against the formula on the raw safetensors tensors."""
    base_dir = save_base(tmp_path / "base", "llama", dtype=torch.bfloat16)
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=["q_proj"],
                        trainable_token_indices=[5, 9])  # fmt: skip
    adapter = save_adapter(base_dir, tmp_path / "a", config, dtype=torch.bfloat16)
    src, base = open_pair(adapter, base_dir)
    w = load_file(base_dir / "model.safetensors")
    ad = load_file(adapter / "adapter_model.safetensors")
    for i in LAYERS:
        name = f"model.layers.{i}.self_attn.q_proj.weight"
        a = ad[f"base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight"]
        b = ad[f"base_model.model.model.layers.{i}.self_attn.q_proj.lora_B.weight"]
        assert (src.tensors[name].dtype, src.tensors[name].out_dtype) == ("F32", "BF16")
        want = w[name].float() + (b.float() @ a.float()) * 2.0
        assert torch.equal(read_chunked(src, name), want)
    emb = "model.embed_tokens.weight"
    want = w[emb].float()
    want[[5, 9]] = ad["base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"]
    assert (src.tensors[emb].dtype, src.tensors[emb].out_dtype) == ("F32", "BF16")
    assert torch.equal(read_chunked(src, emb), want)
    name = "model.layers.0.mlp.up_proj.weight"
    assert src.tensors[name] is base.tensors[name]
    assert torch.equal(read_chunked(src, name), w[name])


def test_blocks_range_independent_and_close_to_peft(bases, tmp_path, monkeypatch):
    """With delta blocks smaller than the tensors (as in real models), every element reads the
    same whatever the range (1-row, 5-row, whole, odd ranges), and stays within a few float32
    ulps of PEFT's one-GEMM merge: another row count lets BLAS order the r products of each
    element differently."""
    monkeypatch.setattr(lora, "BLOCK_ELEMENTS", 200)  # 3 rows of 64, 1 row of 192 or 256
    config = LoraConfig(r=16, lora_alpha=32, init_lora_weights=False,
                        target_modules=["q_proj", "down_proj", "embed_tokens"])  # fmt: skip
    adapter = save_adapter(bases["llama"], tmp_path / "a", config)
    src, _ = open_pair(adapter, bases["llama"])
    oracle = peft_merged(bases["llama"], adapter)
    worst = 0.0
    for name in src.edits:
        whole = read_chunked(src, name, rows_per_chunk=1000)
        for per in (1, 5):
            assert torch.equal(read_chunked(src, name, per), whole), name
        assert torch.equal(read(src, name, 70, 1001), whole.reshape(-1)[70:1001]), name
        err = (whole - oracle[name]).abs().max().item()
        ulp = torch.finfo(torch.float32).eps * oracle[name].abs().max().item()
        worst = max(worst, err / ulp)
    assert worst <= 4, f"{worst:.2f} ulps of the largest value"


def test_bin_adapter(bases, tmp_path):
    """adapter_model.bin (safe_serialization=False) reads like the safetensors file."""
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=["v_proj"],
                        modules_to_save=["lm_head"])  # fmt: skip
    adapter = save_adapter(bases["llama"], tmp_path / "a", config, safe_serialization=False)
    assert not (adapter / "adapter_model.safetensors").exists()
    src, base = open_pair(adapter, bases["llama"])
    changed = assert_matches_merge(src, base, peft_merged(bases["llama"], adapter))
    assert changed == names(ATTN, ["v_proj"]) | {"lm_head.weight"}
    assert src.weight_files()[0] == adapter / "adapter_model.bin"


def test_files_config_from_and_close(bases, tmp_path):
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=["q_proj"])
    adapter = save_adapter(bases["llama"], tmp_path / "a", config)
    other = tmp_path / "cfg"
    other.mkdir()
    cfg = json.loads((bases["llama"] / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "vocab_size": 130}))
    with pytest.raises(UsageError, match="no config.json there"):
        open_pair(adapter, bases["llama"], config_from=tmp_path)
    src, base = open_pair(adapter, bases["llama"], config_from=other)
    assert src.meta_root == other and src.config["vocab_size"] == 130
    assert src.weight_files() == [adapter / "adapter_model.safetensors",
                                  bases["llama"] / "model.safetensors"]  # fmt: skip
    src.close()
    name = "model.layers.0.self_attn.q_proj.weight"  # BASE stays open for its owner
    want = load_file(bases["llama"] / "model.safetensors")[name]
    assert torch.equal(read_chunked(base, name), want)


# ---- refusals ---------------------------------------------------------------------------------
def refused(adapter, base_dir, *phrases):
    base = Checkpoint.open(base_dir, "BASE")
    with pytest.raises(CheckpointError) as err:
        open_source(adapter, "SFT", base=base)
    msg = str(err.value)
    assert "\n" not in msg and str(adapter) in msg, msg
    for p in phrases:
        assert p in msg, msg
    return msg


def edit_config(adapter, **changes):
    path = adapter / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.fixture
def plain(bases, tmp_path):
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                        target_modules=["q_proj", "down_proj"])  # fmt: skip
    return save_adapter(bases["llama"], tmp_path / "plain", config)


def test_refuses_dora(bases, tmp_path):
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True)
    adapter = save_adapter(bases["llama"], tmp_path / "a", config)
    refused(adapter, bases["llama"], "use_dora", "merge_and_unload")


def test_refuses_loha(bases, tmp_path):
    config = peft.LoHaConfig(r=4, alpha=8, target_modules=["q_proj"])
    adapter = save_adapter(bases["llama"], tmp_path / "a", config)
    refused(adapter, bases["llama"], "peft_type is 'LOHA'", "merge_and_unload")


def test_refuses_unconverted_pissa(bases, tmp_path):
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"],
                        init_lora_weights="pissa_niter_2")  # fmt: skip
    adapter = save_adapter(bases["llama"], tmp_path / "a", config, perturb=False)
    refused(adapter, bases["llama"], "pissa_niter_2", "path_initial_model_for_weight_conversion")


def test_refuses_adapter_of_another_base(bases, tmp_path, plain):
    other = save_base(tmp_path / "other", "llama", intermediate_size=96)
    refused(plain, other, "down_proj", "[64, 128]", "[64, 96]", "trained on another model")


def test_refuses_keys_base_lacks(bases, tmp_path):
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=["q_proj"],
                        bias="lora_only")  # fmt: skip
    adapter = save_adapter(bases["qwen2"], tmp_path / "a", config)  # saves q_proj biases
    refused(adapter, bases["llama"], "q_proj.bias", "does not have")


@pytest.mark.parametrize("change, phrases", [
    ({"alora_invocation_tokens": [1, 2]}, ["alora_invocation_tokens", "merge"]),
    ({"target_parameters": ["mlp.experts.gate_up_proj"]}, ["target_parameters"]),
    ({"layer_replication": [[0, 2]]}, ["layer_replication"]),
    ({"init_lora_weights": "loftq"}, ["loftq", "quantized"]),
    ({"init_lora_weights": "olora"}, ["olora", "path_initial_model_for_weight_conversion"]),
    ({"r": 8}, ["r=8", "has 4 rows"]),
    ({"rank_pattern": {"down_proj": 2}}, ["r=2", "has 4 rows"]),
    ({"r": "four"}, ["r must be a positive integer"]),
    ({"rank_pattern": {"(": 2}}, ["not a regular expression"]),
    ({"lora_alpha": None}, ["lora_alpha must be a positive number"]),
])  # fmt: skip
def test_refuses_config(plain, bases, change, phrases):
    edit_config(plain, **change)
    refused(plain, bases["llama"], "adapter_config.json", *phrases)


def test_refuses_unreadable_files(plain, bases):
    (plain / "adapter_config.json").write_text("{not json")
    refused(plain, bases["llama"], "adapter_config.json", "cannot read")
    (plain / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4, "lora_alpha": 8}')
    weights = plain / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    refused(plain, bases["llama"], "truncated")
    weights.unlink()
    refused(plain, bases["llama"], "no adapter_model.safetensors or adapter_model.bin")


def test_delta_layout():
    # d = B·A is [out, in]: stored as is (nn.Linear) or transposed (Conv1D, embeddings)
    assert delta_layout((192, 64), (192, 64), False, conv1d=True) is False
    assert delta_layout((192, 64), (64, 192), False, conv1d=False) is True
    assert delta_layout((64, 64), (64, 64), False, conv1d=True) is True
    assert delta_layout((64, 64), (64, 64), False, conv1d=False) is False
    assert delta_layout((64, 128), (128, 64), True, conv1d=False) is True
    assert delta_layout((64, 128), (64, 128), True, conv1d=False) is None
    assert delta_layout((64, 96), (64, 128), False, conv1d=False) is None
