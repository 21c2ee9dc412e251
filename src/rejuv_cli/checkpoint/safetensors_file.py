"""Read and validate safetensors headers without loading any tensor data.

Format (https://huggingface.co/docs/safetensors): 8 bytes little-endian header length N,
N bytes of JSON {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}},
then the data buffer; offsets are relative to the start of the buffer (byte 8 + N).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from rejuv_cli.checkpoint.dtypes import ITEMSIZE
from rejuv_cli.errors import CheckpointError, QuantizedError, first_line

# Larger headers are not produced by any real writer; refuse them before allocating.
MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes live: `file` at absolute byte `offset`, `nbytes` long.

    `dtype` is what a source's `read_into` returns. `out_dtype` is the dtype a checkpoint of
    this tensor is written in under `--dtype auto` when that differs (None: `dtype`): an FP8
    weight is read dequantized to F32 but written as BF16, a LoRA target is read as F32
    (base + s·B·A unrounded) but written in BASE's dtype.
    """

    name: str
    dtype: str  # safetensors code, e.g. "BF16"
    shape: tuple[int, ...]
    file: Path
    offset: int
    nbytes: int
    out_dtype: str | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate the header of one .safetensors file.

    Returns (tensors in file order, __metadata__). Raises CheckpointError naming the file when
    it is truncated, corrupt, or describes tensors that do not fit in it.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise _corrupt(path, f"file is {size} bytes, too short for a header (truncated?)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise _corrupt(path, f"header length {n} does not fit in a {size}-byte file")
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from e
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as e:  # not UTF-8 or JSON, too deep, a huge number
        raise _corrupt(path, f"header is not valid JSON ({first_line(e)})") from e
    if not isinstance(header, dict):
        raise _corrupt(path, "header is not a JSON object")

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _corrupt(path, "__metadata__ must map names to strings")
    data_start = 8 + n
    tensors = []
    for name, entry in header.items():
        tensors.append(_tensor_info(path, name, entry, data_start))
    tensors.sort(key=lambda t: t.offset)
    end = data_start
    for t in tensors:
        if t.offset < end:
            raise _corrupt(path, f"tensor '{t.name}' overlaps the previous tensor's bytes")
        end = t.offset + t.nbytes
    if end > size:
        missing = end - size
        raise _corrupt(path, f"data ends {missing} bytes past the end of the file (truncated?)")
    return {t.name: t for t in tensors}, metadata


def _tensor_info(path: Path, name: str, entry, data_start: int) -> TensorInfo:
    try:
        dtype = entry["dtype"]
        shape = tuple(int(d) for d in entry["shape"])
        begin, end = (int(x) for x in entry["data_offsets"])
    except (TypeError, KeyError, ValueError) as e:
        raise _corrupt(path, f"entry for '{name}' is malformed ({e!r})") from e
    if dtype in QUANTIZED_ONLY_CODES:
        raise QuantizedError(
            f"{path}: tensor '{name}' has dtype {dtype}, a sub-byte or scale format used only by "
            "quantized checkpoints (MXFP4, MXFP8, NVFP4, ...). rejuv fuses unquantized "
            "F16/BF16/F32 weights only: dequantize to bf16 first, or use the bf16 release"
        )
    if dtype not in ITEMSIZE:
        raise _corrupt(path, f"tensor '{name}' has unknown dtype {dtype!r}")
    if any(d < 0 for d in shape) or begin < 0 or end < begin:
        raise _corrupt(path, f"tensor '{name}' has invalid shape {shape} or offsets {begin}..{end}")
    expected = math.prod(shape) * ITEMSIZE[dtype]
    if end - begin != expected:
        raise _corrupt(
            path,
            f"tensor '{name}' spans {end - begin} bytes but {dtype}{list(shape)} needs {expected}",
        )
    return TensorInfo(name, dtype, shape, path, data_start + begin, expected)


# safetensors dtypes that only quantized formats use; rejuv reads none of them.
QUANTIZED_ONLY_CODES = frozenset(
    {"F4", "F6_E2M3", "F6_E3M2", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ"}
)


def _corrupt(path: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: not a valid safetensors file: {why}. Re-download or re-save this shard."
    )
