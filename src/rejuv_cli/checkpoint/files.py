"""Everything in the output that is not tensor data: SFT's side files and config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from rejuv_cli.checkpoint.dtypes import CONFIG_NAME
from rejuv_cli.checkpoint.links import dangling, dangling_link_error
from rejuv_cli.jsonio import dumps

if TYPE_CHECKING:
    from rejuv_cli.checkpoint.source import ModelSource

# Weight files and indexes are rewritten, never copied; README.md becomes our model card.
_NOT_COPIED_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".msgpack",
    ".gguf",
    ".onnx",
    ".index.json",
)
# adapter_config.json: a LoRA adapter's (the output is a full checkpoint, not an adapter).
_NOT_COPIED_NAMES = {"README.md", "rejuv.json", "config.json", "adapter_config.json"}


def side_file_paths(sft_dir: Path) -> list[Path]:
    """SFT's tokenizer, chat template, generation config, license, ... (top level only): the
    files the output gets a copy of.

    Sub-directories (e.g. `original/` with consolidated weights) are left out: they are not
    part of the Hugging Face layout. In a Hub cache the files are links to blobs; a link whose
    blob is gone is an error (skipping it would silently drop e.g. the tokenizer).
    """

    paths = []
    for path in sorted(sft_dir.iterdir()):
        name = path.name
        if name.startswith(".") or name in _NOT_COPIED_NAMES or name.endswith(_NOT_COPIED_SUFFIXES):
            continue
        if dangling(path):
            raise dangling_link_error(sft_dir, name, "SFT", "file")
        if path.is_file():
            paths.append(path)
    return paths


def copy_side_files(sft_dir: Path, out_dir: Path) -> list[str]:
    """Copy the side files (see side_file_paths) into `out_dir`; returns their names."""
    paths = side_file_paths(sft_dir)
    for path in paths:
        shutil.copyfile(path, out_dir / path.name)  # follows Hub-cache links: a regular file
    return [path.name for path in paths]


def copy_side_dirs(dirs: list[Path], out_dir: Path) -> list[str]:
    """copy_side_files from each of `dirs`, the first directory's file winning where two have
    the same name (a LoRA adapter's tokenizer over its BASE's); returns the names copied."""
    names: set[str] = set()
    for d in reversed(dirs):
        names.update(copy_side_files(d, out_dir))
    return sorted(names)


def write_config(sft: ModelSource, out_dir: Path, dtype_code: str | None,
                 quantization_config: dict | None = None) -> None:  # fmt: skip
    """config.json from SFT's (byte for byte when nothing changes); with an explicit output
    dtype, its dtype field says so. A quantized input's `quantization_config` is dropped:
    the output holds plain floats (FP8 inputs are read dequantized), unless the output is
    written in FP8 (`--dtype fp8`: `quantization_config` is then the FP8 input's, from
    `FusePlan.quantization_config`, and is declared, also when SFT itself is not FP8)."""
    from rejuv_cli.checkpoint.fp8 import output_config

    src = sft.meta_root / "config.json"
    config = json.loads(src.read_text(encoding="utf-8"))
    fp8_out = quantization_config is not None
    if dtype_code is None and "quantization_config" not in config and not fp8_out:
        shutil.copyfile(src, out_dir / "config.json")
        return
    config = output_config(config, fp8_out, quantization_config)
    if dtype_code is None:
        (out_dir / "config.json").write_text(dumps(config, "config.json", sort_keys=True) + "\n")
        return
    keys = [k for k in ("torch_dtype", "dtype") if k in config] or ["torch_dtype"]
    for key in keys:
        config[key] = CONFIG_NAME[dtype_code]
    (out_dir / "config.json").write_text(dumps(config, "config.json", sort_keys=True) + "\n")
