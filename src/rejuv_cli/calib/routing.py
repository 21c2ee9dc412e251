"""Mixture-of-experts routing on the calibration data: which experts each router sends the real
tokens to, and how sure it is (docs/method.md section 5, "Routing").

A hook on every MoE layer's router (the unit map's `FamilyMap.router`) adds, per batch and over
real tokens only: the routed (token, slot) pairs per expert, the sum of the router's entropy
over all experts (softmax of its logits, float64, nats) and the token count. Memory is
O(layers × experts); nothing per token is kept. The pure functions below turn those counts
into expert shares, dead experts and the usage KL to BASE.

Routers in transformers 5 are modules that return (logits [N, E], top-k weights [N, k], top-k
indices [N, k]); in transformers 4 the router is an nn.Linear returning the logits only, and
its MoE block takes the top k itself (top-k of the softmax = top-k of the logits, k =
config.num_experts_per_tok). Both are read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch

# An expert is "dead" in a layer when its share of the routed (token, slot) pairs is below
# this fraction of the uniform share 1/E (ours).
DEAD_SHARE = 0.1
# Added to every expert's count before the usage KL (Jeffreys' add-½), so that an expert one
# model never used gives a finite KL (ours).
KL_PSEUDOCOUNT = 0.5


@dataclass
class LayerRouting:
    """One MoE layer's router statistics for one model, accumulated over real tokens."""

    layer: int
    path: str  # the router's module name in the transformers model
    experts: int
    top_k: int | None = None  # slots per token, from the first batch
    counts: torch.Tensor | None = None  # [E] int64: routed (token, slot) pairs per expert
    entropy_sum: torch.Tensor | None = None  # float64 scalar: Σ over tokens of H(router), nats
    tokens: int = 0

    def count_array(self) -> np.ndarray:
        if self.counts is None:
            return np.zeros(self.experts, dtype=np.int64)
        return self.counts.cpu().numpy().astype(np.int64)

    def entropy_mean(self) -> float | None:
        if not self.tokens or self.entropy_sum is None:
            return None
        return float(self.entropy_sum) / self.tokens


@dataclass
class RoutingRecord:
    """What a RoutingRecorder measured for one model (kept after its hooks are gone)."""

    layers: dict[int, LayerRouting] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    routers: int = 0  # router modules found, measured or not
    where: str | None = None  # the routers' module path, "{i}" for the layer


def router_paths(config) -> tuple[str, ...]:
    """Where a config's family keeps each MoE layer's router, "{i}" for the layer: the unit
    map's names (as stored, then as transformers may load it); () for dense families."""
    from rejuv_cli.arch.units import FAMILIES

    fm = FAMILIES.get(getattr(config, "model_type", None))
    return tuple(fm.layer_prefix + r for r in fm.router) if fm is not None else ()


def router_modules(model) -> tuple[str | None, dict[int, tuple[str, torch.nn.Module]]]:
    """(the router path that matched, "{i}" for the layer; layer -> (module name, router
    module)) for every MoE layer of a transformers model (dense layers have none). The first
    of `router_paths` that names any module wins; (None, {}) when none does."""
    names = list(model.named_modules())
    for where in router_paths(model.config):
        head, _, tail = where.partition("{i}")
        # A wrapper may prefix the names ("language_model.model.layers.0..."): any prefix is
        # accepted before the unit map's own.
        pattern = re.compile(rf"^(?:.*\.)?{re.escape(head)}(\d+){re.escape(tail)}$")
        found: dict[int, tuple[str, torch.nn.Module]] = {}
        for name, module in names:
            m = pattern.match(name)
            if m is not None and int(m.group(1)) not in found:
                found[int(m.group(1))] = (name, module)
        if found:
            return where, dict(sorted(found.items()))
    return None, {}


def _experts(module: torch.nn.Module) -> int | None:
    n = getattr(module, "num_experts", None) or getattr(module, "out_features", None)
    if isinstance(n, int) and n > 0:
        return n
    weight = getattr(module, "weight", None)
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.dim() == 2 else None


def _top_k(module: torch.nn.Module, parent: torch.nn.Module | None, config) -> int | None:
    """Slots per token where the router returns logits only: the router's or its block's
    `top_k`, else config.num_experts_per_tok (a config's own `top_k` is a sampling setting)."""
    found = [getattr(m, "top_k", None) for m in (module, parent)]
    found += [getattr(c, "num_experts_per_tok", None)
              for c in (getattr(config, "text_config", None), config)]  # fmt: skip
    return next((k for k in found if isinstance(k, int) and k > 0), None)


class RoutingRecorder:
    """Hooks on every MoE router of `model` that accumulate each layer's LayerRouting over the
    real tokens of each batch (`token_mask`, [B, T] bool, set per batch). Layers whose router
    output cannot be matched to the batch's tokens are named in `problems` (and keep what they
    had)."""

    def __init__(self, model):
        self.layers: dict[int, LayerRouting] = {}
        self.problems: list[str] = []
        self.token_mask: torch.Tensor | None = None
        self._failed: set[int] = set()  # layers whose router output could not be read
        self._handles = []
        modules = dict(model.named_modules())
        self.where, routers = router_modules(model)
        self._found = len(routers)
        for layer, (name, module) in routers.items():
            experts = _experts(module)
            self.layers[layer] = LayerRouting(layer, name, experts or 0)
            if experts is None:
                self._problem(self.layers[layer], "cannot tell how many experts it routes to")
                continue
            parent = modules.get(name.rpartition(".")[0])
            k = _top_k(module, parent, model.config)
            self._handles.append(module.register_forward_hook(self._hook(layer, k)))

    def _hook(self, layer: int, config_k: int | None):
        rec = self.layers[layer]

        def hook(_module, _args, output):
            if self.token_mask is None:  # a pass this recorder is not measuring
                return
            logits, chosen = _logits_and_choice(output, config_k)
            if logits is None:
                return self._problem(rec, "its output is not router logits")
            logits = logits.reshape(-1, logits.shape[-1])  # [N, E]
            if logits.shape[-1] != rec.experts or chosen is None:
                return self._problem(rec, f"{logits.shape[-1]} logits for {rec.experts} experts "
                                          "or no top-k choice")  # fmt: skip
            chosen = chosen.reshape(logits.shape[0], -1)  # [N, k]
            real = self.token_mask.reshape(-1)
            if real.numel() != logits.shape[0]:
                return self._problem(rec, f"it saw {logits.shape[0]} rows for a batch of "
                                          f"{real.numel()} positions")  # fmt: skip
            real = real.to(logits.device)
            picked = chosen[real].reshape(-1).long()  # [n·k] expert indices of real tokens
            counts = torch.bincount(picked, minlength=rec.experts)[: rec.experts]
            logp = torch.log_softmax(logits[real].double(), dim=-1)  # [n, E]
            entropy = -(logp.exp() * logp).sum()
            if rec.counts is None:
                rec.counts = torch.zeros(rec.experts, dtype=torch.int64, device=counts.device)
                rec.entropy_sum = torch.zeros((), dtype=torch.float64, device=counts.device)
                rec.top_k = int(chosen.shape[1])
            rec.counts += counts.to(rec.counts.device)
            rec.entropy_sum += entropy.to(rec.entropy_sum.device)
            rec.tokens += int(real.sum())

        return hook

    def _problem(self, rec: LayerRouting, why: str) -> None:
        if rec.layer not in self._failed:
            self._failed.add(rec.layer)
            self.problems.append(f"routing of layer {rec.layer} not measured: its router "
                                 f"{rec.path}: {why}")  # fmt: skip

    def close(self) -> RoutingRecord:
        """Remove the hooks; returns the layers measured (at least one real token counted,
        and their router always read). Under torchrun, where each rank saw its share of the
        batches, the counts are summed over the ranks first and a layer one rank could not
        read is left out on all."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._merge_ranks()
        measured = {i: r for i, r in self.layers.items() if r.tokens > 0 and i not in self._failed}
        return RoutingRecord(measured, list(self.problems), self._found, self.where)

    def _merge_ranks(self) -> None:
        from rejuv_cli import dist

        if not dist.current().active or dist.unwinding():
            return
        mine = {i: (r.top_k, None if r.counts is None else r.counts.cpu(),
                    None if r.entropy_sum is None else float(r.entropy_sum), r.tokens)
                for i, r in self.layers.items()}  # fmt: skip
        everyone = dist.all_gather((mine, sorted(self._failed), self.problems))
        self.problems = list(dict.fromkeys(p for _, _, probs in everyone for p in probs))
        self._failed = {i for _, failed, _ in everyone for i in failed}
        for i, rec in self.layers.items():
            parts = [part[i] for part, _, _ in everyone if part[i][1] is not None]
            if not parts:
                continue
            rec.top_k = parts[0][0]
            rec.counts = torch.stack([c for _, c, _, _ in parts]).sum(0)  # [E] int64
            rec.entropy_sum = torch.tensor(sum(e for _, _, e, _ in parts), dtype=torch.float64)
            rec.tokens = sum(n for _, _, _, n in parts)


def _logits_and_choice(output, k: int | None):
    """(router logits, top-k expert indices) from a router's output: transformers 5 returns
    (logits, top-k weights, top-k indices); transformers 4's nn.Linear returns the logits, and
    its block takes their top k."""
    if isinstance(output, tuple | list):
        if (
            len(output) >= 3
            and isinstance(output[2], torch.Tensor)
            and not output[2].is_floating_point()
        ):
            return output[0], output[2]
        output = output[0] if output else None
    if not isinstance(output, torch.Tensor) or not output.is_floating_point():
        return None, None
    if k is None or k > output.shape[-1]:
        return output, None
    return output, output.topk(k, dim=-1).indices


# --- pure functions: counts -> the report's numbers -------------------------------------------


def shares(counts: np.ndarray) -> np.ndarray:
    """Each expert's share of the routed (token, slot) pairs (sums to 1; zeros if none)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return counts / total if total > 0 else np.zeros_like(counts)


def dead_experts(share: np.ndarray) -> list[int]:
    """Experts whose share is below DEAD_SHARE × the uniform share 1/E."""
    share = np.asarray(share, dtype=np.float64)
    limit = DEAD_SHARE / share.size if share.size else 0.0
    return [int(e) for e in np.flatnonzero(share < limit)]


def usage_kl(counts: np.ndarray, base_counts: np.ndarray) -> float:
    """KL(p ‖ q) in nats between two expert-usage distributions from their counts, each count
    plus KL_PSEUDOCOUNT first (so that an expert one model never used stays finite)."""
    p = np.asarray(counts, dtype=np.float64) + KL_PSEUDOCOUNT
    q = np.asarray(base_counts, dtype=np.float64) + KL_PSEUDOCOUNT
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(p * (np.log(p) - np.log(q))))
