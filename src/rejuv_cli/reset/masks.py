"""Reset masks as files: which units are reset, as a reusable artifact.

A mask file is safetensors: one boolean tensor [n_units] per module instance (key
"layers.3.mlp", "layers.0.expert.2", ...) and string metadata saying how it was made
(format, model_type, layers, scorer, fraction, seed, inputs). Reusing one with `--mask` skips
the scoring pass; it is checked against the model's units before anything is written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rejuv_cli.arch.layout import UnitLayout
from rejuv_cli.checkpoint.output import write_file
from rejuv_cli.checkpoint.safetensors_file import read_header
from rejuv_cli.checkpoint.writer import OutEntry, ShardLayout
from rejuv_cli.errors import CheckpointError, UsageError
from rejuv_cli.reset.select import MASK_FORMAT, ResetMask


class MaskError(UsageError):
    """A --mask file that cannot be used with these checkpoints (exit 2: fix the arguments)."""


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


def mask_modules(path: Path) -> tuple[str, ...] | None:
    """The modules a mask file was made for when they include an opt-in one (`whole_expert`,
    which the default layout leaves out, so the layout must ask for it); else None (the default
    modules, which hold every other mask's instances). None too when the file cannot be read:
    `load_mask` then says why."""
    from rejuv_cli.arch.units import resolve_modules

    try:
        _, meta = read_header(path)
        modules = resolve_modules(meta.get("modules", "").split(","))
    except (CheckpointError, OSError, ValueError):
        return None
    return modules if "whole_expert" in modules else None


def _int(text: str | None) -> int:
    # isascii: str.isdigit() also accepts digits int() refuses ("²"); 18 digits fit any count
    ok = isinstance(text, str) and text.isascii() and text.isdigit() and len(text) <= 18
    return int(text) if ok else 0
