"""A minimal GRPO loop (Shao et al. 2024) for the toy task, and greedy evaluation.

Per step: P prompts, G samples each (temperature 1); reward 1/0 from `task.reward`; advantage
A = (r − mean_group) / (std_group + 1e-4), so a group whose samples all got the same reward
(zero variance) carries no gradient; loss = −mean over samples of A × mean log-prob of the
sample's tokens. One optimizer step per batch of samples (on-policy, so PPO's ratio is 1 and
clipping never acts; no KL term, as in DAPO / Dr. GRPO style setups). A fresh Adam per run.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from task import Problem, make_tokenizer, reward, sample_problem

MAX_NEW = 8  # a worked answer "38+9=47" is 7 characters, + </s>


@dataclass(frozen=True)
class GRPOSettings:
    steps: int = 60
    prompts: int = 16  # per step
    group: int = 8
    lr: float = 1e-4
    early: int = 10  # zero-variance share is reported over the first `early` steps


def prompt_ids(tok, batch: list[Problem]) -> torch.Tensor:
    """[B, 8]: "<s>" + the 7-character prompt (every prompt has the same length)."""
    rows = [[tok.bos_token_id] + tok.encode(p.prompt, add_special_tokens=False) for p in batch]
    return torch.tensor(rows)


def generate(model, ids: torch.Tensor, eos: int, greedy: bool, gen: torch.Generator | None):
    """Sample up to MAX_NEW tokens after `ids` [B, T0]; returns new tokens [B, MAX_NEW] and a
    mask [B, MAX_NEW] of the tokens that count (up to and including the first </s>)."""
    done = torch.zeros(ids.shape[0], dtype=torch.bool)
    new, keep = [], []
    with torch.no_grad():
        for _ in range(MAX_NEW):
            logits = model(input_ids=ids).logits[:, -1].float()
            if greedy:
                nxt = logits.argmax(-1)
            else:
                nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).squeeze(1)
            keep.append(~done)
            new.append(nxt)
            done = done | (nxt == eos)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            if done.all():
                break
    return torch.stack(new, 1), torch.stack(keep, 1)


def decode(tok, tokens: torch.Tensor, mask: torch.Tensor) -> list[str]:
    out = []
    for row, m in zip(tokens.tolist(), mask.tolist(), strict=True):
        text = [t for t, k in zip(row, m, strict=True) if k and t != tok.eos_token_id]
        out.append(tok.decode(text))
    return out


def accuracy(model, tok, test: list[Problem], batch: int = 256) -> float:
    """Greedy pass rate on `test`."""
    model.eval()
    hits = 0.0
    for i in range(0, len(test), batch):
        chunk = test[i : i + batch]
        tokens, mask = generate(model, prompt_ids(tok, chunk), tok.eos_token_id, True, None)
        hits += sum(reward(p, r) for p, r in zip(chunk, decode(tok, tokens, mask), strict=True))
    return hits / len(test)


def sequence_logprob(model, ids: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor):
    """Mean log-prob [B] of the kept sampled `tokens` [B, L] after prompts `ids` [B, T0]."""
    full = torch.cat([ids, tokens], dim=1)
    logits = model(input_ids=full).logits[:, ids.shape[1] - 1 : -1].float()  # predicts tokens
    logp = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    m = mask.float()
    return (logp * m).sum(1) / m.sum(1).clamp(min=1)


def run(checkpoint: Path, seed: int, settings: GRPOSettings, test: list[Problem],
        exclude: set[Problem]) -> dict:  # fmt: skip
    """GRPO from `checkpoint`; returns accuracies before/after and the early zero-variance
    share. RL prompts are drawn with `seed`, never from `test` or `exclude` (the SFT set)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    tok = make_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    model.config._attn_implementation = "eager"  # faster than sdpa at these sizes on CPU
    pre = accuracy(model, tok, test)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    banned = set(test) | exclude
    zero_var, rewards, t0 = [], [], time.perf_counter()
    for _ in range(settings.steps):
        batch = []
        while len(batch) < settings.prompts:
            p = sample_problem(rng)
            if p not in banned:
                batch.append(p)
        ids = prompt_ids(tok, batch).repeat_interleave(settings.group, 0)  # [P·G, 8]
        model.eval()
        tokens, mask = generate(model, ids, tok.eos_token_id, False, gen)
        texts = decode(tok, tokens, mask)
        r = torch.tensor([reward(batch[i // settings.group], t) for i, t in enumerate(texts)])
        r = r.view(settings.prompts, settings.group)
        std = r.std(1, keepdim=True)
        adv = ((r - r.mean(1, keepdim=True)) / (std + 1e-4)).flatten()
        zero_var.append(float((std.squeeze(1) == 0).float().mean()))
        rewards.append(float(r.mean()))
        model.train()
        loss = -(adv * sequence_logprob(model, ids, tokens, mask)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    post = accuracy(model, tok, test)
    early = zero_var[: settings.early]
    return {"seed": seed, "pre": pre, "post": post, "gain": post - pre,
            "zero_variance_early": sum(early) / len(early), "train_reward": rewards,
            "seconds": time.perf_counter() - t0}  # fmt: skip
