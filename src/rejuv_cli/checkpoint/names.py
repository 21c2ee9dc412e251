"""Do two checkpoints name their tensors alike, and do a checkpoint's weights hold the layers its
config.json declares? Headers only.

Pairing BASE and SFT tensors is by exact name, so a systematic name difference (a wrapper's
prefix) would pair almost nothing and the "fused" output would be SFT copied through; and a
config.json that declares layers the shards do not hold loads with those layers initialised
at random. Both are refused here, before anything is read or written.
"""

from __future__ import annotations

import re
from collections import Counter

from rejuv_cli.arch.units import embeddings, stored_as
from rejuv_cli.checkpoint.dtypes import FUSABLE_CODES
from rejuv_cli.checkpoint.reader import Checkpoint
from rejuv_cli.errors import CheckpointError, MismatchError

# Where wrapper prefixes come from, by leading name component.
_PREFIX_ORIGINS = {
    "_orig_mod": "torch.compile",
    "module": "DistributedDataParallel / DataParallel",
    "base_model": "a PEFT wrapper",
    "model": "the *ForCausalLM wrapper keeps the decoder under 'model.'",
}
# A layer stack and a layer index: model.layers.3..., transformer.h.0..., encoder.block.5...
_STACK = re.compile(r"^((?:[^.]+\.)*?(?:layers|h|blocks|block|layer))\.(\d+)(?:\.|$)")


def check_same_names(base: Checkpoint, sft: Checkpoint) -> None:
    """MismatchError when fewer than half of SFT's floating-point tensors have a same-named
    tensor in BASE; the message shows both naming patterns and, where one explains the
    difference, the prefix."""
    floats = [n for n, t in sft.tensors.items() if t.dtype in FUSABLE_CODES]
    paired = sum(n in base.tensors for n in floats)
    if 2 * paired >= len(floats):
        return
    base_floats = [n for n, t in base.tensors.items() if t.dtype in FUSABLE_CODES]
    found = _prefix_difference(floats, base_floats)
    head = (
        f"only {paired} of {len(floats)} floating-point tensors of {sft.label} have a same-named "
        f"tensor in {base.label}, so almost nothing would be fused"
    )
    if found is None:
        raise MismatchError(
            f"{head}: {base.label} names look like '{_example(base_floats)}', {sft.label} names "
            f"like '{_example(floats)}'. rejuv pairs tensors by name: pass two checkpoints of the "
            "same model saved the same way (save_pretrained)"
        )
    p_s, p_b, example = found
    pattern = (f"{base.label} names look like '{p_b}{example}', {sft.label} names like "
               f"'{p_s}{example}'")  # fmt: skip
    if p_s and p_b:
        why = (f"{sft.label}'s start with '{p_s}'{_origin(p_s)} where {base.label}'s start "
               f"with '{p_b}'{_origin(p_b)}")  # fmt: skip
    else:
        extra, has, lacks = (p_s, sft.label, base.label) if p_s else (p_b, base.label, sft.label)
        why = f"{has}'s carry the prefix '{extra}'{_origin(extra)} that {lacks}'s lack"
    raise MismatchError(
        f"{head}: {pattern}; the names differ by a prefix: {why}. Rename the tensors so both "
        "sides match (e.g. save the unwrapped model with save_pretrained), then run again"
    )


def _origin(prefix: str) -> str:
    whys = [_PREFIX_ORIGINS[c] for c in prefix.rstrip(".").split(".") if c in _PREFIX_ORIGINS]
    return f" ({'; '.join(whys)})" if whys else ""


def _prefix_difference(sft: list[str], base: list[str]) -> tuple[str, str, str] | None:
    """(SFT prefix, BASE prefix, an example of the common rest) when stripping a leading prefix
    of up to three non-numeric name components from either side pairs at least half of `sft`;
    the best such pair, the shortest on ties. None when no prefix explains the difference."""

    def candidates(names: list[str]) -> list[str]:
        heads: Counter[str] = Counter()
        for name in names:
            parts = name.split(".")[:-1]
            for k in range(1, min(3, len(parts)) + 1):
                if any(p.isdigit() for p in parts[:k]):
                    break
                heads[".".join(parts[:k]) + "."] += 1
        return [""] + [h for h, _ in heads.most_common(8)]

    def rest(names: list[str], prefix: str) -> set[str]:
        return {n[len(prefix) :] for n in names if n.startswith(prefix)}

    best = None
    for p_s in candidates(sft):
        rest_s = rest(sft, p_s)
        for p_b in candidates(base):
            if p_s == p_b:
                continue
            common = rest_s & rest(base, p_b)
            rank = (-len(common), len(p_s) + len(p_b))
            if 2 * len(common) >= len(sft) and (best is None or rank < best[0]):
                best = (rank, p_s, p_b, _example(common))
    return None if best is None else best[1:]


def _example(names) -> str:
    """A name to show: the first layer tensor in name order (the first name when none)."""
    return min(names, key=lambda n: (_STACK.search(n) is None, n), default="(none)")


def ties_embeddings(ckpt: Checkpoint) -> bool:
    """Whether the output embedding is the input embedding, as transformers loads the
    checkpoint: config.json's `tie_word_embeddings` (also in text_config) where it is true or
    false; where it is absent, whether the checkpoint stores no output embedding under its
    family's name for it (arch.units.embeddings: lm_head, embed_out, head, output...)."""
    said = [
        cfg.get("tie_word_embeddings")
        for cfg in (ckpt.config, ckpt.config.get("text_config") or {})
    ]
    if any(v is True for v in said):
        return True
    if any(v is False for v in said):
        return False
    return output_embedding(ckpt) is None


def output_embedding(ckpt: Checkpoint) -> str | None:
    """The stored name of the checkpoint's output embedding (its family's name, under any
    wrapper prefix), or None when it stores none."""
    return stored_as(embeddings(ckpt.config).output, ckpt.tensors)


def check_layers_stored(ckpt: Checkpoint, declared: int | None) -> str | None:
    """CheckpointError when config.json declares `declared` layers but the weights lack some of
    them (transformers would initialise those at random); a warning when the weights hold
    layers beyond them (transformers ignores those), None when they agree.

    Layers are counted per stack (the name up to the layer index: 'model.layers'), so a vision
    tower with another depth is no disagreement: one stack holding exactly 0..declared-1 is
    enough. Otherwise the stack with the most tensors is compared.
    """
    stacks: dict[str, set[int]] = {}
    sizes: Counter[str] = Counter()
    for name in ckpt.tensors:
        m = _STACK.search(name)
        if m:
            stacks.setdefault(m.group(1), set()).add(int(m.group(2)))
            sizes[m.group(1)] += 1
    if not declared or not stacks or any(s == set(range(declared)) for s in stacks.values()):
        return None
    main = max(stacks, key=lambda k: (sizes[k], k))
    held = stacks[main]
    said = f"{ckpt.label} {ckpt.root}: config.json says {declared} layer{'s' * (declared != 1)}"
    holds = f"its weights hold {_span(sorted(held))} of '{main}'"
    missing = sorted(set(range(declared)) - held)
    if missing:
        raise CheckpointError(
            f"{said} but {holds}, so transformers would initialise {_span(missing)} at random. "
            "Fix the layer count in config.json, or use the complete checkpoint"
        )
    extra = sorted(i for i in held if i >= declared)
    mtp = ckpt.config.get("num_nextn_predict_layers")  # DeepSeek-V3 / GLM: MTP layers after
    if isinstance(mtp, int) and extra == list(range(declared, declared + mtp)):
        return None
    return f"{said} but {holds}: transformers ignores {_span(extra)} when it loads the model"


def _span(indices: list[int]) -> str:
    """'layer 2', 'layers 0..3' or 'layers 1, 4, 7' (sorted indices)."""
    if len(indices) == 1:
        return f"layer {indices[0]}"
    if indices == list(range(indices[0], indices[-1] + 1)):
        return f"layers {indices[0]}..{indices[-1]}"
    shown = ", ".join(map(str, indices[:8]))
    return f"layers {shown}{', ...' if len(indices) > 8 else ''}"
