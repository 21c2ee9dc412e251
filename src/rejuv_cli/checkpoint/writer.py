"""Plan output shards up front, then stream each tensor's bytes straight into its file.

Because every output tensor's dtype and shape are known before any math runs, each shard's
safetensors header (names, dtypes, shapes, byte offsets) can be written first; tensors are then
appended in header order, chunk by chunk, and never held whole in memory.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from rejuv_cli.checkpoint.dtypes import ITEMSIZE
from rejuv_cli.jsonio import dumps

INDEX_NAME = "model.safetensors.index.json"
SHARD_METADATA = {"format": "pt"}  # what transformers checks for on load


@dataclass(frozen=True)
class OutEntry:
    """One output tensor as the writer sees it. `attached`: kept in the shard of the entry
    before it (an FP8 weight's block scales stay with the weight)."""

    name: str
    dtype: str  # safetensors code
    shape: tuple[int, ...]
    attached: bool = False

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ITEMSIZE[self.dtype]


@dataclass
class ShardLayout:
    """One output file: its entries in write order and the exact header bytes."""

    filename: str = ""
    entries: list[OutEntry] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=lambda: dict(SHARD_METADATA))

    @property
    def data_bytes(self) -> int:
        return sum(e.nbytes for e in self.entries)

    def ordered(self) -> list[OutEntry]:
        # Widest dtypes first keeps every tensor aligned to its element size (like the
        # reference serializer), so readers can map the bytes without copying.
        return sorted(self.entries, key=lambda e: -ITEMSIZE[e.dtype])

    def offsets(self) -> dict[str, int]:
        """Entry name -> its first byte, counted from the start of the data (after the header)."""
        out, offset = {}, 0
        for e in self.ordered():
            out[e.name] = offset
            offset += e.nbytes
        return out

    def header_bytes(self) -> bytes:
        header: dict = {"__metadata__": self.metadata}
        offsets = self.offsets()
        for e in self.ordered():
            begin = offsets[e.name]
            header[e.name] = {
                "dtype": e.dtype,
                "shape": list(e.shape),
                "data_offsets": [begin, begin + e.nbytes],
            }
        raw = dumps(header, "safetensors header", indent=None, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # pad so the data buffer starts 8-byte aligned
        return len(raw).to_bytes(8, "little") + raw

    @property
    def file_bytes(self) -> int:
        return len(self.header_bytes()) + self.data_bytes


def _entry_header_bound(e: OutEntry) -> int:
    """An upper bound on the header bytes one entry adds (offsets at their widest)."""
    big = 10**19
    return (
        len(
            json.dumps(
                {e.name: {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [big, big]}}
            )
        )
        + 1
    )


def plan_shards(entries: list[OutEntry], max_shard_bytes: int) -> list[ShardLayout]:
    """Pack entries, in order, into shards whose whole file (header + data) fits the limit.

    A tensor larger than the limit gets a shard of its own (it cannot be split); an `attached`
    entry always goes with the one before it.
    """
    base = 8 + 8 + len(json.dumps({"__metadata__": SHARD_METADATA})) + 8
    groups: list[list[OutEntry]] = []
    for e in entries:
        if e.attached and groups:
            groups[-1].append(e)
        else:
            groups.append([e])
    shards: list[ShardLayout] = []
    current, used = ShardLayout(), base
    for group in groups:
        cost = sum(e.nbytes + _entry_header_bound(e) for e in group)
        if current.entries and used + cost > max_shard_bytes:
            shards.append(current)
            current, used = ShardLayout(), base
        current.entries.extend(group)
        used += cost
    if current.entries or not shards:
        shards.append(current)
    n = len(shards)
    for i, shard in enumerate(shards, 1):
        shard.filename = "model.safetensors" if n == 1 else f"model-{i:05d}-of-{n:05d}.safetensors"
    return shards


def index_json(shards: list[ShardLayout]) -> dict | None:
    """The model.safetensors.index.json content, or None for a single-file checkpoint."""
    if len(shards) == 1:
        return None
    weight_map = {e.name: s.filename for s in shards for e in s.entries}
    total = sum(s.data_bytes for s in shards)
    return {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}


def write_index(out_dir: Path, shards: list[ShardLayout]) -> None:
    index = index_json(shards)
    if index is not None:
        (out_dir / INDEX_NAME).write_text(dumps(index, INDEX_NAME) + "\n")


def format_size(n: float) -> str:
    """1_234_567 -> '1.23 MB' (decimal units, like parse_size and the Hub)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n} B"


MAX_SIZE = 2**63 - 1  # what a file offset or a byte count in torch and the OS can hold


def parse_size(text: str | int) -> int:
    """'5GB' -> 5_000_000_000, '500MiB' -> 524_288_000, 1024 -> 1024 (HF's convention: GB=1e9).

    ValueError, with a one-line reason, for anything else: no number, an unknown unit, a
    number that is not finite (nan, inf, 1e400), not positive, or beyond MAX_SIZE bytes.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        s = str(text).strip().upper().replace(" ", "")
        units = {
            "KIB": 2**10,
            "MIB": 2**20,
            "GIB": 2**30,
            "TIB": 2**40,
            "KB": 10**3,
            "MB": 10**6,
            "GB": 10**9,
            "TB": 10**12,
            "B": 1,
        }
        unit = next((u for u in units if s.endswith(u)), "")
        number, mult = s[: len(s) - len(unit)], units.get(unit, 1)
        try:
            amount = float(number)
        except ValueError:
            raise ValueError(f"not a size: {_short(text)} (use e.g. 5GB, 500MB, 2GiB)") from None
        if not math.isfinite(amount * mult):
            raise ValueError(f"size must be a finite number (got {_short(text)})")
        value = int(amount * mult)
    if value <= 0:
        raise ValueError(f"size must be positive (got {_short(text)})")
    if value > MAX_SIZE:
        raise ValueError(f"size too large (got {_short(text)}; at most {MAX_SIZE} bytes)")
    return value


def _short(text) -> str:
    """repr of a size as given, cut to a readable length (a huge number stays one line)."""
    try:
        shown = repr(text)
    except ValueError:  # an int with more digits than Python converts to text
        return "a number too long to show"
    return shown if len(shown) <= 42 else f"{shown[:40]}..."
