"""The input side as an interface: a tensor source is anything with a tensor table and a
range read. The executor, the scorers and the weight diagnostics only stream through
`checkpoint.stream`, so every input kind is one class here and nothing else changes:

  Checkpoint (reader.py)      HF directories: safetensors (sharded or not) or .bin
  LoraAdapter (lora.py)       a PEFT LoRA adapter over BASE: θ_base + s·B·A, row range by range
  DcpCheckpoint (dcp.py)      torch.distributed.checkpoint directories (.metadata + *.distcp)
  FsdpShards (fsdp.py)        verl's FSDP rank files (model_world_size_W_rank_R.pt)
  Fp8Checkpoint (fp8.py)      block-scaled FP8 releases, read dequantized to float32

`formats.open_source` detects which one a directory is, by the files present.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

from rejuv_cli.checkpoint.safetensors_file import TensorInfo

# format key -> what people call it (inspect's table, the model card)
FORMATS = {
    "safetensors": "Hugging Face safetensors",
    "bin": "Hugging Face PyTorch .bin",
    "peft-lora": "PEFT LoRA adapter",
    "dcp": "torch distributed checkpoint (DCP)",
    "fsdp": "verl FSDP shards",
    "fp8-block": "FP8 with 128x128 block scales",
}


def describe_line(facts: dict) -> str:
    """One line for people from a source's `describe()`: the format's name, then its facts
    (e.g. "verl FSDP shards: world_size 2, fsdp_version 2")."""
    name = FORMATS.get(facts.get("format"), str(facts.get("format")))
    shown = []
    for key, value in facts.items():
        if key == "format" or value in (None, [], {}, ""):
            continue
        if isinstance(value, list):
            value = ", ".join(map(str, value[:8])) + (
                f" (+{len(value) - 8})" if len(value) > 8 else ""
            )
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items() if not isinstance(v, dict))
        shown.append(f"{key} {value}")
    return f"{name}: {'; '.join(shown)}" if shown else name


@runtime_checkable
class TensorSource(Protocol):
    """Names, dtypes and shapes of tensors, and a read of any flat element range.

    `tensors` maps name -> TensorInfo (dtype as a safetensors code, shape; `file`/`offset`
    only order reads and may be placeholders for sources that are not files), in storage
    order. `read_into` copies elements [start, stop) of the flattened tensor, as raw
    little-endian bytes, into `out` (a writable uint8 numpy array of exactly
    (stop - start) * itemsize bytes).
    """

    label: str  # "BASE" / "SFT": used in every message
    tensors: Mapping[str, TensorInfo]

    def read_into(self, name: str, start: int, stop: int, out) -> None: ...


class ModelSource:
    """What the commands open: a tensor source that is a whole model, with its config.

    Subclasses set, in `__init__` or `open`:
      root       the input directory as the user gave it (after Hub resolution)
      label      "BASE" / "SFT" / "MODEL" / "CANDIDATE": used in every message
      format     one of FORMATS' keys (formats.py)
      tensors    name -> TensorInfo, the model's state-dict names as transformers saves them
                 (what `save_pretrained` would write), in the order to read them
      config     the model's parsed config.json ({} when there is none)
      meta_root  the directory whose config.json, tokenizer files, chat template and
                 generation config the output takes (checkpoint/files.py side files), or None
      warnings   found while opening, shown once by the command
    and implement `read_into` (TensorSource) and `describe`.
    """

    root: Path
    label: str
    format: str
    tensors: dict[str, TensorInfo]
    config: dict
    meta_root: Path | None
    warnings: list[str]

    def read_into(self, name: str, start: int, stop: int, out) -> None:
        raise NotImplementedError

    def describe(self) -> dict:
        """JSON-ready facts about the input form, for `rejuv inspect`, rejuv.json and the model
        card: {"format": ...} plus what the format has (world size, adapter rank and targets,
        quantization block, ...)."""
        return {"format": self.format}

    def side_dirs(self) -> list[Path]:
        """Directories whose side files (tokenizer, chat template, generation config, ...)
        the output gets, the first one's winning where two hold the same name."""
        return [self.meta_root] if self.meta_root is not None else []

    def input_json(self, structured: bool = True) -> dict:
        """What reports record about the input: {"format": ..., "input": describe()} in
        rejuv.json; `structured=False` (diagnose and sweep reports, whose schema declares
        every key) gives "input" as one line for people (formats.describe_line)."""
        facts = self.describe()
        if structured:
            return {"format": facts["format"], "input": facts}
        return {"format": facts["format"], "input": describe_line(facts)}

    def weight_files(self) -> list[Path]:
        """The files tensor bytes are read from (sizes on disk in `rejuv inspect`)."""
        return sorted({t.file for t in self.tensors.values()})

    def total_bytes(self) -> int:
        """Bytes of every tensor as `read_into` returns them."""
        return sum(t.nbytes for t in self.tensors.values())

    def close(self) -> None:
        """Release open files and maps; the source is not read after this."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
