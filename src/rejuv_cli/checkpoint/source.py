"""The input side as an interface: a tensor source is anything with a tensor table and a
range read. `Checkpoint` (HF safetensors or `.bin` directories) is one; LoRA adapters,
sharded training checkpoints (DCP, FSDP) or FP8 releases can be added as other sources
without touching the executor, the scorers or the diagnostics, which only stream through
`checkpoint.stream`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from rejuv_cli.checkpoint.safetensors_file import TensorInfo


@runtime_checkable
class TensorSource(Protocol):
    """Names, dtypes and shapes of tensors, and a read of any flat element range.

    `tensors` maps name -> TensorInfo (dtype as a safetensors code, shape; `file`/`offset`
    only order reads and may be placeholders for sources that are not files), in storage
    order. `read_into` copies elements [start, stop) of the flattened tensor, as raw
    little-endian bytes, into `out` (a writable uint8 numpy array of exactly
    (stop - start) * itemsize bytes).
    """

    label: str  # "BASE" / "SFT": used in every message
    tensors: Mapping[str, TensorInfo]

    def read_into(self, name: str, start: int, stop: int, out) -> None: ...
