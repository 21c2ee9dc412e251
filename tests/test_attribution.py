"""The `attribution` scorer: entropy gaps, position selection, exact per-unit contributions to the
target logit with the final norm's scale frozen, and the reconstruction of that logit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rejuv_cli.calib.data import load_examples
from rejuv_cli.calib.encode import batches, encode, pad_id_of
from rejuv_cli.calib.forward import activation_sites, response_logits
from rejuv_cli.calib.models import shared_vocab
from rejuv_cli.checkpoint.reader import Checkpoint
from rejuv_cli.ops.tokens import log_probs, token_stats
from rejuv_cli.plan import build_plan
from rejuv_cli.recipe import Recipe
from rejuv_cli.reset.attribution import (
    attribution_scores,
    gaps_from,
    response_entropies,
    select_positions,
    target_positions,
)
from rejuv_cli.reset.layout import unit_layout

CPU = torch.device("cpu")
# Measured: max |linearised − real| ≈ 6e-8 on logits of ~0.3 (relative ≈ 1e-7), float32 CPU.
RECON_ABS = 1e-5
RECON_REL = 1e-4


def load(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def sites_of(base_dir, sft_dir):
    with Checkpoint.open(base_dir, "BASE") as base, Checkpoint.open(sft_dir, "SFT") as sft:
        return activation_sites(unit_layout(sft, build_plan(base, sft, Recipe()), None))


def math_batches(sft_dir, n=4, batch_tokens=512):
    tok = AutoTokenizer.from_pretrained(sft_dir)
    enc, _ = encode(load_examples("builtin:math", n), tok, 256)
    return list(batches(enc, batch_tokens, pad_id_of(tok)))


def all_targets(bs, per_row=None):
    """Every response target position of each batch (at most `per_row` per row)."""
    out = []
    for batch in bs:
        rows, ts = torch.nonzero(target_positions(batch), as_tuple=True)
        pos = list(zip(rows.tolist(), ts.tolist(), strict=True))
        if per_row is not None:
            pos = [p for p in pos if sum(q[0] == p[0] and q[1] <= p[1] for q in pos) <= per_row]
        out.append(pos)
    return out


def entropy_gaps(base, sft, bs, device):
    """|H_sft − H_base| per batch, the two models run one after the other as the scorer does."""
    vocab = shared_vocab({"base": base, "sft": sft})[0]
    per_model = [response_entropies(m, bs, device, vocab) for m in (base, sft)]
    return gaps_from(*per_model, bs)


@pytest.fixture(scope="module")
def setup(pairs):
    """family -> (base model, sft model, batches, sites, selected positions), built on first use."""
    cache = {}

    def get(family):
        if family not in cache:
            base_dir, sft_dir = pairs[family]
            base, sft = load(base_dir), load(sft_dir)
            bs = math_batches(sft_dir)
            gaps = entropy_gaps(base, sft, bs, CPU)
            pos = select_positions(gaps, masks=[target_positions(b) for b in bs])
            cache[family] = (base, sft, bs, sites_of(base_dir, sft_dir), pos)
        return cache[family]

    return get


# --- positions ------------------------------------------------------------------------------


def test_select_positions_top_share_and_per_example_cap():
    g0 = torch.zeros(2, 10)
    g0[0, :9] = torch.arange(9, 0, -1).float() + 100  # row 0: the 9 largest gaps of all
    g0[1, :9] = torch.arange(9).float()  # row 1: 0 .. 8
    g1 = torch.zeros(1, 10)
    g1[0, :9] = 50.0  # ties: broken by (batch, row, t)
    masks = [torch.zeros(2, 10, dtype=torch.bool), torch.zeros(1, 10, dtype=torch.bool)]
    masks[0][:, :9] = True
    masks[1][:, :9] = True  # 27 target positions in all
    # top 40% -> ceil(10.8) = 11 positions; row 0 capped at 4, so the budget moves on
    chosen = select_positions([g0, g1], top_share=0.4, max_per_example=4, masks=masks)
    assert chosen[0][:4] == [(0, 0), (0, 1), (0, 2), (0, 3)]  # row 0's four largest
    assert chosen[1] == [(0, t) for t in range(4)]  # the tie: lowest t first, then capped
    assert chosen[0][4:] == [(1, 6), (1, 7), (1, 8)]  # the rest of the budget: row 1
    assert sum(map(len, chosen)) == 11
    # default 5% of 27 -> 2 positions, both from row 0; determinism
    assert select_positions([g0, g1], masks=masks) == [[(0, 0), (0, 1)], []]
    assert select_positions([g0, g1], masks=masks) == select_positions([g0, g1], masks=masks)
    # without masks, positive gaps count: row 1, t=0 (gap 0) is not a candidate
    every = select_positions([g0], top_share=1.0, max_per_example=100)
    assert (1, 0) not in every[0] and len(every[0]) == 17
    with pytest.raises(ValueError):
        select_positions([g0], top_share=0)


def test_entropy_gaps_match_a_direct_computation(setup):
    base, sft, bs, _, _ = setup("llama")
    gaps = entropy_gaps(base, sft, bs, CPU)
    for batch, gap in zip(bs, gaps, strict=True):
        mask = target_positions(batch)
        assert gap.shape == batch[0].shape and (gap[~mask] == 0).all()
        with torch.no_grad():
            h = []
            for model in (base, sft):
                logits, targets = response_logits(model, batch, CPU)
                h.append(token_stats(log_probs(logits), targets)["entropy"])
        # response_logits orders targets like the mask (row-major), one row per target
        torch.testing.assert_close(gap[mask], (h[1] - h[0]).abs(), atol=1e-6, rtol=1e-5)
        assert float(gap[mask].max()) > 0


# --- reconstruction and exactness -------------------------------------------------------------


NORMS = {"gpt2": "LayerNorm gain=w", "gemma2": "RMSNorm gain=1+w"}


# gemma2: post-block norms (frozen like the final one) and tied embeddings; phi3: fused qkv.
@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2", "phi3"])
def test_linearised_logit_reconstructs_the_real_one(setup, family):
    base, sft, bs, sites, pos = setup(family)
    sft.train()  # the state is restored afterwards, and dropout is off while attributing
    res = attribution_scores(sft, bs, pos, sites, CPU)
    assert sft.training
    sft.eval()
    rec = res.reconstruction
    assert res.positions == sum(map(len, pos)) > 0
    assert res.missing == []
    assert rec["max_abs_error"] < RECON_ABS, rec
    assert rec["relative"] < RECON_REL, rec
    assert rec["mean_abs_logit"] > 0.05
    assert rec["final_norm"] == NORMS.get(family, "RMSNorm gain=w")
    assert set(res.scores) == {s.key for s in sites}
    for s in sites:
        assert res.scores[s.key].shape == (s.n_units,) and res.scores[s.key].dtype == np.float64
        assert np.isfinite(res.scores[s.key]).all() and res.scores[s.key].max() > 0
    # every hook is removed again
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in sft.modules())


def final_norm(model):
    base = model.base_model
    return base.norm if hasattr(base, "norm") else base.ln_f


def frozen_norm_map(model, h: torch.Tensor):
    """Independent reference for the final norm at one position with its scale frozen at h's:
    h [D] -> (Δh [D] -> Δ(norm output) [D], linear; the norm's additive bias or 0)."""
    norm = final_norm(model)
    if isinstance(norm, torch.nn.LayerNorm):  # GPT-2
        s = (1 / torch.sqrt(h.var(unbiased=False) + norm.eps)).detach()
        return (lambda d: norm.weight * (d - d.mean()) * s), norm.bias
    s = torch.rsqrt(h.pow(2).mean() + norm.variance_epsilon).detach()
    gain = 1 + norm.weight if "Gemma" in type(norm).__name__ else norm.weight
    return (lambda d: gain * d * s), 0


@pytest.mark.parametrize(
    ("family", "module"), [("llama", "mlp"), ("llama", "o"), ("gpt2", "mlp"), ("gpt2", "o")]
)
def test_input_contributions_equal_ablation(setup, family, module):
    """Zero one input channel of a projection at position t; the change of its output, pushed
    through the frozen final norm and the lm_head, is the channel's exact contribution."""
    _, sft, bs, sites, _ = setup(family)
    batch = bs[0]
    row, t = all_targets([batch])[0][7]
    site = next(s for s in sites if s.layer == 0 and s.module == module)
    res = attribution_scores(sft, [batch], [[(row, t)]], [site], CPU)

    proj = dict(sft.named_modules())[site.path]
    final = final_norm(sft)
    seen = {}
    handles = [
        proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("a", a[0].detach())),
        final.register_forward_pre_hook(lambda m, a: seen.__setitem__("h", a[0].detach())),
    ]
    try:
        with torch.no_grad():
            logits = sft(input_ids=batch[0], attention_mask=batch[1]).logits
    finally:
        for h in handles:
            h.remove()
    target = int(logits[row, t].argmax())
    frozen, _ = frozen_norm_map(sft, seen["h"][row, t])
    w = sft.get_output_embeddings().weight[target]
    a = seen["a"][row, t]
    expected = np.zeros(site.n_units)
    with torch.no_grad():
        for j in range(site.n_units):
            ablated = a.clone()
            ablated[site.offset + j] = 0
            delta = proj(a[None])[0] - proj(ablated[None])[0]  # what channel j writes
            expected[j] = abs(float(w @ frozen(delta)))
    np.testing.assert_allclose(res.scores[site.key], expected, rtol=1e-4, atol=1e-7)
    assert expected.max() > 1e-4


@pytest.mark.parametrize(("family", "module"), [("llama", "k"), ("gpt2", "k"), ("phi3", "v")])
def test_output_contributions_equal_gradient_times_activation(setup, family, module):
    """q/k/v units (GPT-2 c_attn and Phi-3 qkv_proj at their offsets): |Σ_s ∂z_t/∂x_j(s) ·
    x_j(s)|, against a per-position reference with a hand-frozen final norm; several
    positions per row exercise the batched rounds."""
    _, sft, bs, sites, _ = setup(family)
    batch = bs[0]
    pos = all_targets([batch], per_row=3)[0]
    site = next(s for s in sites if s.layer == 0 and s.module == module)
    res = attribution_scores(sft, [batch], [pos], [site], CPU)

    proj = dict(sft.named_modules())[site.path]
    seen = {}
    handles = [
        proj.register_forward_hook(lambda m, a, o: seen.__setitem__("x", o)),
        final_norm(sft).register_forward_pre_hook(lambda m, a: seen.__setitem__("h", a[0])),
    ]
    expected = np.zeros(site.n_units)
    sl = slice(site.offset, site.offset + site.n_units)
    try:
        for row, t in pos:
            logits = sft(input_ids=batch[0], attention_mask=batch[1]).logits
            target = int(logits[row, t].argmax())
            h = seen["h"][row, t]
            frozen, beta = frozen_norm_map(sft, h)
            z = sft.get_output_embeddings().weight[target] @ (frozen(h) + beta)
            (g,) = torch.autograd.grad(z, seen["x"])
            total = (g[row, :, sl] * seen["x"][row, :, sl]).sum(0).abs().detach().numpy()
            expected = np.maximum(expected, total)
    finally:
        for hd in handles:
            hd.remove()
    np.testing.assert_allclose(res.scores[site.key], expected, rtol=1e-4, atol=1e-8)
    assert expected.max() > 0


# --- planted units ----------------------------------------------------------------------------


def test_planted_units_rank_first(pairs):
    """In the SFT model, MLP unit 11 of the last layer fires on every token and writes along one
    token's unembedding; v unit 3 of the last layer is scaled up and its o column writes along
    the same token. Both come out on top of their kind."""
    base_dir, sft_dir = pairs["llama"]
    base, sft = load(base_dir), load(sft_dir)
    layer = sft.model.layers[-1]
    token = 40
    direction = sft.lm_head.weight[token] / sft.lm_head.weight[token].norm()
    with torch.no_grad():
        # MLP: gate and up rows both along the mean normalised input, so act(g)·u > 0 and large
        probe = {}
        hd = layer.mlp.register_forward_pre_hook(lambda m, a: probe.__setitem__("x", a[0]))
        ids = math_batches(sft_dir)[0][0]
        sft(input_ids=ids)
        hd.remove()
        mean = probe["x"].reshape(-1, probe["x"].shape[-1]).mean(0)
        row = mean / mean.norm() * 8
        layer.mlp.gate_proj.weight[11] = row
        layer.mlp.up_proj.weight[11] = row
        layer.mlp.down_proj.weight[:, 11] = direction * 2
        # v: one value channel amplified, its o_proj column along the token's direction
        layer.self_attn.v_proj.weight[3] *= 30
        layer.self_attn.o_proj.weight[:, 3] = direction * 0.5
    bs = math_batches(sft_dir)
    gaps = entropy_gaps(base, sft, bs, CPU)
    pos = select_positions(gaps, masks=[target_positions(b) for b in bs])
    sites = sites_of(base_dir, sft_dir)
    res = attribution_scores(sft, bs, pos, sites, CPU)
    assert res.reconstruction["relative"] < RECON_REL

    def top(modules):
        scored = [(float(res.scores[s.key].max()), s.key) for s in sites if s.module in modules]
        key = max(scored)[1]
        return key, int(res.scores[key].argmax())

    last = len(sft.model.layers) - 1
    assert top({"mlp"}) == (f"layers.{last}.mlp", 11)
    assert top({"q", "k", "v"}) == (f"layers.{last}.v", 3)


def test_missing_and_empty(setup):
    _, sft, bs, sites, _ = setup("llama")
    ghost = sites[0].__class__("layers.9.mlp", 9, "mlp", "model.layers.9.mlp.down_proj", 0, 4)
    res = attribution_scores(sft, bs, [[] for _ in bs], [*sites[:1], ghost], CPU)
    assert res.missing == ["layers.9.mlp"]
    assert res.positions == 0 and math.isnan(res.reconstruction["relative"])
    assert (res.scores[sites[0].key] == 0).all()


def test_frozen_parameters_give_the_same_scores(setup):
    """A model whose parameters do not require grad (as inference code leaves it) still gets
    gradients from the first layer's input on; its flags are left as they were."""
    _, sft, bs, sites, pos = setup("llama")
    before = attribution_scores(sft, bs, pos, sites, CPU)
    flags = {n: p.requires_grad for n, p in sft.named_parameters()}
    try:
        sft.requires_grad_(False)
        after = attribution_scores(sft, bs, pos, sites, CPU)
        assert not any(p.requires_grad for p in sft.parameters())
    finally:
        for n, p in sft.named_parameters():
            p.requires_grad_(flags[n])
    for key, value in before.scores.items():
        np.testing.assert_allclose(after.scores[key], value, rtol=1e-5, atol=1e-9)
    assert after.reconstruction["relative"] < RECON_REL
