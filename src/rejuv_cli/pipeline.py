"""`rejuv fuse` end to end: resolve -> open -> plan -> execute -> finalize.

Commands call `plan_fuse` and `run_fuse`; this module does no rendering.
"""

from __future__ import annotations

import platform
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rejuv_cli import __version__
from rejuv_cli.checkpoint.reader import Checkpoint
from rejuv_cli.checkpoint.resolve import ResolvedModel, resolve_model
from rejuv_cli.errors import CheckpointError
from rejuv_cli.plan import FusePlan, build_plan
from rejuv_cli.recipe import Recipe


@dataclass
class FuseJob:
    """Everything `rejuv fuse` was asked to do."""

    base: str
    sft: str
    out: Path
    recipe: Recipe
    device: str = "auto"
    overwrite: bool = False
    alpha_from_flag: bool = False
    command: str = ""


@dataclass
class Prepared:
    job: FuseJob
    base_model: ResolvedModel
    sft_model: ResolvedModel
    base: Checkpoint
    sft: Checkpoint
    plan: FusePlan
    plan_seconds: float

    def close(self) -> None:
        self.base.close()
        self.sft.close()


def prepare_fuse(job: FuseJob) -> Prepared:
    """Resolve and open both checkpoints and plan every tensor; reads headers only."""
    from rejuv_cli.checkpoint.files import check_output_dir

    t0 = time.perf_counter()
    base_model = resolve_model(job.base, "BASE")
    sft_model = resolve_model(job.sft, "SFT")
    check_output_dir(job.out, {"BASE": base_model.path, "SFT": sft_model.path}, job.overwrite)
    base = Checkpoint.open(base_model.path, "BASE")
    sft = Checkpoint.open(sft_model.path, "SFT")
    if not (sft.root / "config.json").is_file():
        raise CheckpointError(
            f"SFT {sft.root} has no config.json; the output needs it to load in transformers"
        )
    plan = build_plan(base, sft, job.recipe, alpha_flag=job.alpha_from_flag)
    return Prepared(job, base_model, sft_model, base, sft, plan, time.perf_counter() - t0)


def plan_summary(p: Prepared) -> dict:
    """What --dry-run prints, and the static half of the run summary."""
    plan = p.plan
    alphas = Counter(round(t.alpha, 6) for t in plan.tensors if t.alpha is not None)
    return {
        "out": str(p.job.out),
        "base": p.base_model.to_json() | {"format": p.base.format},
        "sft": p.sft_model.to_json() | {"format": p.sft.format},
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
    }


def run_fuse(p: Prepared, on_bytes: Callable[[int], None] | None = None) -> dict:
    """Write the fused checkpoint atomically at job.out; returns the run summary."""
    from rejuv_cli.checkpoint.card import write_card_and_provenance
    from rejuv_cli.checkpoint.files import atomic_output_dir, copy_side_files, write_config
    from rejuv_cli.checkpoint.writer import write_index
    from rejuv_cli.surgery import Executor, checkpoint_digest, pick_device

    device = pick_device(p.job.device)
    t0 = time.perf_counter()
    with atomic_output_dir(p.job.out) as tmp:
        stats = Executor(p.plan, p.base, p.sft, device, on_bytes).run(tmp)
        write_index(tmp, p.plan.shards)
        dtypes = set(p.plan.out_dtypes())
        explicit = p.job.recipe.dtype != "auto" and len(dtypes) == 1
        write_config(p.sft.root, tmp, dtypes.pop() if explicit else None)
        side_files = copy_side_files(p.sft.root, tmp)
        summary = plan_summary(p)
        summary["base"]["tensor_digest"] = checkpoint_digest(stats.digests["base"], p.base)
        summary["sft"]["tensor_digest"] = checkpoint_digest(stats.digests["sft"], p.sft)
        total = time.perf_counter() - t0 + p.plan_seconds
        summary["seconds"] = {
            "plan": round(p.plan_seconds, 3),
            "write": round(stats.seconds, 3),
            "total": round(total, 3),
        }
        summary["throughput_mb_s"] = round(stats.bytes_written / 1e6 / max(stats.seconds, 1e-9), 1)
        summary["device"] = str(device)
        summary["side_files"] = side_files
        write_card_and_provenance(tmp, provenance(p, summary))
    return summary


def provenance(p: Prepared, summary: dict) -> dict:
    """rejuv.json: enough to audit and reproduce the run."""
    return {
        "rejuv_version": __version__,
        "command": p.job.command,
        "inputs": {"base": summary["base"], "sft": summary["sft"]},
        "recipe": p.job.recipe.to_json(),
        "recipe_source": p.job.recipe.source,
        "counts": summary["counts"],
        "out_dtypes": summary["out_dtypes"],
        "shards": summary["shards"],
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
