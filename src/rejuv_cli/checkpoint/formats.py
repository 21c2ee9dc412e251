"""Which kind of input a directory is, by the files present, and opening it as a ModelSource.

Checked in this order (the first that matches wins):
  adapter_config.json                      a PEFT LoRA adapter (needs BASE)        lora.py
  .metadata (+ *.distcp)                   torch.distributed.checkpoint (DCP)      dcp.py
  model_world_size_W_rank_R.pt             verl FSDP shards                        fsdp.py
  anything else                            a Hugging Face checkpoint               reader.py
and a Hugging Face checkpoint with block-scaled FP8 weights (`weight_scale_inv` tensors and a
`quantization_config` with `weight_block_size`) is read through fp8.py, dequantized.
"""

from __future__ import annotations

from pathlib import Path

from rejuv_cli.checkpoint.input_files import (
    ADAPTER_CONFIG,
    DCP_METADATA,
    FSDP_RANK_FILE,
    use_config_from,
)
from rejuv_cli.checkpoint.source import ModelSource
from rejuv_cli.errors import CheckpointError, UsageError


def detect_format(root: Path) -> str:
    """The format key of directory `root` by the files present (no file is read); "hf" for a
    Hugging Face checkpoint (safetensors, .bin or FP8: told apart when opened)."""
    if (root / ADAPTER_CONFIG).is_file():
        return "peft-lora"
    if (root / DCP_METADATA).is_file():
        return "dcp"
    if root.is_dir() and any(FSDP_RANK_FILE.match(p.name) for p in root.iterdir()):
        return "fsdp"
    return "hf"


def open_source(root: Path, label: str, base: ModelSource | None = None,
                config_from: Path | None = None) -> ModelSource:  # fmt: skip
    """Open `root` as whatever it is. `base`: the opened BASE, which a LoRA adapter is read
    against (required for one). `config_from`: a directory with config.json and tokenizer
    for inputs that carry none (DCP, FSDP shards without huggingface/, an adapter whose
    vocabulary differs from BASE)."""
    if not root.is_dir():
        raise CheckpointError(f"{label} {root} is not a directory")
    kind = detect_format(root)
    if kind == "peft-lora":
        if base is None:
            raise UsageError(
                f"{label} {root} is a PEFT LoRA adapter ({ADAPTER_CONFIG}); it needs the model "
                "it was trained on as BASE"
            )
        from rejuv_cli.checkpoint.lora import LoraAdapter

        return LoraAdapter.open(root, label, base, config_from)
    if kind == "dcp":
        from rejuv_cli.checkpoint.dcp import DcpCheckpoint

        return DcpCheckpoint.open(root, label, config_from)
    if kind == "fsdp":
        from rejuv_cli.checkpoint.fsdp import FsdpShards

        return FsdpShards.open(root, label, config_from)
    from rejuv_cli.checkpoint.fp8 import is_block_fp8
    from rejuv_cli.checkpoint.reader import Checkpoint

    ckpt = Checkpoint.open(root, label)
    if config_from is not None:
        use_config_from(ckpt, config_from)
    if is_block_fp8(ckpt):
        from rejuv_cli.checkpoint.fp8 import Fp8Checkpoint

        return Fp8Checkpoint(ckpt)
    return ckpt


def open_models(paths: dict[str, Path], config_from: Path | None) -> dict[str, ModelSource]:
    """Open role -> directory ("base" first: an adapter given for another role is read against
    it); label = the role in capitals. Closes what it opened when one fails."""
    opened: dict[str, ModelSource] = {}
    try:
        for role in sorted(paths, key=lambda r: r != "base"):
            opened[role] = open_source(paths[role], role.upper(), opened.get("base"), config_from)
    except BaseException:
        for source in opened.values():
            source.close()
        raise
    return {role: opened[role] for role in paths}
