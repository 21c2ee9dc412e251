"""torch.distributed.checkpoint (DCP) directories, read tensor by tensor without a process group.

On disk (torch/distributed/checkpoint/filesystem.py, metadata.py):
  .metadata             a pickled Metadata: per saved entry (flattened name) a
                        TensorStorageMetadata (dtype, full size, chunks: offsets + sizes) or a
                        BytesStorageMetadata (a non-tensor object); storage_data: where each
                        chunk lies ((name, offsets) -> file, byte offset, length);
                        planner_data: flattened name -> the key path in the saved dict
  __{rank}_{n}.distcp   each chunk a separate `torch.save` blob at [offset, offset + length)

`.metadata` is a plain pickle, and torch reads it with plain pickle.load, which can run any
code. rejuv unpickles it with an allowlist of the classes that file holds (dcp_metadata.py:
ALLOWED, checked on checkpoints torch writes) and refuses anything else, naming it. Chunks are
loaded with `torch.load(weights_only=True)`; non-tensor entries (dataloader and trainer
state, pickled objects that torch itself loads with weights_only=False) are never read.

Names: trainers save the model under a key of a larger dict (accelerate: {"model": sd},
torchtitan: "model" next to "optimizer", "lr_scheduler", "dataloader", "train_state") or at
the top level (`dcp.save(get_model_state_dict(model))`). planner_data says which
(dcp_metadata.model_names): ("model", "model.layers.0.mlp.up_proj.weight") vs
("model.layers.0.mlp.up_proj.weight",), so the "model." of a nesting is told apart from the
"model." that HF names themselves start with.

Memory: a torch.save blob can only be loaded whole, so a chunk is the unit. Reading a tensor
row range by row range keeps only the chunks holding the current rows when chunks are row slabs
(FSDP/FSDP2's Shard(0): about 1/W of the tensor), all of its chunks when they split columns
(tensor parallelism: the whole tensor), and never another tensor's.
"""

from __future__ import annotations

import io
import math
import os
import re
from pathlib import Path

from rejuv_cli.checkpoint.config import read_config
from rejuv_cli.checkpoint.dcp_metadata import model_names, read_metadata
from rejuv_cli.checkpoint.dtypes import ITEMSIZE
from rejuv_cli.checkpoint.input_files import DCP_METADATA, meta_dir
from rejuv_cli.checkpoint.safetensors_file import TensorInfo
from rejuv_cli.checkpoint.shard_rows import (
    declared_dtype,
    fill_rows,
    flat_spans,
    overlap,
    row_len,
    stored_code,
    tiles,
    write_as,
)
from rejuv_cli.checkpoint.source import ModelSource
from rejuv_cli.errors import CheckpointError, first_line

WHAT = "torch distributed checkpoint (DCP)"
_DATA_FILE = re.compile(r"^__(\d+)_(\d+)\.distcp$")


class DcpCheckpoint(ModelSource):
    """A DCP directory as a tensor source: model tensors in their stored dtype and full shape,
    assembled from their chunks on demand (one tensor's chunks cached at a time)."""

    format = "dcp"

    def __init__(self, root: Path, label: str, meta_root: Path, config: dict):
        self.root, self.label, self.meta_root, self.config = root, label, meta_root, config
        self.tensors: dict[str, TensorInfo] = {}
        self.warnings: list[str] = []
        self.chunks: dict[str, list[tuple[tuple[int, ...], tuple[int, ...], object]]] = {}
        self.slabs: dict[str, bool] = {}  # chunks are whole-row slabs (FSDP's Shard(0))
        self.skipped = 0
        self.ranks: list[int] = []
        self._cache: tuple[str, dict] | None = None  # (tensor, chunk index -> loaded chunk)
        self._fds: dict[Path, int] = {}

    @classmethod
    def open(cls, root: Path, label: str, config_from: Path | None = None) -> DcpCheckpoint:
        """Read .metadata (allowlisted), pick the model's entries, check every chunk's file
        and byte range and that each tensor's chunks tile it exactly."""
        meta_root = meta_dir(root, label, config_from, WHAT)
        src = cls(root, label, meta_root, read_config(meta_root / "config.json", label))
        meta = read_metadata(root / DCP_METADATA)
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        sd_meta = meta.state_dict_metadata
        kinds = {k: isinstance(v, TensorStorageMetadata) for k, v in sd_meta.items()}
        names, skipped = model_names(kinds, getattr(meta, "planner_data", None))
        where = {(i.fqn, tuple(i.offset or ())): s for i, s in (meta.storage_data or {}).items()}
        src.ranks = sorted({int(m[1]) for s in where.values()
                            if (m := _DATA_FILE.match(str(s.relative_path)))})  # fmt: skip
        if not names:
            tops = sorted({k.split(".")[0] for k in sd_meta})
            raise CheckpointError(
                f"{label} {root}: no model tensors in this {WHAT} (its top-level keys: "
                f"{', '.join(tops[:8]) or 'none'}); rejuv reads a model saved at the top level "
                "or under 'model'"
            )
        # As for FSDP shards: trainers save fp32 master weights, and the config (the base
        # model's, or --config-from) declares the release dtype that `--dtype auto` writes.
        declared = declared_dtype(src.config)
        for fqn, name in names.items():
            tm = sd_meta[fqn]
            shape, code = tuple(tm.size), stored_code(tm.properties.dtype, root, fqn)
            src.chunks[name] = [src._chunk(fqn, c, where) for c in tm.chunks]
            boxes = [(o, s) for o, s, _ in src.chunks[name]]
            why = tiles(shape, boxes)
            if why is not None:
                raise CheckpointError(
                    f"{root / DCP_METADATA}: tensor '{fqn}' {list(shape)}: {why}; the "
                    "checkpoint is incomplete or corrupt"
                )
            src.slabs[name] = all(o[1:] == (0,) * (len(shape) - 1) and s[1:] == shape[1:]
                                  for o, s in boxes)  # fmt: skip
            src.chunks[name].sort(key=lambda c: c[0][:1])
            first = src.chunks[name][0][2][0] if src.chunks[name] else root / DCP_METADATA
            src.tensors[name] = TensorInfo(name, code, shape, first, len(src.tensors),
                                           math.prod(shape) * ITEMSIZE[code],
                                           write_as(code, declared))  # fmt: skip
        src.skipped = sum(skipped.values())
        if skipped:
            what = ", ".join(f"{k} {n}" for k, n in sorted(skipped.items()))
            src.warnings.append(f"{label} {root}: skipped {src.skipped} entries that are not "
                                f"model weights ({what})")  # fmt: skip
        return src

    def _chunk(self, fqn: str, chunk, where: dict):
        """(offsets, sizes, (file, byte offset, length)) of one chunk, checked."""
        offsets, sizes = tuple(chunk.offsets), tuple(chunk.sizes)
        info = where.get((fqn, offsets))
        meta = self.root / DCP_METADATA
        if info is None:
            raise CheckpointError(f"{meta}: no storage entry for the chunk of '{fqn}' at "
                                  f"{list(offsets)}; the checkpoint is incomplete")  # fmt: skip
        rel = str(info.relative_path)
        if not rel or "/" in rel or "\\" in rel or rel in (".", ".."):
            raise CheckpointError(f"{meta}: '{fqn}' points to {rel!r}, outside the checkpoint "
                                  "directory; refusing to read it")  # fmt: skip
        if getattr(info, "transform_descriptors", None):
            raise CheckpointError(
                f"{meta}: '{fqn}' is stored in {rel} through {list(info.transform_descriptors)} "
                "(a stream transform such as compression); rejuv reads plain torch.save chunks"
            )
        path = self.root / rel
        size = path.stat().st_size if path.is_file() else None
        if size is None:
            raise CheckpointError(f"{self.label} {self.root}: data file {rel} (chunk of "
                                  f"'{fqn}') is missing; was the checkpoint copied "
                                  "completely?")  # fmt: skip
        if info.offset < 0 or info.length < 0 or info.offset + info.length > size:
            raise CheckpointError(f"{path}: '{fqn}' lies at bytes {info.offset}.."
                                  f"{info.offset + info.length} of a {size}-byte file "
                                  "(truncated?)")  # fmt: skip
        return offsets, sizes, (path, info.offset, info.length)

    # ---- reading -------------------------------------------------------------------------
    def read_into(self, name: str, start: int, stop: int, out) -> None:
        """Copy elements [start, stop) of tensor `name` (flattened) into `out`.

        out: a writable uint8 numpy array of exactly (stop - start) * itemsize bytes. Only the
        chunks holding those rows are loaded (_chunks_for says how long they are kept).
        """
        import torch

        info = self.tensors[name]
        size, width = ITEMSIZE[info.dtype], row_len(info.shape)
        if stop <= start:
            return
        r0, r1 = start // width, -(-stop // width)
        pieces = self._chunks_for(name, r0, r1)
        if self.slabs[name]:  # row slabs, contiguous from the first one's row
            first = pieces[0][0][0] if info.shape else 0
            rows = [t.shape[0] if t.dim() else 1 for _, t in pieces]
            base = first * width
            for i, a, b, at in flat_spans(rows, width, start - base, stop - base):
                flat = pieces[i][1].reshape(-1)[a:b]
                out[at * size : (at + b - a) * size] = flat.view(torch.uint8).numpy()
            return
        block = torch.empty((r1 - r0, *info.shape[1:]), dtype=pieces[0][1].dtype)
        fill_rows(block, r0, pieces)
        flat = block.reshape(-1)[start - r0 * width : stop - r0 * width]
        out[:] = flat.view(torch.uint8).numpy()

    def _chunks_for(self, name: str, r0: int, r1: int) -> list:
        """[(offsets, tensor)] of the chunks of `name` that hold rows [r0, r1), in row order.

        Loaded chunks are kept for the next read of the same tensor, except those ending
        before row r0: a forward stream over row slabs (FSDP's Shard(0)) holds one or two
        chunks at a time, a column split (every chunk holds every row) the whole tensor.
        Another tensor's chunks are dropped first: at most one tensor's are ever held.
        """
        if self._cache is None or self._cache[0] != name:
            self._cache = (name, {})
        cached, chunks = self._cache[1], self.chunks[name]
        want = [i for i, (o, s, _) in enumerate(chunks) if not o or overlap(r0, r1, o[0], s[0])]
        for i in [i for i in cached if chunks[i][0] and sum(c[0] for c in chunks[i][:2]) <= r0]:
            del cached[i]  # rows a forward stream has passed
        for i in want:
            if i not in cached:
                cached[i] = self._checked_chunk(name, *chunks[i])
        return [(chunks[i][0], cached[i]) for i in want]

    def _checked_chunk(self, name: str, offsets, sizes, where):
        path, offset, length = where
        t = self._load_chunk(path, offset, length, name)
        dtype = self.tensors[name].dtype
        if tuple(t.shape) != sizes or stored_code(t.dtype, path, name) != dtype:
            raise CheckpointError(
                f"{path}: the chunk of '{name}' at {list(offsets)} holds {t.dtype} "
                f"{list(t.shape)}, but .metadata says {dtype} {list(sizes)}"
            )
        return t

    def _load_chunk(self, path: Path, offset: int, length: int, name: str):
        import torch

        try:
            fd = self._fds.get(path)
            if fd is None:
                fd = self._fds[path] = os.open(path, os.O_RDONLY)
            blob = os.pread(fd, length, offset)
        except OSError as e:
            raise CheckpointError(
                f"{self.label}: cannot read {path} (tensor '{name}'): {e.strerror or e}; check "
                "the disk or the mount"
            ) from None
        try:
            t = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        except Exception as e:  # torn blob, a foreign pickle: weights_only refuses it
            raise CheckpointError(f"{path}: cannot load the chunk of '{name}' at byte {offset}: "
                                  f"{first_line(e)}") from None  # fmt: skip
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{path}: the chunk of '{name}' at byte {offset} is a "
                                  f"{type(t).__name__}, not a tensor")  # fmt: skip
        return t

    def describe(self) -> dict:
        return {"format": self.format, "chunks": sum(len(c) for c in self.chunks.values()),
                "ranks_written": self.ranks, "skipped_entries": self.skipped}  # fmt: skip

    def weight_files(self) -> list[Path]:
        return sorted({where[0] for cs in self.chunks.values() for _, _, where in cs})

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._cache = None
