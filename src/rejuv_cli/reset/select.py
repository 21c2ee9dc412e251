"""Selection: from per-unit scores to the units to reset (global ranking, top fraction,
per-module cap, protection of the largest-BASE-norm units), as a `ResetMask`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from rejuv_cli import __version__
from rejuv_cli.arch.layout import UnitLayout
from rejuv_cli.ops.reset import protected_units, select_units
from rejuv_cli.reset.scores import UnitScores

if TYPE_CHECKING:
    from rejuv_cli.recipe import ResetSettings

MASK_FORMAT = "rejuv-mask"
MASK_VERSION = "1"


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
