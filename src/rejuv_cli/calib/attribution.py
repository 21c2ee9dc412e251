"""The `attribution` reset scorer (METHOD.md section 3): per-unit contributions to the target logit.

Pipeline: `response_entropies` teacher-forces BASE, then SFT, and `gaps_from` gives
|H_sft(t) − H_base(t)| at every response target position; `select_positions` keeps the
positions where the two disagree most; `attribution_scores` runs SFT once per batch with
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
the residual writes are not, and show up as reconstruction error. MoE experts fused
into 3-D tensors (Mixtral, Qwen-MoE in transformers 5) have no per-expert module and are
listed in `missing`; their block output still enters the reconstruction. A final norm not of
the form gain ⊙ C(h) · s + β is used unfrozen ("unrecognised"), and a residual writer that is
not an attention / MLP block output (e.g. parallel-block layouts) shows up as reconstruction
error. "output" contributions are gradient × activation, a first-order estimate, not exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from rejuv_cli.calib.forward import Batch, Site, refetch_offloaded_weights
from rejuv_cli.ops.tokens import block_rows, entropy, log_probs

# Tokens per batch (padding included). The backward pass keeps every layer's activations for
# the whole batch (about 10 of tokens × hidden or intermediate size per layer: ~9 GB for a 7B
# model at 2048 tokens in bf16), so batches are smaller than for inference-only passes.
BATCH_TOKENS = 2048
NORM_MATCH = 2e-2  # max |frozen recomputation − real norm output| / max |output| to accept it
ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
MLP_NAMES = ("mlp", "block_sparse_moe", "feed_forward", "ffn")
NORM_NAMES = ("norm", "ln_f", "final_layernorm", "final_norm", "norm_f")


@dataclass
class AttributionResult:
    """Per-unit attribution scores and how well the linearisation reproduces the logit."""

    scores: dict[str, np.ndarray]  # site key -> [n_units] float64: max over positions of |c|
    positions: int  # selected positions used
    # "mean_abs_error", "max_abs_error", "mean_abs_logit", "relative" (= mean error / mean
    # |logit|) of the linearised target logit against the real one over the selected positions
    # (NaN when there were none), and "final_norm": how the final norm was frozen.
    reconstruction: dict
    missing: list[str] = field(default_factory=list)  # site keys absent from the model


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


# --- model structure ---------------------------------------------------------------------------


@dataclass
class _Parts:
    lm_head: torch.nn.Module
    norm: torch.nn.Module
    first_layer: torch.nn.Module
    # (block, writer) module names for every attention / MLP block: the writer's output is what
    # the block adds to the residual (the block itself, or its post-norm in Gemma-2/3, OLMo-2).
    writers: list[tuple[str, str]]
    post_norms: set[str]  # writers that are norms (their scale is frozen like the final one)
    write_scale: float  # what the layer multiplies each write by (Granite's residual_multiplier)

    def writer_for(self, path: str) -> str:
        """The writer of the block that contains the projection at `path`; the projection
        itself when no block contains it (then its output is taken to reach the residual)."""
        inside = [(b, w) for b, w in self.writers if path.startswith(b + ".")]
        return max(inside, key=lambda bw: len(bw[0]))[1] if inside else path


def _parts(model) -> _Parts:
    """Find the final norm, the lm_head, the decoder layers and their attention / MLP blocks."""
    base = model.base_model
    layers = max(
        (c for c in base.children() if isinstance(c, torch.nn.ModuleList)), key=len, default=None
    )
    norm = next((getattr(base, n) for n in NORM_NAMES if hasattr(base, n)), None)
    lm_head = model.get_output_embeddings()
    if not layers or norm is None or not isinstance(lm_head, torch.nn.Linear):
        raise ValueError(
            f"{type(model).__name__}: attribution needs decoder layers, a final norm and a "
            "linear lm_head, and this model's layout is not recognised"
        )
    names = {id(m): n for n, m in model.named_modules()}
    writers, post_norms = [], set()
    for layer in layers:
        # Post-norm layers normalise each block's output before adding it to the residual
        # (Gemma-2/3 and OLMo-2 name them so; in Llama `post_attention_layernorm` is the MLP's
        # input norm, and there is no `post_feedforward_layernorm`).
        post = hasattr(layer, "post_feedforward_layernorm")
        for group, norm_name in ((ATTN_NAMES, "post_attention_layernorm"),
                                 (MLP_NAMES, "post_feedforward_layernorm")):  # fmt: skip
            child = next((getattr(layer, n) for n in group if hasattr(layer, n)), None)
            if child is None:
                continue
            writer = names[id(getattr(layer, norm_name))] if post else names[id(child)]
            writers.append((names[id(child)], writer))
            if post:
                post_norms.add(writer)
    scale = float(getattr(model.config, "residual_multiplier", None) or 1.0)
    return _Parts(lm_head, norm, layers[0], writers, post_norms, scale)


def _first(x):
    return x[0] if isinstance(x, tuple | list) else x


def _as_btd(x: torch.Tensor, b: int, t: int) -> torch.Tensor | None:
    """x as [B, T, D]: as is, or from the [B·T, D] that MoE blocks pass their experts."""
    if x.dim() == 3 and x.shape[:2] == (b, t):
        return x
    if x.dim() == 2 and x.shape[0] == b * t:
        return x.view(b, t, -1)
    return None


def _frozen_norm(module, h: torch.Tensor, y: torch.Tensor):
    """A straight-through stand-in for the final norm's output: value y exactly, gradient that
    of the norm with its per-position scale frozen (linear in h).

    Norms of the form y = gain ⊙ C(h) · s + β are recognised: C = identity (RMSNorm) or
    centring (LayerNorm), gain = weight, 1 + weight (Gemma) or 1, β = the norm's bias or 0.
    The scale s [.., 1] is fitted per position from the real output by least squares (so the
    norm's eps and its placement need not be known) and detached; the candidate that fits y
    best is used when within NORM_MATCH of it. Returns (y', β [D] float32 or None,
    description); for an unrecognised norm y' is None (the model keeps its real output and
    gradient, described "unrecognised"), and the reconstruction error shows the effect.
    """
    from accelerate.utils import align_module_device

    x = h.float()
    yf = y.detach().float()
    with align_module_device(module):  # an offloaded norm's weights are on "meta" after forward
        weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    gains = [("1", None)]
    if isinstance(weight, torch.Tensor) and weight.shape == x.shape[-1:]:
        gains = [("w", weight.float()), ("1+w", 1 + weight.float())]
    beta = bias.float() if isinstance(bias, torch.Tensor) and bias.shape == x.shape[-1:] else None
    target = yf if beta is None else yf - beta
    scale = max(float(yf.abs().max()), 1e-30)
    best = None
    for centred in (False, True):
        xc = x - x.mean(-1, keepdim=True) if centred else x
        for label, gain in gains:
            base = xc if gain is None else xc * gain  # [.., D], y − β ≈ base · s
            with torch.no_grad():  # the fit only picks the constant; no gradient through it
                s = (target * base).sum(-1, keepdim=True) / base.pow(2).sum(-1, keepdim=True)
                s = torch.nan_to_num(s)
                err = float((base * s - target).abs().max()) / scale
            if best is None or err < best[0]:
                best = (err, base * s, f"{'LayerNorm' if centred else 'RMSNorm'} gain={label}")
    err, lin, kind = best
    if err > NORM_MATCH:
        return None, None, "unrecognised"
    # Value: exactly the model's y; gradient: only that of the frozen linear map (y's own
    # graph is cut, else the unfrozen Jacobian would be added to it).
    return y.detach() + (lin - lin.detach()).to(y.dtype), beta, kind


# --- attribution -------------------------------------------------------------------------------


class _Capture:
    """Forward hooks for one batch: the selected positions' residual pieces, the sites'
    activations and the straight-through final norm. `close` removes every hook."""

    def __init__(self, model, parts: _Parts, sites: list[Site], rows, ts, b: int, t: int):
        self.rows, self.ts, self.b, self.t = rows, ts, b, t
        self.h0: torch.Tensor | None = None  # [P, D] first layer input at the positions
        self.outs: dict[str, torch.Tensor] = {}  # writer name -> [P, D] block output
        self.acts: dict[str, torch.Tensor] = {}  # site path -> [B, T, *] activation
        self.raw: dict[str, torch.Tensor] = {}  # site path -> the tensor autograd knows
        self.h = self.y = self.beta = None
        self.norm_kind = ""
        self.handles = []
        modules = dict(model.named_modules())
        try:
            self._hook_all(modules, parts, sites)
        except BaseException:
            self.close()
            raise

    def _hook_all(self, modules, parts: _Parts, sites: list[Site]) -> None:
        reg = self.handles.append
        reg(parts.first_layer.register_forward_pre_hook(self._embed_hook, with_kwargs=True))
        names = {w for _, w in parts.writers}
        names |= {parts.writer_for(s.path) for s in sites if s.where == "input"}
        for name in sorted(n for n in names if n in modules):
            hook = self._writer_hook(name, name in parts.post_norms)
            reg(modules[name].register_forward_hook(hook, with_kwargs=True))
        for path in sorted({s.path for s in sites if s.where == "input"}):
            reg(modules[path].register_forward_pre_hook(self._act_hook(path, True)))
        for path in sorted({s.path for s in sites if s.where != "input"}):
            reg(modules[path].register_forward_hook(self._act_hook(path, False)))
        reg(parts.norm.register_forward_hook(self._norm_hook, with_kwargs=True))

    def _embed_hook(self, _module, args, kwargs):
        args, kwargs = list(args), dict(kwargs)
        hidden = args[0] if args else kwargs["hidden_states"]
        if not hidden.requires_grad:  # parameters frozen by the caller: grow a graph from here
            hidden = hidden.detach().requires_grad_(True)
            if args:
                args[0] = hidden
            else:
                kwargs["hidden_states"] = hidden
        self.h0 = hidden[self.rows, self.ts]
        return tuple(args), kwargs

    def _writer_hook(self, name: str, is_norm: bool):
        def hook(module, args, kwargs, output):
            out = _first(output)
            if is_norm:  # the frozen-scale map (same value) stands in for the post-norm
                frozen, _, _ = _frozen_norm(module, args[0] if args else kwargs["hidden_states"],
                                            out)  # fmt: skip
                out = out if frozen is None else frozen
            out = _as_btd(out, self.b, self.t)
            if out is not None:  # slice now: the full output is not needed afterwards
                self.outs[name] = out[self.rows, self.ts]

        return hook

    def _act_hook(self, path: str, is_input: bool):
        def hook(_module, args, output=None):
            raw = args[0] if is_input else _first(output)
            btd = _as_btd(raw, self.b, self.t)
            if btd is not None:
                self.raw[path], self.acts[path] = raw, btd

        return hook

    def _norm_hook(self, module, args, kwargs, output):
        h = args[0] if args else kwargs["hidden_states"]
        y = _first(output)
        y_st, self.beta, self.norm_kind = _frozen_norm(module, h, y)
        self.h, self.y = h, (y if y_st is None else y_st)
        if y_st is None:  # unrecognised norm: leave the model's output (and gradient) alone
            return None
        return (y_st, *output[1:]) if isinstance(output, tuple) else y_st

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def attribution_scores(
    sft_model, batches: list[Batch], positions: list[list[tuple[int, int]]], sites: list[Site],
    device: torch.device,
) -> AttributionResult:  # fmt: skip
    """Score every unit of `sites` by its largest |contribution| to SFT's top-1 logit over the
    selected `positions` (per batch, (row, t) pairs as `select_positions` returns them).

    Batches run one at a time, with gradients, through the SFT model on `device`; the model's
    train/eval state and its hooks are restored afterwards. Sites whose module does not exist
    in the model, or whose activation is not laid out per token, are listed in `missing`.
    Cost per batch: one forward, one local backward per "input" site's block, and one full
    backward per round when there are "output" sites (rounds = most positions in one row).
    """
    model = sft_model
    parts = _parts(model)
    modules = dict(model.named_modules())
    present = [s for s in sites if s.path in modules]
    missing = [s.key for s in sites if s.path not in modules]
    scores = {s.key: np.zeros(s.n_units) for s in present}
    errors: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    norm_kinds: set[str] = set()
    unplaced: set[str] = set()
    was_training = model.training
    model.eval()
    # Only activations need gradients. A parameter that requires grad would put an
    # AccumulateGrad node holding it into every graph, keeping every (onloaded) weight alive
    # until the batch ends; the graph starts at the first layer's input instead.
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        for batch, pos in zip(batches, positions, strict=True):
            if not pos:
                continue
            err, z, kind, bad = _attribute_batch(model, parts, batch, pos, present, scores, device)
            errors.append(err)
            logits.append(z)
            norm_kinds.add(kind)
            unplaced |= bad
    finally:
        model.train(was_training)
        for p in frozen:
            if not p.is_inference():  # accelerate re-creates offloaded ones under inference_mode
                p.requires_grad_(True)
    for key in unplaced:
        scores.pop(key, None)
    missing += [s.key for s in present if s.key in unplaced]
    err = np.concatenate(errors) if errors else np.zeros(0)
    z = np.concatenate(logits) if logits else np.zeros(0)
    mean_err = float(err.mean()) if err.size else math.nan
    mean_z = float(np.abs(z).mean()) if z.size else math.nan
    reconstruction = {
        "mean_abs_error": mean_err,
        "max_abs_error": float(err.max()) if err.size else math.nan,
        "mean_abs_logit": mean_z,
        "relative": mean_err / mean_z if z.size and mean_z > 0 else math.nan,
        "final_norm": ", ".join(sorted(norm_kinds)),
    }
    return AttributionResult(scores, int(err.size), reconstruction, missing)


def _attribute_batch(model, parts: _Parts, batch: Batch, pos, sites: list[Site], scores,
                     device) -> tuple[np.ndarray, np.ndarray, str, set[str]]:  # fmt: skip
    """One batch: update `scores` in place; returns (|linearised − real| [P], real target
    logits [P], final-norm description, keys of sites not laid out per token)."""
    from accelerate.utils import align_module_device

    ids, attn = batch[0].to(device), batch[1].to(device)
    b, t = ids.shape
    rows = torch.tensor([r for r, _ in pos], device=device)
    ts = torch.tensor([s for _, s in pos], device=device)
    cap = _Capture(model, parts, sites, rows, ts, b, t)
    try:
        with torch.enable_grad(), refetch_offloaded_weights(model):
            out = model(input_ids=ids, attention_mask=attn, use_cache=False)
            target = out.logits[rows, ts].argmax(-1)  # [P] SFT's top-1 (same as the lm_head's)
            del out
            with align_module_device(parts.lm_head):  # onloads an offloaded lm_head
                w = parts.lm_head.weight[target].float()  # [P, D] unembedding rows
                bias = parts.lm_head.bias
                lm_bias = torch.zeros(len(pos), device=w.device)
                if bias is not None:
                    lm_bias = bias[target].float()
            # z: the target logit at the lm_head, from the (straight-through) norm output.
            z = (cap.y[rows, ts].float() * w).sum(-1) + lm_bias  # [P]
            # c_t: what the frozen norm and the lm_head add whatever the residual.
            const = lm_bias if cap.beta is None else lm_bias + w @ cap.beta
            u = torch.autograd.grad(z.sum(), cap.h, retain_graph=True)[0][rows, ts].float()
            writes = [cap.outs[name].float() for _, name in parts.writers if name in cap.outs]
            resid = cap.h0.float() + parts.write_scale * sum(writes)  # [P, D]
            linear = (u * resid).sum(-1) + const
            bad = {s.key for s in sites if s.path not in cap.acts}
            ok = [s for s in sites if s.path in cap.acts]
            direct = u * parts.write_scale  # ∂z/∂(block write): the layer scales it first
            bad |= _direct(cap, parts, [s for s in ok if s.where == "input"], direct, scores)
            _through(cap, z, pos, [s for s in ok if s.where != "input"], scores)
        err = (linear - z).abs().detach().cpu().double().numpy()
        return err, z.detach().cpu().double().numpy(), cap.norm_kind, bad
    finally:
        cap.close()


def _direct(cap: _Capture, parts: _Parts, sites: list[Site], u: torch.Tensor, scores) -> set[str]:
    """ "input" sites: a_j(t) · ∂⟨u_t, block write(t)⟩/∂a_j(t), the derivative taken from the
    block's write back to the projection's input only (the direct path to the residual), so
    later layers' reads of the residual do not enter. Returns the keys of sites whose block
    output is not laid out per token (not scored)."""
    by_writer: dict[str, list[Site]] = {}
    for s in sites:
        by_writer.setdefault(parts.writer_for(s.path), []).append(s)
    unplaced = set()
    for writer, group in by_writer.items():
        if writer not in cap.outs:
            unplaced |= {s.key for s in group}
            continue
        out = cap.outs[writer]  # [P, D]
        paths = sorted({s.path for s in group})
        grads = torch.autograd.grad(out, [cap.raw[p] for p in paths], grad_outputs=u.to(out.dtype),
                                    retain_graph=True, allow_unused=True)  # fmt: skip
        for path, g in zip(paths, grads, strict=True):
            act = cap.acts[path][cap.rows, cap.ts].float()  # [P, I]
            g = (torch.zeros_like(act) if g is None
                 else _as_btd(g, cap.b, cap.t)[cap.rows, cap.ts].float())  # fmt: skip
            contrib = (act * g).abs()  # [P, I]
            for s in group:
                if s.path == path:
                    part = contrib[:, s.offset : s.offset + s.n_units].max(0).values
                    np.maximum(scores[s.key], part.detach().cpu().double().numpy(),
                               out=scores[s.key])  # fmt: skip
    return unplaced


def _through(cap: _Capture, z: torch.Tensor, pos, sites: list[Site], scores) -> None:
    """ "output" sites: |Σ_s ∂z_t/∂x_j(s) · x_j(s)| per selected position. Round k sums the
    k-th selected position of every row into one backward: rows never attend to each other,
    so each row's gradient is that of its own position alone."""
    if not sites:
        return
    paths = sorted({s.path for s in sites})
    rank: dict[int, int] = {}
    round_of = []
    for r, _ in pos:
        round_of.append(rank.get(r, 0))
        rank[r] = round_of[-1] + 1
    round_of = torch.tensor(round_of, device=z.device)
    for k in range(max(rank.values())):
        members = torch.nonzero(round_of == k).flatten()  # indices into the P positions
        rows = cap.rows[members]
        grads = torch.autograd.grad(z[members].sum(), [cap.raw[p] for p in paths],
                                    retain_graph=True, allow_unused=True)  # fmt: skip
        for path, g in zip(paths, grads, strict=True):
            if g is None:  # no path to these targets: contribution 0
                continue
            act = cap.acts[path][rows].float()  # [R, T, O]
            total = (_as_btd(g, cap.b, cap.t)[rows].float() * act).sum(1).abs()  # [R, O]
            for s in sites:
                if s.path == path:
                    part = total[:, s.offset : s.offset + s.n_units].max(0).values
                    np.maximum(scores[s.key], part.detach().cpu().double().numpy(),
                               out=scores[s.key])  # fmt: skip
