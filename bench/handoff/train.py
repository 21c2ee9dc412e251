"""Pretraining of the tiny base model and the SFT ladder (constant learning rate, fixed order).

Checkpoints are ordinary Hugging Face directories (float32 safetensors, config, tokenizer
with the chat template), so `rejuv fuse` and `rejuv diagnose` read them like any other.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch
from task import make_tokenizer, pretrain_line, problems

CONFIG = dict(
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=32,
    tie_word_embeddings=False,
)


def encode_batch(tok, prompts: list[str], responses: list[str] | None = None):
    """Right-padded ids [B, T], attention mask [B, T] and labels [B, T] (-100 = no loss).

    Pretraining (responses None): "<s>line</s>", loss on every token after <s>. SFT: the chat
    template's "<s>prompt" + "response</s>", loss on the response and </s> only."""
    rows, targets = [], []
    for i, prompt in enumerate(prompts):
        head = [tok.bos_token_id] + tok.encode(prompt, add_special_tokens=False)
        if responses is None:
            ids = head + [tok.eos_token_id]
            target = [-100] + ids[1:]
        else:
            tail = tok.encode(responses[i], add_special_tokens=False) + [tok.eos_token_id]
            ids = head + tail
            target = [-100] * len(head) + tail
        rows.append(ids)
        targets.append(target)
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tok.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    for i, (r, t) in enumerate(zip(rows, targets, strict=True)):
        ids[i, : len(r)] = torch.tensor(r)
        labels[i, : len(t)] = torch.tensor(t)
    return ids, (ids != tok.pad_token_id).long(), labels


def save(model, tok, out: Path) -> None:
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def pretrain(out: Path, steps: int, seed: int, batch: int = 128, lr: float = 2e-3) -> dict:
    """The base model: next-token loss on a stream of pretraining lines (warmup, then cosine
    decay to 10%: pretraining is the one stage the protocol does not constrain)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer()
    torch.manual_seed(seed)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)  # fmt: skip
    config = LlamaConfig(vocab_size=len(tok), **ids, **CONFIG)
    model = LlamaForCausalLM(config)
    model.config._attn_implementation = "eager"  # faster than sdpa at this size on CPU
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 200) * (
        0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * s / steps)).item())))  # fmt: skip
    rng = random.Random(seed)
    t0, losses = time.perf_counter(), []
    model.train()
    for _ in range(steps):
        ids, attn, labels = encode_batch(tok, [pretrain_line(rng) for _ in range(batch)])
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    save(model.eval(), tok, out)
    params = sum(p.numel() for p in model.parameters())
    return {"steps": steps, "final_loss": sum(losses[-50:]) / 50, "params": params,
            "seconds": time.perf_counter() - t0}  # fmt: skip


def sft_ladder(base: Path, out_root: Path, epochs: list[int], n_examples: int, seed: int,
               batch: int = 16, lr: float = 1e-3) -> dict:  # fmt: skip
    """Fine-tune `base` on `n_examples` worked problems at a constant learning rate, in the
    same order every epoch, saving out_root/sft-e{E} after each epoch E in `epochs`."""
    from transformers import AutoModelForCausalLM

    tok = make_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).train()
    model.config._attn_implementation = "eager"
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    data = problems(seed, n_examples)
    batches = [encode_batch(tok, [p.prompt for p in data[i : i + batch]],
                            [p.worked for p in data[i : i + batch]])
               for i in range(0, len(data), batch)]  # fmt: skip
    t0, log = time.perf_counter(), {}
    for epoch in range(1, max(epochs) + 1):
        total = 0.0
        for ids, attn, labels in batches:
            loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
        if epoch in epochs:
            save(model.eval(), tok, out_root / f"sft-e{epoch}")
            model.train()
            log[epoch] = total / len(batches)
    return {"train_loss": log, "seconds": time.perf_counter() - t0, "examples": n_examples}
