"""Weight-space diagnostics (METHOD.md section 5): how far, and how spikily, SFT moved from BASE.

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
from rejuv_cli.plan import FusePlan, layer_of

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

    Exact for drift, cosine, msd, kurtosis and max|Δ|/std; `top_share` is the largest of the
    members' own (the pooled top 0.1% would need every member's candidates at once).
    """
    total = DeltaMoments(sum(m.numel for m in group))
    for m in group:
        for f in ("n", "sum_b2", "sum_s2", "sum_bs", "sum_d", "sum_d2", "sum_d3", "sum_d4"):
            setattr(total, f, getattr(total, f) + getattr(m, f))
        total.max_abs = max(total.max_abs, m.max_abs)
    out = total.result()
    out["top_share"] = max((m.result()["top_share"] for m in group), default=0.0)
    return out


def weight_drift(
    base: Checkpoint,
    sft: Checkpoint,
    plan: FusePlan,
    device: torch.device,
    on_bytes: Callable[[int], None] | None = None,
) -> dict:
    """Per tensor, per layer, per layer × module and overall Δ statistics (JSON-ready).

    Covers every floating-point tensor that BASE and SFT share (added-token rows excluded).
    """
    from rejuv_cli.surgery import CHUNK_ELEMENTS, ChunkReader, Scratch, row_chunks, row_length

    reader = ChunkReader(base, sft, pin=device.type == "cuda", digest=False)
    chunk = CHUNK_ELEMENTS[device.type]
    scratch = Scratch(device).get

    moments: dict[str, DeltaMoments] = {}
    for tp in plan.tensors:
        if tp.base is None or tp.note:  # only in SFT, or not floating point
            continue
        shape = tp.sft.shape
        rows = tp.base_rows if tp.base_rows is not None else (shape[0] if shape else 1)
        m = moments[tp.name] = DeltaMoments(rows * row_length(shape))
        for start, stop, shared in row_chunks(shape, tp.base_rows, chunk):
            if not shared:
                continue
            n = stop - start
            b = scratch("b", n).copy_(reader.read("base", tp.base.name, start, stop))
            s = scratch("s", n).copy_(reader.read("sft", tp.name, start, stop))
            m.update(b, s, scratch("d", n), scratch("d2", n))
            if on_bytes is not None:
                on_bytes(n * ITEMSIZE[tp.sft.dtype])
    return summarize(moments)


def summarize(moments: dict[str, DeltaMoments]) -> dict:
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
        "drift_max": max((t["rel_drift"] for t in tensors.values()), default=0.0),
        "drift_max_tensor": max(tensors, key=lambda n: tensors[n]["rel_drift"], default=None),
    }
