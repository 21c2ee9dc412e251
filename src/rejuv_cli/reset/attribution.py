"""The `attribution` reset scorer (docs/method.md section 3): per-unit contributions to the
target logit.

Pipeline: `response_entropies` teacher-forces BASE, then SFT, and `gaps_from` gives
|H_sft(t) − H_base(t)| at every response target position; `select_positions` keeps the
positions where the two disagree most; `attribution_scores` (`reset.logit_attr`; the model
structure it needs is `reset.model_parts`) runs SFT once per batch with
gradients and splits the target logit (SFT's top-1 token at each selected position) into
per-unit contributions.

Linearisation. The final norm's per-position scale (1/rms for RMSNorm, 1/std for LayerNorm) is
frozen at its actual value, so the target logit z_t is linear in the final residual h_t:
z_t = ⟨u_t, h_t⟩ + c_t, with u_t = ∂z_t/∂h_t (norm gain, 1/rms and, for LayerNorm, the
centring folded in) and c_t = ⟨w_target, norm bias⟩ + lm_head bias. The residual h_t is the
sum of the embeddings (the first layer's input) and every attention and MLP block output, so
the logit is a sum of those blocks' direct contributions. Where a block's output passes a
post-norm before the residual (Gemma-2/3, OLMo-2), that norm's scale is frozen the same way
and the post-norm's output is the block's write.

- "input" sites (o_proj / down_proj input channels, GPT-2 `c_proj` rows): contribution of
  channel j at t = a_j(t) · ∂(direct logit)/∂a_j(t) = a_j(t) · ⟨W_col_j, u_t⟩ for a projection
  that writes straight into the residual (exact: the block output is linear in a along that
  path). The derivative is taken locally, from the block's output back to the projection's
  input, so gates between them (Qwen2-MoE's shared-expert sigmoid) are included.
- "output" sites (q/k/v output channels before rotary, fused qkv / GPT-2 `c_attn` columns at
  their offset): |Σ_{s≤t} ∂z_t/∂x_j(s) · x_j(s)| (gradient × activation through every path,
  final-norm scale still frozen). One backward per selected position per row ("round"): rows
  are independent sequences, so one backward serves one position of every row at once.

A unit's score is the maximum |contribution| over the selected positions.

Measured reconstruction error of the linearised logit (tiny float32 synth models, CPU, 4
built-in math examples, 5-6 positions, logits ~0.3): max abs error ≤ 1.2e-7, relative (mean
error / mean |logit|) ≤ 1.5e-7 for llama, mistral, qwen2, qwen3, phi3, gpt2, gemma, gemma2,
gemma3_text, olmo, olmo2, cohere, granite, mixtral and qwen2_moe; the tests allow 1e-5 / 1e-4.
The same models in bfloat16 (CPU): relative ≈ 1.5e-3, bfloat16 precision.

Limits. The target logit is the lm_head output: logit soft-capping and logit scaling (Gemma-2,
Granite, Cohere) act after it and are monotone, so the top-1 is the same. Granite's
residual_multiplier (each write scaled before the add) is applied; other per-family scalings of
the residual writes are not, and show up as reconstruction error. MoE expert neurons inside a
fused experts module (transformers 5) have no module of their own: their contribution is
h_j · r_e · ⟨W_down,e[:, j], g⟩ with h recomputed for the selected positions routed to the
expert and g the derivative of the block's write with respect to the experts' output
(`reset.expert_attr`); per-expert modules (transformers 4) are mapped back to
positions through the router's top-k choice. A final norm not of
the form gain ⊙ C(h) · s + β is used unfrozen ("unrecognised"), and a residual writer that is
not an attention / MLP block output (e.g. parallel-block layouts) shows up as reconstruction
error. "output" contributions are gradient × activation, a first-order estimate, not exact.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from rejuv_cli import dist
from rejuv_cli.calib.forward import Batch
from rejuv_cli.checkpoint.staging import loadable_dir
from rejuv_cli.ops.tokens import block_rows, entropy, log_probs
from rejuv_cli.reset.activity import CalibRun
from rejuv_cli.reset.logit_attr import AttributionResult, attribution_scores

__all__ = ["AttributionResult", "attribution_scores", "score_attribution"]

# Tokens per batch (padding included). The backward pass keeps every layer's activations for
# the whole batch (about 10 of tokens × hidden or intermediate size per layer: ~9 GB for a 7B
# model at 2048 tokens in bf16), so batches are smaller than for inference-only passes.
BATCH_TOKENS = 2048


def score_attribution(layout, base, sft, device, on_bytes=None, settings=None, max_memory=None):
    """The paper's scorer: units' contributions to SFT's top-1 logit at the response positions
    where SFT's and BASE's next-token entropies differ most (docs/method.md section 3)."""
    from rejuv_cli.calib.forward import activation_sites
    from rejuv_cli.calib.models import config_vocab
    from rejuv_cli.calib.vocab import unseen_note

    run = CalibRun(layout, base, sft, device, on_bytes, settings, max_memory, load=False,
               batch_tokens=BATCH_TOKENS)  # fmt: skip
    batches = run.calib.batches
    # Under torchrun each rank runs a contiguous share of the batches; the entropies are
    # gathered so that every rank selects the same positions from all of them.
    share = dist.share(len(batches))
    mine = [batches[i] for i in share]
    # BASE and SFT run one after the other, so only one model is loaded at any time.
    vocab = min(config_vocab(loadable_dir(base), "BASE"), config_vocab(loadable_dir(sft), "SFT"))
    base_model = run.load(loadable_dir(base), "BASE")
    base_entropies = _gathered(response_entropies(base_model, mine, device, vocab))
    if note := unseen_note("BASE", base_model):
        run.calib.warnings.append(note)
    del base_model  # only its entropies are needed
    run.model = run.load(loadable_dir(sft), "SFT")
    sft_entropies = _gathered(response_entropies(run.model, mine, device, vocab))
    gaps = gaps_from(base_entropies, sft_entropies, batches)
    positions = select_positions(gaps, masks=[target_positions(b) for b in batches])
    result = attribution_scores(run.model, mine, [positions[i] for i in share],
                                activation_sites(layout), device)  # fmt: skip
    return run.result(result.scores, result.missing, positions=result.positions,
                      reconstruction=result.reconstruction)  # fmt: skip


def _gathered(per_batch: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every torchrun rank's per-batch tensors in rank order (= batch order); the list itself
    in a single process."""
    return [t for part in dist.all_gather(per_batch) for t in part]


# --- positions ---------------------------------------------------------------------------------


def target_positions(batch: Batch) -> torch.Tensor:
    """[B, T] bool: True at position t when token t + 1 is a real response token (the logits at
    t predict a response target). The last column is always False."""
    _, attn, resp = batch
    mask = torch.zeros(resp.shape, dtype=torch.bool)
    mask[:, :-1] = resp[:, 1:].cpu() & attn[:, 1:].cpu().bool()
    return mask


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    """logits [N, V] any float dtype -> next-token entropy [N] float32 (nats), in row blocks
    (`block_rows`) so float32 temporaries stay bounded."""
    rows = block_rows(logits.shape[-1])
    out = [entropy(log_probs(logits[i : i + rows])) for i in range(0, logits.shape[0], rows)]
    return torch.cat(out) if out else torch.zeros(0)


def response_entropies(model, batches: list[Batch], device: torch.device,
                       vocab_limit: int | None = None) -> list[torch.Tensor]:  # fmt: skip
    """Per batch, [N] float32 (CPU): the model's teacher-forced next-token entropy (nats) at the
    response target positions (`target_positions`, in row-major order), over the first
    `vocab_limit` tokens, renormalised, when given. Only one batch's logits exist at a time."""
    out = []
    with torch.inference_mode():
        for batch in batches:
            sel = target_positions(batch).to(device)
            ids, attn = batch[0].to(device), batch[1].to(device)
            logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits
            out.append(_entropy(logits[sel.to(logits.device)][:, :vocab_limit]).cpu())
            del logits
    return out


def gaps_from(base: list[torch.Tensor], sft: list[torch.Tensor], batches: list[Batch]):
    """Per batch, [B, T] float32 (CPU): |H_sft(t) − H_base(t)| at response target positions,
    0 elsewhere, from two models' `response_entropies` on the same batches."""
    gaps = []
    for h_base, h_sft, batch in zip(base, sft, batches, strict=True):
        mask = target_positions(batch)
        gap = torch.zeros(mask.shape, dtype=torch.float32)
        gap[mask] = (h_sft - h_base).abs()
        gaps.append(gap)
    return gaps


def select_positions(
    gaps: list[torch.Tensor],
    top_share: float = 0.05,
    max_per_example: int = 32,
    masks: list[torch.Tensor] | None = None,
) -> list[list[tuple[int, int]]]:
    """The positions to attribute: per batch, a sorted list of (row, t).

    gaps: per batch [B, T] (from `gaps_from`); masks: per batch [B, T] bool, the response
    target positions (`target_positions`); without masks, positions with gap > 0 count.
    k = ceil(top_share × all response target positions) positions are taken greedily in
    decreasing gap order, skipping an example (a batch row) once it holds `max_per_example`,
    so the budget goes to the next-largest gaps elsewhere (fewer than k only when every
    example is full). Ties break by (batch, row, t) ascending, so the result is deterministic.
    """
    if not 0 < top_share <= 1:
        raise ValueError(f"top_share must be in (0, 1] (got {top_share})")
    if max_per_example < 1:
        raise ValueError(f"max_per_example must be at least 1 (got {max_per_example})")
    if masks is None:
        masks = [g > 0 for g in gaps]
    values, where = [], []
    for b, (gap, mask) in enumerate(zip(gaps, masks, strict=True)):
        rows, ts = torch.nonzero(mask.cpu(), as_tuple=True)
        values.append(gap.cpu()[rows, ts].double().numpy())
        where.append(np.stack([np.full(len(rows), b), rows.numpy(), ts.numpy()], axis=1))
    chosen: list[list[tuple[int, int]]] = [[] for _ in gaps]
    if not values or sum(len(v) for v in values) == 0:
        return chosen
    value = np.concatenate(values)
    loc = np.concatenate(where).astype(np.int64)
    k = math.ceil(top_share * len(value))
    # lexsort: the last key is primary; −gap so the largest comes first.
    order = np.lexsort((loc[:, 2], loc[:, 1], loc[:, 0], -value))
    per_example: dict[tuple[int, int], int] = {}
    taken = 0
    for i in order:
        b, row, t = (int(x) for x in loc[i])
        if per_example.get((b, row), 0) >= max_per_example:
            continue
        per_example[(b, row)] = per_example.get((b, row), 0) + 1
        chosen[b].append((row, t))
        taken += 1
        if taken == k:
            break
    return [sorted(c) for c in chosen]
