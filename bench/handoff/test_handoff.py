"""The handoff experiment's building blocks (bench/handoff): task, tokenizer, SFT batches, and
the GRPO update. The experiment itself is `make handoff`; these check its parts are right.
They live beside the code they test (pytest collects bench/handoff too: pyproject testpaths),
so tests/ never imports bench/."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # task, grpo, train beside it

import grpo  # noqa: E402
import task  # noqa: E402
import train  # noqa: E402

from rejuv_cli.calib.data import Example  # noqa: E402
from rejuv_cli.calib.encode import encode  # noqa: E402


def test_problem_text_and_reward():
    p = task.Problem((23, 4, 5))
    assert (p.prompt, p.worked, p.answer) == ("23+4+5=", "27+5=32", 32)
    assert task.reward(p, "27+5=32") == 1.0
    assert task.reward(p, "32") == 1.0  # the format is not graded, only the final number
    assert task.reward(p, "27+5=31") == 0.0
    assert task.reward(p, "27+5=") == 0.0
    assert task.reward(p, "") == 0.0


def test_problem_sets_are_distinct_and_reproducible():
    train_set = task.problems(1, 256)
    assert len(set(train_set)) == 256 and train_set == task.problems(1, 256)
    test = task.problems(2, 256, set(train_set))
    assert not set(test) & set(train_set)
    rng = random.Random(0)
    for _ in range(200):
        line = task.pretrain_line(rng)
        left, right = line.split("=")
        assert eval(left) == int(right)  # noqa: S307 - digits and +/- only


def test_chat_template_marks_the_response_for_rejuv_diagnose():
    """rejuv's calibration encoder must see "<s>prompt" as context and "response</s>" as the
    targets, exactly the tokens SFT trained on."""
    tok = task.make_tokenizer()
    p = task.Problem((23, 4, 5))
    ex = Example([{"role": "user", "content": p.prompt},
                  {"role": "assistant", "content": p.worked}], "t:1")  # fmt: skip
    (enc,), warnings = encode([ex], tok, 64)
    assert not warnings
    ids, _, labels = train.encode_batch(tok, [p.prompt], [p.worked])
    assert enc.input_ids == ids[0].tolist()
    assert enc.response == (labels[0] != -100).tolist()
    assert tok.decode(enc.input_ids) == "<s>23+4+5=27+5=32</s>"


def test_generate_stops_at_eos_and_masks_after_it():
    class Scripted(torch.nn.Module):
        """Emits 3, 4, </s>, then 5 forever, whatever the input."""

        def forward(self, input_ids):
            step = input_ids.shape[1] - 2
            nxt = [3, 4, 2][step] if step < 3 else 5
            logits = torch.full((*input_ids.shape, 17), -1e9)
            logits[:, -1, nxt] = 0
            return type("Out", (), {"logits": logits})()

    tokens, mask = grpo.generate(Scripted(), torch.ones(2, 2, dtype=torch.long), 2, True, None)
    assert tokens[0].tolist() == [3, 4, 2] and mask[0].tolist() == [True, True, True]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("handoff") / "base"
    train.pretrain(out, steps=2, seed=0, batch=8)
    return out


def test_grpo_leaves_weights_alone_when_every_group_has_zero_variance(tiny_checkpoint):
    """An untrained model never answers right: every group's rewards are all 0, so every
    advantage is 0 and the update must not move a single weight (Adam with zero gradients)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    before = [p.detach().clone() for p in model.parameters()]
    test = task.problems(2, 16)
    settings = grpo.GRPOSettings(steps=2, prompts=4, group=4, early=2)
    captured = {}
    original = torch.optim.Adam.step

    def spy(self, *a, **k):
        captured["params"] = [p for g in self.param_groups for p in g["params"]]
        return original(self, *a, **k)

    torch.optim.Adam.step = spy
    try:
        result = grpo.run(tiny_checkpoint, 0, settings, test, set())
    finally:
        torch.optim.Adam.step = original
    assert result["pre"] == result["post"] == 0.0
    assert result["zero_variance_early"] == 1.0
    after = captured["params"]
    assert len(after) == len(before)
    assert all(torch.equal(b, a.detach()) for b, a in zip(before, after, strict=True))


# ---- the evidence run's design and statistics (arms.py, analysis.py) -------------------------
import analysis  # noqa: E402
import arms  # noqa: E402


def test_checkpoints_for_the_arms():
    # the probe's validation accuracies (bench/handoff/results/ladder_probe.json, 256 problems)
    val = {1: 0.086, 2: 0.070, 4: 0.168, 8: 0.262, 16: 0.379, 32: 0.445, 64: 0.633,
           128: 0.859, 256: 0.875, 512: 0.879, 1024: 0.902}  # fmt: skip
    # 128 -> 256 is +0.016 against a noise of 0.030: 128 is the last real improvement; 256 is
    # the earliest within one standard error of the best (0.902 - 0.875 = 0.027 <= 0.028)
    assert arms.choose_checkpoints(val, 256) == {"over": 1024, "improving": 128, "early": 256}
    assert arms.noise(0.902, 0.875, 256) == pytest.approx(0.02779, abs=1e-5)
    # the last real improvement is also the early-stopping point: the one before it
    val = {8: 0.1, 16: 0.4, 32: 0.8, 64: 0.8, 128: 0.78}
    assert arms.choose_checkpoints(val, 256) == {"over": 128, "improving": 16, "early": 32}


def test_arm_flags():
    flags = arms.arm_flags(0.8, "c.jsonl")
    assert flags["fuse-a0.25"] == ["--alpha", "0.25", "--reset", "0"]
    assert flags["rejuv-a0.5"] == ["--alpha", "0.5"]
    assert flags["sweep-attribution"][:4] == ["--alpha", "0.8", "--select", "attribution"]
    assert len(flags) == 9 and len(arms.arm_flags(None, "c.jsonl")) == 6
    assert set(flags) - set(arms.arm_flags(0.8, "c.jsonl", attribution=False)) == {
        "sweep-attribution"
    }


def test_paired_differences_and_spearman():
    runs = [{"checkpoint": c, "seed": s, "post": v} for c, s, v in
            [("a", 0, 0.5), ("a", 1, 0.7), ("b", 0, 0.4), ("b", 1, 0.4)]]  # fmt: skip
    p = analysis.paired(runs, "a", "b")
    assert p["diffs"] == pytest.approx([0.1, 0.3]) and p["wins"] == 2
    assert p["mean"] == pytest.approx(0.2) and p["std"] == pytest.approx(2**0.5 * 0.1)  # sample std
    assert analysis.ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]
    assert analysis.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert analysis.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # hand computation: ranks x 1..5, y 2,1,4,3,5 -> d² = 1+1+1+1+0 = 4, rho = 1 - 6·4/120
    assert analysis.spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    assert analysis.spearman([1, 1, 1], [1, 2, 3]) is None
