"""Loading models for forward passes: transformers on the chosen device, bfloat16 on CUDA and
float32 on CPU (CPU bfloat16 matmuls are slow and lose precision for the statistics).

What does not fit in the memory budget is offloaded by accelerate (`load_model`), and backward
passes refetch offloaded weights (`refetch_offloaded_weights`), so memory stays bounded by a few
modules. Also the tokenizer and the vocabulary sizes that comparisons across models share.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import torch

from rejuv_cli.checkpoint.writer import format_size
from rejuv_cli.errors import CheckpointError, first_line


def model_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _release_freed_memory() -> None:
    """Make glibc hand large freed blocks back to the OS instead of caching them.

    glibc raises its mmap threshold each time a large block is freed, after which blocks up to
    32 MB come from arenas that keep freed memory. Forward passes allocate and free many such
    blocks (activations; offloaded layers' weights, onloaded one module at a time), and the
    process kept ~1.3 GB it no longer used on the 301M bench pair with 89% offloaded. A fixed
    1 MiB threshold stops that (peak anonymous memory 1.79 -> 0.55 GB there). No-op elsewhere.
    """
    import contextlib
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD = -3


def load_model(path: Path, label: str, device: torch.device, max_memory: int | None = None,
               warnings: list[str] | None = None):  # fmt: skip
    """A transformers causal LM from a local checkpoint directory, in eval mode on `device`.

    Weights are placed by accelerate (`device_map`): on `device` up to `max_memory` bytes
    (default: what accelerate finds free there), then, on CUDA, in host memory, and the rest
    offloaded to disk in a temporary folder that lives as long as the model. Offloaded layers
    are brought to the device one module at a time during each forward pass, so a model larger
    than the device still runs, slower. `offloaded_share` says how much was offloaded, and
    `offload_note` is appended to `warnings` when anything was. A parameter transformers would
    initialise rather than load is an error (`check_loading_info`).
    """
    import tempfile

    from accelerate.utils import get_max_memory
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    # transformers' own progress bars and notices would interleave with ours on stderr.
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    # accelerate logs its own one-line offload notice; `offload_note` says it with figures.
    logging.getLogger("accelerate.big_modeling").setLevel(logging.ERROR)
    _release_freed_memory()
    free = get_max_memory()
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        budget = {index: max_memory if max_memory is not None else free[index], "cpu": free["cpu"]}
    else:
        budget = {"cpu": max_memory if max_memory is not None else free["cpu"]}
    offload_dir = tempfile.TemporaryDirectory(prefix="rejuv-offload-")
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            path, dtype=model_dtype(device), device_map="auto", max_memory=budget,
            offload_folder=offload_dir.name, output_loading_info=True,
        )  # fmt: skip
    except Exception as e:  # transformers raises many types; all mean "cannot load this"
        offload_dir.cleanup()
        raise CheckpointError(
            f"{label} {path}: transformers cannot load it for forward passes ({first_line(e)}); "
            "run with --weights-only for the weight-space report"
        ) from None
    model._rejuv_offload_dir = offload_dir  # removed from disk when the model is freed
    # Weights transformers initialised at random (or ignored) would be measured as if loaded.
    from rejuv_cli.calib.loading import check_loading_info

    try:
        notes = check_loading_info(model, info, label, path)
    except CheckpointError:
        del model
        offload_dir.cleanup()
        raise
    if warnings is not None:
        warnings.extend(notes)
    unplaced = nothing_on_device(model, device)
    if unplaced:
        del model
        offload_dir.cleanup()
        raise CheckpointError(
            f"{label} {path}: --max-memory {format_size(max_memory or 0)} leaves no room on "
            f"{device} for even one of the model's blocks (the largest needs "
            f"{format_size(unplaced)}); give --max-memory at least that, or run on the CPU "
            "with --device cpu"
        )
    note = offload_note(label, model, device)
    if note and warnings is not None:
        warnings.append(note)
    # Ids beyond the embedding (tokens SFT added) are read as its mean row (calib/vocab.py).
    from rejuv_cli.calib.vocab import read_unseen_tokens_as_mean

    read_unseen_tokens_as_mean(model)
    return model.eval()


def nothing_on_device(model, device: torch.device) -> int:
    """Bytes of the model's largest block when accelerate placed none of it on `device`, else 0.

    On CUDA, a budget smaller than every block makes accelerate's map {"": "cpu"}: a single
    device, for which no offload hooks are installed, so the model would stay on the CPU and
    the first forward pass would fail on inputs sent to the GPU. Detected here instead, with
    the size a budget must reach. The CPU has no such case (its overflow goes to disk, which
    accelerate always runs through hooks).
    """
    placed = set((getattr(model, "hf_device_map", None) or {}).values())
    if device.type != "cuda" or not placed or placed - {"cpu", "disk"}:
        return 0
    blocks = getattr(model, "_no_split_modules", None) or []
    sizes = [
        sum(p.numel() * p.element_size() for p in m.parameters())
        for m in model.modules() if type(m).__name__ in blocks
    ]  # fmt: skip
    return max(sizes, default=sum(p.numel() * p.element_size() for p in model.parameters()))


def offloaded_share(model) -> float:
    """Share of the model's parameter bytes that accelerate offloaded (kept on the meta device
    between forward passes), 0.0 when everything is resident on the device."""
    total = offloaded = 0
    for p in model.parameters():
        size = p.numel() * p.element_size()
        total += size
        offloaded += size if p.device.type == "meta" else 0
    return offloaded / max(total, 1)


@contextmanager
def refetch_offloaded_weights(model):
    """Inside: a forward pass with autograd saves each offloaded module's weights as a
    reference, refetched from accelerate's offload store when backward needs them.

    Without it, every weight a backward needs (a linear layer's, for the gradient of its
    input) stays alive from the forward until the backward is done, so the whole model would
    be on the device at once and offloading would not bound memory. Saved tensors are matched
    to the running module's own parameters by storage (views such as a transpose included);
    everything else is saved as usual. A no-op for models with nothing offloaded.
    """
    offloaded = [m for m in model.modules()
                 if getattr(getattr(m, "_hf_hook", None), "offload", False)]  # fmt: skip
    if not offloaded:
        yield
        return
    running: list = []  # modules whose forward is in progress, innermost last

    def enter(module, _args) -> None:
        running.append(module)

    def leave(_module, _args, _output) -> None:  # returns None: the output is left as is
        running.pop()

    handles = []
    for module in offloaded:
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave))

    def pack(t: torch.Tensor):
        if running and t.device.type != "meta":
            module = running[-1]
            storage = t.untyped_storage().data_ptr()
            for name, p in module.named_parameters(recurse=False):
                # Ops often save a view of the weight (linear: its transpose), so match the
                # storage and keep the view's geometry relative to the parameter.
                if p.is_contiguous() and p.untyped_storage().data_ptr() == storage:
                    view = (t.size(), t.stride(), t.storage_offset() - p.storage_offset())
                    return (module, name, t.device, t.dtype, view)
        return t

    def unpack(saved):
        if not isinstance(saved, tuple):
            return saved
        module, name, device, dtype, (size, stride, offset) = saved
        fresh = module._hf_hook.weights_map[name].to(device=device, dtype=dtype).contiguous()
        return fresh.as_strided(size, stride, fresh.storage_offset() + offset)

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
    finally:
        for h in handles:
            h.remove()


def offload_note(label: str, model, device: torch.device) -> str | None:
    """A warning line for an offloaded model, None when it is fully resident."""
    share = offloaded_share(model)
    if share == 0:
        return None
    where = "host memory and disk" if device.type == "cuda" else "disk"
    return (f"{label}: {share:.0%} of the weights do not fit in the {device.type} memory budget "
            f"and are offloaded to {where}; forward passes are slower (raise --max-memory or "
            "free memory to avoid it)")  # fmt: skip


def load_tokenizer(path: Path, label: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise CheckpointError(
            f"{label} {path}: no usable tokenizer ({first_line(e)}); the calibration data is "
            "tokenized with the SFT model's tokenizer (or use --weights-only)"
        ) from None


def config_vocab(path: Path, label: str) -> int:
    """The vocabulary size a checkpoint's config declares (its output embedding's rows), read
    without loading weights."""
    from transformers import AutoConfig

    try:
        return int(AutoConfig.from_pretrained(path).get_text_config().vocab_size)
    except Exception as e:
        raise CheckpointError(f"{label} {path}: config.json has no usable vocab_size "
                              f"({first_line(e)})") from None  # fmt: skip


def shared_vocab(models: dict) -> tuple[int, str | None]:
    """The vocabulary all `models` share (the smallest lm_head) and, when they differ, a warning
    saying how the comparison handles it (see `response_logits`)."""
    rows = {role: m.get_output_embeddings().weight.shape[0] for role, m in models.items()}
    return shared_vocab_of(rows)


def shared_vocab_of(vocab: dict[str, int]) -> tuple[int, str | None]:
    """`shared_vocab` from role -> lm_head rows (config_vocab gives them without loading)."""
    shared = min(vocab.values())
    if len(set(vocab.values())) == 1:
        return shared, None
    sizes = ", ".join(f"{r} {v}" for r, v in vocab.items())
    return shared, (
        f"vocabulary sizes differ ({sizes}): output metrics use the first {shared} tokens, "
        "renormalised, and skip positions whose target is a newer token"
    )
