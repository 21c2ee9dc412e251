"""Everything in the output that is not tensor data: SFT's side files and config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rejuv_cli.checkpoint.dtypes import CONFIG_NAME
from rejuv_cli.checkpoint.links import dangling, dangling_link_error
from rejuv_cli.jsonio import dumps

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
_NOT_COPIED_NAMES = {"README.md", "rejuv.json", "config.json"}


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


def write_config(sft_dir: Path, out_dir: Path, dtype_code: str | None) -> None:
    """config.json from SFT; with an explicit output dtype, its dtype field says so."""
    src = sft_dir / "config.json"
    if dtype_code is None:
        shutil.copyfile(src, out_dir / "config.json")
        return
    config = json.loads(src.read_text(encoding="utf-8"))
    keys = [k for k in ("torch_dtype", "dtype") if k in config] or ["torch_dtype"]
    for key in keys:
        config[key] = CONFIG_NAME[dtype_code]
    (out_dir / "config.json").write_text(dumps(config, "config.json", sort_keys=True) + "\n")
