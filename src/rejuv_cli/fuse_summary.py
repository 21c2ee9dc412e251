"""What a fuse reports: the plan and reset summaries (`rejuv fuse --json`, --dry-run), the disk
check's figures, and rejuv.json, the provenance written next to the checkpoint. Pure functions
of a prepared fuse (fuse_job.Prepared) and its results; no I/O but the free-space query."""

from __future__ import annotations

import platform
from collections import Counter

from rejuv_cli import __version__
from rejuv_cli.fuse_job import Prepared


def reset_summary(p: Prepared, mask=None, seconds: float | None = None) -> dict | None:
    """Reset settings and, once units are chosen, the counts per module and layer."""
    if p.layout is None:
        return None
    settings = p.job.recipe.reset
    info = {
        "settings": settings.to_json(),
        "source": f"mask {p.job.mask_in}" if p.job.mask_in else f"{settings.select} scorer",
        "unit_map": p.layout.family,
        "modules": list(p.layout.modules),
        "units": p.layout.total_units,
    }
    if mask is None:
        from rejuv_cli.ops.reset import target_count

        return info | {"target": target_count(settings.fraction, p.layout.total_units)}
    from rejuv_cli.reset.select import mask_counts

    info |= mask_counts(p.layout, mask)
    if p.job.mask_in is not None:  # how the reused mask was made
        info["mask_metadata"] = dict(sorted(mask.meta.items()))
    if p.job.mask_out is not None:
        info["mask_saved"] = str(p.job.mask_out)
    if mask.info:
        info["scorer"] = mask.info
    if seconds is not None:
        info["seconds"] = round(seconds, 3)
    return info


def plan_summary(p: Prepared) -> dict:
    """What --dry-run prints, and the static half of the run summary."""
    plan = p.plan
    alphas = Counter(round(t.alpha, 6) for t in plan.tensors if t.alpha is not None)
    return {
        "out": str(p.job.out),
        "base": p.base_model.to_json() | p.base.input_json(),
        "sft": p.sft_model.to_json() | p.sft.input_json(),
        "counts": plan.counts(),
        "out_bytes": plan.out_bytes,
        "in_bytes": {"base": p.base.total_bytes(), "sft": p.sft.total_bytes()},
        "out_dtypes": plan.out_dtypes(),
        "alpha": {
            "default": p.job.recipe.alpha,
            "rules": len(p.job.recipe.rules),
            "values": {str(a): n for a, n in sorted(alphas.items())},
        },
        "shard_limit": plan.shard_limit,
        "shards": [
            {"file": s.filename, "bytes": s.file_bytes, "tensors": len(s.entries)}
            for s in plan.shards
        ],
        "warnings": plan.warnings,
        "reset": reset_summary(p),
        "disk": disk_summary(p),
    }


def output_bytes_needed(p: Prepared) -> int:
    """Bytes the output directory will take: shards (headers included), SFT's side files, and
    a bound for the index, config, model card and rejuv.json (~1 KB per tensor is generous)."""
    from rejuv_cli.checkpoint.files import side_file_paths

    side = sum(path.stat().st_size for d in p.sft.side_dirs() for path in side_file_paths(d))
    return sum(s.file_bytes for s in p.plan.shards) + side + 65_536 + 1024 * len(p.plan.tensors)


def disk_summary(p: Prepared) -> dict:
    """Space the output needs and what OUT's filesystem has free (also when OUT is replaced:
    the previous output is removed only after the new one is complete)."""
    from rejuv_cli.checkpoint.disk import free_bytes

    free, where = free_bytes(p.job.out)
    needed = output_bytes_needed(p)
    return {"needed_bytes": needed, "free_bytes": free, "filesystem_of": str(where),
            "enough": needed <= free}  # fmt: skip


def provenance(p: Prepared, summary: dict) -> dict:
    """rejuv.json: enough to audit and reproduce the run."""
    from rejuv_cli.report.json_schemas import VERSIONS

    return {
        "schema_version": VERSIONS["rejuv.json"],  # its JSON Schema: rejuv schema rejuv.json
        "rejuv_version": __version__,
        "command": p.job.command,
        "inputs": {"base": summary["base"], "sft": summary["sft"]},
        "recipe": p.job.recipe.to_json(),
        "recipe_source": p.job.recipe.source,
        "counts": summary["counts"],
        "reset": summary["reset"],
        "out_dtypes": summary["out_dtypes"],
        "shards": summary["shards"],
        **({"ranks": summary["ranks"]} if "ranks" in summary else {}),
        "warnings": summary["warnings"],
        "seconds": summary["seconds"],
        "device": summary["device"],
        "host": {"python": platform.python_version(), "platform": platform.platform()},
        "tensors": {
            t.name: {
                "action": t.action,
                "alpha": t.alpha,
                "alpha_source": t.alpha_source,
                "dtype": t.out_dtype,
            }
            | ({"base_rows": t.base_rows} if t.base_rows else {})
            for t in p.plan.tensors
        },
    }
