"""Per-unit contributions to SFT's target logit: forward hooks that capture the residual
writes and the sites' activations at the selected positions, and the backward passes that
split the linearised logit into units (see `reset.attribution` for the method and limits)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from rejuv_cli import dist
from rejuv_cli.calib.forward import Batch, Site
from rejuv_cli.calib.models import refetch_offloaded_weights
from rejuv_cli.reset.expert_attr import experts_direct, fused_sites
from rejuv_cli.reset.model_parts import _as_btd, _first, _frozen_norm, _Parts, _parts


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


class _Capture:
    """Forward hooks for one batch: the selected positions' residual pieces, the sites'
    activations and the straight-through final norm. `close` removes every hook."""

    def __init__(self, model, parts: _Parts, sites: list[Site], fused: dict, rows, ts, b: int,
                 t: int):  # fmt: skip
        self.rows, self.ts, self.b, self.t = rows, ts, b, t
        self.h0: torch.Tensor | None = None  # [P, D] first layer input at the positions
        self.outs: dict[str, torch.Tensor] = {}  # writer name -> [P, D] block output
        self.acts: dict[str, torch.Tensor] = {}  # site path -> [B, T, *] activation
        self.raw: dict[str, torch.Tensor] = {}  # site path -> the tensor autograd knows
        self.h = self.y = self.beta = None
        self.norm_kind = ""
        self.handles = []
        # fused experts module path -> (tokens [N, H], top-k experts [N, k], top-k weights
        # [N, k], the module's output [N, H] as autograd knows it)
        self.experts: dict[str, tuple[torch.Tensor, ...]] = {}
        # transformers 4's per-expert modules: site path -> its ExpertModule; their MoE
        # block's top-k choice [N, k]; per site path the tokens its input rows are
        self._per_expert: dict = {}
        self._selected: dict[str, torch.Tensor] = {}
        self.order: dict[str, torch.Tensor] = {}
        modules = dict(model.named_modules())
        try:
            self._hook_all(modules, parts, sites, fused)
        except BaseException:
            self.close()
            raise

    def _hook_all(self, modules, parts: _Parts, sites: list[Site], fused: dict) -> None:
        reg = self.handles.append
        reg(parts.first_layer.register_forward_pre_hook(self._embed_hook, with_kwargs=True))
        names = {w for _, w in parts.writers}
        names |= {parts.writer_for(fused[s.key].path if s.key in fused else s.path)
                  for s in sites if s.where == "input"}  # fmt: skip
        for name in sorted(n for n in names if n in modules):
            hook = self._writer_hook(name, name in parts.post_norms)
            reg(modules[name].register_forward_hook(hook, with_kwargs=True))
        from rejuv_cli.calib.experts import per_expert_module, watch_router

        for path in sorted({s.path for s in sites if s.where == "input" and s.path in modules}):
            expert = per_expert_module(modules, path)
            if expert is not None:
                self._per_expert[path] = expert
                if (handle := watch_router(modules, expert, self._selected)) is not None:
                    reg(handle)
            reg(modules[path].register_forward_pre_hook(self._act_hook(path, True)))
        for path in sorted({found.path for found in fused.values()}):
            reg(modules[path].register_forward_hook(self._experts_hook(path), with_kwargs=True))
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
        from rejuv_cli.calib.experts import routed_order

        def hook(_module, args, output=None):
            raw = args[0] if is_input else _first(output)
            expert = self._per_expert.get(path)
            if expert is not None:  # rows: the tokens routed to this expert, in block order
                order = routed_order(self._selected[expert.block], expert.index)
                if order.numel() == raw.shape[0] and raw.dim() == 2:
                    self.raw[path], self.acts[path], self.order[path] = raw, raw, order
                return
            btd = _as_btd(raw, self.b, self.t)
            if btd is not None:
                self.raw[path], self.acts[path] = raw, btd

        return hook

    def at_positions(self, path: str, x: torch.Tensor) -> torch.Tensor:
        """An "input" site's activation-shaped tensor (the activation or its gradient) at the
        selected positions, [P, I]: from [B, T, I] or [B·T, I], or, for a per-expert module,
        from its routed rows (zero where the position was not routed to that expert)."""
        order = self.order.get(path)
        if order is None:
            return _as_btd(x, self.b, self.t)[self.rows, self.ts]
        row_of = torch.full((self.b * self.t,), -1, dtype=torch.long, device=x.device)
        row_of[order.to(x.device)] = torch.arange(order.numel(), device=x.device)
        picked = row_of[(self.rows * self.t + self.ts).to(x.device)]  # [P], -1: not routed
        out = x.new_zeros(picked.shape[0], x.shape[-1])
        out[picked >= 0] = x[picked[picked >= 0]]
        return out

    def _experts_hook(self, path: str):
        from rejuv_cli.calib.experts import routing_args

        def hook(_module, args, kwargs, output):
            hidden, top_k = routing_args(args, kwargs)
            weights = args[2] if len(args) > 2 else kwargs["top_k_weights"]
            self.experts[path] = (hidden, top_k, weights, _first(output))

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
    fused = fused_sites(modules, sites)
    present = [s for s in sites if s.path in modules or s.key in fused]
    missing = [s.key for s in sites if s not in present]
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
            err, z, kind, bad = _attribute_batch(model, parts, batch, pos, present, fused,
                                                 scores, device)  # fmt: skip
            errors.append(err)
            logits.append(z)
            norm_kinds.add(kind)
            unplaced |= bad
    finally:
        model.train(was_training)
        for p in frozen:
            if not p.is_inference():  # accelerate re-creates offloaded ones under inference_mode
                p.requires_grad_(True)
    err = np.concatenate(errors) if errors else np.zeros(0)
    z = np.concatenate(logits) if logits else np.zeros(0)
    if dist.current().active:  # each rank attributed its share of the batches: combine
        err, z, unplaced, norm_kinds = _merge_ranks(scores, err, z, unplaced, norm_kinds)
    for key in unplaced:
        scores.pop(key, None)
    missing += [s.key for s in present if s.key in unplaced]
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


def _merge_ranks(scores: dict, err, z, unplaced: set, norm_kinds: set):
    """Under torchrun: each unit's score is its largest |contribution| over every rank's
    positions (an all-reduced max, in place); the reconstruction errors and logits are
    gathered in rank order; sites any rank could not place are dropped on all."""
    keys = sorted(scores)
    maxima = [torch.from_numpy(scores[k]) for k in keys]
    dist.all_reduce_(maxima, op="max")
    for k, m in zip(keys, maxima, strict=True):
        scores[k] = m.numpy()
    parts = dist.all_gather((err, z, sorted(unplaced), sorted(norm_kinds)))
    err = np.concatenate([p[0] for p in parts])
    z = np.concatenate([p[1] for p in parts])
    return err, z, {k for p in parts for k in p[2]}, {k for p in parts for k in p[3]}


def _attribute_batch(model, parts: _Parts, batch: Batch, pos, sites: list[Site], fused: dict,
                     scores, device) -> tuple[np.ndarray, np.ndarray, str, set[str]]:  # fmt: skip
    """One batch: update `scores` in place; returns (|linearised − real| [P], real target
    logits [P], final-norm description, keys of sites not laid out per token)."""
    from accelerate.utils import align_module_device

    ids, attn = batch[0].to(device), batch[1].to(device)
    b, t = ids.shape
    rows = torch.tensor([r for r, _ in pos], device=device)
    ts = torch.tensor([s for _, s in pos], device=device)
    cap = _Capture(model, parts, sites, fused, rows, ts, b, t)
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
            bad = {s.key for s in sites if s.path not in cap.acts and s.key not in fused}
            ok = [s for s in sites if s.path in cap.acts]
            direct = u * parts.write_scale  # ∂z/∂(block write): the layer scales it first
            bad |= _direct(cap, parts, [s for s in ok if s.where == "input"], direct, scores)
            experts = [s for s in sites if s.key in fused]
            bad |= experts_direct(cap, parts, model, experts, fused, direct, scores)
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
            act = cap.at_positions(path, cap.raw[path]).float()  # [P, I]
            g = torch.zeros_like(act) if g is None else cap.at_positions(path, g).float()
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
