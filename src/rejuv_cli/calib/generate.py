"""Generation on calibration prompts: task accuracy and RL-readiness (`--generate`).

Each example with a reference answer (`Example.answer`) is prompted with its conversation up
to the last assistant turn, rendered as `encode.py` renders context: the chat template with
the generation prompt when the tokenizer has one, else bos + each message's content + "\\n".
The model answers it once greedily (accuracy) and `group_size` times by plain sampling
(temperature 1, no top-k or top-p: the model's own distribution, as an RL rollout sees it),
and each answer is graded by `ops/answers.grade`; `ops/passk.group_summary` turns the sampled
success counts into pass@1, pass@k and the learnable share.

Reproducibility: sampling draws from torch's global RNG (transformers' `generate` takes no
torch.Generator), so `generation_metrics` seeds it with `seed` just before a model's sampling
and restores the previous RNG state afterwards. The same seed, model, data, device and batch
budget give the same samples; another batch budget regroups the rows and so the draws, and
CUDA kernels draw differently from the CPU (and may differ across GPU types), so samples on
CUDA do not match samples on the CPU. Greedy outputs depend on none of these beyond float
rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rejuv_cli.calib.data import Example
from rejuv_cli.calib.encode import _render, pad_id_of
from rejuv_cli.errors import CalibError
from rejuv_cli.ops.answers import grade
from rejuv_cli.ops.passk import group_summary

if TYPE_CHECKING:
    import torch

# Budget per generate() call: rows × (longest prompt + max_new_tokens), i.e. the key/value
# cache positions the batch can reach. Larger than teacher forcing's: only the last position's
# logits are computed, and each decoding step costs about the same for 1 row as for many.
GEN_BATCH_TOKENS = {"cpu": 8192, "cuda": 32768}


@dataclass(frozen=True)
class Generation:
    """One generated continuation: its decoded text (special tokens skipped) and whether it
    ended on a stop token (False: cut at max_new_tokens)."""

    text: str
    stopped: bool


def prompt_ids(example: Example, tokenizer) -> list[int]:
    """Token ids of `example`'s messages before its last assistant turn, ready to continue:
    the chat template with the generation prompt, else bos + each content + "\\n" (each piece
    tokenized on its own, as `encode.encode` does). Raises CalibError when nothing precedes
    the turn or the template cannot render it."""
    msgs = list(example.messages)
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=len(msgs))
    context = msgs[:last]
    if not context:
        raise CalibError(f"{example.source}: no message before the assistant turn to prompt with")
    if tokenizer.chat_template:
        text = _render(tokenizer, context, True, example.source)
        ids = tokenizer.encode(text, add_special_tokens=False)
    else:
        bos = tokenizer.bos_token_id
        ids = [] if bos is None else [int(bos)]
        for m in context:
            ids += tokenizer.encode(m["content"] + "\n", add_special_tokens=False)
    if not ids:
        raise CalibError(f"{example.source}: the prompt renders to no tokens")
    return [int(i) for i in ids]


def stop_token_ids(model, tokenizer) -> list[int]:
    """Ids that end a generation: the tokenizer's eos, the model's generation_config eos ids
    (instruct models list their end-of-turn there), and the special token the chat template
    closes an assistant turn with when it is another one (`<|im_end|>` under a base model's
    `<|endoftext|>` eos)."""
    found: list[int] = []
    config = getattr(model, "generation_config", None)
    for value in (tokenizer.eos_token_id, getattr(config, "eos_token_id", None)):
        if isinstance(value, list | tuple):
            found += value
        elif value is not None:
            found.append(value)
    end = _template_end_of_turn(tokenizer)
    found += [] if end is None else [end]
    return list(dict.fromkeys(int(i) for i in found))  # unique, in order


def _template_end_of_turn(tokenizer) -> int | None:
    """The special token right after an assistant message in the chat template, or None."""
    if not tokenizer.chat_template:
        return None
    marker = "rejuv-end-of-turn-probe"
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}]
    try:
        text = tokenizer.apply_chat_template(msgs, tokenize=False)
    except Exception:  # a template that rejects this minimal chat: rely on the eos ids
        return None
    if not isinstance(text, str) or marker not in text:
        return None
    after = tokenizer.encode(text.split(marker, 1)[1], add_special_tokens=False)
    if not after:
        return None
    special = set(tokenizer.all_special_ids) | {
        i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special
    }
    return int(after[0]) if after[0] in special else None


@contextmanager
def plain_generation_config(model):
    """Inside: `model.generation_config` holds only its token ids, so no sampling setting of
    the checkpoint's generation_config.json (temperature, top_p, min_p, repetition penalty)
    fills in what `generate` is not given explicitly."""
    from transformers import GenerationConfig

    saved = model.generation_config
    ids = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
    model.generation_config = GenerationConfig(**{k: getattr(saved, k, None) for k in ids})
    try:
        yield
    finally:
        model.generation_config = saved


@contextmanager
def seeded(seed: int, device: torch.device):
    """Inside: torch's global RNG (CPU, and every CUDA device when `device` is CUDA) seeded
    with `seed`; the previous state is restored on exit."""
    import torch

    cuda = device.type == "cuda" and torch.cuda.is_available()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else []):
        torch.manual_seed(seed)
        yield


def generate(model, tokenizer, prompts: Sequence[list[int]], device: torch.device, *,
             max_new_tokens: int, sample: bool, batch_tokens: int,
             stop_ids: Sequence[int], on_step: Callable[[int], None] | None = None,
             ) -> list[Generation]:  # fmt: skip
    """One continuation per prompt (token ids), in input order.

    Greedy when `sample` is False, else plain sampling from the model's distribution. Rows are
    left-padded (pad id `pad_id_of`) and batched longest first so that rows × (longest prompt
    + max_new_tokens) <= batch_tokens (a row over budget runs alone); inputs go to `device`,
    where the model (or accelerate's hooks for it) runs. `on_step(rows)` after each batch.
    """
    import torch
    from transformers import GenerationConfig

    if max_new_tokens < 1:
        raise CalibError(f"max_new_tokens must be at least 1 (got {max_new_tokens})")
    pad, stops = pad_id_of(tokenizer), [int(i) for i in stop_ids]
    sampling = {"temperature": 1.0, "top_k": 0, "top_p": 1.0} if sample else {}
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=sample,
                              eos_token_id=stops or None, pad_token_id=pad, **sampling)  # fmt: skip
    out: list[Generation] = [Generation("", False)] * len(prompts)
    with plain_generation_config(model), torch.inference_mode():
        for batch in _row_batches([len(p) for p in prompts], max_new_tokens, batch_tokens):
            rows = [prompts[j] for j in batch]
            gens = _generate_batch(model, tokenizer, rows, device, config, pad, stops)
            for j, gen in zip(batch, gens, strict=True):
                out[j] = gen
            if on_step is not None:
                on_step(len(batch))
    return out


def _row_batches(lengths: list[int], max_new_tokens: int, budget: int) -> list[list[int]]:
    """Row indices grouped longest first (stable), each group within the token budget."""
    groups: list[list[int]] = []
    width = 0
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        # Longest first: a group's width is its first row's, and the largest group runs first.
        if groups and (len(groups[-1]) + 1) * (width + max_new_tokens) <= budget:
            groups[-1].append(i)
        else:
            groups.append([i])
            width = lengths[i]
    return groups


def _generate_batch(model, tokenizer, rows, device, config, pad: int, stops: list[int]):
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for n, row in enumerate(rows):  # left padding: every prompt ends where generation starts
        ids[n, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attn[n, width - len(row) :] = 1
    result = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device),
                            generation_config=config)  # fmt: skip
    gens = []
    for new in result[:, width:].tolist():  # [B, new tokens]
        # Cut at the first stop token ourselves: what follows is padding, which need not be a
        # special token (pad_id_of falls back to 0).
        end = next((t for t, tok in enumerate(new) if tok in stops), None)
        kept = new if end is None else new[:end]
        gens.append(Generation(tokenizer.decode(kept, skip_special_tokens=True), end is not None))
    return gens


def generation_cost(examples: int, group_size: int, max_new_tokens: int) -> dict:
    """What `generation_metrics` generates for `examples` checkable examples, per model:
    {"sequences": examples × (1 + group_size), "max_new_tokens": sequences × max_new_tokens,
    an upper bound (generation stops early at a stop token)}."""
    sequences = examples * (1 + group_size)
    return {"sequences": sequences, "max_new_tokens": sequences * max_new_tokens}


def generation_metrics(model, tokenizer, examples: Sequence[Example], device: torch.device, *,
                       group_size: int, max_new_tokens: int, checker: str = "auto",
                       seed: int = 0, batch_tokens: int | None = None,
                       on_step: Callable[[int], None] | None = None,
                       details: bool = False) -> dict:  # fmt: skip
    """Task accuracy and RL-readiness of `model` on the `examples` that have a reference
    (the others are skipped; the caller makes sure some have one). JSON-ready:

    {"checked": examples graded, "accuracy": greedy share correct, "no_answer": greedy outputs
    with no extractable answer, "truncated": greedy outputs cut at max_new_tokens,
    "k": group_size, "pass_at_1", "pass_at_k", "learnable_share", "all_wrong_share",
    "all_right_share" (`ops/passk.group_summary` over the sampled groups), "no_answer_samples",
    "truncated_samples", "max_new_tokens", "seed"}; with `details`, also "examples": one
    {"source", "reference", "greedy_answer", "greedy_correct", "correct_samples"} each.
    Shares are None when nothing was checked; the sampled ones also when group_size is 0
    (greedy only). `on_step(sequences)` reports progress against `generation_cost`.
    """
    if group_size < 0:
        raise CalibError(f"group_size must be at least 0 (got {group_size})")
    checkable = [ex for ex in examples if ex.answer is not None]
    prompts = [prompt_ids(ex, tokenizer) for ex in checkable]
    budget = batch_tokens or GEN_BATCH_TOKENS.get(device.type, GEN_BATCH_TOKENS["cpu"])
    run = {"max_new_tokens": max_new_tokens, "batch_tokens": budget, "on_step": on_step,
           "stop_ids": stop_token_ids(model, tokenizer)}  # fmt: skip
    greedy = generate(model, tokenizer, prompts, device, sample=False, **run)
    with seeded(seed, device):
        rows = [p for p in prompts for _ in range(group_size)]  # a prompt's samples adjacent
        sampled = generate(model, tokenizer, rows, device, sample=True, **run) if rows else []
    greedy_grades = [grade(g.text, ex.answer, checker)
                     for g, ex in zip(greedy, checkable, strict=True)]  # fmt: skip
    sample_grades = [grade(g.text, checkable[n // group_size].answer, checker)
                     for n, g in enumerate(sampled)]  # fmt: skip
    successes = [sum(ok for _, ok in sample_grades[n * group_size : (n + 1) * group_size])
                 for n in range(len(checkable))] if group_size else []  # fmt: skip
    summary = group_summary(successes, group_size) if group_size else {}
    checked = len(checkable)
    out = {
        "checked": checked,
        "accuracy": sum(ok for _, ok in greedy_grades) / checked if checked else None,
        "no_answer": sum(a is None for a, _ in greedy_grades),
        "truncated": sum(not g.stopped for g in greedy),
        "k": group_size,
        **{key: summary.get(key) for key in ("pass_at_1", "pass_at_k", "learnable_share",
                                             "all_wrong_share", "all_right_share")},
        "no_answer_samples": sum(a is None for a, _ in sample_grades),
        "truncated_samples": sum(not g.stopped for g in sampled),
        "max_new_tokens": max_new_tokens,
        "checker": checker,
        "seed": seed,
    }  # fmt: skip
    if details:
        out["examples"] = [
            {"source": ex.source, "reference": ex.answer, "greedy_answer": answer,
             "greedy_correct": ok, "correct_samples": successes[n] if successes else None}
            for n, (ex, (answer, ok)) in enumerate(zip(checkable, greedy_grades, strict=True))
        ]  # fmt: skip
    return out
