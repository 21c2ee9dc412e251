"""The files that tell input forms apart, and where inputs without a config.json take it from.

Shared by the dispatcher (formats.py) and the readers (lora.py, dcp.py, fsdp.py), which
formats.py imports: kept here so that no reader imports the dispatcher.
"""

from __future__ import annotations

import re
from pathlib import Path

from rejuv_cli.checkpoint.config import read_config
from rejuv_cli.checkpoint.source import ModelSource
from rejuv_cli.errors import CheckpointError, UsageError

ADAPTER_CONFIG = "adapter_config.json"  # PEFT
DCP_METADATA = ".metadata"  # torch.distributed.checkpoint
FSDP_RANK_FILE = re.compile(r"^model_world_size_(\d+)_rank_(\d+)\.pt$")  # verl
# Where trainers that save no config.json next to the weights keep it (verl: huggingface/).
META_SUBDIRS = ("huggingface",)
# A tokenizer saved next to an adapter (TRL does, with the chat template).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def meta_dir(root: Path, label: str, config_from: Path | None, what: str) -> Path:
    """The directory a sharded training checkpoint takes config.json and tokenizer from:
    `config_from` when given, else root itself or root/huggingface (verl) when it has a
    config.json. `what`: the format, for the error when there is none."""
    if config_from is not None:
        return _checked_config_dir(config_from, label)
    for cand in (root, *(root / d for d in META_SUBDIRS)):
        if (cand / "config.json").is_file():
            return cand
    raise CheckpointError(
        f"{label} {root} is a {what} without a config.json (looked in {root} and "
        f"{root / META_SUBDIRS[0]}); pass --config-from DIR, a directory with the model's "
        "config.json and tokenizer (e.g. the base model's)"
    )


def use_config_from(source: ModelSource, config_from: Path) -> None:
    """Make `source` take config.json and side files from `config_from`."""
    source.meta_root = _checked_config_dir(config_from, source.label)
    source.config = read_config(source.meta_root / "config.json", source.label)


def _checked_config_dir(path: Path, label: str) -> Path:
    if not (path / "config.json").is_file():
        raise UsageError(f"--config-from {path}: no config.json there (for {label})")
    return path
