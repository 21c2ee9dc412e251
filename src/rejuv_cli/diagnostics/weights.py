"""Weight-space diagnostics (docs/method.md section 5): how far, and how spikily, SFT moved
from BASE.

One streaming pass over both checkpoints in row chunks (bounded memory, any model size):
per tensor relative drift ‖Δ‖/‖θ_b‖, cosine(θ_s, θ_b), mean squared difference and spikiness
(kurtosis of Δ, share of ‖Δ‖² in the top 0.1% of entries, max|Δ|/std Δ); the same sums pooled
per layer, per layer × module and overall.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from rejuv_cli.checkpoint.dtypes import ITEMSIZE
from rejuv_cli.checkpoint.reader import Checkpoint
from rejuv_cli.ops.moments import DeltaMoments
from rejuv_cli.pairing import Pairing, layer_of

_KINDS = (
    (re.compile(r"norm|\.ln_"), "norm"),
    (re.compile(r"embed|wte|wpe|lm_head"), "embed"),
    (re.compile(r"\.(gate|router)\.|shared_expert_gate"), "router"),
    (re.compile(r"q_proj|\.query"), "q"),
    (re.compile(r"k_proj|\.key"), "k"),
    (re.compile(r"v_proj|\.value"), "v"),
    (re.compile(r"o_proj|out_proj|attn\.c_proj|dense"), "o"),
    (re.compile(r"attn"), "attn"),
    (re.compile(r"mlp|experts|feed_forward|ffn"), "mlp"),
)


def module_kind(name: str) -> str:
    """A coarse module label for a tensor name, for per-layer × module tables."""
    for pattern, kind in _KINDS:
        if pattern.search(name):
            return kind
    return "other"


def pooled(group: list[DeltaMoments]) -> dict[str, float]:
    """Statistics of a group of tensors taken as one vector, from their pooled sums.

    Exact for drift, cosine, msd, kurtosis and max|Δ|/std. `top_share` of a group is the share
    of its ‖Δ‖² held by each member's own top 0.1% (also exact; a top 0.1% over the pooled
    entries would let the tensors with the largest scale take all of it).
    """
    total = DeltaMoments(sum(m.numel for m in group))
    for m in group:
        for f in ("n", "sum_b2", "sum_s2", "sum_bs", "sum_d", "sum_d2", "sum_d3", "sum_d4"):
            setattr(total, f, getattr(total, f) + getattr(m, f))
        total.max_abs = max(total.max_abs, m.max_abs)
    out = total.result()
    top_energy = sum(float(m.top.double().sum()) for m in group)
    out["top_share"] = top_energy / total.sum_d2 if total.sum_d2 else 0.0
    return out


def weight_drift(
    base: Checkpoint,
    sft: Checkpoint,
    plan: Pairing,  # or a FusePlan: the same tensor fields
    device: torch.device,
    on_bytes: Callable[[int], None] | None = None,
) -> dict:
    """Per tensor, per layer, per layer × module and overall Δ statistics (JSON-ready).

    Covers every floating-point tensor that BASE and SFT share (added-token rows excluded).
    """
    from rejuv_cli.checkpoint.stream import PairedStream, Scratch, TensorPair, row_length

    stream = PairedStream(base, sft, device)
    scratch = Scratch(device).get
    moments: dict[str, DeltaMoments] = {}
    matrices: set[str] = set()
    pairs = []
    for tp in plan.tensors:
        if not tp.paired:  # only in SFT, or not floating point
            continue
        shape = tp.sft.shape
        if len(shape) >= 2:
            matrices.add(tp.name)
        rows = tp.base_rows if tp.base_rows is not None else (shape[0] if shape else 1)
        moments[tp.name] = DeltaMoments(rows * row_length(shape))
        itemsize = ITEMSIZE[tp.sft.dtype]  # the tag: bytes per element, for on_bytes
        pairs.append(TensorPair(shape, tp.name, tp.base.name, tp.base_rows, itemsize))
    for c in stream.chunks(pairs, shared_only=True):  # added-token rows have no BASE values
        n = c.stop - c.start
        b, s = scratch("b", n).copy_(c.base), scratch("s", n).copy_(c.sft)
        moments[c.pair.sft].update(b, s, scratch("d", n), scratch("d2", n))
        if on_bytes is not None:
            on_bytes(n * c.pair.tag)
    return summarize(moments, matrices)


def spikiness(tensors: dict[str, dict], matrices: set[str]) -> float:
    """Parameter-weighted mean of the matrices' own top-0.1% shares.

    Each tensor's share is scale-free, so unlike the pooled share this is not dominated by
    the few tensors with the largest Δ (norm vectors, embeddings); about 0.013 for a
    Gaussian update of large matrices. Vectors are left out: their top 0.1% is one entry.
    """
    names = sorted(matrices)  # a set's order changes with the hash seed; float sums with order
    total = sum(tensors[n]["numel"] for n in names)
    if not total:
        return 0.0
    return sum(tensors[n]["top_share"] * tensors[n]["numel"] for n in names) / total


def summarize(moments: dict[str, DeltaMoments], matrices: set[str] = frozenset()) -> dict:
    layers: dict[int, list[DeltaMoments]] = {}
    cells: dict[tuple[int, str], list[DeltaMoments]] = {}
    for name, m in moments.items():
        layer = layer_of(name)
        if layer is not None:
            layers.setdefault(layer, []).append(m)
            cells.setdefault((layer, module_kind(name)), []).append(m)
    tensors = {name: m.result() | {"numel": m.n} for name, m in moments.items()}
    return {
        "overall": pooled(list(moments.values())),
        "tensors": tensors,
        "layers": {str(k): pooled(v) for k, v in sorted(layers.items())},
        "layer_modules": {f"{k[0]}.{k[1]}": pooled(v) for k, v in sorted(cells.items())},
        "spikiness": spikiness(tensors, matrices),
        "drift_max": max((t["rel_drift"] for t in tensors.values()), default=0.0),
        # ties go to the first name in sorted order, whatever order the input stores tensors in
        "drift_max_tensor": max(
            sorted(tensors), key=lambda n: tensors[n]["rel_drift"], default=None
        ),  # fmt: skip
    }


def unit_drift(layout, base: Checkpoint, sft: Checkpoint, device, on_bytes=None) -> dict:
    """Distribution of the per-unit drift score (the `drift` scorer's s_j) per module kind.

    One more streaming pass over the unit tensors. Returns module -> count, mean and
    percentiles p50 / p90 / p99 / max of s_j.
    """
    import numpy as np

    from rejuv_cli.reset.drift import score_drift

    scores = score_drift(layout, base, sft, device, on_bytes).scores
    by_module: dict[str, list] = {}
    for inst, s in zip(layout.instances, scores, strict=True):
        by_module.setdefault(inst.module.name, []).append(s)
    out = {}
    for module, parts in by_module.items():
        s = np.concatenate(parts)
        p50, p90, p99 = np.percentile(s, [50, 90, 99])
        out[module] = {"count": int(s.size), "mean": float(s.mean()), "p50": float(p50),
                       "p90": float(p90), "p99": float(p99), "max": float(s.max())}  # fmt: skip
    return out


def delta_ranks(base: Checkpoint, sft: Checkpoint, plan: Pairing, device) -> dict:
    """Stable and effective rank of Δ for every 2-D tensor inside a layer (--rank).

    Each matrix is materialised whole in float32 (memory: one layer matrix, twice) and its
    singular values computed: seconds per large matrix on a CPU, so this is opt-in.
    """
    from rejuv_cli.checkpoint.stream import ChunkReader
    from rejuv_cli.ops.rank import effective_rank, stable_rank

    reader = ChunkReader(base, sft, pin=False, digest=False)
    tensors, kinds = {}, {}
    for tp in plan.tensors:
        shape = tp.sft.shape
        if not tp.paired or len(shape) != 2 or layer_of(tp.name) is None:
            continue
        n = shape[0] * shape[1]
        b = reader.read("base", tp.base.name, 0, n).to(device, torch.float32, copy=True)
        s = reader.read("sft", tp.name, 0, n).to(device, torch.float32, copy=True)
        sv = torch.linalg.svdvals((s - b).view(shape))
        ranks = {"stable_rank": stable_rank(sv), "effective_rank": effective_rank(sv),
                 "max_rank": min(shape)}  # fmt: skip
        tensors[tp.name] = ranks
        kinds.setdefault(module_kind(tp.name), []).append(ranks)
    modules = {
        kind: {key: float(sum(r[key] for r in rs) / len(rs)) for key in rs[0]}
        for kind, rs in kinds.items()
    }
    return {"tensors": tensors, "modules_mean": modules}
