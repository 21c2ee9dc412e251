"""Forward passes on calibration data: teacher-forced batches, activation hooks, losses.

Shared by `rejuv diagnose` (output metrics, unit activity, sharpness) and the data-driven reset
scorers; the models come from `calib/models.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from rejuv_cli import dist
from rejuv_cli.arch.layout import UnitLayout
from rejuv_cli.calib.fields import Fields
from rejuv_cli.calib.models import load_tokenizer
from rejuv_cli.ops.activity import ActivityStats

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # input_ids, attention_mask, response


@dataclass(frozen=True)
class Site:
    """Where one module instance's unit activations appear in the transformers model.

    `where` "input": input channels [offset, offset + n_units) of the output-side projection
    at `path` (the units of o and MLP modules: o_proj / down_proj inputs, i.e. attention
    channels and act(gate)·up). `where` "output": output channels of the input-side projection
    at `path` (q/k/v rows, before rotary embeddings; fused qkv at the part's offset).
    """

    key: str  # the unit layout's instance key, e.g. "layers.3.mlp"
    layer: int
    module: str  # "q", "k", "v", "o", "mlp", "expert", "shared_expert"
    path: str  # submodule name in the transformers model
    offset: int
    n_units: int
    where: str = "input"


def activation_sites(layout: UnitLayout) -> list[Site]:
    """One site per module instance: the outgoing projection's input when the module has one
    (o, MLP-like), else its first weight's output channels (q, k, v)."""
    sites = []
    for inst in layout.instances:
        weights = [(n, sl, off) for n, sl, off in inst.tensors if n.endswith(".weight")]
        outgoing = [w for w in weights if w[1].out]
        name, _, offset = (outgoing or weights)[0]
        sites.append(Site(inst.key, inst.layer, inst.module.name, name[: -len(".weight")],
                          offset, inst.n_units, "input" if outgoing else "output"))  # fmt: skip
    return sites


class ActivityRecorder:
    """Hooks that add each site's activations (real tokens only) to its ActivityStats.

    An expert site whose projection is part of a fused experts module (transformers 5) is
    measured by recomputing the expert for the tokens routed to it (calib/experts.py); its
    stats count only those tokens, and stay at 0 tokens for an expert no token reached. Sites
    found in neither form are listed in `missing`."""

    def __init__(self, model, sites: list[Site], device: torch.device):
        from rejuv_cli.calib.experts import (
            fused_expert,
            fused_experts_modules,
            per_expert_module,
            watch_router,
        )

        self.stats: dict[str, ActivityStats] = {}
        self.missing: list[str] = []
        self.token_mask: torch.Tensor | None = None  # [B, T] bool, set per batch
        self._handles = []
        self._selected: dict[str, torch.Tensor] = {}  # MoE block path -> its top-k [N, k]
        self._unplaced: set[str] = set()  # sites whose rows could not be matched to tokens
        modules = dict(model.named_modules())
        fused_modules = fused_experts_modules(modules)
        fused: dict[str, list[tuple[Site, int]]] = {}  # fused module path -> (site, expert)
        for site in sites:
            module = modules.get(site.path)
            found = fused_expert(fused_modules, site.path) if module is None else None
            if module is None and found is None:
                self.missing.append(site.key)
                continue
            self.stats[site.key] = ActivityStats.zeros(site.n_units, device)
            if found is not None:
                fused.setdefault(found.path, []).append((site, found.index))
            elif (expert := per_expert_module(modules, site.path)) is not None:
                if (handle := watch_router(modules, expert, self._selected)) is not None:
                    self._handles.append(handle)
                hook = self._routed_hook(site, expert.block, expert.index)
                self._handles.append(module.register_forward_pre_hook(hook))
            elif site.where == "input":
                handle = module.register_forward_pre_hook(self._hook(site, lambda a, o: a[0]))
                self._handles.append(handle)
            else:
                handle = module.register_forward_hook(self._hook(site, lambda a, o: o))
                self._handles.append(handle)
        for path, experts in fused.items():
            hook = self._experts_hook(experts)
            self._handles.append(modules[path].register_forward_hook(hook, with_kwargs=True))

    def _real(self, n: int) -> torch.Tensor | None:
        """The batch's real-token mask flattened to the [N] rows a layer sees, or None when
        the layer's rows are not the batch's B·T positions (then nothing is recorded)."""
        if self.token_mask is None or self.token_mask.numel() != n:
            return None
        return self.token_mask.reshape(-1)

    def _hook(self, site: Site, pick):
        stats = self.stats[site.key]

        def hook(_module, args, output=None):
            x = pick(args, output)  # [B, T, D], or [B·T, D] inside an MoE block
            real = self._real(x.shape[0] * x.shape[1] if x.dim() == 3 else x.shape[0])
            if real is not None:
                rows = x.reshape(-1, x.shape[-1])[real.to(x.device)]
                stats.update(rows[:, site.offset : site.offset + site.n_units])

        return hook

    def _routed_hook(self, site: Site, block: str, e: int):
        """Per-expert module (transformers 4): its input rows are the tokens routed to it."""
        from rejuv_cli.calib.experts import routed_order

        stats = self.stats[site.key]

        def hook(_module, args):
            x = args[0]  # [n_e, D]
            selected = self._selected[block]
            real = self._real(selected.shape[0])
            order = routed_order(selected, e)
            if real is None or order.numel() != x.shape[0]:  # not the block we know
                self._unplaced.add(site.key)
                return
            rows = x[real.to(x.device)[order.to(x.device)]]
            stats.update(rows[:, site.offset : site.offset + site.n_units])

        return hook

    def _experts_hook(self, experts: list[tuple[Site, int]]):
        from rejuv_cli.calib.experts import expert_hidden, routing_args

        def hook(module, args, kwargs, _output):
            hidden, top_k = routing_args(args, kwargs)  # [N, H], [N, k]
            real = self._real(hidden.shape[0])
            if real is None:
                return
            real = real.to(hidden.device)
            for site, e in experts:
                routed = (top_k == e).any(-1) & real  # [N]: real tokens sent to expert e
                if routed.any():
                    h = expert_hidden(module, hidden[routed], e)  # [n_e, I]
                    self.stats[site.key].update(h[:, site.offset : site.offset + site.n_units])

        return hook

    def close(self) -> None:
        """Remove the hooks; sites whose rows could not be matched to tokens become missing.

        Under torchrun each rank has run its share of the batches (`Calibration.mine`): the
        sums are all-reduced here, so every rank holds the statistics of all the data (and a
        site missing on any rank is missing on all)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        merge = dist.current().active and not dist.unwinding()
        if merge:
            self._unplaced |= set().union(*dist.all_gather(sorted(self._unplaced)))
        for key in sorted(self._unplaced):
            self.stats.pop(key, None)
            self.missing.append(key)
        self._unplaced.clear()
        if merge:
            reduce_activity(self.stats)


def reduce_activity(stats: dict[str, ActivityStats]) -> None:
    """In place: each site's sums and token count summed over the torchrun ranks (every rank
    holds the same site keys). The identity in a single process."""
    if not dist.current().active:
        return
    keys = sorted(stats)
    tokens = torch.tensor([float(stats[k].tokens) for k in keys], dtype=torch.float64)
    dist.all_reduce_([tokens, *(t for k in keys for t in (stats[k].sum_abs, stats[k].sum_sq))])
    for k, n in zip(keys, tokens.tolist(), strict=True):
        stats[k].tokens = int(n)


def response_logits(model, batch: Batch, device: torch.device, vocab_limit: int | None = None):
    """Teacher-forced logits at response positions.

    Returns (logits [N, V] model dtype, targets [N] long): row n is the distribution predicted
    for the n-th response token (from the position before it), in batch order. `vocab_limit`
    keeps the first V' logits and drops positions whose target lies beyond them (models with
    different vocabulary sizes are compared on the tokens they share).
    """
    ids, attn, resp = (t.to(device, non_blocking=True) for t in batch)
    logits = model(input_ids=ids, attention_mask=attn).logits.to(device)  # [B, T, V]
    select = resp[:, 1:] & attn[:, 1:].bool()  # targets: response tokens 1..T-1
    logits, targets = logits[:, :-1][select], ids[:, 1:][select]
    if vocab_limit is not None:  # also for the smallest model: its targets may lie beyond it
        keep = targets < vocab_limit
        logits, targets = logits[keep, :vocab_limit], targets[keep]
    return logits, targets


def mean_nll(model, batches: list[Batch], device: torch.device, vocab_limit: int | None = None,
             on_batch: Callable[[], None] | None = None) -> float:  # fmt: skip
    """Mean −log p(target) over all response tokens of `batches` (float64 accumulation).
    Under torchrun `batches` is this rank's share and the mean is over every rank's."""
    total, count = 0.0, 0
    with torch.inference_mode():
        for batch in batches:
            logits, targets = response_logits(model, batch, device, vocab_limit)
            nll = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
            total += float(nll)
            count += targets.numel()
            if on_batch is not None:
                on_batch()
    sums = torch.tensor([total, float(count)], dtype=torch.float64)
    dist.all_reduce_([sums])
    total, count = sums.tolist()
    return total / max(count, 1)


def perturbable(model) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """Matrices (≥ 2-D float parameters) in name order: what random-direction sharpness
    perturbs; norms and biases are left alone."""
    for name, p in sorted(model.named_parameters()):
        if p.dim() >= 2 and p.is_floating_point():
            yield name, p


BATCH_TOKENS = {"cpu": 4096, "cuda": 8192}


@dataclass
class Calibration:
    """Calibration data ready for forward passes: padded batches and what went into them."""

    batches: list[Batch]
    samples: int  # examples kept (after truncation drops)
    response_tokens: int
    batch_tokens: int
    warnings: list[str]
    unk_share: float | None = None  # share of tokens that are the unknown token (encode.py)

    def mine(self) -> list[Batch]:
        """This torchrun rank's share of the batches (`rank_share`)."""
        return rank_share(self.batches)


def rank_share(batches: list[Batch]) -> list[Batch]:
    """This torchrun rank's contiguous share of `batches` (all of them in a single process);
    the passes over them reduce their statistics across ranks."""
    return [batches[i] for i in dist.share(len(batches))]


def prepare_calibration(
    spec: str,
    samples: int,
    max_tokens: int,
    tokenizer_dir: Path,
    device: torch.device,
    batch_tokens: int | None = None,
    fields: Fields | None = None,
) -> Calibration:
    """Load `spec` (builtin:NAME, a JSONL or Parquet file, a Hub dataset; `fields` names its
    keys or columns), tokenize with the SFT tokenizer and chat template, and batch; the one
    path `rejuv diagnose` and the data-driven scorers share."""
    from rejuv_cli.calib.data import load_examples
    from rejuv_cli.calib.encode import batches, encode, pad_id_of, unk_share
    from rejuv_cli.errors import CalibError

    warnings: list[str] = []
    examples = load_examples(spec, samples, fields, notes=warnings)
    if len(examples) < samples:
        warnings.append(f"{spec} has {len(examples)} examples; {samples} were asked for")
    tokenizer = load_tokenizer(tokenizer_dir, "SFT")
    encoded, notes = encode(examples, tokenizer, max_tokens)
    warnings.extend(notes)
    if not encoded:
        raise CalibError(f"{spec}: no example has a response token left to score")
    budget = batch_tokens or BATCH_TOKENS[device.type]
    return Calibration(
        list(batches(encoded, budget, pad_id_of(tokenizer))),
        len(encoded),
        int(sum(sum(e.response) for e in encoded)),
        budget,
        warnings,
        unk_share(encoded, tokenizer),
    )


def record_activity(
    model, calib: Calibration, sites: list[Site], device, on_batch: Callable[[], None] | None = None
) -> ActivityRecorder:
    """One forward pass over the calibration batches (this rank's share under torchrun) with
    activity hooks (no logits kept)."""
    import inspect

    recorder = ActivityRecorder(model, sites, device)
    # Only the hooks' activations are wanted: skip the [B, T, vocab] logits where the model
    # allows (half a GB per 4096-token batch at a 32k vocabulary in float32).
    skip_logits = {}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        skip_logits = {"logits_to_keep": 1}
    try:
        with torch.inference_mode():
            for ids, attn, _ in rank_share(calib.batches):
                recorder.token_mask = attn.to(device).bool()
                model(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False,
                      **skip_logits)  # fmt: skip
                if on_batch is not None:
                    on_batch()
    finally:
        recorder.close()
    return recorder
