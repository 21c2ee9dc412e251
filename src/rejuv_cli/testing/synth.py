"""Small real-format model pairs built offline with transformers (tests, demo, benchmarks).

A pair is a BASE made with `from_config` (seeded) and an SFT made from it by a seeded
perturbation, both saved with `save_pretrained` (sharded when asked) plus a small word-level
tokenizer with a chat template. Nothing is downloaded.
"""

from __future__ import annotations

import copy
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
WORDS = [str(i) for i in range(100)] + "+ - * / = ( ) . , ? the a of is and to answer step".split()

# Tiny configurations: 2 layers, hidden 32, GQA where the family has it.
_COMMON = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
FAMILIES: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", dict(_COMMON, tie_word_embeddings=False)),
    "qwen2": ("Qwen2Config", dict(_COMMON, tie_word_embeddings=False)),
    "mistral": ("MistralConfig", dict(_COMMON, tie_word_embeddings=False)),
    "gemma2": ("Gemma2Config", dict(_COMMON, head_dim=8, tie_word_embeddings=True)),
    "phi3": ("Phi3Config", dict(_COMMON, tie_word_embeddings=False)),
    "mixtral": (
        "MixtralConfig",
        dict(_COMMON, num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False),
    ),
    "qwen3": ("Qwen3Config", dict(_COMMON, head_dim=8, tie_word_embeddings=False)),
    "olmo2": ("Olmo2Config", dict(_COMMON, tie_word_embeddings=False)),
    "olmo": ("OlmoConfig", dict(_COMMON, tie_word_embeddings=False)),
    "gemma": ("GemmaConfig", dict(_COMMON, head_dim=8, tie_word_embeddings=True)),
    "granite": ("GraniteConfig", dict(_COMMON, tie_word_embeddings=False)),
    "cohere": ("CohereConfig", dict(_COMMON, tie_word_embeddings=True)),
    "smollm3": ("SmolLM3Config", dict(_COMMON, tie_word_embeddings=True)),
    "gemma3_text": ("Gemma3TextConfig", dict(_COMMON, head_dim=8, tie_word_embeddings=True)),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        dict(
            _COMMON,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=24,
            shared_expert_intermediate_size=48,
            tie_word_embeddings=False,
        ),
    ),
    "qwen3_moe": (
        "Qwen3MoeConfig",
        dict(
            _COMMON,
            head_dim=8,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=24,
            tie_word_embeddings=False,
        ),
    ),
    "gpt2": (
        "GPT2Config",
        dict(
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=128,
            bos_token_id=1,
            eos_token_id=2,
            tie_word_embeddings=True,
        ),
    ),
}


def tiny_tokenizer():
    """A word-level fast tokenizer (len = 4 specials + 117 words) with a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(family: str, vocab_size: int = 128, **overrides):
    import transformers

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(sorted(FAMILIES))}")
    cls_name, kwargs = FAMILIES[family]
    return getattr(transformers, cls_name)(vocab_size=vocab_size, **(kwargs | overrides))


def perturb_(model, seed: int, scale: float = 0.02) -> None:
    """SFT stand-in: add seeded Gaussian noise of `scale` × each tensor's std to every weight."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            std = float(p.float().std()) if p.numel() > 1 else 1.0
            p.add_((noise * scale * (std or 1.0)).to(p.dtype))


def make_pair(
    root: Path,
    family: str = "llama",
    *,
    seed: int = 0,
    dtype: str = "bfloat16",
    max_shard_size: str | int = "20KB",
    added_tokens: int = 0,
    config_overrides: dict | None = None,
) -> tuple[Path, Path]:
    """Write root/base and root/sft for `family`; returns their paths.

    added_tokens > 0 appends that many tokens to the SFT tokenizer and embedding rows (as SFT
    recipes that add chat tokens do).
    """
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(family, **(config_overrides or {}))
    base = AutoModelForCausalLM.from_config(config).to(getattr(torch, dtype)).eval()
    sft = copy.deepcopy(base)
    perturb_(sft, seed + 1)
    tok = tiny_tokenizer()
    base_dir, sft_dir = root / "base", root / "sft"
    base.save_pretrained(base_dir, max_shard_size=max_shard_size)
    tok.save_pretrained(base_dir)
    if added_tokens:
        tok.add_special_tokens(
            {"additional_special_tokens": [f"<tool_{i}>" for i in range(added_tokens)]}
        )
        sft.resize_token_embeddings(config.vocab_size + added_tokens, mean_resizing=False)
    sft.generation_config.temperature = 0.7  # SFT-specific, so tests can tell whose file it is
    sft.generation_config.do_sample = True
    sft.save_pretrained(sft_dir, max_shard_size=max_shard_size)
    tok.save_pretrained(sft_dir)
    return base_dir, sft_dir
