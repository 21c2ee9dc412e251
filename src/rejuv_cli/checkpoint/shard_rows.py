"""Row-range arithmetic shared by the sharded-checkpoint sources (fsdp.py, dcp.py): which part of
which stored piece holds a flat element range of the full tensor, and the dtype config.json
declares. Pure functions; the only torch use is in `fill_rows`, imported there.

A "row" is everything after dim 0 (a scalar or 1-D tensor has 1-element rows), as in
checkpoint/stream.py, whose readers ask for whole-row chunks; any element range is served.
"""

from __future__ import annotations

import math
from pathlib import Path

from rejuv_cli.checkpoint.dtypes import CONFIG_NAME, FUSABLE_CODES, code_of
from rejuv_cli.errors import CheckpointError

# config.json's dtype names -> safetensors codes ("bfloat16" -> "BF16")
_CODE_OF_CONFIG = {name: code for code, name in CONFIG_NAME.items()}


def row_len(shape: tuple[int, ...]) -> int:
    """Elements per row of `shape` (1 for a scalar or a 1-D tensor)."""
    return math.prod(shape[1:]) if len(shape) > 1 else 1


def chunk_rows(total: int, parts: int) -> list[int]:
    """Rows each of `parts` shards holds of a dim 0 of `total` rows split as torch.chunk and
    FSDP's Shard(0) split it: ceil(total / parts) each, so the last shards can be shorter or
    empty (total=4, parts=3 -> [2, 2, 0]). Returns [parts] row counts summing to `total`."""
    size = -(-total // parts)
    return [max(0, min(size, total - i * size)) for i in range(parts)]


def flat_spans(rows: list[int], width: int, start: int,
               stop: int) -> list[tuple[int, int, int, int]]:  # fmt: skip
    """Where elements [start, stop) of the dim-0 concatenation of pieces lie.

    rows: [n_pieces] row counts, in order; width: elements per row (row_len of the full shape).
    Returns (piece, piece_start, piece_stop, out_start) for each piece the range touches:
    flat element indices into piece `piece` (viewed as [rows[piece] * width]) and the index in
    the output [stop - start] where they go. Empty pieces never appear.
    """
    spans, offset = [], 0
    for i, n in enumerate(rows):
        lo, hi = offset, offset + n * width
        a, b = max(start, lo), min(stop, hi)
        if a < b:
            spans.append((i, a - lo, b - lo, a - start))
        offset = hi
    return spans


def overlap(lo: int, hi: int, offset: int, size: int) -> tuple[int, int] | None:
    """The part [a, b) of rows [lo, hi) that a piece at `offset` with `size` rows covers, or
    None when it covers none of them."""
    a, b = max(lo, offset), min(hi, offset + size)
    return (a, b) if a < b else None


def fill_rows(block, r0: int, pieces) -> None:
    """Copy into `block` (a tensor [r1 - r0, *shape[1:]]: rows r0..r1 of the full tensor) the
    parts of `pieces` that fall inside it. pieces: (offsets, tensor) with offsets the piece's
    position in the full tensor (one per dim) and tensor its values, of any shape that fits;
    rows a piece does not cover are left as they are (the caller checks coverage)."""
    r1 = r0 + block.shape[0]
    for offsets, t in pieces:
        hit = overlap(r0, r1, offsets[0], t.shape[0])
        if hit is None:
            continue
        a, b = hit
        index = (slice(a - r0, b - r0),) + tuple(
            slice(o, o + n) for o, n in zip(offsets[1:], t.shape[1:], strict=True)
        )
        block[index] = t[a - offsets[0] : b - offsets[0]]


Box = tuple[tuple[int, ...], tuple[int, ...]]  # (offsets, sizes): where a chunk lies


def tiles(shape: tuple[int, ...], boxes: list[Box]) -> str | None:
    """Why (offsets, sizes) boxes do not tile `shape` exactly (each inside it, no two
    overlapping, together covering every element), or None when they do. A sweep along dim 0
    compares only boxes whose row ranges meet, so a Shard(0) layout costs O(n log n)."""
    for offsets, sizes in boxes:
        if len(offsets) != len(shape) or len(sizes) != len(shape):
            return f"a chunk at {list(offsets)} has {len(offsets)} dims, the tensor {len(shape)}"
        if any(o < 0 or n < 0 or o + n > d for o, n, d in zip(offsets, sizes, shape, strict=True)):
            return f"a chunk at {list(offsets)} of size {list(sizes)} is outside {list(shape)}"
    if sum(math.prod(s) for _, s in boxes) != math.prod(shape):
        return "its chunks do not add up to the tensor's size (missing or repeated chunks)"
    if not shape:
        return None
    active: list[Box] = []
    for box in sorted((b for b in boxes if math.prod(b[1])), key=lambda b: b[0][0]):
        active = [a for a in active if a[0][0] + a[1][0] > box[0][0]]
        for other in active:
            if all(overlap(o1, o1 + n1, o2, n2) for o1, n1, o2, n2 in
                   zip(box[0], box[1], other[0], other[1], strict=True)):  # fmt: skip
                return f"chunks at {list(box[0])} and {list(other[0])} overlap"
        active.append(box)
    return None


def declared_dtype(config: dict) -> str | None:
    """The safetensors code of the dtype config.json declares (`dtype` in transformers 5,
    `torch_dtype` before; in text_config for multimodal configs), or None."""
    for cfg in (config, config.get("text_config") or {}):
        for key in ("dtype", "torch_dtype"):
            code = _CODE_OF_CONFIG.get(cfg.get(key)) if isinstance(cfg, dict) else None
            if code:
                return code
    return None


def write_as(stored: str, declared: str | None) -> str | None:
    """TensorInfo.out_dtype for a floating tensor stored as `stored` in a training checkpoint
    whose config declares `declared`: that dtype when it differs (None otherwise, and for
    integer tensors, which are copied as they are)."""
    if declared is None or stored not in FUSABLE_CODES or declared == stored:
        return None
    return declared


def stored_code(dtype, path: Path, name: str) -> str:
    """The safetensors code of torch dtype `dtype` of tensor `name` stored in `path`;
    CheckpointError for a dtype safetensors has no code for."""
    try:
        return code_of(dtype)
    except ValueError:
        raise CheckpointError(f"{path}: tensor '{name}' has unsupported dtype {dtype}") from None
