"""A PEFT adapter's weight file, and what its keys do to BASE: one `Edit` per BASE tensor the
adapter changes, checked against BASE's names and shapes when opened (no tensor data is read).
Key naming: peft/utils/save_and_load.py `get_peft_model_state_dict` (research-19 A.3)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rejuv_cli.checkpoint.config import vocab_size
from rejuv_cli.checkpoint.dtypes import FUSABLE_CODES, code_of
from rejuv_cli.checkpoint.input_files import ADAPTER_CONFIG
from rejuv_cli.checkpoint.lora_config import MERGE, LoraSettings, lora_scale
from rejuv_cli.checkpoint.reader import _load_bin, _present
from rejuv_cli.checkpoint.safetensors_file import read_header
from rejuv_cli.checkpoint.source import ModelSource
from rejuv_cli.errors import CheckpointError, first_line

ST_NAME, BIN_NAME = "adapter_model.safetensors", "adapter_model.bin"
PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the transformers model
# adapter key tail -> (role, suffix of the BASE tensor it changes); module = key minus tail
ROLES = (
    (".lora_A.weight", "A", ".weight"),
    (".lora_B.weight", "B", ".weight"),
    (".lora_B.bias", "bias", ".bias"),
    (".lora_embedding_A", "emb_A", ".weight"),
    (".lora_embedding_B", "emb_B", ".weight"),
    (".token_adapter.trainable_tokens_delta", "rows", ".weight"),
)
# Families whose c_attn/c_fc/c_proj/q_attn are transformers' Conv1D (weight [in, out]): decides
# the layout of a square weight, which its shape cannot (grep "= Conv1D(" in transformers).
CONV1D_FAMILIES = frozenset(
    {"gpt2", "openai-gpt", "imagegpt", "decision_transformer", "clvp", "clvp_encoder",
     "clvp_decoder"}
)  # fmt: skip
CONV1D_LEAVES = frozenset({"c_attn", "c_fc", "c_proj", "q_attn"})


@dataclass
class Edit:
    """How SFT's tensor differs from BASE's: start from the adapter's `whole` tensor (else
    BASE's), add s·B·A (`lora`: A and B keys) or s·lora_B.bias (`lora_bias`), then replace rows
    `token_indices` with `token_rows`. `dtype` is what reads return, `out_dtype` what to write."""

    module: str
    shape: tuple[int, ...]
    dtype: str
    out_dtype: str | None = None
    whole: str | None = None
    lora: tuple[str, str] | None = None
    rank: int = 0
    scale: float = 0.0
    transposed: bool = False
    lora_bias: str | None = None
    token_rows: str | None = None
    token_indices: tuple[int, ...] | None = None


class AdapterWeights:
    """adapter_model.safetensors (safe_open) or adapter_model.bin (torch.load(weights_only=True,
    mmap=True)): key -> (dtype, shape) at open, tensors or row slices on demand."""

    def __init__(self, path: Path, table: dict[str, tuple[str, tuple[int, ...]]], handle):
        self.path, self.table, self._h = path, table, handle

    @classmethod
    def open(cls, root: Path, label: str) -> AdapterWeights:
        if _present(root, ST_NAME, label, "adapter weights"):
            path = root / ST_NAME
            header, _ = read_header(path)  # validates the file; no data read
            from safetensors import safe_open

            try:
                handle = safe_open(str(path), framework="pt")
            except Exception as e:  # safetensors' own errors
                raise CheckpointError(f"{label} {path}: cannot open: {first_line(e)}") from None
            return cls(path, {k: (t.dtype, t.shape) for k, t in header.items()}, handle)
        if _present(root, BIN_NAME, label, "adapter weights"):
            state = _load_bin(root / BIN_NAME)
            table = {k: (code_of(t.dtype), tuple(t.shape)) for k, t in state.items()}
            return cls(root / BIN_NAME, table, state)
        saved = sorted(p.name for p in root.iterdir() if (p / ADAPTER_CONFIG).is_file())
        hint = f"; adapters saved under another name are in subfolders: {', '.join(saved)}"
        raise CheckpointError(
            f"{label} {root} has {ADAPTER_CONFIG} but no {ST_NAME} or {BIN_NAME}: save the "
            f"adapter with save_pretrained" + (hint if saved else "")
        )

    def load(self, key: str):
        """The whole tensor `key` (A, B, a bias, token rows: small)."""
        return self.rows(key, None, None)

    def rows(self, key: str, r0: int | None, r1: int | None):
        """Rows [r0, r1) of tensor `key` (dim 0), reading only those."""
        try:
            if isinstance(self._h, dict):
                t = self._h[key]
            elif self.table[key][1] == ():  # a scalar: no rows to slice
                t = self._h.get_tensor(key)
            else:
                return self._h.get_slice(key)[r0:r1]
            return t.reshape(1)[r0:r1] if t.dim() == 0 else t[r0:r1]
        except Exception as e:
            raise CheckpointError(f"{self.path}: cannot read '{key}': {first_line(e)}") from None

    def close(self) -> None:
        self._h = None


def split_key(key: str) -> tuple[str, str, str]:
    """(role, module, BASE tensor name) of an adapter key; role "whole" for a saved tensor that
    replaces BASE's (`.base_layer.` dropped), "unknown" for another LoRA-looking key."""
    name = key.removeprefix(PREFIX)
    for tail, role, suffix in ROLES:
        if name.endswith(tail):
            module = name[: -len(tail)]
            return role, module, module + suffix
    plain = name.replace(".base_layer.", ".")
    module = plain.rsplit(".", 1)[0]
    return ("unknown" if "lora_" in name else "whole"), module, plain


def delta_layout(out_in: tuple[int, int], shape: tuple[int, ...], embedding: bool,
                 conv1d: bool) -> bool | None:  # fmt: skip
    """Whether d = B·A ([out, in]) is added transposed to a tensor of `shape`: False when it
    is [out, in] (nn.Linear), True when [in, out] (Conv1D; embeddings always: (B·A)ᵀ is
    [vocab, dim]); a square weight takes `conv1d`; None when the shape fits neither."""
    fits, fits_t = shape == out_in, shape == out_in[::-1]
    if embedding:
        return True if fits_t else None
    if fits and fits_t:
        return conv1d
    return False if fits else (True if fits_t else None)


def plan_edits(weights: AdapterWeights, s: LoraSettings, base: ModelSource,
               label: str) -> tuple[dict[str, Edit], list[str]]:  # fmt: skip
    """BASE tensor name -> Edit for every tensor the adapter changes, and warnings."""
    where = f"{label} {weights.path}"
    groups: dict[str, dict[str, str]] = {}  # BASE name -> role -> adapter key
    modules: dict[str, str] = {}
    for key, (dtype, _) in weights.table.items():
        role, module, target = split_key(key)
        if role == "unknown":
            raise CheckpointError(
                f"{where}: key '{key}' is not a plain LoRA weight (DoRA magnitude, another "
                "method?); " + MERGE
            )
        if dtype not in FUSABLE_CODES:
            raise CheckpointError(f"{where}: '{key}' has dtype {dtype}; expected a float tensor")
        if role in groups.setdefault(target, {}):
            raise CheckpointError(
                f"{where}: '{key}' and '{groups[target][role]}' both set '{target}'; re-save it"
            )
        groups[target][role] = key
        modules[target] = module
    if not groups:
        raise CheckpointError(f"{where}: holds no tensors; re-save the adapter")
    edits, warnings = {}, []
    for target, g in groups.items():
        info = base.tensors.get(target)
        if info is None:
            raise _missing(where, next(iter(g.values())), target, base, s)
        e = Edit(modules[target], tuple(info.shape), info.dtype)
        if "whole" in g:
            _whole(e, g["whole"], weights, info.shape, base, where, warnings)
        if g.keys() & {"A", "B", "emb_A", "emb_B"}:
            _lora(e, g, weights, s, base, where)
        if "bias" in g:
            a_key = groups.get(e.module + ".weight", {}).get("A")
            _bias(e, g["bias"], weights, s, a_key, where)
        if "rows" in g:
            if len(g) > 1:
                raise CheckpointError(f"{where}: '{target}' has trainable tokens and other changes")
            _token_rows(e, g["rows"], weights, s, info, where)
        if (
            e.lora is not None or e.lora_bias is not None
        ):  # base + delta in float32, written back in BASE's dtype
            e.dtype, e.out_dtype = "F32", info.dtype
        edits[target] = e
    return edits, warnings


def _whole(e: Edit, key, weights, base_shape, base, where, warnings) -> None:
    dtype, shape = weights.table[key]
    vocab = vocab_size(base.config)
    grown = (len(shape) == 2 and shape[1:] == tuple(base_shape[1:]) and shape[0] > base_shape[0]
             and base_shape[0] == vocab)  # fmt: skip
    if shape != tuple(base_shape) and not grown:
        raise _shape_error(where, key, shape, e, base)
    # grown: an embedding resized for added tokens, whose new rows exist only in the adapter
    # (LoraAdapter checks that the config it is read with has that many tokens)
    e.whole, e.dtype, e.shape = key, dtype, shape


def _lora(e: Edit, g, weights, s: LoraSettings, base, where) -> None:
    embedding = "emb_A" in g or "emb_B" in g
    a_key, b_key = (g.get("emb_A"), g.get("emb_B")) if embedding else (g.get("A"), g.get("B"))
    if a_key is None or b_key is None or (embedding and g.keys() & {"A", "B"}):
        raise CheckpointError(f"{where}: module '{e.module}' lacks lora_A or lora_B; re-save it")
    (_, a), (_, b) = weights.table[a_key], weights.table[b_key]
    if len(a) != 2 or len(b) != 2 or b[1] != a[0]:
        raise CheckpointError(
            f"{where}: '{a_key}' {list(a)} and '{b_key}' {list(b)} are not lora_A [r, in] and "
            "lora_B [out, r] (convolution LoRA is not supported)"
        )
    r, alpha = s.rank_alpha(e.module)
    if r != a[0]:
        raise CheckpointError(
            f"{where}: adapter_config.json gives '{e.module}' r={r} (r, rank_pattern) but "
            f"'{a_key}' has {a[0]} rows; the config does not belong to these weights"
        )
    # A square weight's layout is not in its shape: the family says (the saved fan_in_fan_out
    # is whatever PEFT's last Conv1D/Linear target left in the shared config).
    if base.config.get("model_type") in CONV1D_FAMILIES:
        conv1d = e.module.rsplit(".", 1)[-1] in CONV1D_LEAVES
    else:
        conv1d = s.fan_in_fan_out
    transposed = delta_layout((b[0], a[1]), e.shape, embedding, conv1d)
    if transposed is None:
        raise _shape_error(where, b_key, (b[0], a[1]), e, base)
    e.lora, e.rank, e.transposed = (a_key, b_key), r, transposed
    e.scale = lora_scale(alpha, r, s.use_rslora)


def _bias(e: Edit, key, weights, s: LoraSettings, a_key, where) -> None:
    """lora_B.bias of module e.module: BASE's bias += s·lora_B.bias, s of that module."""
    if a_key is None:
        raise CheckpointError(f"{where}: '{key}' has no lora_A/lora_B beside it; re-save it")
    r, alpha = s.rank_alpha(e.module)
    if weights.table[key][1] != e.shape or r != weights.table[a_key][1][0]:
        raise CheckpointError(
            f"{where}: '{key}' {list(weights.table[key][1])} does not fit BASE's bias "
            f"{list(e.shape)} with rank {r}; is BASE the model this adapter was trained on?"
        )
    e.lora_bias, e.rank, e.scale = key, r, lora_scale(alpha, r, s.use_rslora)


def _token_rows(e: Edit, key, weights, s: LoraSettings, info, where) -> None:
    found = [v for k, v in s.token_indices.items() if e.module.endswith(k)]  # PEFT: endswith
    if not found:
        raise CheckpointError(
            f"{where}: '{key}' has trained token rows but adapter_config.json "
            f"trainable_token_indices names no module '{e.module}'"
        )
    indices, (dtype, shape) = tuple(found[0]), weights.table[key]
    if shape != (len(indices), *info.shape[1:]):
        raise CheckpointError(
            f"{where}: '{key}' is {list(shape)}, but {len(indices)} token ids of "
            f"{list(info.shape[1:])} were expected (trainable_token_indices)"
        )
    bad = [i for i in indices if not 0 <= i < info.shape[0]]
    if bad:
        raise CheckpointError(
            f"{where}: trainable token id {bad[0]} is outside BASE's '{info.name}' "
            f"({info.shape[0]} rows); was the vocabulary resized? Merge with PEFT first"
        )
    e.token_rows, e.token_indices = key, indices
    if dtype != info.dtype:  # both exact in float32; written back in BASE's dtype
        e.dtype, e.out_dtype = "F32", info.dtype


def _shape_error(where, key, shape, e: Edit, base) -> CheckpointError:
    return CheckpointError(
        f"{where}: '{key}' gives '{e.module}' a {list(shape)} change but BASE's tensor is "
        f"{list(e.shape)}: this adapter was trained on another model; pass that model as BASE "
        f"(base_model_name_or_path in {ADAPTER_CONFIG})"
    )


def _missing(where, key, target, base, s: LoraSettings) -> CheckpointError:
    tied = base.config.get("tie_word_embeddings") and target.endswith("lm_head.weight")
    hint = (
        " (BASE ties it to the input embedding and stores none: rejuv cannot change the output "
        "embedding alone; " + MERGE + ")"
        if tied
        else ""
    )
    return CheckpointError(
        f"{where}: key '{key}' changes '{target}', which BASE {base.root} does not have{hint}; "
        f"is BASE the model this adapter was trained on ({s.base_model_name_or_path})?"
    )
