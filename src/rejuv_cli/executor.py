"""The fuse executor: stream paired BASE/SFT row chunks, fuse and reset them on the device,
write the planned shards.

Reading (chunk order, buffers, device) is `checkpoint.stream`; the math is `ops/`; the reset
slices come from `reset.tensors`. The executor never knows which format its sources are.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import xxhash

from rejuv_cli.checkpoint.dtypes import ITEMSIZE, torch_dtype
from rejuv_cli.checkpoint.fp8 import SCALE_SUFFIX
from rejuv_cli.checkpoint.source import TensorSource
from rejuv_cli.checkpoint.stream import Buffers, PairedChunk, PairedStream, TensorPair, row_length
from rejuv_cli.errors import NonFiniteError, OutputError
from rejuv_cli.ops.fp8 import dequantize, quantize_rows
from rejuv_cli.ops.fuse import all_finite, fuse_into
from rejuv_cli.ops.reset import reset_values
from rejuv_cli.plan import BASE, FUSE, FusePlan, TensorPlan

if TYPE_CHECKING:
    from rejuv_cli.recipe import ResetSettings
    from rejuv_cli.reset.tensors import TensorReset


@dataclass
class ExecStats:
    bytes_written: int = 0
    seconds: float = 0.0
    digests: dict[str, dict[str, str]] = field(default_factory=lambda: {"base": {}, "sft": {}})


@dataclass(frozen=True)
class ShardTensor:
    """One output tensor and the shard file it goes to; with `scale`, the block scales of
    `plan`'s tensor (`<name>_scale_inv`, --dtype fp8) rather than the tensor itself."""

    filename: str
    plan: TensorPlan
    scale: bool = False

    @property
    def name(self) -> str:
        return self.plan.name + SCALE_SUFFIX if self.scale else self.plan.name


class Executor:
    """Writes the planned shards of one fuse into `out_dir`, reading any two tensor sources."""

    def __init__(
        self,
        plan: FusePlan,
        base: TensorSource,
        sft: TensorSource,
        device: torch.device,
        on_bytes: Callable[[int], None] | None = None,
        resets: dict[str, TensorReset] | None = None,
        reset_settings: ResetSettings | None = None,
    ):
        self.plan, self.base, self.sft, self.device = plan, base, sft, device
        self.resets = resets or {}
        self.reset_settings = reset_settings
        self.on_bytes = on_bytes or (lambda n: None)
        self.buffers = Buffers(pin=device.type == "cuda")
        self.stats = ExecStats()
        self._headers = {s.filename: s.header_bytes() for s in plan.shards}
        self._offsets = {s.filename: s.offsets() for s in plan.shards}

    def run(self, out_dir: Path) -> ExecStats:
        """Write every shard: header first, then each tensor's chunks in header order. The one
        exception, --dtype fp8: a weight's block scales are known only once its last chunk is
        quantized, so they are written then, at their place in the header (which lists them
        before the weight: wider dtypes first), and writing continues after the weight."""
        t0 = time.perf_counter()
        f, shard, pos = None, None, 0
        try:
            for target, start, _stop, out in self.outputs():
                if target.filename != shard:
                    if f is not None:
                        _close(f)
                    shard = target.filename
                    f = open(out_dir / shard, "wb")  # noqa: SIM115 - one shard at a time
                    _write(f, self._headers[shard])
                    pos = len(self._headers[shard])
                data = out.contiguous().view(torch.uint8)
                at = len(self._headers[shard]) + self._offsets[shard][target.name] + \
                    start * out.element_size()  # fmt: skip
                if at != pos:  # only around FP8 scales; every other chunk follows the last
                    f.seek(at)
                _write(f, data.numpy())
                pos = at + data.numel()
                self.stats.bytes_written += data.numel()
                self.on_bytes(data.numel())
            if f is not None:
                _close(f)
        finally:
            if f is not None and not f.closed:
                with contextlib.suppress(OSError):  # already failing: keep the first error
                    f.close()
        for s in self.plan.shards:  # a shard of only empty tensors has no chunks
            if not (out_dir / s.filename).exists():
                (out_dir / s.filename).write_bytes(self._headers[s.filename])
        self.stats.seconds = time.perf_counter() - t0
        return self.stats

    def outputs(
        self, dequantized: bool = False
    ) -> Iterator[tuple[ShardTensor, int, int, torch.Tensor]]:
        """Every output chunk in shard and header order: (tensor, start, stop, values), the
        values being elements [start, stop) of the flattened output tensor in its output dtype
        on the CPU (a reused buffer: consume it before the next). `run` writes these bytes;
        `rejuv sweep` copies the same values into a model in memory. Input digests are in
        `stats.digests` once the iteration is done.

        Under --dtype fp8 a re-quantized tensor's chunks hold whole blocks of rows, its values
        are the FP8 codes, and its block scales follow its last chunk as one more output (not
        at their header place; `run` seeks). `dequantized`: instead, the values a loader
        reconstructs from them (codes × scales, float32), and no scale outputs."""
        stream = PairedStream(self.base, self.sft, self.device, digest=True)
        scales: list[torch.Tensor] = []
        for chunk in stream.chunks(self._pairs()):
            target = chunk.pair.tag
            fp8 = self.plan.fp8.get(target.name)
            if fp8 is None:
                yield target, chunk.start, chunk.stop, self._output_chunk(chunk)
                continue
            cols = target.plan.sft.shape[1]
            values = self._output_chunk(chunk, "F32", on_device=True).view(-1, cols)
            q, s = quantize_rows(values, fp8.block, torch_dtype(fp8.scale_dtype))
            if dequantized:
                yield target, chunk.start, chunk.stop, dequantize(q, s, fp8.block).view(-1).cpu()
                continue
            yield target, chunk.start, chunk.stop, q.view(-1).cpu()
            scales.append(s.cpu())
            if chunk.stop == target.plan.sft.numel:  # the weight's last chunk: its scales
                grid = torch.cat(scales).view(-1)
                scales = []
                yield ShardTensor(target.filename, target.plan, scale=True), 0, grid.numel(), grid
        self.stats.digests = stream.digests()

    def _pairs(self) -> Iterator[TensorPair]:
        """Output tensors in shard and header order (FP8 block scales left out: they come with
        their weight); tag = ShardTensor."""
        by_name = self.plan.by_name()
        for shard in self.plan.shards:
            for entry in shard.ordered():
                if entry.attached:
                    continue
                tp = by_name[entry.name]
                base = tp.base.name if tp.base is not None else None
                tag = ShardTensor(shard.filename, tp)
                fp8 = self.plan.fp8.get(tp.name)
                rows = fp8.block[0] if fp8 is not None else 1
                yield TensorPair(tp.sft.shape, tp.name, base, tp.base_rows, tag, rows)

    def _output_chunk(self, c: PairedChunk, code: str | None = None,
                      on_device: bool = False) -> torch.Tensor:  # fmt: skip
        """The output values of one chunk (fused, reset, or SFT's own), checked finite; in
        dtype `code` (default: the planned output dtype), on the CPU unless `on_device`."""
        tp = c.pair.tag.plan
        code = code or tp.out_dtype
        out_dtype = torch_dtype(code)
        if c.base is not None:
            out = self._combine(tp, c, code, on_device)
            origin = {FUSE: "fused", BASE: "BASE"}.get(tp.action, "SFT")
        else:
            out = c.sft if c.sft.dtype == out_dtype else c.sft.to(out_dtype)  # exact SFT bytes
            out = out.to(self.device) if on_device else out
            origin = "SFT"
        if not all_finite(out):
            raise NonFiniteError(
                f"tensor '{tp.name}' would be written with NaN/inf values (from the {origin} "
                f"weights, elements {c.start}..{c.stop - 1}); check the input checkpoints"
            )
        return out

    def _combine(self, tp: TensorPlan, c: PairedChunk, code: str,
                 on_device: bool = False) -> torch.Tensor:  # fmt: skip
        """One chunk of the planned action and reset in dtype `code`, on the device; returns a
        CPU tensor unless `on_device` (a reused buffer on the CPU either way)."""
        alpha = tp.alpha if tp.action == FUSE else 0.0 if tp.action == BASE else 1.0
        b, s = c.base, c.sft
        n = s.numel()
        out_dtype = torch_dtype(code)
        out = self.buffers.get("out", n * ITEMSIZE[code]).view(out_dtype)
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
        if on_device:
            return result
        out.copy_(result)
        return out

    def _reset(self, tp: TensorPlan, c: PairedChunk, out, b, s, alpha: float) -> None:
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


def write_shards(plan: FusePlan, base: TensorSource, sft: TensorSource, device: torch.device,
                 out_dir: Path, on_bytes=None, resets=None, reset_settings=None,
                 ) -> tuple[ExecStats, dict[str, int]]:  # fmt: skip
    """Write this rank's shards of `plan` into `out_dir` (every shard in a single process).

    Under torchrun the shards are dealt to the ranks by bytes (dist.split_by_bytes), each
    rank reads only the tensors it writes, and the ranks' statistics are gathered: every rank
    returns the whole run's (digests of every tensor read, bytes, the slowest rank's seconds)
    and shard file -> the rank that wrote it. Returning is the point where all ranks are done.
    """
    from dataclasses import replace

    from rejuv_cli import dist
    from rejuv_cli.rank_progress import SharedProgress

    ranks = dist.current()
    dealt = dist.split_by_bytes({s.filename: s.file_bytes for s in plan.shards}, ranks.world)
    own = set(dealt[ranks.rank])
    mine = replace(plan, shards=[s for s in plan.shards if s.filename in own])
    writers = {f: r for r, files in enumerate(dealt) for f in files}
    if not ranks.active:
        stats = Executor(mine, base, sft, device, on_bytes, resets, reset_settings).run(out_dir)
        return stats, writers
    # rank 0's bar counts every rank's bytes (rank_progress.py)
    progress = SharedProgress(out_dir, on_bytes)
    stats = Executor(mine, base, sft, device, progress, resets, reset_settings).run(out_dir)
    progress.finish()
    total = ExecStats()
    with dist.while_waiting(progress.poll if ranks.main else None):
        gathered = dist.all_gather((stats.digests, stats.bytes_written, stats.seconds))
    for digests, written, seconds in gathered:
        for role in ("base", "sft"):
            total.digests[role].update(digests[role])
        total.bytes_written += written
        total.seconds = max(total.seconds, seconds)
    if ranks.main:
        progress.close()  # every rank is done: the last counts, and no folder left in OUT
        check_shards_arrived(plan, out_dir, writers)
    return total, writers


def check_shards_arrived(plan: FusePlan, tmp: Path, writers: dict[str, int]) -> None:
    """Every shard in rank 0's directory at its planned size: under torchrun, ranks on other
    hosts write into the same path, which only a shared filesystem makes the same directory."""
    for s in plan.shards:
        path = tmp / s.filename
        size = path.stat().st_size if path.is_file() else None
        if size != s.file_bytes:
            raise OutputError(
                f"{path}: shard written by rank {writers[s.filename]} is "
                f"{'missing' if size is None else f'{size} bytes, not {s.file_bytes}'} where "
                "rank 0 writes the output; OUT must be on a filesystem every rank shares"
            )


def checkpoint_digest(tensor_digests: dict[str, str], ckpt: TensorSource) -> str:
    """One xxh3-128 over (name, dtype, shape, per-tensor digest), sorted by name.

    Independent of sharding: the same weights saved with different shard sizes digest alike.
    """
    h = xxhash.xxh3_128()
    for name in sorted(tensor_digests):
        info = ckpt.tensors[name]
        h.update(f"{name}\0{info.dtype}\0{list(info.shape)}\0{tensor_digests[name]}\n".encode())
    return h.hexdigest()
