"""Forward passes on calibration data: model loading, teacher-forced batches, activation hooks.

Shared by `rejuv diagnose` (output metrics, unit activity, sharpness) and the data-driven reset
scorers. Models load with transformers on the chosen device: bfloat16 on CUDA, float32 on CPU
(CPU bfloat16 matmuls are slow and lose precision for the statistics). What does not fit in
the memory budget is offloaded by accelerate (`load_model`), and backward passes refetch
offloaded weights (`refetch_offloaded_weights`), so memory stays bounded by a few modules.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from rejuv_cli.arch.layout import UnitLayout
from rejuv_cli.checkpoint.writer import format_size
from rejuv_cli.errors import CheckpointError, first_line
from rejuv_cli.ops.activity import ActivityStats

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # input_ids, attention_mask, response


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
    vocab = {role: m.get_output_embeddings().weight.shape[0] for role, m in models.items()}
    shared = min(vocab.values())
    if len(set(vocab.values())) == 1:
        return shared, None
    sizes = ", ".join(f"{r} {v}" for r, v in vocab.items())
    return shared, (
        f"vocabulary sizes differ ({sizes}): output metrics use the first {shared} tokens, "
        "renormalised, and skip positions whose target is a newer token"
    )


@dataclass(frozen=True)
class Site:
    """Where one module instance's unit activations appear in the transformers model.

    `where` "input": input channels [offset, offset + n_units) of the output-side projection
    at `path` (the units of o and MLP modules: o_proj / down_proj inputs, i.e. attention
    channels and act(gate)·up). `where` "output": output channels of the input-side projection
    at `path` (q/k/v rows, before rotary embeddings; fused qkv at the part's offset).
    """

    key: str  # the unit layout's instance key, e.g. "layers.3.mlp"
    layer: int
    module: str  # "q", "k", "v", "o", "mlp", "expert", "shared_expert"
    path: str  # submodule name in the transformers model
    offset: int
    n_units: int
    where: str = "input"


def activation_sites(layout: UnitLayout) -> list[Site]:
    """One site per module instance: the outgoing projection's input when the module has one
    (o, MLP-like), else its first weight's output channels (q, k, v)."""
    sites = []
    for inst in layout.instances:
        weights = [(n, sl, off) for n, sl, off in inst.tensors if n.endswith(".weight")]
        outgoing = [w for w in weights if w[1].out]
        name, _, offset = (outgoing or weights)[0]
        sites.append(Site(inst.key, inst.layer, inst.module.name, name[: -len(".weight")],
                          offset, inst.n_units, "input" if outgoing else "output"))  # fmt: skip
    return sites


class ActivityRecorder:
    """Hooks that add each site's activations (real tokens only) to its ActivityStats. Sites
    whose module does not exist in the loaded model (fused MoE expert weights in recent
    transformers) are listed in `missing`."""

    def __init__(self, model, sites: list[Site], device: torch.device):
        self.stats: dict[str, ActivityStats] = {}
        self.missing: list[str] = []
        self.token_mask: torch.Tensor | None = None  # [B, T] bool, set per batch
        self._handles = []
        modules = dict(model.named_modules())
        for site in sites:
            module = modules.get(site.path)
            if module is None:
                self.missing.append(site.key)
                continue
            self.stats[site.key] = ActivityStats.zeros(site.n_units, device)
            if site.where == "input":
                handle = module.register_forward_pre_hook(self._hook(site, lambda a, o: a[0]))
            else:
                handle = module.register_forward_hook(self._hook(site, lambda a, o: o))
            self._handles.append(handle)

    def _hook(self, site: Site, pick):
        stats = self.stats[site.key]

        def hook(_module, args, output=None):
            x = pick(args, output)  # [B, T, D]
            if self.token_mask is not None:
                mask = self.token_mask.to(x.device)
                stats.update(x[mask][:, site.offset : site.offset + site.n_units])

        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def response_logits(model, batch: Batch, device: torch.device, vocab_limit: int | None = None):
    """Teacher-forced logits at response positions.

    Returns (logits [N, V] model dtype, targets [N] long): row n is the distribution predicted
    for the n-th response token (from the position before it), in batch order. `vocab_limit`
    keeps the first V' logits and drops positions whose target lies beyond them (models with
    different vocabulary sizes are compared on the tokens they share).
    """
    ids, attn, resp = (t.to(device, non_blocking=True) for t in batch)
    logits = model(input_ids=ids, attention_mask=attn).logits.to(device)  # [B, T, V]
    select = resp[:, 1:] & attn[:, 1:].bool()  # targets: response tokens 1..T-1
    logits, targets = logits[:, :-1][select], ids[:, 1:][select]
    if vocab_limit is not None:  # also for the smallest model: its targets may lie beyond it
        keep = targets < vocab_limit
        logits, targets = logits[keep, :vocab_limit], targets[keep]
    return logits, targets


def mean_nll(model, batches: list[Batch], device: torch.device, vocab_limit: int | None = None,
             on_batch: Callable[[], None] | None = None) -> float:  # fmt: skip
    """Mean −log p(target) over all response tokens of `batches` (float64 accumulation)."""
    total, count = 0.0, 0
    with torch.inference_mode():
        for batch in batches:
            logits, targets = response_logits(model, batch, device, vocab_limit)
            nll = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
            total += float(nll)
            count += targets.numel()
            if on_batch is not None:
                on_batch()
    return total / max(count, 1)


def perturbable(model) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """Matrices (≥ 2-D float parameters) in name order: what random-direction sharpness
    perturbs; norms and biases are left alone."""
    for name, p in sorted(model.named_parameters()):
        if p.dim() >= 2 and p.is_floating_point():
            yield name, p


BATCH_TOKENS = {"cpu": 4096, "cuda": 8192}


@dataclass
class Calibration:
    """Calibration data ready for forward passes: padded batches and what went into them."""

    batches: list[Batch]
    samples: int  # examples kept (after truncation drops)
    response_tokens: int
    batch_tokens: int
    warnings: list[str]
    unk_share: float | None = None  # share of tokens that are the unknown token (encode.py)


def prepare_calibration(
    spec: str,
    samples: int,
    max_tokens: int,
    tokenizer_dir: Path,
    device: torch.device,
    batch_tokens: int | None = None,
) -> Calibration:
    """Load `spec` (builtin:NAME or JSONL), tokenize with the SFT tokenizer and chat template,
    and batch; the one path `rejuv diagnose` and the data-driven scorers share."""
    from rejuv_cli.calib.data import load_examples
    from rejuv_cli.calib.encode import batches, encode, pad_id_of, unk_share
    from rejuv_cli.errors import CalibError

    examples = load_examples(spec, samples)
    warnings = []
    if len(examples) < samples:
        warnings.append(f"{spec} has {len(examples)} examples; {samples} were asked for")
    tokenizer = load_tokenizer(tokenizer_dir, "SFT")
    encoded, notes = encode(examples, tokenizer, max_tokens)
    warnings.extend(notes)
    if not encoded:
        raise CalibError(f"{spec}: no example has a response token left to score")
    budget = batch_tokens or BATCH_TOKENS[device.type]
    return Calibration(
        list(batches(encoded, budget, pad_id_of(tokenizer))),
        len(encoded),
        int(sum(sum(e.response) for e in encoded)),
        budget,
        warnings,
        unk_share(encoded, tokenizer),
    )


def record_activity(
    model, calib: Calibration, sites: list[Site], device, on_batch: Callable[[], None] | None = None
) -> ActivityRecorder:
    """One forward pass over the calibration batches with activity hooks (no logits kept)."""
    import inspect

    recorder = ActivityRecorder(model, sites, device)
    # Only the hooks' activations are wanted: skip the [B, T, vocab] logits where the model
    # allows (half a GB per 4096-token batch at a 32k vocabulary in float32).
    skip_logits = {}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        skip_logits = {"logits_to_keep": 1}
    try:
        with torch.inference_mode():
            for ids, attn, _ in calib.batches:
                recorder.token_mask = attn.to(device).bool()
                model(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False,
                      **skip_logits)  # fmt: skip
                if on_batch is not None:
                    on_batch()
    finally:
        recorder.close()
    return recorder
