"""The streaming layer: paired (BASE, SFT) tensor chunks from two tensor sources.

Memory stays at a few chunk buffers whatever the model size: a tensor is never loaded whole.
Chunks are whole rows (so later steps can address rows and columns of a unit) of about
CHUNK_ELEMENTS elements: small enough that float32 temporaries stay in cache on CPU, which
makes the math cost about one extra memory copy (see DESIGN.md, "Math in cache-sized chunks").
The fuse executor, the drift scorer and the weight diagnostics all read through
`PairedStream.chunks`, so chunk order, buffers and device choice are decided here once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import xxhash

from rejuv_cli.checkpoint.dtypes import ITEMSIZE, torch_dtype
from rejuv_cli.checkpoint.source import TensorSource

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
    shape: tuple[int, ...], split_row: int | None, chunk_elements: int, rows_multiple: int = 1
) -> Iterator[tuple[int, int, bool]]:
    """Flat element ranges (start, stop, before_split) covering a tensor in whole rows.

    A row is everything after dim 0 (a scalar or 1-D tensor has 1-element rows). No chunk
    crosses `split_row`, so rows before it and rows after it can be treated differently. Chunks
    hold a multiple of `rows_multiple` rows (at least that many; the last one may hold fewer):
    whole row blocks of a block-scaled FP8 weight.
    """
    n_rows = shape[0] if shape else 1
    row_len = row_length(shape)
    if n_rows == 0 or row_len == 0:
        return
    per = max(1, chunk_elements // row_len)
    per = max(rows_multiple, per - per % rows_multiple)
    split = n_rows if split_row is None else split_row
    for lo, hi, before in ((0, split, True), (split, n_rows, False)):
        for r in range(lo, hi, per):
            yield r * row_len, min(r + per, hi) * row_len, before


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


class ChunkReader:
    """Reads element ranges into reusable buffers, one per role, and digests them (xxh3-128).

    Reading ahead on a background thread was measured here (2 cores): no gain, because the
    work is bound by memory bandwidth and torch's own threads; so reads stay synchronous.
    """

    def __init__(self, base: TensorSource, sft: TensorSource, pin: bool, digest: bool = True):
        self.base, self.sft, self.digest = base, sft, digest
        self.buffers = Buffers(pin)
        self.hashers: dict[tuple[str, str], xxhash.xxh3_128] = {}

    def read(self, role: str, name: str, start: int, stop: int) -> torch.Tensor:
        """Elements [start, stop) of `name` from BASE or SFT (role), in a reused buffer: valid
        until the next read of the same role."""
        src = self.base if role == "base" else self.sft
        info = src.tensors[name]
        raw = self.buffers.get(role, (stop - start) * ITEMSIZE[info.dtype])
        src.read_into(name, start, stop, raw.numpy())
        if self.digest:
            hasher = self.hashers.get((role, name))
            if hasher is None:
                hasher = self.hashers[(role, name)] = xxhash.xxh3_128()
            hasher.update(raw.numpy())
        return raw.view(torch_dtype(info.dtype))

    def digests(self) -> dict[str, dict[str, str]]:
        """role -> tensor name -> xxh3-128 of every byte read (whole tensors when streamed)."""
        out: dict[str, dict[str, str]] = {"base": {}, "sft": {}}
        for (role, name), h in self.hashers.items():
            out[role][name] = h.hexdigest()
        return out


@dataclass(frozen=True)
class TensorPair:
    """One tensor to stream: SFT's `sft` and BASE's `base` name (None: that side is not read),
    its shape, and `base_rows` (rows from there on exist only in SFT, added tokens: their
    chunks are not `shared` and read no BASE bytes). `tag` is the caller's own (a plan entry)."""

    shape: tuple[int, ...]
    sft: str | None
    base: str | None
    base_rows: int | None = None
    tag: object = None
    rows_multiple: int = 1  # chunks hold whole blocks of this many rows (row_chunks)


@dataclass
class PairedChunk:
    """Elements [start, stop) of one tensor pair, with the bytes read from each side (views of
    reused buffers on the CPU: consume them before asking for the next chunk)."""

    pair: TensorPair
    start: int
    stop: int
    shared: bool  # rows that exist in BASE too (False: added-token rows, SFT only)
    sft: torch.Tensor | None = None
    base: torch.Tensor | None = None


class PairedStream:
    """The one streaming loop: (BASE, SFT) row chunks of each tensor pair, in the order given.

    Chunk size and pinned buffers follow the device. `digest=True` hashes every byte read (the
    fuse records input digests); `sft=None` streams BASE alone.
    """

    def __init__(self, base: TensorSource, sft: TensorSource | None, device: torch.device,
                 digest: bool = False):  # fmt: skip
        self.device = device
        self.chunk_elements = CHUNK_ELEMENTS[device.type]
        self.reader = ChunkReader(base, sft or base, pin=device.type == "cuda", digest=digest)

    def chunks(
        self, pairs: Iterable[TensorPair], shared_only: bool = False
    ) -> Iterator[PairedChunk]:
        """Every chunk of every pair, row-ordered; `shared_only` skips added-token rows."""
        read, size = self.reader.read, self.chunk_elements
        for pair in pairs:
            for start, stop, shared in row_chunks(
                pair.shape, pair.base_rows, size, pair.rows_multiple
            ):
                if shared_only and not shared:
                    continue
                chunk = PairedChunk(pair, start, stop, shared)
                if pair.sft is not None:
                    chunk.sft = read("sft", pair.sft, start, stop)
                if shared and pair.base is not None:
                    chunk.base = read("base", pair.base, start, stop)
                yield chunk

    def digests(self) -> dict[str, dict[str, str]]:
        return self.reader.digests()
