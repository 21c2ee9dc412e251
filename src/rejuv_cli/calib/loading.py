"""What transformers did not load: weights it initialised at random, tensors it ignored.

`from_pretrained` initialises every parameter the checkpoint lacks and ignores every tensor the
model has no place for, with only a log message. A forward pass on such a model measures
something other than the checkpoint (a random layer, a missing one), so `load_model` turns its
loading info into an error here.
"""

from __future__ import annotations

import re

from rejuv_cli.errors import CheckpointError

_INDEX = re.compile(r"(?<=\.)\d+(?=\.)")  # the first index in a name: the layer


def check_loading_info(model, info: dict, label: str, path) -> list[str]:
    """CheckpointError when transformers initialised a parameter the checkpoint lacks, or
    ignored a tensor that has the shape of a model weight under another index (a layer that
    config.json does not declare). Returns warnings for the rest: buffers the model computes
    itself, and ignored tensors that fit nowhere in the model (e.g. a vision tower).

    info: from_pretrained's `output_loading_info` dict (missing_keys, unexpected_keys, ...).
    Non-persistent buffers (rotary inv_freq) are not in it: they never come from a checkpoint.
    """
    params = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    missing = sorted(info.get("missing_keys") or ())
    unexpected = sorted(info.get("unexpected_keys") or ())
    layers = _declared_layers(model)
    where = f"{label} {path}"
    fix = "Fix config.json, or use the complete checkpoint"

    initialised = [k for k in missing if k in params]
    if initialised:
        raise CheckpointError(
            f"{where}: {_count(initialised, 'weight')} of the model config.json describes "
            f"{_verb(initialised, 'is', 'are')} not in the checkpoint, so transformers would "
            f"initialise {_verb(initialised, 'it', 'them')} at random ({_examples(initialised)}"
            f"{layers}). {fix}"
        )
    beyond = [k for k in unexpected if _INDEX.sub("0", k, count=1) in params]
    if beyond:
        raise CheckpointError(
            f"{where}: {_count(beyond, 'tensor')} of the checkpoint {_verb(beyond, 'has', 'have')} "
            f"no place in the model config.json describes, so transformers would ignore "
            f"{_verb(beyond, 'it', 'them')} ({_examples(beyond)}{layers}). {fix}"
        )
    warnings = []
    computed = [k for k in missing if k not in params]
    if computed:
        warnings.append(
            f"{label}: {_count(computed, 'buffer')} ({_examples(computed)}) "
            f"{_verb(computed, 'is', 'are')} not in the checkpoint; the model computes "
            f"{_verb(computed, 'it', 'them')} from config.json"
        )
    ignored = [k for k in unexpected if k not in beyond]
    if ignored:
        warnings.append(
            f"{label}: transformers does not use {_count(ignored, 'tensor')} of the checkpoint "
            f"({_examples(ignored)}); forward passes run without them"
        )
    return warnings


def _declared_layers(model) -> str:
    config = model.config.get_text_config()
    n = getattr(config, "num_hidden_layers", None)
    return f"; config.json says {n} layer{'s' * (n != 1)}" if isinstance(n, int) else ""


def _count(keys: list[str], noun: str) -> str:
    return f"1 {noun}" if len(keys) == 1 else f"{len(keys)} {noun}s"


def _verb(keys: list[str], one: str, many: str) -> str:
    return one if len(keys) == 1 else many


def _examples(keys: list[str]) -> str:
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    return ", ".join(f"'{k}'" for k in keys[:3]) + more
