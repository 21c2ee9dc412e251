"""UnitLayout: the units of one checkpoint that may be reset, as plain data.

Built by `reset.layout.unit_layout` (which joins the unit map with the checkpoints); read by
the reset scorers and, through `activation_sites`, by the calibration forward hooks, which
is why it lives here, below both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rejuv_cli.arch.units import ModuleInstance


@dataclass
class UnitLayout:
    """The units that may be reset: module instances of the chosen modules, in layer order."""

    family: str
    model_type: str
    n_layers: int
    modules: tuple[str, ...]
    instances: list[ModuleInstance]
    warnings: list[str] = field(default_factory=list)

    def sizes(self) -> dict[str, int]:
        """Instance key -> number of units."""
        return {inst.key: inst.n_units for inst in self.instances}

    @property
    def total_units(self) -> int:
        return sum(inst.n_units for inst in self.instances)

    def tensor_axes(self) -> dict[str, set[int]]:
        """Tensor name -> the axes its unit slices lie along (in SFT storage order)."""
        axes: dict[str, set[int]] = {}
        for inst in self.instances:
            for name, sl, _ in inst.tensors:
                axes.setdefault(name, set()).add(sl.axis)
        return axes
