"""A Hugging Face directory for forward passes, from an input that is not one.

transformers (and accelerate's offloading) load models from a checkpoint directory. Weight-space
work streams any tensor source directly; forward passes (diagnose's output and unit metrics,
the data scorers, sweep) need a directory, so a LoRA adapter, DCP or FSDP shards, or an FP8
release are first written out as one: the tensors the source presents, streamed chunk by chunk
in their `--dtype auto` dtype (the dtype the fused output would have), config.json without a
`quantization_config` (FP8 is read dequantized), and the tokenizer and chat template files.
That costs disk (the model's size at its output dtype) but no memory beyond a few chunks.

The directory lives in the system temporary directory (TMPDIR), named
`.rejuv-staged.rejuv-tmp-HOST-PID`, and is removed when the source is closed; one left by a
killed run is removed by the next run on the same host, as for outputs (checkpoint/output.py).
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import tempfile
from pathlib import Path

from rejuv_cli.checkpoint.output import TMP_TAG, note_to_stderr, recover_leftovers, sibling
from rejuv_cli.checkpoint.source import ModelSource
from rejuv_cli.errors import OutputError
from rejuv_cli.jsonio import dumps

STAGE_SHARD_BYTES = 5 * 1024**3


def loadable_dir(source: ModelSource) -> Path:
    """A directory transformers can load `source` from, for forward passes: the input itself
    when it is a Hugging Face checkpoint with its own config.json, else a copy written once
    (`stage`) and removed by `drop_staged` (or at exit)."""
    if source.format in ("safetensors", "bin") and source.meta_root == source.root:
        return source.root
    staged = getattr(source, "_staged", None)
    if staged is None:
        staged = source._staged = stage(source)
        atexit.register(unstage, staged)
    return staged


def drop_staged(source: ModelSource) -> None:
    """Remove the copy `loadable_dir` wrote for `source`, if any."""
    staged = getattr(source, "_staged", None)
    if staged is not None:
        unstage(staged)
        source._staged = None


def _staging_name() -> Path:
    """What staging directories are siblings of (output.sibling): TMPDIR/rejuv-staged."""
    return Path(tempfile.gettempdir()) / "rejuv-staged"


def staging_root() -> Path:
    """This process's staging directory (not created), in the system temporary directory."""
    return sibling(_staging_name(), TMP_TAG)


def stage(source: ModelSource) -> Path:
    """Write `source` as a Hugging Face checkpoint under this process's staging directory;
    returns that checkpoint's directory. Removed by `unstage(path)`."""
    from rejuv_cli.checkpoint.disk import check_free_space
    from rejuv_cli.checkpoint.files import copy_side_dirs
    from rejuv_cli.checkpoint.writer import OutEntry, plan_shards, write_index

    root = staging_root()
    recover_leftovers(_staging_name(), note_to_stderr)  # staged models of killed runs
    out = root / source.label.lower()
    entries = [OutEntry(n, t.out_dtype or t.dtype, t.shape) for n, t in source.tensors.items()]
    shards = plan_shards(entries, STAGE_SHARD_BYTES)
    try:
        out.mkdir(parents=True, exist_ok=False)
        check_free_space(out, sum(s.file_bytes for s in shards) + 65_536, "TMPDIR")
        for shard in shards:
            with open(out / shard.filename, "wb") as f:
                f.write(shard.header_bytes())
                for entry in shard.ordered():
                    _write_tensor(source, entry, f)
        write_index(out, shards)
        config = {k: v for k, v in source.config.items() if k != "quantization_config"}
        (out / "config.json").write_text(dumps(config, "config.json", sort_keys=True) + "\n")
        copy_side_dirs(source.side_dirs(), out)
    except OSError as e:
        unstage(out)
        raise OutputError(
            f"{source.label}: cannot write the temporary copy that forward passes load from "
            f"{out}: {e.strerror or e}; set TMPDIR to a filesystem with room for the model"
        ) from None
    except BaseException:
        unstage(out)
        raise
    return out


def _write_tensor(source: ModelSource, entry, f) -> None:
    """Append tensor `entry.name` of `source` to `f` in `entry.dtype`, a few rows at a time."""
    import torch

    from rejuv_cli.checkpoint.dtypes import ITEMSIZE, torch_dtype
    from rejuv_cli.checkpoint.stream import CHUNK_ELEMENTS, row_chunks

    info = source.tensors[entry.name]
    for start, stop, _ in row_chunks(info.shape, None, CHUNK_ELEMENTS["cpu"]):
        raw = torch.empty((stop - start) * ITEMSIZE[info.dtype], dtype=torch.uint8)
        source.read_into(entry.name, start, stop, raw.numpy())
        values = raw.view(torch_dtype(info.dtype)).to(torch_dtype(entry.dtype))
        f.write(values.view(torch.uint8).numpy())


def unstage(path: Path) -> None:
    """Remove a staged checkpoint, and the staging directory once it is empty."""
    shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(OSError):  # another staged model is still there, or it is gone
        path.parent.rmdir()
