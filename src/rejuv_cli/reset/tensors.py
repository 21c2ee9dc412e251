"""What a mask means per tensor: the rows and columns to reset, and the values the modes that
draw (shrink-perturb, reinit) put there, seeded per tensor name so they do not depend on
chunking or device. The executor applies them chunk by chunk (`ops.reset.reset_values`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from rejuv_cli.arch.layout import UnitLayout
from rejuv_cli.reset.norms import TensorNorms
from rejuv_cli.reset.select import ResetMask

if TYPE_CHECKING:
    from rejuv_cli.recipe import ResetSettings


@dataclass
class TensorReset:
    """The reset slices of one tensor, in stored coordinates.

    rows: sorted indices along dim 0 (1-D tensors: element indices; a whole tensor of a
    whole expert: every row); cols: along dim 1.
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
            if sl.whole:  # the owning unit (a whole expert) takes every row of the tensor
                if offset in units:
                    rows.setdefault(name, []).append(np.arange(shapes[name][0]))
                    side[(name, 0)] = sl.out
                continue
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


def selected_tensors(layout: UnitLayout, mask: ResetMask) -> set[str]:
    """The tensors a mask touches: every tensor of an instance with a selected unit, except the
    whole tensors (whole experts) whose owning unit is not selected."""
    names = set()
    for inst in layout.instances:
        selected = mask.selected.get(inst.key, np.zeros(0, bool))
        if selected.any():
            names.update(n for n, sl, owner in inst.tensors if not sl.whole or selected[owner])
    return names


def _draw_values(tr: TensorReset, name: str, shape, settings: ResetSettings, norms) -> None:
    import torch
    import xxhash

    from rejuv_cli.checkpoint.stream import row_length

    seed = xxhash.xxh64_intdigest(f"{settings.seed}\0{name}".encode()) & ((1 << 63) - 1)
    gen = torch.Generator().manual_seed(seed)
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
