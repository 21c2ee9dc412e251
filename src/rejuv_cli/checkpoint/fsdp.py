"""verl's FSDP checkpoint directories, read tensor by tensor without a process group.

What verl writes (verl/utils/checkpoint/fsdp_checkpoint_manager.py, FSDPCheckpointManager):
  model_world_size_{W}_rank_{R}.pt   per rank, `torch.save(model.state_dict())`: name -> DTensor
                                     (FSDP2, and FSDP1 under SHARDED_STATE_DICT with a device
                                     mesh, which verl always passes); the HF module names
  optim_/extra_state_world_size_*    optimizer, lr scheduler, RNG: not read
  fsdp_config.json                   {"FSDP_version": 1|2, "world_size": W} (older verl: none)
  huggingface/                       config.json, tokenizer, chat template (rank 0)

Each DTensor's local piece is `_local_tensor`; its `placements` say how pieces make the full
tensor: Shard(0) splits dim 0 over the mesh's "fsdp" dimension as torch.chunk does (the last
ranks may hold fewer rows, or none); Replicate() means every rank holds all of it; an HSDP mesh
("ddp", "fsdp") has (Replicate(), Shard(0)), so the ranks of the first ddp row hold one copy.
Only those pieces and the global shape are used, as verl's own merger does
(verl/model_merger/fsdp_model_merger.py), but a key's pieces are read row range by row range
instead of all ranks being loaded and concatenated: memory stays at the caller's chunk.

Files are loaded with `torch.load(weights_only=True, mmap=True)` after importing
torch.distributed.tensor, which allowlists exactly the DTensor classes (DTensor, DTensorSpec,
DeviceMesh, TensorMeta, placements): nothing else in a rank file can be unpickled. The map
gives each piece's place in the file; bytes are then read with pread, like safetensors, so no
page of the map is touched and resident memory does not grow with the model.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from rejuv_cli.checkpoint.config import read_config
from rejuv_cli.checkpoint.dtypes import ITEMSIZE
from rejuv_cli.checkpoint.fsdp_files import (
    file_offset,
    load_rank,
    mapped_regions,
    pread_exact,
    world_size,
)
from rejuv_cli.checkpoint.input_files import meta_dir
from rejuv_cli.checkpoint.safetensors_file import TensorInfo
from rejuv_cli.checkpoint.shard_rows import (
    chunk_rows,
    declared_dtype,
    flat_spans,
    row_len,
    stored_code,
    write_as,
)
from rejuv_cli.checkpoint.source import ModelSource
from rejuv_cli.errors import CheckpointError

WHAT = "verl FSDP checkpoint"


@dataclass
class _Piece:
    """One rank's stored part of a tensor: `rows` rows, at byte `offset` of `path` (read with
    pread), or in `tensor` (a mapped tensor, where the map's file offset is unknown)."""

    path: Path
    rows: int
    offset: int | None
    tensor: object = None


class FsdpShards(ModelSource):
    """verl FSDP rank files as a tensor source: each tensor listed in its stored dtype (fp32
    master weights for verl) and its full shape, read from the ranks' pieces on demand."""

    format = "fsdp"

    def __init__(self, root: Path, label: str, meta_root: Path, config: dict, world: int,
                 version: int | None, files: list[Path]):  # fmt: skip
        self.root, self.label, self.meta_root, self.config = root, label, meta_root, config
        self.world, self.version, self.files = world, version, files
        self.tensors: dict[str, TensorInfo] = {}
        self.warnings: list[str] = []
        self.pieces: dict[str, list[_Piece]] = {}
        self.placements: list[str] = []
        self.mesh: list[str] | None = None
        self.mesh_shape: list[int] | None = None
        self._mesh_key: tuple | None = None  # rank 0's first DTensor's mesh: all must share it
        self._seen_meshes: dict[int, tuple | None] = {}
        self._fds: dict[Path, int] = {}

    @classmethod
    def open(cls, root: Path, label: str, config_from: Path | None = None) -> FsdpShards:
        """Check the rank files (all of 0..W-1, no others, one world size), load the pieces'
        layout from the ranks that hold one copy of the model, and check they agree."""
        meta = meta_dir(root, label, config_from, WHAT)
        config = read_config(meta / "config.json", label)
        world, version = world_size(root, label)
        files = [root / f"model_world_size_{world}_rank_{r}.pt" for r in range(world)]
        src = cls(root, label, meta, config, world, version, files)
        first = load_rank(files[0])
        holders = src._read_layout(first, files[0])
        states = {0: first} | {r: load_rank(files[r]) for r in holders if r != 0}
        src._read_tensors(states, holders)
        return src

    # ---- opening -------------------------------------------------------------------------
    def _read_layout(self, state: dict, path: Path) -> list[int]:
        """The ranks holding shards 0..F-1 of one copy, from rank 0's first DTensor (its mesh
        and placements); sets placements and mesh for describe()."""
        dt = next((v for v in state.values() if _is_dtensor(v)), None)
        if dt is None:
            return list(range(self.world))  # plain tensors only: each rank must hold them all
        placements = tuple(dt.placements)
        self.placements = [repr(p) for p in placements]
        mesh = getattr(dt, "device_mesh", None)
        names = getattr(mesh, "mesh_dim_names", None)
        self.mesh = list(names) if names else None
        ranks = getattr(mesh, "mesh", None)
        if ranks is None:  # a mesh this torch cannot read: rank order is shard order (1-D)
            if len(placements) != 1:
                raise CheckpointError(f"{path}: cannot read the device mesh of a "
                                      f"{len(placements)}-D layout {self.placements}")  # fmt: skip
            return list(range(self.world))
        self.mesh_shape = list(ranks.shape)
        self._mesh_key = self._mesh_of(dt)
        if sorted(ranks.reshape(-1).tolist()) != list(range(self.world)):
            raise CheckpointError(
                f"{path}: its device mesh {self.mesh_shape} holds ranks "
                f"{ranks.reshape(-1).tolist()[:8]}, not 0..{self.world - 1} (world size "
                f"{self.world}); are the rank files from one checkpoint?"
            )
        # one copy: index 0 along every mesh dimension but the last (HSDP's "ddp" replicas)
        return ranks.reshape(-1, ranks.shape[-1])[0].tolist() if ranks.dim() else [0]

    def _read_tensors(self, states: dict[int, dict], holders: list[int]) -> None:
        maps = {r: mapped_regions(self.files[r]) for r in states}
        first = states[0]
        # verl keeps fp32 master weights (model_dtype: fp32) while huggingface/config.json is
        # the original model's and declares its release dtype (e.g. bfloat16): listing that as
        # out_dtype makes `--dtype auto` write what the model card says, not twice its size
        # (`--dtype fp32` keeps the master weights).
        declared = declared_dtype(self.config)
        skipped = 0
        for r, state in states.items():
            if state.keys() != first.keys():
                odd = sorted(state.keys() ^ first.keys())[0]
                raise CheckpointError(
                    f"{self.files[r]}: its tensor names differ from rank 0's ('{odd}' is in one "
                    "of them only); are the rank files from one checkpoint?"
                )
        for name, value in first.items():
            if not _is_tensor(value):
                skipped += 1
                continue
            shape, code, pieces = self._pieces(name, states, holders, maps)
            self.pieces[name] = pieces
            nbytes = math.prod(shape) * ITEMSIZE[code]
            self.tensors[name] = TensorInfo(name, code, shape, self.files[0], len(self.tensors),
                                            nbytes, write_as(code, declared))  # fmt: skip
        if skipped:
            self.warnings.append(f"{self.label} {self.root}: skipped {skipped} entries of the "
                                 "rank files that are not tensors")  # fmt: skip
        self._seen_meshes.clear()  # keyed by id(): only valid while the states are alive
        if not self.tensors:
            raise CheckpointError(f"{self.files[0]}: holds no tensors; is this a model file?")

    def _pieces(self, name: str, states, holders, maps):
        """(full shape, dtype code, pieces in order) of tensor `name`, checked on every rank."""
        v0 = states[0][name]
        if not _is_dtensor(v0):  # not sharded: the same on every rank, or refused
            for r, state in states.items():
                v = state[name]
                if (
                    _is_dtensor(v)
                    or v.shape != v0.shape
                    or v.dtype != v0.dtype
                    or not (v0.equal(v))
                ):
                    raise CheckpointError(
                        f"{self.files[r]}: '{name}' is a plain tensor that differs from rank 0's; "
                        "rejuv reads unsharded entries only when every rank holds the same value"
                    )
            shape = tuple(v0.shape)
            return shape, stored_code(v0.dtype, self.files[0], name), [self._piece(0, v0, maps)]
        shape, code = tuple(v0.shape), stored_code(v0.dtype, self.files[0], name)
        if self._mesh_of(v0) != self._mesh_key:
            raise CheckpointError(
                f"{self.files[0]}: '{name}' lies on another device mesh than the first tensor "
                f"({self.mesh} {self.mesh_shape}); rejuv reads checkpoints of one FSDP mesh"
            )
        kind = _placement_kind(v0.placements)
        if kind is None:
            raise CheckpointError(
                f"{self.files[0]}: '{name}' is placed as {[repr(p) for p in v0.placements]}; rejuv "
                "reads FSDP's Shard(0) (with Replicate() replicas for HSDP) and Replicate() only"
            )
        if kind == "replicate" or not shape:
            rows = [shape[0] if shape else 1]
            use = [0]
        else:
            rows, use = chunk_rows(shape[0], len(holders)), holders
        pieces = []
        for r, want in zip(use, rows, strict=True):
            v = states[r][name]
            if not _is_dtensor(v) or tuple(v.placements) != tuple(v0.placements):
                raise CheckpointError(f"{self.files[r]}: '{name}' is not placed as on rank 0")
            local = v._local_tensor
            expect = (want, *shape[1:]) if shape else ()
            if tuple(v.shape) != shape or tuple(local.shape) != expect or local.dtype != v0.dtype:
                raise CheckpointError(
                    f"{self.files[r]}: '{name}' holds {list(local.shape)} {local.dtype} of "
                    f"{list(v.shape)}, but {v0.dtype} {list(expect)} of {list(shape)} is what "
                    f"{self.placements} over {len(use)} rank(s) gives rank {r}; the rank files "
                    "do not fit together"
                )
            pieces.append(self._piece(r, local, maps))
        return shape, code, pieces

    def _mesh_of(self, dt) -> tuple | None:
        """(names, shape, ranks) of a DTensor's mesh (None where unreadable), once per mesh."""
        mesh = getattr(dt, "device_mesh", None)
        if id(mesh) not in self._seen_meshes:
            ranks = getattr(mesh, "mesh", None)
            self._seen_meshes[id(mesh)] = None if ranks is None else (
                getattr(mesh, "mesh_dim_names", None), tuple(ranks.shape),
                tuple(ranks.reshape(-1).tolist()))  # fmt: skip
        return self._seen_meshes[id(mesh)]

    def _piece(self, rank: int, t, maps) -> _Piece:
        rows = t.shape[0] if t.dim() else 1
        nbytes = t.numel() * t.element_size()
        if nbytes == 0:
            return _Piece(self.files[rank], rows, 0)
        offset = file_offset(t, maps[rank]) if t.is_contiguous() else None
        size = self.files[rank].stat().st_size
        if offset is not None and offset + nbytes > size:
            offset = None  # not where we thought: read it from the map instead
        return _Piece(self.files[rank], rows, offset, None if offset is not None else t)

    # ---- reading -------------------------------------------------------------------------
    def read_into(self, name: str, start: int, stop: int, out) -> None:
        """Copy elements [start, stop) of tensor `name` (flattened) into `out`.

        out: a writable uint8 numpy array of exactly (stop - start) * itemsize bytes. Only the
        rows of the pieces that hold the range are read.
        """
        info, pieces = self.tensors[name], self.pieces[name]
        size = ITEMSIZE[info.dtype]
        rows = [p.rows for p in pieces]
        for i, a, b, at in flat_spans(rows, row_len(info.shape), start, stop):
            view = out[at * size : (at + b - a) * size]
            piece = pieces[i]
            if piece.tensor is not None:
                flat = piece.tensor.reshape(-1)[a:b]
                view[:] = flat.contiguous().view(-1).view(_uint8()).numpy()
            else:
                pread_exact(self._fds, piece.path, piece.offset + a * size, view,
                            f"{self.label}: tensor '{name}'")  # fmt: skip

    def describe(self) -> dict:
        return {"format": self.format, "world_size": self.world, "fsdp_version": self.version,
                "placements": self.placements, "mesh": self.mesh,
                "mesh_shape": self.mesh_shape}  # fmt: skip

    def weight_files(self) -> list[Path]:
        return sorted({p.path for pieces in self.pieces.values() for p in pieces})

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self.pieces.clear()


def _placement_kind(placements) -> str | None:
    """ "shard" for (Shard(0),) and (Replicate(), Shard(0)), "replicate" for all-Replicate(),
    None for anything else (other dims, strided or partial placements, 3-D meshes)."""
    kinds = [type(p).__name__ for p in placements]
    if all(k == "Replicate" for k in kinds):
        return "replicate"
    if kinds in (["Shard"], ["Replicate", "Shard"]) and placements[-1].dim == 0:
        return "shard"
    return None


def _is_dtensor(v) -> bool:
    return type(v).__name__ == "DTensor" and hasattr(v, "_local_tensor")


def _is_tensor(v) -> bool:
    import torch

    return isinstance(v, torch.Tensor)


def _uint8():
    import torch

    return torch.uint8
