"""The streaming executor: read BASE and SFT in row chunks, fuse on the device, write the shards.

Memory stays at a few chunk buffers whatever the model size: a tensor is never loaded whole.
Chunks are whole rows (so later steps can address rows and columns of a unit) of about
CHUNK_ELEMENTS elements: small enough that float32 temporaries stay in cache on CPU, which
makes the math cost about one extra memory copy (see DESIGN.md, "Math in cache-sized chunks").
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import xxhash

from rejuv_cli.checkpoint.dtypes import ITEMSIZE, torch_dtype
from rejuv_cli.checkpoint.reader import Checkpoint
from rejuv_cli.checkpoint.writer import ShardLayout
from rejuv_cli.errors import NonFiniteError
from rejuv_cli.ops.fuse import all_finite, fuse
from rejuv_cli.plan import BASE, FUSE, FusePlan, TensorPlan

CHUNK_ELEMENTS = {"cpu": 1 << 19, "cuda": 1 << 24}


def pick_device(spec: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda:N' / 'cpu' as given (validated)."""
    from rejuv_cli.errors import UsageError

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"--device {spec!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {spec}: CUDA is not available here; use --device cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {spec}: only cpu and cuda are supported")
    return device


def row_chunks(
    shape: tuple[int, ...], split_row: int | None, chunk_elements: int
) -> Iterator[tuple[int, int, bool]]:
    """Flat element ranges (start, stop, before_split) covering a tensor in whole rows.

    A row is everything after dim 0 (a scalar or 1-D tensor has 1-element rows). No chunk
    crosses `split_row`, so rows before it and rows after it can be treated differently.
    """
    n_rows = shape[0] if shape else 1
    row_len = math.prod(shape[1:]) if len(shape) > 1 else 1
    if n_rows == 0 or row_len == 0:
        return
    per = max(1, chunk_elements // row_len)
    split = n_rows if split_row is None else split_row
    for lo, hi, before in ((0, split, True), (split, n_rows, False)):
        for r in range(lo, hi, per):
            yield r * row_len, min(r + per, hi) * row_len, before


@dataclass
class ExecStats:
    bytes_written: int = 0
    seconds: float = 0.0
    digests: dict[str, dict[str, str]] = field(default_factory=lambda: {"base": {}, "sft": {}})


class _Buffers:
    """Reusable byte buffers, grown on demand (pinned when copying to a GPU)."""

    def __init__(self, pin: bool):
        self.pin = pin
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, key: str, nbytes: int) -> torch.Tensor:
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < nbytes:
            buf = torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pin)
            self._bufs[key] = buf
        return buf[:nbytes]


class Executor:
    """Writes the planned shards of one fuse into `out_dir`."""

    def __init__(
        self,
        plan: FusePlan,
        base: Checkpoint,
        sft: Checkpoint,
        device: torch.device,
        on_bytes: Callable[[int], None] | None = None,
    ):
        self.plan, self.base, self.sft, self.device = plan, base, sft, device
        self.on_bytes = on_bytes or (lambda n: None)
        self.chunk = CHUNK_ELEMENTS[device.type]
        self.buffers = _Buffers(pin=device.type == "cuda")
        self.stats = ExecStats()

    def run(self, out_dir: Path) -> ExecStats:
        t0 = time.perf_counter()
        by_name = self.plan.by_name()
        for shard in self.plan.shards:
            self._write_shard(out_dir / shard.filename, shard, by_name)
        self.stats.seconds = time.perf_counter() - t0
        return self.stats

    def _write_shard(self, path: Path, shard: ShardLayout, by_name: dict[str, TensorPlan]) -> None:
        with open(path, "wb") as f:
            f.write(shard.header_bytes())
            for entry in shard.ordered():
                self._write_tensor(f, by_name[entry.name])

    def _read(
        self, ckpt: Checkpoint, key: str, name: str, start: int, stop: int, hasher
    ) -> torch.Tensor:
        info = ckpt.tensors[name]
        raw = self.buffers.get(key, (stop - start) * ITEMSIZE[info.dtype])
        ckpt.read_into(name, start, stop, raw.numpy())
        hasher.update(raw.numpy())
        return raw.view(torch_dtype(info.dtype))

    def _write_tensor(self, f, tp: TensorPlan) -> None:
        out_dtype = torch_dtype(tp.out_dtype)
        sft_hash = xxhash.xxh3_128()
        base_hash = xxhash.xxh3_128() if tp.base is not None else None
        split = tp.base_rows
        for start, stop, shared in row_chunks(tp.sft.shape, split, self.chunk):
            s = self._read(self.sft, "sft", tp.name, start, stop, sft_hash)
            if shared and tp.base is not None:
                b = self._read(self.base, "base", tp.base.name, start, stop, base_hash)
                out = self._combine(tp, b, s, out_dtype)
                origin = {FUSE: "fused", BASE: "BASE"}.get(tp.action, "SFT")
            else:
                out = s if s.dtype == out_dtype else s.to(out_dtype)  # exact SFT bytes
                origin = "SFT"
            if not all_finite(out):
                raise NonFiniteError(
                    f"tensor '{tp.name}' would be written with NaN/inf values (from the {origin} "
                    f"weights, elements {start}..{stop - 1}); check the input checkpoints"
                )
            data = out.contiguous().view(torch.uint8)
            f.write(data.numpy())
            self.stats.bytes_written += data.numel()
            self.on_bytes(data.numel())
        self.stats.digests["sft"][tp.name] = sft_hash.hexdigest()
        if base_hash is not None:
            self.stats.digests["base"][tp.base.name] = base_hash.hexdigest()

    def _combine(self, tp: TensorPlan, b: torch.Tensor, s: torch.Tensor, out_dtype) -> torch.Tensor:
        """One chunk of the planned action, on the device; returns a CPU tensor."""
        if tp.action == FUSE:
            alpha = tp.alpha
        elif tp.action == BASE:
            alpha = 0.0
        else:
            alpha = 1.0
        if self.device.type == "cpu":
            return fuse(b, s, alpha, out_dtype)
        b = b.to(self.device, non_blocking=True)
        s = s.to(self.device, non_blocking=True)
        return fuse(b, s, alpha, out_dtype).cpu()


def checkpoint_digest(tensor_digests: dict[str, str], ckpt: Checkpoint) -> str:
    """One xxh3-128 over (name, dtype, shape, per-tensor digest), sorted by name.

    Independent of sharding: the same weights saved with different shard sizes digest alike.
    """
    h = xxhash.xxh3_128()
    for name in sorted(tensor_digests):
        info = ckpt.tensors[name]
        h.update(f"{name}\0{info.dtype}\0{list(info.shape)}\0{tensor_digests[name]}\n".encode())
    return h.hexdigest()
