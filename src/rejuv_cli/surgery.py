"""The streaming executor: read BASE and SFT in row chunks, fuse on the device, write the shards.

Memory stays at a few chunk buffers whatever the model size: a tensor is never loaded whole.
Chunks are whole rows (so later steps can address rows and columns of a unit) of about
CHUNK_ELEMENTS elements: small enough that float32 temporaries stay in cache on CPU, which
makes the math cost about one extra memory copy (see DESIGN.md, "Math in cache-sized chunks").
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import xxhash

from rejuv_cli.checkpoint.dtypes import ITEMSIZE, torch_dtype
from rejuv_cli.checkpoint.reader import Checkpoint
from rejuv_cli.errors import NonFiniteError
from rejuv_cli.ops.fuse import all_finite, fuse_into
from rejuv_cli.ops.reset import reset_values
from rejuv_cli.plan import BASE, FUSE, FusePlan, TensorPlan

if TYPE_CHECKING:
    from rejuv_cli.mask import TensorReset
    from rejuv_cli.recipe import ResetSettings

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


def row_length(shape: tuple[int, ...]) -> int:
    """Elements per row: everything after dim 0 (a scalar or 1-D tensor has 1-element rows)."""
    return math.prod(shape[1:]) if len(shape) > 1 else 1


def row_chunks(
    shape: tuple[int, ...], split_row: int | None, chunk_elements: int
) -> Iterator[tuple[int, int, bool]]:
    """Flat element ranges (start, stop, before_split) covering a tensor in whole rows.

    A row is everything after dim 0 (a scalar or 1-D tensor has 1-element rows). No chunk
    crosses `split_row`, so rows before it and rows after it can be treated differently.
    """
    n_rows = shape[0] if shape else 1
    row_len = row_length(shape)
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


class Buffers:
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


class Scratch:
    """Named float32 work buffers on the compute device, grown on demand (no per-chunk alloc)."""

    def __init__(self, device: torch.device):
        self.device = device
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, key: str, n: int) -> torch.Tensor:
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < n:
            buf = self._bufs[key] = torch.empty(n, dtype=torch.float32, device=self.device)
        return buf[:n]


@dataclass
class _Chunk:
    """Elements [start, stop) of one planned tensor, with its input bytes once loaded."""

    shard: str  # output file name
    tp: TensorPlan
    start: int
    stop: int
    shared: bool  # rows that exist in BASE too (False: added-token rows, SFT only)
    sft: torch.Tensor | None = None
    base: torch.Tensor | None = None


class ChunkReader:
    """Reads the input bytes of each chunk into reusable buffers and digests them (xxh3-128).

    Reading ahead on a background thread was measured here (2 cores): no gain, because the
    work is bound by memory bandwidth and torch's own threads; so reads stay synchronous.
    """

    def __init__(self, base: Checkpoint, sft: Checkpoint, pin: bool, digest: bool = True):
        self.base, self.sft, self.digest = base, sft, digest
        self.buffers = Buffers(pin)
        self.hashers: dict[tuple[str, str], xxhash.xxh3_128] = {}

    def stream(self, chunks: Iterator[_Chunk]) -> Iterator[_Chunk]:
        for chunk in chunks:
            chunk.sft = self._read(self.sft, "sft", chunk.tp.name, chunk.start, chunk.stop)
            if chunk.shared and chunk.tp.base is not None:
                base_name = chunk.tp.base.name
                chunk.base = self._read(self.base, "base", base_name, chunk.start, chunk.stop)
            yield chunk

    def read(self, role: str, name: str, start: int, stop: int) -> torch.Tensor:
        """Elements [start, stop) of `name` from BASE or SFT (role), in a reused buffer."""
        return self._read(self.base if role == "base" else self.sft, role, name, start, stop)

    def _read(self, ckpt: Checkpoint, role: str, name: str, start: int, stop: int):
        info = ckpt.tensors[name]
        raw = self.buffers.get(role, (stop - start) * ITEMSIZE[info.dtype])
        ckpt.read_into(name, start, stop, raw.numpy())
        if not self.digest:
            return raw.view(torch_dtype(info.dtype))
        hasher = self.hashers.get((role, name))
        if hasher is None:
            hasher = self.hashers[(role, name)] = xxhash.xxh3_128()
        hasher.update(raw.numpy())
        return raw.view(torch_dtype(info.dtype))

    def digests(self) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {"base": {}, "sft": {}}
        for (role, name), h in self.hashers.items():
            out[role][name] = h.hexdigest()
        return out


class Executor:
    """Writes the planned shards of one fuse into `out_dir`."""

    def __init__(
        self,
        plan: FusePlan,
        base: Checkpoint,
        sft: Checkpoint,
        device: torch.device,
        on_bytes: Callable[[int], None] | None = None,
        resets: dict[str, TensorReset] | None = None,
        reset_settings: ResetSettings | None = None,
    ):
        self.plan, self.base, self.sft, self.device = plan, base, sft, device
        self.resets = resets or {}
        self.reset_settings = reset_settings
        self.on_bytes = on_bytes or (lambda n: None)
        self.chunk = CHUNK_ELEMENTS[device.type]
        self.buffers = Buffers(pin=device.type == "cuda")
        self.stats = ExecStats()
        self._headers = {s.filename: s.header_bytes() for s in plan.shards}

    def run(self, out_dir: Path) -> ExecStats:
        """Write every shard: header first, then each tensor's chunks in header order."""
        t0 = time.perf_counter()
        by_name = self.plan.by_name()
        reader = ChunkReader(self.base, self.sft, pin=self.device.type == "cuda")
        f = None
        try:
            for chunk in reader.stream(self._chunks(by_name)):
                if f is None or f.name != str(out_dir / chunk.shard):
                    if f is not None:
                        _close(f)
                    f = open(out_dir / chunk.shard, "wb")  # noqa: SIM115 - one shard at a time
                    _write(f, self._headers[chunk.shard])
                self._write_chunk(f, chunk)
            if f is not None:
                _close(f)
        finally:
            if f is not None and not f.closed:
                with contextlib.suppress(OSError):  # already failing: keep the first error
                    f.close()
        for shard in self.plan.shards:  # a shard of only empty tensors has no chunks
            if not (out_dir / shard.filename).exists():
                (out_dir / shard.filename).write_bytes(self._headers[shard.filename])
        self.stats.digests = reader.digests()
        self.stats.seconds = time.perf_counter() - t0
        return self.stats

    def _chunks(self, by_name: dict[str, TensorPlan]) -> Iterator[_Chunk]:
        for shard in self.plan.shards:
            for entry in shard.ordered():
                tp = by_name[entry.name]
                for start, stop, shared in row_chunks(tp.sft.shape, tp.base_rows, self.chunk):
                    yield _Chunk(shard.filename, tp, start, stop, shared)

    def _write_chunk(self, f, c: _Chunk) -> None:
        tp = c.tp
        out_dtype = torch_dtype(tp.out_dtype)
        if c.base is not None:
            out = self._combine(tp, c, out_dtype)
            origin = {FUSE: "fused", BASE: "BASE"}.get(tp.action, "SFT")
        else:
            out = c.sft if c.sft.dtype == out_dtype else c.sft.to(out_dtype)  # exact SFT bytes
            origin = "SFT"
        if not all_finite(out):
            raise NonFiniteError(
                f"tensor '{tp.name}' would be written with NaN/inf values (from the {origin} "
                f"weights, elements {c.start}..{c.stop - 1}); check the input checkpoints"
            )
        data = out.contiguous().view(torch.uint8)
        _write(f, data.numpy())
        self.stats.bytes_written += data.numel()
        self.on_bytes(data.numel())

    def _combine(self, tp: TensorPlan, c: _Chunk, out_dtype) -> torch.Tensor:
        """One chunk of the planned action and reset, on the device; returns a CPU tensor."""
        alpha = tp.alpha if tp.action == FUSE else 0.0 if tp.action == BASE else 1.0
        b, s = c.base, c.sft
        n = s.numel()
        out = self.buffers.get("out", n * ITEMSIZE[tp.out_dtype]).view(out_dtype)
        if self.device.type == "cpu":
            scratch = self.buffers.get("f32", n * 4).view(torch.float32)
            fuse_into(out, b, s, alpha, scratch)
            self._reset(tp, c, out, b, s, alpha)
            return out
        b = b.to(self.device, non_blocking=True)
        s = s.to(self.device, non_blocking=True)
        result = torch.empty(n, dtype=out_dtype, device=self.device)
        fuse_into(result, b, s, alpha, torch.empty(n, dtype=torch.float32, device=self.device))
        self._reset(tp, c, result, b, s, alpha)
        out.copy_(result)
        return out

    def _reset(self, tp: TensorPlan, c: _Chunk, out, b, s, alpha: float) -> None:
        """Overwrite the chunk's selected rows and columns with their reset values."""
        tr = self.resets.get(tp.name)
        if tr is None:
            return
        row_len = row_length(tp.sft.shape)
        r0, r1 = c.start // row_len, c.stop // row_len
        out2, b2, s2 = (t.view(r1 - r0, row_len) for t in (out, b, s))
        lo, hi = np.searchsorted(tr.rows, [r0, r1])
        if hi > lo:
            idx = torch.from_numpy(tr.rows[lo:hi] - r0).to(self.device)
            values = tr.row_values[lo:hi] if tr.row_values is not None else None
            out2[idx] = self._reset_block(b2[idx], s2[idx], alpha, values, out.dtype)
        if tr.cols.size:
            idx = torch.from_numpy(tr.cols).to(self.device)
            values = tr.col_values[r0:r1] if tr.col_values is not None else None
            out2[:, idx] = self._reset_block(b2[:, idx], s2[:, idx], alpha, values, out.dtype)

    def _reset_block(self, b, s, alpha: float, values, out_dtype) -> torch.Tensor:
        cfg = self.reset_settings
        if values is not None:
            values = values.to(self.device)
            if cfg.mode == "reinit":
                return values.to(out_dtype)
        return reset_values(b, s, alpha, cfg.omega, out_dtype, noise=values)


def _write(f, data) -> None:
    """f.write that names the file in its OSError (a full disk reports no file name)."""
    try:
        f.write(data)
    except OSError as e:
        raise OSError(e.errno, e.strerror, f.name) from e


def _close(f) -> None:
    """f.close, naming the file: the last buffered bytes are written here and can fail too."""
    try:
        f.close()
    except OSError as e:
        raise OSError(e.errno, e.strerror, f.name) from e


def checkpoint_digest(tensor_digests: dict[str, str], ckpt: Checkpoint) -> str:
    """One xxh3-128 over (name, dtype, shape, per-tensor digest), sorted by name.

    Independent of sharding: the same weights saved with different shard sizes digest alike.
    """
    h = xxhash.xxh3_128()
    for name in sorted(tensor_digests):
        info = ckpt.tensors[name]
        h.update(f"{name}\0{info.dtype}\0{list(info.shape)}\0{tensor_digests[name]}\n".encode())
    return h.hexdigest()
