"""A PEFT LoRA adapter read as the SFT model over BASE: θ_sft = θ_base + s·B·A, row range by row
range, so memory holds one tensor's A and B and one chunk, never a whole delta.

Adapter keys (peft/utils/save_and_load.py, research-19 A.3), after the `base_model.model.` prefix:
  <m>.lora_A.weight [r, in], <m>.lora_B.weight [out, r]   <m>.weight += s·B·A ([in, out]: Conv1D)
  <m>.lora_embedding_A [r, vocab], <m>.lora_embedding_B [dim, r]    <m>.weight += s·(B·A)ᵀ
  <m>.lora_B.bias [out]                                   <m>.bias += s·lora_B.bias
  <m>.token_adapter.trainable_tokens_delta [n, dim]       rows `trainable_token_indices` of
                                                          <m>.weight are replaced by these rows
  anything else (modules_to_save copies, saved biases and embeddings; `.base_layer.` dropped)
                                                          replaces BASE's tensor of that name
Every other tensor is BASE's, read from BASE unchanged.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from rejuv_cli.checkpoint.config import vocab_size
from rejuv_cli.checkpoint.dtypes import ITEMSIZE, torch_dtype
from rejuv_cli.checkpoint.input_files import ADAPTER_CONFIG, TOKENIZER_FILES, use_config_from
from rejuv_cli.checkpoint.lora_config import LoraSettings, read_adapter_config
from rejuv_cli.checkpoint.lora_keys import PREFIX, AdapterWeights, Edit, plan_edits
from rejuv_cli.checkpoint.safetensors_file import TensorInfo
from rejuv_cli.checkpoint.source import ModelSource
from rejuv_cli.errors import CheckpointError

# Rows of s·B·A are computed BLOCK_ELEMENTS at a time (2 MiB of float32): the CPU stream's chunk
# (checkpoint/stream.py CHUNK_ELEMENTS["cpu"]), so a CPU chunk is one block, one GEMM.
BLOCK_ELEMENTS = 1 << 19


class LoraAdapter(ModelSource):
    """BASE's tensor table with the adapter's tensors applied (see the module docstring)."""

    @classmethod
    def open(cls, root: Path, label: str, base: ModelSource,
             config_from: Path | None) -> LoraAdapter:  # fmt: skip
        settings = read_adapter_config(root / ADAPTER_CONFIG, label)
        weights = AdapterWeights.open(root, label)
        edits, warnings = plan_edits(weights, settings, base, label)
        return cls(root, label, base, settings, weights, edits, warnings, config_from)

    def __init__(self, root, label, base, settings, weights, edits, warnings, config_from):
        self.root, self.label, self.format = root, label, "peft-lora"
        self.base, self.settings, self.weights = base, settings, weights
        self.edits: dict[str, Edit] = edits
        self.config, self.meta_root = dict(base.config), base.meta_root
        self.warnings: list[str] = list(warnings)
        if config_from is not None:
            use_config_from(self, config_from)
        _check_vocabulary(self.config, edits, base, root, label)
        self.tensors = {}
        for name, info in base.tensors.items():
            e = edits.get(name)
            if e is None:
                self.tensors[name] = info
                continue
            # file/offset stay BASE's: they only order reads.
            nbytes = math.prod(e.shape) * ITEMSIZE[e.dtype]
            self.tensors[name] = TensorInfo(name, e.dtype, e.shape, info.file, info.offset,
                                            nbytes, e.out_dtype)  # fmt: skip
        self._held: tuple[str, dict] = ("", {})  # (tensor name, adapter key -> small tensor)
        self._block: tuple = (None, None)  # ((tensor name, block index), its delta rows)
        self._raw = np.empty(0, dtype=np.uint8)  # BASE's bytes of the rows being read
        self._delta_buf = None  # float32 block that s·B·A is computed in, reused

    # ---- reading -------------------------------------------------------------------------
    def read_into(self, name: str, start: int, stop: int, out) -> None:
        """Elements [start, stop) of `name` (flattened) as raw bytes of its table dtype."""
        edit = self.edits.get(name)
        if edit is None:
            self.base.read_into(name, start, stop, out)
            return
        if stop <= start:
            return
        import torch

        row_len = math.prod(edit.shape[1:]) if len(edit.shape) > 1 else 1
        r0, r1 = start // row_len, -(-stop // row_len)
        plain = edit.lora is not None and not (edit.whole or edit.lora_bias or edit.token_rows)
        if plain and start == r0 * row_len and stop == r1 * row_len:
            # the common case (whole rows of a LoRA target, as streams read them): base rows
            # and delta summed straight into `out`, no temporaries (freed chunk-sized blocks
            # would stay in glibc's arenas and grow the process by ~70 MB on the bench pair)
            rows = torch.from_numpy(out).view(torch.float32).view(r1 - r0, -1)
            rows.copy_(self._base_rows(name, r0, r1).reshape(r1 - r0, -1))
            rows.add_(self._delta(name, edit, r0, r1).reshape(r1 - r0, -1))
            return
        rows = self._rows(name, edit, r0, r1).reshape(-1)
        flat = rows[start - r0 * row_len : stop - r0 * row_len].contiguous()
        out[:] = flat.view(torch.uint8).numpy()

    def _rows(self, name: str, e: Edit, r0: int, r1: int):
        """Rows [r0, r1) of tensor `name` as SFT has them, in the table dtype."""
        x = self.weights.rows(e.whole, r0, r1) if e.whole else self._base_rows(name, r0, r1)
        if e.lora is not None:
            x = x.float() + self._delta(name, e, r0, r1)
        elif e.lora_bias is not None:
            x = x.float() + self._small(name, e.lora_bias)[r0:r1].float() * e.scale
        if e.token_rows is not None:
            x = x.to(torch_dtype(e.dtype)).clone()
            replace_rows(x, self._small(name, e.token_rows), e.token_indices, r0)
        return x.to(torch_dtype(e.dtype))

    def _delta(self, name: str, e: Edit, r0: int, r1: int):
        """Rows [r0, r1) of s·B·A as `name` stores it ([r1-r0, *shape[1:]], float32), computed
        in fixed blocks of rows (one GEMM each, the last one kept): BLAS may sum the r products
        differently for another row count, so fixed blocks make every element's value the same
        whatever range is asked for."""
        import torch

        per = block_rows(e.shape)
        parts = []
        for blk in range(r0 // per, (r1 - 1) // per + 1):
            lo = blk * per
            if self._block[0] != (name, blk):
                a, b = (self._small(name, k).float() for k in e.lora)
                hi = min(lo + per, e.shape[0])
                need = (hi - lo) * (math.prod(e.shape[1:]) or 1)
                if self._delta_buf is None or self._delta_buf.numel() < need:
                    self._delta_buf = torch.empty(need, dtype=torch.float32)
                d = delta_rows(a, b, e.scale, e.transposed, lo, hi, self._delta_buf)
                self._block = ((name, blk), d)
            part = self._block[1][max(r0, lo) - lo : min(r1, lo + per) - lo]
            # the next block is computed in the same buffer: keep a copy of this one's rows
            parts.append(part if r1 <= lo + per else part.clone())
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _base_rows(self, name: str, r0: int, r1: int):
        import torch

        info = self.base.tensors[name]
        row_len = math.prod(info.shape[1:]) if len(info.shape) > 1 else 1
        nbytes = (r1 - r0) * row_len * ITEMSIZE[info.dtype]
        if self._raw.size < nbytes:  # one buffer, grown on demand and reused
            self._raw = np.empty(nbytes, dtype=np.uint8)
        buf = self._raw[:nbytes]
        self.base.read_into(name, r0 * row_len, r1 * row_len, buf)
        t = torch.from_numpy(buf).view(torch_dtype(info.dtype))
        return t.reshape(r1 - r0, *info.shape[1:])

    def _small(self, name: str, key: str):
        """Adapter tensor `key` (A, B, a bias, token rows), kept only while `name` is read."""
        held_name, held = self._held
        if held_name != name:
            held = {}
            self._held = (name, held)
        if key not in held:
            held[key] = self.weights.load(key)
        return held[key]

    # ---- facts ---------------------------------------------------------------------------
    def describe(self) -> dict:
        """{"format": "peft-lora", rank, lora_alpha, use_rslora, targets, target_tensors,
        modules_to_save, trainable_token_rows, base_model_name_or_path[, peft_version]}."""
        lora = {e.module: e.rank for e in self.edits.values() if e.lora is not None}
        changed = sum(e.lora is not None or e.lora_bias is not None for e in self.edits.values())
        tokens = sum(len(e.token_indices or ()) for e in self.edits.values())
        return adapter_facts(self.settings, lora, changed, tokens)

    def side_dirs(self) -> list[Path]:
        """The adapter directory's tokenizer and chat template win over BASE's (TRL saves the
        tokenizer it trained with next to the adapter); the rest comes from `meta_root`."""
        own = [self.root] if any((self.root / f).is_file() for f in TOKENIZER_FILES) else []
        return own + super().side_dirs()

    def weight_files(self) -> list[Path]:
        return [self.weights.path, *self.base.weight_files()]

    def close(self) -> None:
        """Closes the adapter's file only: the caller owns and closes BASE."""
        self._held, self._block = ("", {}), (None, None)
        self.weights.close()


def _check_vocabulary(config: dict, edits: dict, base: ModelSource, root: Path, label: str):
    """An adapter that saved a resized embedding (added tokens) needs the fine-tuned config and
    tokenizer: with BASE's, the output's config.json would declare fewer tokens than its
    embedding has rows, and transformers would refuse to load it."""
    vocab = vocab_size(config)
    for name, e in edits.items():
        if (
            e.whole
            and isinstance(vocab, int)
            and e.shape[0] > max(vocab, base.tensors[name].shape[0])
        ):
            raise CheckpointError(
                f"{label} {root}: '{name}' has {e.shape[0]} rows (the vocabulary was resized "
                f"for added tokens) but config.json says vocab_size {vocab}; pass "
                "--config-from DIR with the fine-tuned model's config.json and tokenizer"
            )


def describe_adapter(root: Path) -> dict:
    """An adapter's own facts, without BASE (`rejuv inspect ADAPTER`): `describe()`'s keys,
    ranks from lora_A's rows, `target_tensors` counting LoRA pairs and lora_B biases."""
    settings = read_adapter_config(root / ADAPTER_CONFIG, "MODEL")
    weights = AdapterWeights.open(root, "MODEL")
    try:
        ranks, changed = {}, 0
        for key, (_, shape) in weights.table.items():
            name = key.removeprefix(PREFIX)
            for marker in (".lora_A.weight", ".lora_embedding_A"):
                if name.endswith(marker):
                    ranks[name.removesuffix(marker)] = shape[0]
            changed += name.endswith((".lora_A.weight", ".lora_embedding_A", ".lora_B.bias"))
        tokens = sum(shape[0] for key, (_, shape) in weights.table.items()
                     if key.endswith("trainable_tokens_delta"))  # fmt: skip
        return adapter_facts(settings, ranks, changed, tokens)
    finally:
        weights.close()


def adapter_facts(s: LoraSettings, ranks: dict[str, int], target_tensors: int,
                  token_rows: int) -> dict:  # fmt: skip
    """describe()'s dict from the settings and module -> rank of the LoRA modules."""
    alphas = {m: s.rank_alpha(m)[1] for m in ranks}
    facts = {
        "format": "peft-lora",
        "rank": _uniform_or_per_module(ranks, s.r),
        "lora_alpha": _uniform_or_per_module(alphas, s.lora_alpha),
        "use_rslora": s.use_rslora,
        "targets": sorted({m.rsplit(".", 1)[-1] for m in ranks}),
        "target_tensors": target_tensors,
        "modules_to_save": list(s.modules_to_save),
        "trainable_token_rows": token_rows,
        "base_model_name_or_path": s.base_model_name_or_path,
    }
    if s.peft_version:
        facts["peft_version"] = s.peft_version
    return facts


def block_rows(shape: tuple[int, ...]) -> int:
    """Rows per delta block of a tensor of `shape`: BLOCK_ELEMENTS worth, at least one."""
    return max(1, BLOCK_ELEMENTS // (math.prod(shape[1:]) or 1))


def delta_rows(a, b, scale: float, transposed: bool, r0: int, r1: int, buf=None):
    """Rows [r0, r1) of the LoRA delta as the target tensor stores it; float32 math.

    a: lora_A [r, in], b: lora_B [out, r] (float32). Not transposed (nn.Linear, weight
    [out, in]): (b[r0:r1] @ a) * scale -> [r1-r0, in]. Transposed (Conv1D weight [in, out],
    embeddings with a = lora_embedding_A [r, vocab], b = lora_embedding_B [dim, r]):
    (b @ a[:, r0:r1]).T * scale -> [r1-r0, out]. Same products and order as PEFT's
    `transpose(B @ A, fan_in_fan_out) * scaling`, for a row range only. `buf`: a float32
    buffer of at least that many elements to compute in (the result is a view of it).
    """
    import torch

    left, right = (b, a[:, r0:r1]) if transposed else (b[r0:r1], a)
    shape = (left.shape[0], right.shape[1])
    out = None if buf is None else buf[: shape[0] * shape[1]].view(shape)
    d = torch.matmul(left, right, out=out).mul_(scale)
    return d.T if transposed else d


def replace_rows(x, new_rows, indices: tuple[int, ...], r0: int) -> None:
    """In place: x [n, dim] holds rows [r0, r0+n) of a tensor; set row indices[j] to
    new_rows[j] ([len(indices), dim]) for the indices that fall in that range (PEFT's
    trainable tokens: `W.index_copy(0, indices, trainable_tokens_delta)`)."""
    for j, i in enumerate(indices):
        if r0 <= i < r0 + x.shape[0]:
            x[i - r0] = new_rows[j]


def _uniform_or_per_module(values: dict[str, float], default):
    """`default` when every module has it, else {"default", "per_module"}: by leaf name
    ("q_proj": 2) where all modules of that leaf agree, by full module name otherwise."""
    if all(v == default for v in values.values()):
        return default
    by_leaf: dict[str, set] = {}
    for m, v in values.items():
        by_leaf.setdefault(m.rsplit(".", 1)[-1], set()).add(v)
    per: dict[str, float] = {}
    for m, v in sorted(values.items()):
        leaf = m.rsplit(".", 1)[-1]
        if v != default:
            per[leaf if len(by_leaf[leaf]) == 1 else m] = v
    return {"default": default, "per_module": per}
