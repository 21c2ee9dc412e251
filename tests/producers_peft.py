"""PEFT LoRA adapters made by PEFT itself (get_peft_model + save_pretrained) over tiny models saved
by transformers' save_pretrained, and PEFT's own merge (merge_and_unload) as the oracle.

Offline: HF_HUB_OFFLINE=1, so PEFT's save_embedding_layers="auto" check reads the local
base_model_name_or_path (an absolute path here) and never the Hub.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=128)  # fmt: skip


def tiny_config(family: str, **overrides):
    """llama (untied, no biases), qwen2 (q/k/v biases, untied), gpt2 (Conv1D, tied)."""
    import transformers as tf

    if family == "llama":
        return tf.LlamaConfig(**{**TINY, "tie_word_embeddings": False, **overrides})
    if family == "qwen2":
        return tf.Qwen2Config(**{**TINY, "tie_word_embeddings": False, **overrides})
    if family == "gpt2":
        return tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=128, n_positions=64,
                             bos_token_id=0, eos_token_id=0, **overrides)  # fmt: skip
    raise ValueError(family)


def save_base(path: Path, family: str, dtype=torch.float32, seed: int = 0, **overrides) -> Path:
    """A randomly initialised tiny `family` model (config `overrides`) saved by save_pretrained
    in `dtype`."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **overrides)).to(dtype)
    model.save_pretrained(path)
    return path


def load_base(base: Path, dtype=torch.float32, resize_to: int | None = None):
    """BASE as transformers loads it (in `dtype`), optionally resized to `resize_to` tokens."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    if resize_to is not None:
        model.resize_token_embeddings(resize_to)
    return model


def save_adapter(base: Path, out: Path, config, seed: int = 1, resize_to: int | None = None,
                 dtype=torch.float32, perturb: bool = True, **save_kwargs) -> Path:  # fmt: skip
    """get_peft_model(BASE, config) then save_pretrained(out), as a training run ends.

    `perturb` stands in for training: every trainable parameter (lora_A/B, lora_B.bias,
    modules_to_save copies, lora_only biases, trainable token rows) gets N(0, 0.05²) noise, so
    nothing the adapter saves equals BASE. `resize_to`: resize the vocabulary first (added
    tokens), as trainers do before wrapping.
    """
    from peft import get_peft_model

    model = get_peft_model(load_base(base, dtype, resize_to), config)
    torch.manual_seed(seed)
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(out, **save_kwargs)
    return out


def peft_merged(base: Path, adapter: Path, resize_to: int | None = None) -> dict[str, torch.Tensor]:
    """The oracle: PeftModel.from_pretrained(fresh BASE in float32, adapter)
    .merge_and_unload().state_dict()."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_base(base, torch.float32, resize_to), adapter)
    merged = model.merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}
