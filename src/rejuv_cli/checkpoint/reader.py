"""Open a Hugging Face checkpoint directory and read its tensors in bounded pieces.

Supported layouts, in the order they are looked for:
  model.safetensors.index.json + shards | model.safetensors |
  pytorch_model.bin.index.json + shards | pytorch_model.bin   (torch.load(weights_only=True))

Only headers are read at open time. Tensor bytes are read on demand with pread into a caller's
buffer, so nothing stays resident: peak memory is the caller's buffer, not the model.

With an index, the tensor set is what the shards the index names contain, not only what the
index lists: transformers loads every tensor of every such shard, so a tensor the index forgot
is still part of the model (`_reconcile` decides, in one place, what to do about disagreements).
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from rejuv_cli.checkpoint.config import read_config
from rejuv_cli.checkpoint.dtypes import ITEMSIZE
from rejuv_cli.checkpoint.links import dangling, dangling_link_error
from rejuv_cli.checkpoint.safetensors_file import TensorInfo, read_header
from rejuv_cli.checkpoint.source import ModelSource
from rejuv_cli.errors import CheckpointError, first_line

ST_INDEX = "model.safetensors.index.json"
ST_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"


class Checkpoint(ModelSource):
    """A checkpoint's tensor table (name -> TensorInfo, in storage order) and its config."""

    def __init__(self, root: Path, label: str, fmt: str, tensors: dict[str, TensorInfo]):
        self.root = root
        self.meta_root = root
        self.label = label  # "BASE" / "SFT": used in every message
        self.format = fmt  # "safetensors" | "bin"
        self.tensors = tensors
        config = _present(root, "config.json", label, "config")
        self.config = read_config(root / "config.json", label) if config else {}
        self._fds: dict[Path, int] = {}
        self._bin_tensors: dict[str, object] = {}
        self.warnings: list[str] = []  # found while opening (tensors the index does not list)

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, root: Path, label: str) -> Checkpoint:
        """Find and validate the weight files under `root` (a directory)."""
        if not root.is_dir():
            raise CheckpointError(f"{label} {root} is not a directory")
        if _present(root, ST_INDEX, label, "index"):
            tensors, warnings = _open_index(root, label, ST_INDEX)
            ckpt = cls(root, label, "safetensors", tensors)
            ckpt.warnings += warnings
            return ckpt
        if _present(root, ST_SINGLE, label, "weights file"):
            tensors, _ = read_header(root / ST_SINGLE)
            return cls(root, label, "safetensors", tensors)
        if _present(root, BIN_INDEX, label, "index") or _present(
            root, BIN_SINGLE, label, "weights file"
        ):
            ckpt = cls(root, label, "bin", {})
            ckpt._open_bin()
            return ckpt
        others = sorted(p.name for p in root.glob("*.safetensors"))
        hint = f" (found {', '.join(others[:3])} without {ST_INDEX})" if others else ""
        raise CheckpointError(
            f"{label} {root} has no weights{hint}: expected {ST_SINGLE}, {ST_INDEX} + shards, "
            f"or {BIN_SINGLE}. Is this the model directory?"
        )

    def _open_bin(self) -> None:
        if _present(self.root, BIN_INDEX, self.label, "index"):
            weight_map = _read_weight_map(self.root, self.label, BIN_INDEX)
            files = sorted(set(weight_map.values()))
        else:
            weight_map, files = None, [BIN_SINGLE]
        stored: dict[str, list[str]] = {}
        for fname in files:
            state = _load_bin(self.root / fname)
            for name, t in state.items():
                stored.setdefault(name, []).append(fname)
                code = _code_of_torch(t.dtype, self.root / fname, name)
                shape = tuple(t.shape)
                nbytes = t.numel() * ITEMSIZE[code]
                self.tensors[name] = TensorInfo(name, code, shape, self.root / fname, -1, nbytes)
                self._bin_tensors[name] = t
        if weight_map is not None:
            self.warnings += _reconcile(self.root, self.label, BIN_INDEX, weight_map, stored)

    # ---- reading -------------------------------------------------------------------------
    def read_into(self, name: str, start: int, stop: int, out) -> None:
        """Copy elements [start, stop) of tensor `name` (flattened) into `out`.

        out: a writable uint8 numpy array of exactly (stop - start) * itemsize bytes.
        """
        info = self.tensors[name]
        size = ITEMSIZE[info.dtype]
        if self.format == "bin":
            flat = self._bin_tensors[name].reshape(-1)[start:stop]
            out[:] = flat.contiguous().view(-1).view(_torch_uint8()).numpy()
            return
        try:
            fd = self._fds.get(info.file)
            if fd is None:
                fd = self._fds[info.file] = os.open(info.file, os.O_RDONLY)
            view = memoryview(out).cast("B")
            pos, offset = 0, info.offset + start * size
            while pos < len(view):
                n = os.preadv(fd, [view[pos:]], offset + pos)
                if n <= 0:
                    break
                pos += n
        except OSError as e:  # an I/O error on the disk, a network filesystem gone away
            raise CheckpointError(
                f"{self.label}: cannot read {info.file} (tensor '{name}'): {e.strerror or e}; "
                "check the disk or the mount"
            ) from None
        if pos < len(view):
            raise CheckpointError(
                f"{info.file}: unexpected end of file while reading '{name}' (truncated?)"
            )

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._bin_tensors.clear()


def _open_index(root: Path, label: str, index_name: str):
    """(tensors in storage order, warnings): every tensor of every shard the index names."""
    weight_map = _read_weight_map(root, label, index_name)
    tensors: dict[str, TensorInfo] = {}
    stored: dict[str, list[str]] = {}
    for fname in sorted(set(weight_map.values())):
        header, _ = read_header(root / fname)
        for name, info in header.items():
            stored.setdefault(name, []).append(fname)
            tensors[name] = info
    warnings = _reconcile(root, label, index_name, weight_map, stored)
    # Storage order: by file, then by offset within it.
    order = sorted(tensors.values(), key=lambda t: (str(t.file), t.offset))
    return {t.name: t for t in order}, warnings


def _read_weight_map(root: Path, label: str, index_name: str) -> dict[str, str]:
    index = _read_json(root / index_name, label)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CheckpointError(
            f"{root / index_name}: 'weight_map' must map tensor names to shard file names"
        )
    # Checked lexically, not by resolving links: in a Hub cache every file is a link to
    # ../../blobs/<hash>, outside the snapshot directory, and must still be read.
    for name, fname in weight_map.items():
        if not _inside(fname):
            raise CheckpointError(
                f"{root / index_name}: tensor '{name}' points to {fname!r}, outside the checkpoint "
                "directory; refusing to read it. Fix or regenerate the index."
            )
    for fname in sorted(set(weight_map.values())):
        if not _present(root, fname, label, "shard"):
            raise CheckpointError(
                f"{label} {root}: shard {fname!r} listed in {index_name} is missing. "
                "Was the download interrupted?"
            )
    return weight_map


def _inside(fname: str) -> bool:
    """Whether an index's file name stays inside the checkpoint directory, judged on the name
    alone: relative, no '..' component, no drive, not empty (backslashes are name characters)."""
    parts = PurePosixPath(fname).parts
    return (
        bool(fname.strip())
        and "\0" not in fname
        and not PurePosixPath(fname).is_absolute()
        and not PureWindowsPath(fname).drive
        and ".." not in parts
    )


def _present(root: Path, name: str, label: str, what: str) -> bool:
    """Whether root/name is a file (following links). A link whose target is gone (a Hub
    cache with a missing blob) is an error naming the link and its target, not a missing file."""
    path = root / name
    if path.is_file():
        return True
    if dangling(path):
        raise dangling_link_error(root, name, label, what)
    return False


def _reconcile(root: Path, label: str, index_name: str, weight_map: dict[str, str],
               stored: dict[str, list[str]]) -> list[str]:  # fmt: skip
    """Check the index against what its shards store (`stored`: tensor name -> the shard files
    holding it); returns warnings. The shards are the truth, because transformers loads every
    tensor of every shard the index names:
    - a tensor in a shard but not in the index is kept (warning): dropping it would leave the
      output with a weight transformers then initialises at random;
    - a tensor listed but in no shard, or in another shard than listed, or stored twice, is an
      error: the index and the shards disagree about which bytes are the weight.
    """
    index = root / index_name
    for name, files in stored.items():
        if len(files) > 1:
            raise CheckpointError(
                f"{index}: tensor '{name}' is stored in {len(files)} shards ({', '.join(files)}); "
                "transformers would load one and ignore the others. Keep one copy (re-save the "
                "checkpoint with save_pretrained)"
            )
    for name, fname in weight_map.items():
        files = stored.get(name)
        if files is None:
            raise CheckpointError(
                f"{index}: tensor '{name}' is listed in shard {fname!r} but that file does not "
                "contain it. The index and the shards do not match."
            )
        if files[0] != fname:
            raise CheckpointError(
                f"{index}: tensor '{name}' is listed in shard {fname!r} but stored in "
                f"{files[0]!r}. The index and the shards do not match: fix its weight_map entry"
            )
    unlisted = [(name, files[0]) for name, files in stored.items() if name not in weight_map]
    if not unlisted:
        return []
    shown = ", ".join(f"'{n}' ({f})" for n, f in unlisted[:3])
    more = f" and {len(unlisted) - 3} more" if len(unlisted) > 3 else ""
    what = "1 tensor is" if len(unlisted) == 1 else f"{len(unlisted)} tensors are"
    return [
        f"{label}: {what} in a shard but not listed in {index_name}: {shown}{more}; included, "
        "since transformers loads it from the shard too (add it to the index to silence this)"
    ]


def _read_json(path: Path, label: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # ValueError: not UTF-8 or not JSON
        raise CheckpointError(f"{label}: cannot read {path}: {first_line(e)}") from None


def _load_bin(path: Path) -> dict:
    import pickle

    import torch

    try:
        # weights_only: never execute code from a checkpoint; mmap: do not load it into RAM.
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to load: it contains Python objects other than tensors, and rejuv "
            "only loads .bin files with torch.load(weights_only=True). Convert it to safetensors "
            "with a tool you trust."
        ) from e
    except Exception as e:  # zip/format errors from torch
        raise CheckpointError(f"{path}: cannot read this PyTorch checkpoint: {e}") from e
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors (a state_dict)")
    return state


def _code_of_torch(dtype, path: Path, name: str) -> str:
    from rejuv_cli.checkpoint.dtypes import code_of

    try:
        return code_of(dtype)
    except ValueError as e:
        raise CheckpointError(f"{path}: tensor '{name}' has unsupported dtype {dtype}") from e


def _torch_uint8():
    import torch

    return torch.uint8
