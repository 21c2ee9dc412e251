"""calib/generate.py on the shipped demo pair (a trained char-level Llama whose SFT answers
`17+9+3=` with `26+3=29`): prompts as encode.py renders context, greedy output equal to a
plain argmax loop, left padding, seeded sampling, the checkpoint's sampling settings ignored,
stop tokens, accelerate offload, and the metrics' counts."""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rejuv_cli.calib.data import Example, load_examples
from rejuv_cli.calib.encode import encode
from rejuv_cli.calib.generate import (
    generate,
    generation_cost,
    generation_metrics,
    prompt_ids,
    stop_token_ids,
)
from rejuv_cli.calib.models import load_model, load_tokenizer, offloaded_share
from rejuv_cli.errors import CalibError

DEMO = Path(__file__).resolve().parents[1] / "bench" / "handoff" / "demo"
CPU = torch.device("cpu")
EOS = 2  # "</s>" in the demo's character vocabulary
NEW = 10  # a worked answer "26+3=29" is 7 characters, + </s>


@pytest.fixture(scope="module")
def demo():
    """(tokenizer, {"base": model, "sft": model}) of the demo pair; read-only."""
    tok = load_tokenizer(DEMO / "sft", "SFT")
    return tok, {role: load_model(DEMO / role, role, CPU) for role in ("base", "sft")}


def toy_examples(n: int) -> list[Example]:
    """The first `n` demo calibration examples, with the total as their reference answer."""
    examples = load_examples(str(DEMO / "calib.jsonl"), n)
    return [dataclasses.replace(ex, answer=ex.messages[-1]["content"].split("=")[-1])
            for ex in examples]  # fmt: skip


def argmax_loop(model, tok, ids: list[int], max_new: int) -> str:
    """Reference greedy decoding: one unpadded prompt, a full forward per step, no cache."""
    seq = list(ids)
    with torch.inference_mode():
        for _ in range(max_new):
            nxt = int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
            if nxt == EOS:
                break
            seq.append(nxt)
    return tok.decode(seq[len(ids) :], skip_special_tokens=True)


def test_prompt_is_encode_context(demo):
    tok = demo[0]
    chat = Example(({"role": "system", "content": "1+1="}, {"role": "user", "content": "2+2="},
                    {"role": "assistant", "content": "4"}, {"role": "user", "content": "3+3="},
                    {"role": "assistant", "content": "6"}), "chat", "6")  # fmt: skip
    plain = copy.deepcopy(tok)
    plain.chat_template = None
    for t in (tok, plain):
        examples = [*toy_examples(4), chat]
        encoded, _ = encode(examples, t, 64)
        for ex, enc in zip(examples, encoded, strict=True):
            # The context before the last assistant turn, token for token.
            start = max(i for i, r in enumerate(enc.response) if r)
            while enc.response[start - 1]:
                start -= 1
            assert prompt_ids(ex, t) == enc.input_ids[:start]
    first = toy_examples(1)[0]
    assert prompt_ids(first, tok) == [1, *tok.encode("17+9+3=", add_special_tokens=False)]
    assert prompt_ids(first, plain) == [1, *tok.encode("17+9+3=\n", add_special_tokens=False)]
    with pytest.raises(CalibError, match="no message before the assistant turn"):
        prompt_ids(Example(({"role": "assistant", "content": "4"},), "x.jsonl:3", "4"), tok)


def test_greedy_equals_argmax_loop_and_sft_beats_base(demo):
    tok, models = demo
    examples = toy_examples(24)
    prompts = [prompt_ids(ex, tok) for ex in examples]
    for role, model in models.items():
        got = generate(model, tok, prompts, CPU, max_new_tokens=NEW, sample=False,
                       batch_tokens=10_000, stop_ids=[EOS])  # fmt: skip
        expected = [argmax_loop(model, tok, p, NEW) for p in prompts]
        assert [g.text for g in got] == expected, role
        metrics = generation_metrics(model, tok, examples, CPU, group_size=0, max_new_tokens=NEW)
        # The toy task's reward (bench/handoff/task.py): the last number is the total.
        hits = [re.search(r"(\d+)$", t) for t in expected]
        rewards = [m is not None and m.group(1) == ex.answer
                   for m, ex in zip(hits, examples, strict=True)]  # fmt: skip
        assert metrics["accuracy"] == sum(rewards) / len(examples)
        assert metrics["checked"] == 24 and metrics["pass_at_1"] is None and metrics["k"] == 0
        if role == "sft":
            assert got[2].text == "30+8=38" and metrics["accuracy"] > 0.4
        else:
            assert metrics["accuracy"] == 0.0  # the base never learnt the worked format


def test_left_padding_matches_unbatched(demo):
    tok, models = demo
    texts = ["17+9+3=", "9+9+9=", "1+2=", "23+4+5=", "12+3+4+5=", "5="]
    prompts = [[1, *tok.encode(t, add_special_tokens=False)] for t in texts]
    steps: list[int] = []
    kwargs = {"max_new_tokens": NEW, "sample": False, "stop_ids": [EOS]}
    batched = generate(models["sft"], tok, prompts, CPU, batch_tokens=10_000,
                       on_step=steps.append, **kwargs)  # fmt: skip
    assert steps == [len(texts)]  # one left-padded batch of six lengths
    alone = generate(models["sft"], tok, prompts, CPU, batch_tokens=1, on_step=steps.append,
                     **kwargs)  # fmt: skip
    assert steps == [6, 1, 1, 1, 1, 1, 1]
    assert batched == alone
    assert [g.text for g in alone] == [argmax_loop(models["sft"], tok, p, NEW) for p in prompts]


def test_sampling_is_seeded_and_leaves_the_rng_alone(demo):
    tok, models = demo
    examples = toy_examples(8)
    run = {"group_size": 4, "max_new_tokens": NEW, "details": True}
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = generation_metrics(models["sft"], tok, examples, CPU, seed=0, **run)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is restored
    again = generation_metrics(models["sft"], tok, examples, CPU, seed=0, batch_tokens=200, **run)
    other = generation_metrics(models["sft"], tok, examples, CPU, seed=1, **run)
    rerun = generation_metrics(models["sft"], tok, examples, CPU, seed=0, **run)
    assert rerun == first
    samples = [e["correct_samples"] for e in first["examples"]]
    assert samples != [e["correct_samples"] for e in other["examples"]]
    # Greedy does not depend on the seed or batching; samples may (rows are regrouped).
    for r in (again, other):
        assert [e["greedy_answer"] for e in r["examples"]] == [
            e["greedy_answer"] for e in first["examples"]
        ]
    assert first["k"] == 4 and first["seed"] == 0 and other["seed"] == 1
    assert first["pass_at_1"] == sum(samples) / (4 * 8)
    assert first["pass_at_k"] == sum(c > 0 for c in samples) / 8
    assert first["learnable_share"] == sum(0 < c < 4 for c in samples) / 8
    shares = ("learnable_share", "all_wrong_share", "all_right_share")
    assert sum(first[s] for s in shares) == pytest.approx(1.0)
    assert 0 < first["pass_at_1"] < 1 and first["pass_at_k"] >= first["pass_at_1"]


def test_checkpoint_sampling_settings_are_ignored(demo):
    tok, models = demo
    examples = toy_examples(8)
    run = {"group_size": 4, "max_new_tokens": NEW, "seed": 3, "details": True}
    expected = generation_metrics(models["sft"], tok, examples, CPU, **run)
    tweaked = load_model(DEMO / "sft", "SFT", CPU)
    # Settings a generation_config.json may carry; with any of them the samples would change.
    for key, value in {"min_p": 0.9, "repetition_penalty": 10.0, "top_k": 1, "top_p": 0.1,
                       "temperature": 0.05, "no_repeat_ngram_size": 1}.items():  # fmt: skip
        setattr(tweaked.generation_config, key, value)
    assert generation_metrics(tweaked, tok, examples, CPU, **run) == expected
    assert tweaked.generation_config.min_p == 0.9  # restored after generation


def test_stop_tokens(demo):
    tok, models = demo
    assert stop_token_ids(models["sft"], tok) == [EOS]
    # eos `<unk>` and no eos in the generation config: the template's end of turn still stops.
    other = copy.deepcopy(tok)
    other.eos_token = "<unk>"
    bare = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=None))
    assert stop_token_ids(bare, other) == [3, EOS]
    listed = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[5, EOS]))
    assert stop_token_ids(listed, tok) == [EOS, 5]
    other.chat_template = None
    assert stop_token_ids(bare, other) == [3]
    # Cut at max_new_tokens: not stopped, and the partial text is what gets graded.
    got = generate(models["sft"], tok, [prompt_ids(toy_examples(3)[2], tok)], CPU,
                   max_new_tokens=4, sample=False, batch_tokens=100, stop_ids=[EOS])  # fmt: skip
    assert [(g.text, g.stopped) for g in got] == [("30+8", False)]


def test_offloaded_model_generates_the_same(demo):
    tok, models = demo
    examples = toy_examples(6)
    run = {"group_size": 2, "max_new_tokens": NEW, "seed": 0, "details": True}
    offloaded = load_model(DEMO / "sft", "SFT", CPU, max_memory=1)  # every weight on disk
    assert offloaded_share(offloaded) == 1.0
    expected = generation_metrics(models["sft"], tok, examples, CPU, **run)
    assert generation_metrics(offloaded, tok, examples, CPU, **run) == expected


def test_metrics_counts_and_cost(demo):
    tok, models = demo
    examples = toy_examples(5)
    examples[1] = dataclasses.replace(examples[1], answer=None)  # not checkable: skipped
    examples[3] = dataclasses.replace(examples[3], answer=None)
    steps: list[int] = []
    m = generation_metrics(models["sft"], tok, examples, CPU, group_size=2, max_new_tokens=3,
                           on_step=steps.append, details=True)  # fmt: skip
    assert generation_cost(3, 2, 3) == {"sequences": 9, "max_new_tokens": 27}
    assert sum(steps) == 9
    assert m["checked"] == 3 and m["max_new_tokens"] == 3
    assert [e["source"] for e in m["examples"]] == [examples[i].source for i in (0, 2, 4)]
    # Three characters of "26+3=29" is "26+": a number, wrong, and cut before a stop token.
    assert m["truncated"] == 3 and m["truncated_samples"] <= 6 and m["accuracy"] == 0.0
    assert m["no_answer"] == 0
    assert set(m) == {"checked", "accuracy", "no_answer", "truncated", "k", "pass_at_1",
                      "pass_at_k", "learnable_share", "all_wrong_share", "all_right_share",
                      "no_answer_samples", "truncated_samples", "max_new_tokens", "checker",
                      "seed", "examples"}  # fmt: skip
    nothing = generation_metrics(
        models["sft"], tok, examples[1:2], CPU, group_size=2, max_new_tokens=3
    )
    assert nothing["checked"] == 0 and nothing["accuracy"] is None and nothing["pass_at_k"] is None
