"""verl FSDP rank files on disk: which files make a checkpoint (fsdp_config.json and the file
names), loading one safely, and where a mapped tensor's bytes lie in its file (fsdp.py reads
them with pread, so no page of a map is touched and resident memory does not grow)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from rejuv_cli.checkpoint.input_files import FSDP_RANK_FILE
from rejuv_cli.errors import CheckpointError, first_line

FSDP_CONFIG = "fsdp_config.json"


def world_size(root: Path, label: str) -> tuple[int, int | None]:
    """(W, FSDP version or None) from fsdp_config.json, or from the rank file names when there
    is none; CheckpointError naming the file when the rank files are not exactly
    model_world_size_W_rank_0..W-1.pt."""
    found = sorted((int(m[1]), int(m[2]), p.name) for p in root.iterdir()
                   if (m := FSDP_RANK_FILE.match(p.name)))  # fmt: skip
    where = f"{label} {root}"
    version, world = None, None
    if (root / FSDP_CONFIG).is_file():
        world, version = read_fsdp_config(root / FSDP_CONFIG)
        odd = next((n for w, _, n in found if w != world), None)
        if odd is not None:
            raise CheckpointError(
                f"{where}: {odd} is for another world size than the {world} in {FSDP_CONFIG}; "
                "one checkpoint per directory"
            )
    else:
        sizes = sorted({w for w, _, _ in found})
        if len(sizes) > 1:
            names = ", ".join(next(n for w2, _, n in found if w2 == w) for w in sizes)
            raise CheckpointError(f"{where}: rank files of world sizes {sizes} ({names}) and no "
                                  f"{FSDP_CONFIG}; one checkpoint per directory")  # fmt: skip
        world = sizes[0]
    ranks = {r: n for w, r, n in found if w == world}
    missing = next((r for r in range(world) if r not in ranks), None)
    if missing is not None:
        raise CheckpointError(
            f"{where}: model_world_size_{world}_rank_{missing}.pt is missing (world size {world} "
            "needs rank files 0.."
            f"{world - 1}); was the checkpoint copied completely?"
        )
    extra = next((n for r, n in ranks.items() if r >= world), None)
    if extra is not None:
        raise CheckpointError(f"{where}: {extra} is a rank outside world size {world}; "
                              "remove it or use the directory it belongs to")  # fmt: skip
    return world, version


def read_fsdp_config(path: Path) -> tuple[int, int | None]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: cannot read: {first_line(e)}") from None
    world = data.get("world_size") if isinstance(data, dict) else None
    version = data.get("FSDP_version") if isinstance(data, dict) else None
    if not _positive_int(world) or not (version is None or _positive_int(version)):
        raise CheckpointError(f"{path}: expected {{\"FSDP_version\": 1|2, \"world_size\": W}} "
                              f"(got {str(data)[:80]})")  # fmt: skip
    return world, version


def _positive_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0


def load_rank(path: Path) -> dict:
    """One rank file, mapped: weights_only with the DTensor classes allowlisted."""
    import logging
    import pickle

    import torch
    import torch.distributed.tensor  # noqa: F401  (allowlists the DTensor classes)

    # A DeviceMesh unpickled without its process groups logs a warning that is no concern here.
    log = logging.getLogger("torch.distributed.device_mesh")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f" ({found[1]})" if found else ""
        raise CheckpointError(
            f"{path}: refused to load: it holds Python objects other than tensors and DTensors"
            f"{what}; rejuv loads rank files with torch.load(weights_only=True) only"
        ) from None
    except Exception as e:  # zip/format errors from torch: truncated, corrupt, not torch.save
        raise CheckpointError(f"{path}: cannot read this rank file: {first_line(e)}") from None
    finally:
        log.setLevel(level)
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"{path}: expected a state dict (names -> tensors), got "
                              f"{type(state).__name__}")  # fmt: skip
    return state


def mapped_regions(path: Path) -> list[tuple[int, int, int]]:
    """(start, end, file offset) of each mapping of `path` in this process (Linux
    /proc/self/maps); [] where that cannot be read, and pieces are then copied from the map."""
    real = os.path.realpath(path)
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            lines = [ln.split(maxsplit=5) for ln in f if ln.rstrip().endswith(real)]
    except OSError:
        return []
    out = []
    for parts in lines:
        if len(parts) == 6 and parts[5].strip() == real:
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append((lo, hi, int(parts[2], 16)))
    return out


def file_offset(t, regions: list[tuple[int, int, int]]) -> int | None:
    """The byte offset in its file of mapped tensor `t`'s first element, or None."""
    ptr, n = t.data_ptr(), t.numel() * t.element_size()
    for lo, hi, off in regions:
        if lo <= ptr and ptr + n <= hi:
            return ptr - lo + off
    return None


def pread_exact(fds: dict[Path, int], path: Path, offset: int, view, what: str) -> None:
    """Fill `view` (a writable uint8 numpy array) with the bytes of `path` at `offset`; `fds`
    caches open descriptors by path; `what` names the read in errors."""
    try:
        fd = fds.get(path)
        if fd is None:
            fd = fds[path] = os.open(path, os.O_RDONLY)
        buf, pos = memoryview(view).cast("B"), 0
        while pos < len(buf):
            n = os.preadv(fd, [buf[pos:]], offset + pos)
            if n <= 0:
                break
            pos += n
    except OSError as e:
        raise CheckpointError(
            f"{what}: cannot read {path}: {e.strerror or e}; check the disk or the mount"
        ) from None
    if pos < len(buf):
        raise CheckpointError(f"{path}: unexpected end of file ({what}); truncated?")
