"""A DCP directory's .metadata, unpickled safely, and which of its entries are the model.

`.metadata` is a plain pickle (torch writes it with pickle.dump and reads it with pickle.load,
which can run any code). It is unpickled here with an allowlist of the classes it holds
(ALLOWED, checked on checkpoints torch 2.13 writes), and anything else is refused by name.
"""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

from rejuv_cli.errors import CheckpointError, first_line

_META = "torch.distributed.checkpoint.metadata"
# Every global a .metadata pickle holds (found with a recording Unpickler on torch 2.13's own
# saves, flat and nested, with bytes entries), plus the dtypes (`torch.<dtype>`) and the other
# pathlib classes a checkpoint_id can be (StorageMeta.checkpoint_id; 3.13 moved them).
ALLOWED = frozenset(
    {(_META, n) for n in ("Metadata", "TensorStorageMetadata", "ChunkStorageMetadata",
                          "TensorProperties", "BytesStorageMetadata", "MetadataIndex",
                          "StorageMeta", "_MEM_FORMAT_ENCODING")}
    | {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
       ("torch.serialization", "_get_layout")}  # torch.strided etc. pickle as _get_layout(name)
    | {(m, n) for m in ("pathlib", "pathlib._local")
       for n in ("PosixPath", "PurePosixPath", "PureWindowsPath")}
)  # fmt: skip
_PATH_AS = {"WindowsPath": "PureWindowsPath"}  # a Windows path cannot be made on Linux
# Top-level keys trainers save next to the model; their entries are never model weights.
NON_MODEL = frozenset({"optimizer", "optim", "optimizers", "lr_scheduler", "lr_schedulers",
                       "scheduler", "dataloader", "train_state", "trainer_state", "extra_state",
                       "rng", "rng_state"})  # fmt: skip


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, f, path: Path):
        super().__init__(f)
        self.path = path

    def find_class(self, module: str, name: str):
        if module.startswith("pathlib") and name in _PATH_AS:
            name = _PATH_AS[name]
        if (module, name) in ALLOWED or (module == "torch" and _is_dtype(name)):
            return super().find_class(module, name)
        raise CheckpointError(
            f"{self.path}: refused to unpickle: it references {module}.{name}, which DCP "
            "metadata never holds; rejuv reads .metadata with an allowlist of torch's "
            "checkpoint classes only (plain pickle could run any code)"
        )


def _is_dtype(name: str) -> bool:
    import torch

    return isinstance(getattr(torch, name, None), torch.dtype)


def read_metadata(path: Path):
    """The Metadata of a DCP directory's .metadata, unpickled with the allowlist."""
    from torch.distributed.checkpoint.metadata import Metadata

    try:
        with open(path, "rb") as f:
            meta = _MetadataUnpickler(f, path).load()
    except CheckpointError:
        raise
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror or e}") from None
    except Exception as e:  # truncated or not a pickle: EOFError, UnpicklingError, ...
        raise CheckpointError(
            f"{path}: not a valid DCP metadata file ({type(e).__name__}: {first_line(e)}); "
            "was the checkpoint written completely?"
        ) from None
    if not isinstance(meta, Metadata) or not isinstance(meta.state_dict_metadata, dict):
        raise CheckpointError(f"{path}: holds a {type(meta).__name__}, not DCP Metadata")
    return meta


def model_names(entries: dict[str, bool], planner_data) -> tuple[dict[str, str], Counter]:
    """Which saved entries are model tensors, and their state-dict names.

    entries: flattened name -> whether it is a tensor; planner_data: flattened name -> key
    path in the saved dict (None or missing: the name itself, at the top level). When some
    path starts with "model" and goes deeper, the model is that sub-dict and its names are the
    paths below "model"; otherwise the model is the top-level tensors not named in NON_MODEL.
    Returns (flattened name -> model name, Counter of skipped entries by top-level key; "(not
    tensors)" marks non-tensor entries of the model itself).
    """
    paths = {}
    for fqn in entries:
        p = planner_data.get(fqn) if isinstance(planner_data, dict) else None
        ok = isinstance(p, tuple | list) and p and ".".join(map(str, p)) == fqn
        paths[fqn] = tuple(map(str, p)) if ok else (fqn,)
    nested = any(len(p) > 1 and p[0] == "model" for p in paths.values())
    names: dict[str, str] = {}
    skipped: Counter = Counter()
    for fqn, p in paths.items():
        group = p[0] if len(p) > 1 else None
        if nested:
            take, name = group == "model", fqn[len("model.") :]
        else:
            take, name = group is None and fqn.split(".")[0] not in NON_MODEL, fqn
        if take and entries[fqn]:
            names[fqn] = name
        elif take:
            skipped[f"{group or 'model'} (not tensors)"] += 1
        else:
            skipped[group or fqn.split(".")[0]] += 1
    return names, skipped
