"""`rejuv inspect`: what rejuv sees in a checkpoint (family, units per module, sizes)."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from pathlib import Path

from rejuv_cli.arch.units import (
    count_experts,
    family_map,
    misfits,
    module_instances,
    unaccounted,
)
from rejuv_cli.checkpoint.formats import detect_format, open_source
from rejuv_cli.checkpoint.names import check_layers_stored, ties_embeddings
from rejuv_cli.checkpoint.source import ModelSource
from rejuv_cli.errors import ArchError, CheckpointError
from rejuv_cli.pairing import layer_count, n_layers


def inspect_input(path: Path, base: Path | None, config_from: Path | None) -> dict:
    """`rejuv inspect`'s report for directory `path`, whatever input form it is. A LoRA adapter
    without `base` is described by its own files (rank, targets, ...); with it, as the model
    it makes. Reads headers, configs and (for an adapter) no tensor data."""
    if detect_format(path) == "peft-lora" and base is None:
        from rejuv_cli.checkpoint.lora import describe_adapter

        return {"path": str(path), "format": "peft-lora", "input": describe_adapter(path),
                "adapter_only": True, "warnings": []}  # fmt: skip
    base_src = open_source(base, "BASE", config_from=config_from) if base is not None else None
    try:
        with open_source(path, "MODEL", base_src, config_from) as source:
            return inspect_checkpoint(source)
    finally:
        if base_src is not None:
            base_src.close()


def inspect_checkpoint(ckpt: ModelSource) -> dict:
    """A JSON-ready description of one model; reads headers only."""
    names = set(ckpt.tensors)
    depth = n_layers(ckpt)
    files = ckpt.weight_files()
    warnings = list(ckpt.warnings)
    try:  # shown, not refused: inspect is where one looks at a broken checkpoint
        warnings += [w for w in [check_layers_stored(ckpt, layer_count(ckpt))] if w]
    except CheckpointError as e:
        warnings.append(str(e))
    report = {
        "path": str(ckpt.root),
        "format": ckpt.format,
        "input": ckpt.describe(),  # the input form: world size, adapter rank, quantization
        "model_type": ckpt.config.get("model_type"),
        "layers": depth,
        "experts": count_experts(names),
        "tensors": len(names),
        "parameters": sum(math.prod(t.shape) for t in ckpt.tensors.values()),
        "dtypes": dict(Counter(t.dtype for t in ckpt.tensors.values())),
        "tensor_bytes": ckpt.total_bytes(),
        "disk_bytes": sum(f.stat().st_size for f in files),
        "files": len(files),
        "tied_embeddings": ties_embeddings(ckpt),
        "warnings": warnings,
    }
    try:
        fm = family_map(ckpt.config)
    except ArchError as e:
        return report | {"unit_map": None, "unit_map_error": str(e), "modules": {},
                         "units_total": 0, "unaccounted": [], "misfits": []}  # fmt: skip
    instances = module_instances(fm, ckpt.config, names, depth, report["experts"])
    per_module: dict[str, dict] = defaultdict(
        lambda: {"instances": 0, "units": 0, "tensors": set()}
    )
    for inst in instances:
        entry = per_module[inst.module.name]
        entry["instances"] += 1
        entry["units"] += inst.n_units
        entry["units_per_instance"] = inst.n_units
        entry["tensors"].update(s.tensor for _, s, _ in inst.tensors)  # relative, "{e}" kept
        if inst.module.opt_in:  # reset only when --modules names it (whole_expert)
            entry["opt_in"] = True
    modules = {k: v | {"tensors": sorted(v["tensors"])} for k, v in per_module.items()}
    return report | {
        "unit_map": fm.name,
        "modules": modules,
        # the default module set's units (opt-in modules cover the same tensors again)
        "units_total": sum(m["units"] for m in modules.values() if not m.get("opt_in")),
        "unaccounted": unaccounted(fm, names, instances),
        "misfits": misfits(instances, {n: t.shape for n, t in ckpt.tensors.items()}),
    }
