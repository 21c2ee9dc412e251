"""Pure diagnostic math: token statistics, unit activity scores, ranks, verdict rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rejuv_cli.diagnostics.verdict import RULES, judge, suggested_command
from rejuv_cli.ops import activity as act
from rejuv_cli.ops.rank import effective_rank, stable_rank
from rejuv_cli.ops.tokens import kl_divergence, log_probs, token_stats


def test_token_stats_match_a_float64_reference():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 11, generator=gen) * 3
    targets = torch.tensor([0, 3, 10, 7, 7])
    got = token_stats(log_probs(logits), targets)
    p = np.exp(logits.double().numpy())
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(got["entropy"], -(p * np.log(p)).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(got["p_max"], p.max(-1), rtol=1e-6)
    np.testing.assert_allclose(got["nll"], -np.log(p[np.arange(5), targets.numpy()]), rtol=1e-5)


def test_entropy_of_uniform_and_one_hot():
    logp = log_probs(torch.tensor([[0.0] * 8, [0.0, -1e9, -1e9, -1e9, -1e9, -1e9, -1e9, -1e9]]))
    h = token_stats(logp, torch.tensor([0, 0]))["entropy"]
    assert h[0] == pytest.approx(math.log(8), rel=1e-6)
    assert h[1] == 0.0  # p log p with p = 0 counts as 0, not NaN


def test_kl_divergence_matches_reference_and_is_zero_for_equal_distributions():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 9, generator=gen), torch.randn(4, 9, generator=gen)
    pa = torch.softmax(a.double(), -1).numpy()
    pb = torch.softmax(b.double(), -1).numpy()
    ref = (pa * (np.log(pa) - np.log(pb))).sum(-1)
    np.testing.assert_allclose(kl_divergence(log_probs(a), log_probs(b)), ref, rtol=1e-5)
    assert torch.all(kl_divergence(log_probs(a), log_probs(a)) == 0)


def test_activity_sums_give_redo_and_cv():
    h = torch.tensor([[1.0, 0.0, -2.0, 3.0], [-1.0, 0.0, 2.0, 1.0], [1.0, 0.0, 2.0, 2.0]])
    stats = act.ActivityStats.zeros(4, "cpu")
    stats.update(h[:2])
    stats.update(h[2:])  # chunked updates add up
    mean_abs = stats.mean_abs()
    np.testing.assert_allclose(mean_abs, [1.0, 0.0, 2.0, 2.0])
    redo = act.redo_scores(mean_abs)
    np.testing.assert_allclose(redo, np.array([1.0, 0.0, 2.0, 2.0]) / 1.25)
    cv = stats.cv()
    np.testing.assert_allclose(cv[[0, 2]], 0.0, atol=1e-12)  # constant magnitude
    np.testing.assert_allclose(cv[3], np.std([3.0, 1.0, 2.0]) / 2.0, rtol=1e-9)
    # unit 2: busy (1.6 × the layer mean) and steady (CV 0) -> saturated; unit 1 is dead
    assert act.saturated_flags(redo, cv).tolist() == [False, False, True, False]
    fr = act.dormant_fractions(redo)
    assert fr == {"0.01": 0.25, "0.025": 0.25, "0.1": 0.25}
    assert np.argmax(act.saturated_scores(redo, cv)) == 2


def test_ranks_of_known_spectra():
    assert stable_rank(torch.tensor([2.0, 0.0, 0.0])) == 1.0
    assert stable_rank(torch.tensor([1.0, 1.0, 1.0, 1.0])) == 4.0
    assert effective_rank(torch.tensor([3.0, 3.0, 3.0])) == pytest.approx(3.0)
    assert effective_rank(torch.tensor([5.0, 0.0])) == pytest.approx(1.0)
    m = torch.randn(30, 20, generator=torch.Generator().manual_seed(0))
    sv = torch.linalg.svdvals(m)
    assert stable_rank(sv) == pytest.approx(
        float((m**2).sum() / torch.linalg.matrix_norm(m, 2) ** 2)
    )


def test_verdict_levels():
    assert judge({})[0] == "ok"  # nothing measured: nothing fires
    label, reasons = judge({"output.entropy_mean": 0.05})
    assert label == "rigid" and [r["id"] for r in reasons] == ["low_entropy"]
    assert judge({"output.entropy_mean": 0.18})[0] == "ok"  # strictly below fires
    label, reasons = judge({"sharpness.ratio": 2.5})
    assert label == "watch" and reasons[0]["value"] == 2.5 and reasons[0]["threshold"] == 2.0
    three = {"sharpness.ratio": 3.0, "weights.drift_max": 0.9, "units.dormant_increase": 0.2}
    assert judge(three)[0] == "rigid"  # three warning signs together
    sections = ("output", "weights", "units", "routing", "sharpness")
    assert all(r.metric.split(".")[0] in sections for r in RULES)


def test_suggested_command_names_the_models():
    # ok: SFT goes to RL as it is; the command is the same diagnose as a CI gate
    assert suggested_command("ok", "b", "./runs/my sft/", diagnose_flags=["--rank"]) == (
        "rejuv diagnose b './runs/my sft/' --rank --json 'my sft-diagnose.json' "
        "--fail-on verdict.label==rigid"
    )
    rigid = suggested_command("rigid", "org/base", "./runs/my sft/")
    assert rigid == ("rejuv sweep org/base './runs/my sft/' --out 'my sft-rejuv' "
                     "--html 'my sft-sweep.html'")  # fmt: skip
    assert suggested_command("watch", "b", "org/s@v1", ["--generate"]) == (
        "rejuv sweep b org/s@v1 --generate --out s-rejuv --html s-sweep.html"
    )
