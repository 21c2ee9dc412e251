"""Reset masks: which units are reset, as a reusable artifact, and what that means per tensor.

A mask file is safetensors: one boolean tensor [n_units] per module instance (key
"layers.3.mlp", "layers.0.expert.2", ...) and string metadata saying how it was made
(format, model_type, layers, scorer, fraction, seed, inputs). Reusing one with `--mask` skips
the scoring pass; it is checked against the model's units before anything is written.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rejuv_cli import __version__
from rejuv_cli.checkpoint.output import write_file
from rejuv_cli.checkpoint.safetensors_file import read_header
from rejuv_cli.checkpoint.writer import OutEntry, ShardLayout
from rejuv_cli.errors import CheckpointError, UsageError
from rejuv_cli.ops.reset import protected_units, select_units
from rejuv_cli.recipe import ResetSettings
from rejuv_cli.scoring import TensorNorms, UnitLayout, UnitScores

MASK_FORMAT = "rejuv-mask"
MASK_VERSION = "1"


class MaskError(UsageError):
    """A --mask file that cannot be used with these checkpoints (exit 2: fix the arguments)."""


@dataclass
class ResetMask:
    selected: dict[str, np.ndarray]  # instance key -> [n_units] bool, in layout order
    meta: dict[str, str]
    target: int = 0  # units asked for (fraction of all units); caps may leave it unmet
    protected: int = 0  # units excluded as largest-base-norm
    info: dict = field(default_factory=dict)  # the scorer's report (data scorers), not saved

    @property
    def count(self) -> int:
        return int(sum(m.sum() for m in self.selected.values()))


def select_mask(
    layout: UnitLayout, scores: UnitScores, settings: ResetSettings, inputs: dict[str, str]
) -> ResetMask:
    """Global ranking, top fraction, per-module cap, protection: the units to reset."""
    protected = [protected_units(b, settings.protect) for b in scores.base_norm_sq]
    masks, target = select_units(
        scores.scores, [~p for p in protected], settings.fraction, settings.max_per_module
    )
    meta = {
        "format": MASK_FORMAT,
        "version": MASK_VERSION,
        "rejuv_version": __version__,
        "model_type": str(layout.model_type),
        "unit_map": layout.family,
        "layers": str(layout.n_layers),
        "modules": ",".join(layout.modules),
        "scorer": settings.select,
        "fraction": repr(settings.fraction),
        "max_per_module": repr(settings.max_per_module),
        "protect": repr(settings.protect),
        "seed": str(settings.seed),
        "units": str(layout.total_units),
    } | {f"input.{k}": v for k, v in inputs.items()}
    selected = {inst.key: m for inst, m in zip(layout.instances, masks, strict=True)}
    return ResetMask(selected, meta, target, int(sum(p.sum() for p in protected)))


def save_mask(mask: ResetMask, path: Path) -> None:
    """Write the mask atomically (temp file + rename): a crash never leaves half a file,
    a failed write is one OutputError line.

    Written with rejuv's own safetensors writer: its header lists metadata and tensors in a
    fixed order, so the same selection gives the same bytes (the reference writer orders
    metadata by hash).
    """
    meta = mask.meta | {
        "selected": str(mask.count),
        "target": str(mask.target),
        "protected": str(mask.protected),
    }
    layout = ShardLayout(
        path.name,
        [OutEntry(k, "BOOL", (v.shape[0],)) for k, v in mask.selected.items()],
        dict(sorted(meta.items())),
    )

    def write(f) -> None:
        f.write(layout.header_bytes())
        for entry in layout.ordered():
            f.write(np.ascontiguousarray(mask.selected[entry.name], dtype=np.bool_).tobytes())

    write_file(path, write, "--save-mask")


def load_mask(path: Path, layout: UnitLayout) -> ResetMask:
    """Read a mask and check it fits `layout` (same model type, layers and unit counts)."""
    where = f"--mask {path}"
    if not path.is_file():
        raise MaskError(f"{where}: no such file")
    try:
        infos, meta = read_header(path)
    except CheckpointError as e:
        raise MaskError(f"{where}: not a readable safetensors file ({e})") from None
    if meta.get("format") != MASK_FORMAT:
        raise MaskError(f"{where}: not a rejuv mask (no format={MASK_FORMAT} metadata); "
                        "make one with `rejuv fuse ... --save-mask FILE`")  # fmt: skip
    made_for = f"a {meta.get('model_type')!r} model with {meta.get('layers')} layers"
    here = f"a {layout.model_type!r} model with {layout.n_layers} layers"
    if meta.get("model_type") != str(layout.model_type) or meta.get("layers") != str(
        layout.n_layers
    ):
        raise MaskError(f"{where}: made for {made_for}, but SFT is {here}: wrong model?")
    sizes = layout.sizes()
    unknown = sorted(set(infos) - set(sizes))
    if unknown:
        raise MaskError(f"{where}: module '{unknown[0]}' is not in SFT ({len(unknown)} such); "
                        f"made for a different architecture?")  # fmt: skip
    arrays = {}
    for key, info in infos.items():
        if info.dtype != "BOOL" or info.shape != (sizes[key],):
            raise MaskError(
                f"{where}: '{key}' is {info.dtype.lower()}{list(info.shape)} but SFT has "
                f"{sizes[key]} units there (expected bool[{sizes[key]}]): made for a "
                "different model size?"
            )
        arrays[key] = np.fromfile(path, dtype=np.uint8, count=info.nbytes, offset=info.offset)
        arrays[key] = arrays[key].astype(np.bool_)
    selected = {inst.key: arrays[inst.key] for inst in layout.instances if inst.key in arrays}
    return ResetMask(selected, meta, _int(meta.get("target")), _int(meta.get("protected")))


def _int(text: str | None) -> int:
    # isascii: str.isdigit() also accepts digits int() refuses ("²"); 18 digits fit any count
    ok = isinstance(text, str) and text.isascii() and text.isdigit() and len(text) <= 18
    return int(text) if ok else 0


def mask_counts(layout: UnitLayout, mask: ResetMask) -> dict:
    """Units and resets per module kind and per layer (JSON-ready)."""
    units, reset, by_layer, by_instance = Counter(), Counter(), Counter(), {}
    for inst in layout.instances:
        n = int(mask.selected[inst.key].sum()) if inst.key in mask.selected else 0
        units[inst.module.name] += inst.n_units
        reset[inst.module.name] += n
        by_layer[inst.layer] += n
        if n:
            by_instance[inst.key] = n
    return {
        "units": layout.total_units,
        "target": mask.target,
        "selected": mask.count,
        "protected": mask.protected,
        "by_module": {m: {"units": units[m], "reset": reset[m]} for m in units},
        "by_layer": {str(k): by_layer[k] for k in sorted(by_layer)},
        "by_instance": by_instance,
    }


@dataclass
class TensorReset:
    """The reset slices of one tensor, in stored coordinates.

    rows: sorted indices along dim 0 (1-D tensors: element indices); cols: along dim 1.
    *_out: those slices are outgoing weights (reinit zeroes them).
    *_values: float32 noise (shrink-perturb) or replacement values (reinit), shaped
    [len(rows), row_len] and [n_rows, len(cols)]; None in base mode.
    """

    rows: np.ndarray
    cols: np.ndarray
    rows_out: bool = False
    cols_out: bool = False
    row_values: object = None
    col_values: object = None


def tensor_resets(
    layout: UnitLayout,
    mask: ResetMask,
    settings: ResetSettings,
    shapes: dict[str, tuple[int, ...]],
    norms: dict[str, TensorNorms] | None = None,
) -> dict[str, TensorReset]:
    """Translate selected units into per-tensor row/column indices (and noise, if the mode
    draws any: seeded per tensor name, so it does not depend on chunking or device)."""
    rows: dict[str, list] = {}
    cols: dict[str, list] = {}
    side: dict[tuple[str, int], bool] = {}
    for inst in layout.instances:
        units = np.flatnonzero(mask.selected.get(inst.key, np.zeros(0, bool)))
        if units.size == 0:
            continue
        for name, sl, offset in inst.tensors:
            (rows if sl.axis == 0 else cols).setdefault(name, []).append(units + offset)
            side[(name, sl.axis)] = sl.out
    result = {}
    for name in sorted(set(rows) | set(cols)):
        tr = TensorReset(
            np.unique(np.concatenate(rows.get(name, [np.zeros(0, np.int64)]))).astype(np.int64),
            np.unique(np.concatenate(cols.get(name, [np.zeros(0, np.int64)]))).astype(np.int64),
            side.get((name, 0), False),
            side.get((name, 1), False),
        )
        if settings.mode != "base":
            _draw_values(tr, name, shapes[name], settings, norms[name])
        result[name] = tr
    return result


def _draw_values(tr: TensorReset, name: str, shape, settings: ResetSettings, norms) -> None:
    import torch
    import xxhash

    seed = xxhash.xxh64_intdigest(f"{settings.seed}\0{name}".encode()) & ((1 << 63) - 1)
    gen = torch.Generator().manual_seed(seed)
    from rejuv_cli.surgery import row_length

    n_rows, row_len = shape[0], row_length(shape)
    std, mean = norms.base_std, norms.base_mean

    def draw(n: int, m: int, outgoing: bool):
        z = torch.randn(n, m, generator=gen, dtype=torch.float32)
        if settings.mode == "shrink-perturb":
            return z.mul_(settings.noise * std)
        if outgoing or len(shape) == 1:  # reinit (ReDo): outgoing weights and biases to zero
            return z.zero_()
        return z.mul_(std).add_(mean)  # incoming weights redrawn from the tensor's N(mean, std)

    if tr.rows.size:
        tr.row_values = draw(tr.rows.size, row_len, tr.rows_out)
    if tr.cols.size:
        tr.col_values = draw(n_rows, tr.cols.size, tr.cols_out)
