"""Block-scaled FP8 checkpoints (DeepSeek-V3, Qwen3-FP8, transformers' FineGrainedFP8), read
dequantized to float32, and the plan for writing one back (`--dtype fp8`).

Layout: `<m>.weight` F8_E4M3 [out, in] with `<m>.weight_scale_inv` [ceil(out/bm), ceil(in/bn)]
(float32, or bf16), config.json `quantization_config` {"quant_method": "fp8",
"weight_block_size": [bm, bn], ...}; W[i, j] = float(Q[i, j]) · S[i // bm, j // bn] (the math:
ops/fp8.py). Every other tensor (embeddings, norms, lm_head, routers) is stored unquantized and
read as it is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rejuv_cli.checkpoint.dtypes import ITEMSIZE
from rejuv_cli.checkpoint.quantization import detect_quantization
from rejuv_cli.checkpoint.safetensors_file import TensorInfo
from rejuv_cli.checkpoint.source import ModelSource
from rejuv_cli.checkpoint.writer import OutEntry
from rejuv_cli.errors import CheckpointError, QuantizedError, UsageError

SCALE_SUFFIX = "_scale_inv"
FP8_CODE = "F8_E4M3"
SCALE_CODES = ("F32", "BF16")  # how scales are stored; e8m0 (F8_E8M0, U8) is not read
READ_AS, WRITE_AS = "F32", "BF16"  # an FP8 weight is read dequantized, written (auto) as bf16
_HOW = "use the release's bf16 weights, or dequantize to bf16 first"


def is_block_fp8(ckpt: ModelSource) -> bool:
    """Whether `ckpt` is block-scaled FP8: config.json's quantization_config says fp8 with a
    weight_block_size, and some tensor has a `weight_scale_inv` sibling. Anything else that
    looks quantized is refused later (checkpoint/quantization.py); a block-FP8 checkpoint this
    module cannot read is refused by `Fp8Checkpoint`, naming what it has."""
    q = ckpt.config.get("quantization_config")
    if not isinstance(q, dict) or q.get("quant_method") != "fp8" or not q.get("weight_block_size"):
        return False
    return any(n.endswith(".weight" + SCALE_SUFFIX) for n in ckpt.tensors)


class Fp8Checkpoint(ModelSource):
    """A block-scaled FP8 Hugging Face checkpoint as a source of float32 weights.

    `tensors` is the inner checkpoint's table without the `*_scale_inv` entries; each FP8 weight
    is listed as F32 (what `read_into` returns, dequantized) with out_dtype BF16. Other tensors
    are the inner ones, unchanged. `quantized`: the names of the FP8 weights; `scales`: weight
    name -> its scale tensor in the inner checkpoint; `block`: (bm, bn).
    """

    def __init__(self, ckpt: ModelSource):
        self.inner = ckpt
        self.root, self.label, self.meta_root = ckpt.root, ckpt.label, ckpt.meta_root
        self.config, self.warnings = ckpt.config, ckpt.warnings
        self.format = "fp8-block"
        self.quantization_config = dict(ckpt.config["quantization_config"])
        self.block = _check_config(self.quantization_config, f"{self.label} {self.root}")
        self.scales: dict[str, TensorInfo] = {}
        self.tensors: dict[str, TensorInfo] = {}
        rest: dict[str, tuple[str, tuple[int, ...]]] = {}  # not FP8 weights nor their scales
        for name, t in ckpt.tensors.items():
            scale = ckpt.tensors.get(name + SCALE_SUFFIX)
            if t.dtype == FP8_CODE and scale is not None:
                self._check_pair(t, scale)
                self.scales[name] = scale
                # offset -1: its bytes are not stored as listed (read_into dequantizes them)
                self.tensors[name] = TensorInfo(name, READ_AS, t.shape, t.file, -1,
                                                t.numel * ITEMSIZE[READ_AS], WRITE_AS)  # fmt: skip
            elif not (name.endswith(SCALE_SUFFIX) and _is_fp8_weight(ckpt, name)):
                self.tensors[name] = t
                rest[name] = (t.dtype, t.shape)
        self.quantized = set(self.scales)
        self._check_rest(rest)
        self._buf = None

    # ---- validation at open --------------------------------------------------------------
    def _check_pair(self, w: TensorInfo, s: TensorInfo) -> None:
        where = f"{self.label}: '{s.name}' ({s.file.name})"
        if s.dtype not in SCALE_CODES:
            raise QuantizedError(
                f"{where} stores block scales as {s.dtype}: rejuv reads float32 or bf16 scales, "
                f"not e8m0 exponents (MXFP8); {_HOW}"
            )
        if len(w.shape) != 2:
            raise QuantizedError(
                f"{self.label}: '{w.name}' is an F8_E4M3 tensor of shape {list(w.shape)}: rejuv "
                f"reads 2-D block-scaled weights only (one [out, in] matrix per module); {_HOW}"
            )
        want = _grid(w.shape, self.block)
        if tuple(s.shape) != want:
            raise CheckpointError(
                f"{where} has shape {list(s.shape)}, but '{w.name}' {list(w.shape)} in "
                f"{self.block[0]}x{self.block[1]} blocks (quantization_config.weight_block_size) "
                f"needs {list(want)} = [ceil(out/{self.block[0]}), ceil(in/{self.block[1]})]; the "
                "scales do not fit the weight: re-download the checkpoint"
            )

    def _check_rest(self, rest: dict[str, tuple[str, tuple[int, ...]]]) -> None:
        """Refuse what is left that is still quantized: FP8 without scales, static activation
        scales, scales without an FP8 weight, other formats' tensors."""
        static = next((n for n in rest if n.rsplit(".", 1)[-1] == "activation_scale"), None)
        if static is not None:
            raise QuantizedError(_static(f"{self.label} {self.root}", f"tensor '{static}'"))
        orphan = next((n for n in rest if n.endswith(SCALE_SUFFIX)), None)
        if orphan is not None:
            w = orphan.removesuffix(SCALE_SUFFIX)
            if w in rest and rest[w][0].startswith("F8"):
                raise QuantizedError(
                    f"{self.label}: tensor '{w}' is {rest[w][0]} with block scales: rejuv reads "
                    f"e4m3 (F8_E4M3) FP8 only; {_HOW}"
                )
            has = f"is {rest[w][0]}" if w in rest else "does not exist"
            raise CheckpointError(
                f"{self.label}: '{orphan}' ({self.inner.tensors[orphan].file.name}) scales "
                f"'{w}', which {has}: block scales belong to an F8_E4M3 weight. Is a shard "
                "missing or from another checkpoint?"
            )
        bare = next((n for n, (dtype, _) in rest.items() if dtype == FP8_CODE), None)
        if bare is not None:
            raise QuantizedError(
                f"{self.label}: tensor '{bare}' ({self.inner.tensors[bare].file.name}) is F8_E4M3 "
                f"without its block scales '{bare}{SCALE_SUFFIX}': FP8 codes cannot be read "
                "without them. Is a shard missing?"
            )
        what = detect_quantization({}, rest)
        if what is not None:
            raise QuantizedError(
                f"{self.label} {self.root}: besides block-scaled FP8 weights it has {what}; rejuv "
                f"reads block-scaled F8_E4M3 weights only: {_HOW}"
            )

    # ---- reading -------------------------------------------------------------------------
    def read_into(self, name: str, start: int, stop: int, out) -> None:
        """Elements [start, stop) of `name` (flattened); an FP8 weight dequantized to float32.

        out: a writable uint8 numpy array of (stop - start) * itemsize bytes. Only the weight
        rows covering the range and their scale rows are read.
        """
        if name not in self.scales:
            self.inner.read_into(name, start, stop, out)
            return
        import torch

        from rejuv_cli.checkpoint.dtypes import torch_dtype
        from rejuv_cli.ops.fp8 import FP8_DTYPE, dequantize_into

        cols = self.tensors[name].shape[1]
        if stop <= start:
            return
        r0, r1 = start // cols, -(-stop // cols)
        scale = self.scales[name]
        bm = self.block[0]
        s0, s1 = r0 // bm, (r1 - 1) // bm + 1
        sc = scale.shape[1]
        q_bytes, s_bytes = (r1 - r0) * cols, (s1 - s0) * sc * ITEMSIZE[scale.dtype]
        buf = self._buffer(q_bytes + s_bytes)
        q_raw, s_raw = buf[:q_bytes], buf[q_bytes : q_bytes + s_bytes]
        self.inner.read_into(name, r0 * cols, r1 * cols, q_raw.numpy())
        self.inner.read_into(scale.name, s0 * sc, s1 * sc, s_raw.numpy())
        q = q_raw.view(FP8_DTYPE).view(r1 - r0, cols)
        s = s_raw.view(torch_dtype(scale.dtype))
        target = torch.from_numpy(out).view(torch.float32)
        if start == r0 * cols and stop == r1 * cols:  # whole rows: straight into the caller's
            dequantize_into(target.view(r1 - r0, cols), q, s.view(s1 - s0, sc), self.block, r0)
            return
        rows = torch.empty(r1 - r0, cols, dtype=torch.float32)
        dequantize_into(rows, q, s.view(s1 - s0, sc), self.block, r0)
        target.copy_(rows.view(-1)[start - r0 * cols : stop - r0 * cols])

    def _buffer(self, nbytes: int):
        import torch

        if self._buf is None or self._buf.numel() < nbytes:
            self._buf = torch.empty(nbytes, dtype=torch.uint8)
        return self._buf[:nbytes]

    def describe(self) -> dict:
        qc = self.quantization_config
        scale_dtypes = sorted({t.dtype for t in self.scales.values()})
        return {
            "format": self.format,
            "quantization": {
                "quant_method": qc.get("quant_method"),
                "fmt": qc.get("fmt", "e4m3"),
                "weight_block_size": list(self.block),
                "activation_scheme": qc.get("activation_scheme", "dynamic"),
                "scale_dtype": ", ".join(scale_dtypes),
            },
            "fp8_tensors": len(self.quantized),
        }

    def weight_files(self) -> list[Path]:
        return self.inner.weight_files()  # a shard may hold scales only

    def close(self) -> None:
        self._buf = None
        self.inner.close()


def _is_fp8_weight(ckpt: ModelSource, scale_name: str) -> bool:
    w = ckpt.tensors.get(scale_name.removesuffix(SCALE_SUFFIX))
    return w is not None and w.dtype == FP8_CODE


def _grid(shape: tuple[int, ...], block: tuple[int, int]) -> tuple[int, int]:
    return -(-shape[0] // block[0]), -(-shape[1] // block[1])


def _check_config(qc: dict, where: str) -> tuple[int, int]:
    """(bm, bn) from a quantization_config this module reads; QuantizedError otherwise."""
    block = qc.get("weight_block_size")
    ok = isinstance(block, list | tuple) and len(block) == 2
    if not ok or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block):
        raise QuantizedError(
            f"{where}: config.json quantization_config.weight_block_size is {block!r}; rejuv "
            f"reads FP8 with [rows, cols] block scales (two positive integers, e.g. [128, 128]): "
            f"{_HOW}"
        )
    if qc.get("activation_scheme", "dynamic") != "dynamic":
        raise QuantizedError(_static(where, "quantization_config.activation_scheme="
                                     f"{qc.get('activation_scheme')}"))  # fmt: skip
    if qc.get("scale_fmt", "float") not in ("float", None):
        raise QuantizedError(
            f"{where}: quantization_config.scale_fmt={qc.get('scale_fmt')}: rejuv reads FP8 with "
            "float32 or bf16 block scales, not power-of-two (ue8m0) ones, and could not write "
            f"them back; {_HOW}"
        )
    if qc.get("fmt", "e4m3") != "e4m3":
        raise QuantizedError(
            f"{where}: quantization_config.fmt={qc.get('fmt')}: rejuv reads e4m3 FP8 only; {_HOW}"
        )
    return block[0], block[1]


def _static(where: str, evidence: str) -> str:
    return (
        f"{where}: FP8 with static activation scales ({evidence}): they were calibrated for "
        f"these weights and would not fit fused ones, so rejuv reads FP8 with dynamic "
        f"activation scaling only; {_HOW}"
    )


# ---- writing FP8 (--dtype fp8) ------------------------------------------------------------
@dataclass(frozen=True)
class Fp8Output:
    """An output tensor re-quantized under `--dtype fp8`: its codes are written as F8_E4M3 and
    its fresh block scales as `scale`, the entry right after it in the same shard."""

    name: str
    block: tuple[int, int]
    scale: OutEntry  # `<name>_scale_inv`, the input's scale dtype, [ceil(out/bm), ceil(in/bn)]

    @property
    def scale_dtype(self) -> str:
        return self.scale.dtype


def plan_fp8_outputs(base: ModelSource, sft: ModelSource,
                     tensors: Iterable) -> tuple[dict[str, Fp8Output], dict]:  # fmt: skip
    """Under `--dtype fp8`: every output tensor that is block-FP8 in SFT or in BASE (name ->
    Fp8Output), and the quantization_config the output's config.json declares (SFT's when SFT is
    FP8, else BASE's). `tensors`: the pairing's entries (name, sft, base, base_rows).

    The block size is that config's; each scale dtype is that of the input the tensor was FP8 in
    (SFT first). UsageError when neither input is block-FP8, or when added-token rows of an FP8
    tensor start inside a block (the chunks that read them would straddle it).
    """
    fp8 = [s for s in (sft, base) if isinstance(s, Fp8Checkpoint)]
    if not fp8:
        raise UsageError(
            "--dtype fp8 re-quantizes the weights that are block-scaled FP8 in BASE or SFT, and "
            f"neither is (BASE is {base.format}, SFT is {sft.format}); use --dtype auto or bf16"
        )
    block = fp8[0].block
    out: dict[str, Fp8Output] = {}
    for p in tensors:
        scale = _input_scale(sft, p.name) or (p.base and _input_scale(base, p.base.name))
        if not scale:
            continue
        if p.base_rows is not None and p.base_rows % block[0]:
            raise UsageError(
                f"--dtype fp8: '{p.name}' has rows {p.base_rows}..{p.sft.shape[0] - 1} only in SFT "
                f"(added tokens), starting inside a {block[0]}-row block; use --dtype bf16"
            )
        entry = OutEntry(p.name + SCALE_SUFFIX, scale.dtype, _grid(p.sft.shape, block),
                         attached=True)  # fmt: skip
        out[p.name] = Fp8Output(p.name, block, entry)
    return out, dict(fp8[0].quantization_config)


def _input_scale(src: ModelSource, name: str) -> TensorInfo | None:
    return src.scales.get(name) if isinstance(src, Fp8Checkpoint) else None


def output_config(config: dict, fp8_out: bool, quantization_config: dict | None) -> dict:
    """The output's config.json content: `config` (SFT's) declaring `quantization_config` (an
    FP8 input's) when the output is written in FP8, and no quantization_config otherwise (its
    weights are then unquantized, and loaders would treat them as FP8 codes)."""
    out = dict(config)
    out.pop("quantization_config", None)
    if fp8_out:
        if quantization_config is None:
            raise ValueError("an FP8 output needs the FP8 input's quantization_config")
        out["quantization_config"] = dict(quantization_config)
    return out
