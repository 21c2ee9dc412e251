"""Everything in the output that is not tensor data: SFT's side files, config, card, provenance,
and the atomic output directory.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rejuv_cli.checkpoint.dtypes import CONFIG_NAME
from rejuv_cli.errors import OutputError

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


def copy_side_files(sft_dir: Path, out_dir: Path) -> list[str]:
    """Copy SFT's tokenizer, chat template, generation config, license, ... (top level only).

    Returns the copied file names. Sub-directories (e.g. `original/` with consolidated
    weights) are not copied: they are not part of the Hugging Face layout.
    """
    copied = []
    for path in sorted(sft_dir.iterdir()):
        name = path.name
        if name.startswith(".") or not path.is_file() or name in _NOT_COPIED_NAMES:
            continue
        if name.endswith(_NOT_COPIED_SUFFIXES):
            continue
        shutil.copyfile(path, out_dir / name)  # follows Hub-cache symlinks to the blob
        copied.append(name)
    return copied


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
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def check_output_dir(out: Path, inputs: dict[str, Path], overwrite: bool) -> None:
    """Refuse an OUT that exists (without --overwrite) or overlaps an input directory."""
    real_out = out.resolve()
    for label, path in inputs.items():
        real_in = path.resolve()
        if real_out == real_in or real_out.is_relative_to(real_in):
            raise OutputError(
                f"--out {out} is inside {label} ({path}); choose a directory outside it"
            )
        if real_in.is_relative_to(real_out):
            raise OutputError(
                f"{label} ({path}) is inside --out {out}; writing there would destroy the input"
            )
    if out.exists() and not overwrite:
        raise OutputError(f"--out {out} already exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} exists and is not a directory")


@contextmanager
def atomic_output_dir(out: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `out`; on success it replaces `out`, on any error or
    interrupt it is removed, so a half-written checkpoint never appears at `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.rejuv-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.parent / f".{out.name}.rejuv-old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
