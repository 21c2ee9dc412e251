"""Which units a checkpoint has: the architecture's unit map joined with the two checkpoints
(headers and the tensor pairing only; no tensor data is read)."""

from __future__ import annotations

from rejuv_cli.arch.layout import UnitLayout
from rejuv_cli.arch.units import FAMILIES, count_experts, family_map, misfits, module_instances
from rejuv_cli.checkpoint.reader import Checkpoint
from rejuv_cli.errors import ArchError
from rejuv_cli.pairing import Pairing, TensorPairing, n_layers


def unit_layout(sft: Checkpoint, plan: Pairing, modules: tuple[str, ...] | None) -> UnitLayout:
    """Map SFT's tensors to units (ArchError when the family has no unit map or it misfits).
    `plan`: the tensor pairing, or a FusePlan (same fields).

    `modules` None: every module of the unit map except the opt-in ones (`whole_expert`,
    which covers the same tensors as `expert`). Asking for whole experts in a checkpoint that
    stores none is an ArchError. A module instance is left out, with a warning, when one of
    its tensors has no BASE counterpart of the same shape (nothing to reset to) or is not
    floating point.
    """
    fm = family_map(sft.config)
    names = set(sft.tensors)
    instances = module_instances(fm, sft.config, names, n_layers(sft), count_experts(names))
    problems = misfits(instances, {n: t.shape for n, t in sft.tensors.items()})
    if problems:
        raise ArchError(
            f"the {fm.name} unit map does not fit this checkpoint ({problems[0]}); "
            "use --reset 0 to fuse without a reset"
        )
    wanted = modules or tuple(dict.fromkeys(i.module.name for i in instances
                                            if not i.module.opt_in))  # fmt: skip
    if "whole_expert" in wanted and not any(i.module.whole_experts for i in instances):
        raise ArchError(
            f"--modules whole_expert: SFT (model_type {sft.config.get('model_type')!r}) stores "
            "no mixture-of-experts experts one tensor each (*.experts.E.*), so it has no whole "
            "experts to reset; model types with whole experts: "
            f"{', '.join(sorted(t for t, f in FAMILIES.items() if _has_whole_experts(f)))}"
        )
    by_name = plan.by_name()
    kept, warnings = [], []
    for inst in instances:
        if inst.module.name not in wanted:
            continue
        bad = [n for n, _, _ in inst.tensors if not _resettable(by_name[n])]
        if bad:
            warnings.append(f"units of {inst.key} are not reset: '{bad[0]}' has no BASE values")
            continue
        kept.append(inst)
    present = tuple(m for m in wanted if any(i.module.name == m for i in kept))
    return UnitLayout(fm.name, sft.config.get("model_type"), n_layers(sft), present, kept, warnings)


def _has_whole_experts(fm) -> bool:
    return any(m.whole_experts for m in fm.modules)


def _resettable(tp: TensorPairing) -> bool:
    # BASE values for every row (α = 1 or 0 tensors too); copied and added-token ones are not.
    return tp.paired and tp.base_rows is None
