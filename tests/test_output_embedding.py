"""The output embedding per family (issue #17, part 7): whether a checkpoint ties its embeddings,
and which BASE tensor an untied SFT's output embedding fuses with, follow the family's own name
for it (arch.units.EMBEDDINGS: lm_head, embed_out, head, output_projection...), never "lm_head"
alone. The checkpoints are written by transformers' save_pretrained."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import load_dir, read_json, reference_fuse, run_cli

from rejuv_cli.arch.units import EMBEDDINGS, FAMILIES, Embeddings, embeddings, stored_as

# model_type -> a tiny config of a family with no unit map whose names EMBEDDINGS declares
PRODUCERS = {
    "gpt_neox": ("GPTNeoXConfig", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, max_position_embeddings=128)),
    "gpt_neox_japanese": ("GPTNeoXJapaneseConfig", dict(hidden_size=32, num_hidden_layers=2,
                                                        intermediate_multiple_size=2,
                                                        num_attention_heads=4)),
    "rwkv": ("RwkvConfig", dict(hidden_size=32, num_hidden_layers=2, attention_hidden_size=32,
                                intermediate_size=64, context_length=64)),
    "biogpt": ("BioGptConfig", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4)),
    "modernbert-decoder": ("ModernBertDecoderConfig", dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)),
}  # fmt: skip
REMOTE_CODE = {"internlm2", "chatglm"}  # trust_remote_code: names read from their modelling code


def save(root: Path, model_type: str, tie: bool, seed: int = 0):
    """A tiny `model_type` model saved with save_pretrained; returns (directory, model)."""
    import transformers

    cls, kwargs = PRODUCERS[model_type]
    config = getattr(transformers, cls)(vocab_size=128, tie_word_embeddings=tie, **kwargs)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    path = root / f"{model_type}-{'tied' if tie else 'untied'}"
    model.save_pretrained(path)
    return path, model


def inspect_says_tied(path: Path) -> bool:
    r = run_cli("inspect", path, "--json", "--quiet")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)["tied_embeddings"]


def drop_tie_key(path: Path) -> Path:
    """config.json without tie_word_embeddings: then the stored names decide."""
    config = read_json(path / "config.json")
    del config["tie_word_embeddings"]
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_every_family_named_outside_the_unit_maps_is_checked_against_a_producer():
    assert set(EMBEDDINGS) - set(FAMILIES) == set(PRODUCERS) | REMOTE_CODE
    assert all(EMBEDDINGS[t] is fm.embeddings for t, fm in FAMILIES.items())


@pytest.mark.parametrize("model_type", sorted(PRODUCERS))
def test_inspect_reads_the_familys_output_embedding(model_type, tmp_path):
    """Untied (config.json says so, and the family's output embedding is stored under its own
    name) and tied (nothing stored for it); then the same with the config key removed, so the
    names alone decide. RWKV ('head.weight') was reported tied before."""
    untied, _ = save(tmp_path, model_type, tie=False)
    tied, _ = save(tmp_path, model_type, tie=True)
    e = EMBEDDINGS[model_type]
    names = set(load_dir(untied))
    assert e.output in names and e.input in names  # the names save_pretrained writes
    assert e.output not in set(load_dir(tied)) and e.input in set(load_dir(tied))
    assert inspect_says_tied(untied) is False and inspect_says_tied(tied) is True
    assert inspect_says_tied(drop_tie_key(untied)) is False
    assert inspect_says_tied(drop_tie_key(tied)) is True


def test_unit_map_families_report_what_they_store(pairs, tmp_path):
    for family, tied in (("llama", False), ("gemma2", True), ("gpt2", True), ("phi3", False)):
        sft = pairs[family][1]
        assert read_json(sft / "config.json")["tie_word_embeddings"] is tied
        assert inspect_says_tied(sft) is tied
        copy = tmp_path / family
        shutil.copytree(sft, copy)
        assert inspect_says_tied(drop_tie_key(copy)) is tied, family


def test_config_that_says_untied_is_believed_under_an_unknown_name(llama_copy):
    """A model_type whose output embedding rejuv has no name for: config.json decides."""
    _, sft = llama_copy
    index = read_json(sft / "model.safetensors.index.json")
    index["weight_map"]["output.weight"] = index["weight_map"].pop("lm_head.weight")
    (sft / "model.safetensors.index.json").write_text(json.dumps(index))
    shard = sft / index["weight_map"]["output.weight"]
    from safetensors.torch import load_file, save_file

    state = load_file(shard)
    state["output.weight"] = state.pop("lm_head.weight")
    save_file(state, shard, metadata={"format": "pt"})
    config = read_json(sft / "config.json") | {"model_type": "mystery"}
    (sft / "config.json").write_text(json.dumps(config))
    assert config["tie_word_embeddings"] is False and inspect_says_tied(sft) is False


@pytest.fixture(scope="module")
def neox(tmp_path_factory):
    """A tied GPT-NeoX BASE (stores no 'embed_out.weight') and an untied SFT from it: the same
    weights, its own output embedding = BASE's input embedding + noise."""
    root = tmp_path_factory.mktemp("neox")
    base, model = save(root, "gpt_neox", tie=True)
    import transformers

    cls, kwargs = PRODUCERS["gpt_neox"]
    sft_model = transformers.GPTNeoXForCausalLM(
        getattr(transformers, cls)(vocab_size=128, tie_word_embeddings=False, **kwargs)
    )
    sft_model.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        head = model.get_input_embeddings().weight
        sft_model.get_output_embeddings().weight.copy_(
            head + 0.01 * torch.randn(head.shape, generator=gen)
        )
    sft = root / "sft-untied"
    sft_model.save_pretrained(sft)
    return base, sft


def test_untied_sft_of_a_tied_base_fuses_its_output_embedding_with_bases_input(neox, tmp_path):
    """GPT-NeoX names its output embedding 'embed_out.weight': before, it was copied from SFT
    ("exists only in SFT"); now it fuses with BASE's 'gpt_neox.embed_in.weight'."""
    base, sft = neox
    assert "embed_out.weight" not in load_dir(base) and "embed_out.weight" in load_dir(sft)
    r = run_cli("fuse", base, sft, "-o", tmp_path / "o", "--reset", "0", "--json", "--quiet")
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["warnings"] == [] and summary["counts"]["sft_only"] == 0
    b, s = load_dir(base), load_dir(sft)
    ref = reference_fuse(b["gpt_neox.embed_in.weight"], s["embed_out.weight"], 0.5)
    assert torch.equal(load_dir(tmp_path / "o")["embed_out.weight"], ref)


def test_tied_sft_of_an_untied_base_says_why_bases_output_embedding_is_left_out(neox, tmp_path):
    base, sft = neox
    r = run_cli("fuse", sft, base, "-o", tmp_path / "o", "--reset", "0", "--json", "--quiet")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["warnings"] == [
        "'embed_out.weight' exists only in BASE (SFT ties it to the input embeddings): left out"
    ]


def test_stored_as_and_embeddings_lookups():
    names = {"language_model.lm_head.weight", "language_model.model.embed_tokens.weight"}
    assert stored_as("lm_head.weight", names) == "language_model.lm_head.weight"
    assert stored_as("lm_head.weight", {"lm_head.weight", "x.lm_head.weight"}) == "lm_head.weight"
    assert stored_as("lm_head.weight", {"a.lm_head.weight", "b.lm_head.weight"}) is None
    assert stored_as("head.weight", {"lm_head.weight"}) is None
    assert embeddings({"model_type": "gpt_neox"}).output == "embed_out.weight"
    assert embeddings({"model_type": "gpt2"}) == Embeddings("transformer.wte.weight")
    wrapped = {"model_type": "llava", "text_config": {"model_type": "rwkv"}}
    assert embeddings(wrapped).output == "head.weight"
    assert embeddings({"model_type": "mystery"}).output == "lm_head.weight"
