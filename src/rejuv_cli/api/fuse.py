"""`rejuv fuse` as a function: `fuse(base, sft, out, **settings)` -> FuseResult.

The settings are the command's, by their names in settings.SETTINGS (alpha, fraction for
--reset, select, modules, dtype, shard_size, recipe, mask, save_mask, device, ...), checked by
the same validators; `rejuv fuse` itself is a shell over `fuse_job` and `run_fuse_job`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rejuv_cli.api.checks import (
    Progress,
    check_calib,
    check_mask_settings,
    no_progress,
    parse_max_memory,
    settings_for,
)
from rejuv_cli.errors import UsageError
from rejuv_cli.settings import SETTINGS


@dataclass(frozen=True)
class FuseResult:
    """What a fuse did: `summary` is what `rejuv fuse --json` prints (the plan, the reset, the
    shards written with their digests, timings, warnings; rejuv.json holds the same record)."""

    summary: dict

    @property
    def out(self) -> Path | None:
        """The checkpoint written; None for a dry run."""
        return None if self.dry_run else Path(self.summary["out"])

    @property
    def dry_run(self) -> bool:
        return bool(self.summary.get("dry_run"))

    @property
    def reset(self) -> dict | None:
        """The reset's settings and counts (rejuv.json `reset`); None for fusion only."""
        return self.summary.get("reset")

    @property
    def warnings(self) -> list[str]:
        return list(self.summary.get("warnings", []))


def fuse_job(base: str | Path, sft: str | Path, out: Path | str, *, overwrite: bool = False,
             **settings):  # fmt: skip
    """The checked job (fuse_job.FuseJob) `fuse` runs: settings validated, the recipe loaded
    and the flags applied over it, the calibration data parsed when a data scorer reads it.
    Raises UsageError (or RecipeError, CalibError) before any checkpoint is read."""
    from rejuv_cli.fuse_job import FuseJob
    from rejuv_cli.recipe import Recipe, find_recipe, load_recipe
    from rejuv_cli.reset.registry import DATA_SCORERS, check_scorer_modules
    from rejuv_cli.settings import command_line

    base, sft = str(base), str(sft)  # a directory or a Hub id, as on the command line
    v = settings_for("fuse", settings)
    check_mask_settings(v)
    loaded = load_recipe(find_recipe(v["recipe"])) if v["recipe"] else Recipe(source=None)
    effective = loaded.with_flags(v)
    mask, save_mask = v["mask"], v["save_mask"]
    reset = effective.reset
    from_data = mask is None and reset.fraction > 0 and reset.select in DATA_SCORERS
    given = [SETTINGS[k].flag for k in ("calib", "samples", "max_tokens", "prompt_field",
             "response_field", "answer_field", "messages_field", "max_memory")
             if v[k] is not None]  # fmt: skip
    if given and (mask is not None or reset.select not in DATA_SCORERS):
        why = "--mask skips scoring" if mask is not None else \
            f"the {reset.select} scorer reads no data"  # fmt: skip
        raise UsageError(f"{', '.join(given)}: {why}; these set the calibration data and "
                         f"forward passes of --select {'|'.join(DATA_SCORERS)}")  # fmt: skip
    if mask is None and reset.fraction > 0:
        check_scorer_modules(reset.select, reset.modules)
    if from_data:
        check_calib(reset)
    if save_mask is not None and mask is None and reset.fraction == 0:
        raise UsageError("--save-mask: there is nothing to save with --reset 0")
    out = Path(out)
    words = ["rejuv", "fuse", base, sft, "--out", str(out)]
    return FuseJob(base, sft, out, effective, v["device"], overwrite, v["alpha"] is not None,
                   command_line(words, v), mask_in=mask, mask_out=save_mask,
                   max_memory=parse_max_memory(v["max_memory"]),
                   config_from=v["config_from"])  # fmt: skip


def run_fuse_job(job, *, dry_run: bool = False, progress: Progress | None = None,
                 notes: Callable[[str], None] | None = None) -> FuseResult:  # fmt: skip
    """Run a `fuse_job`: write the checkpoint at job.out (atomically), or with `dry_run` plan
    only (with --save-mask: score, select and write the mask). `notes` receives one-line
    remarks (leftovers of killed runs removed). Under torchrun (rejuv_cli.dist joined) each
    rank runs its share; every rank returns, rank 0's summary is the run's."""
    from rejuv_cli.dist import share_label
    from rejuv_cli.fuse_summary import plan_summary, reset_summary
    from rejuv_cli.pipeline import prepare_fuse, run_fuse, select_reset

    progress = progress or no_progress
    prepared = prepare_fuse(job)
    try:
        if dry_run:
            summary = plan_summary(prepared) | {"dry_run": True}
            if not summary["disk"]["enough"]:
                summary["warnings"] = [_disk_warning(summary["disk"]), *summary["warnings"]]
            if job.mask_out is not None and prepared.resetting:
                from rejuv_cli.checkpoint.stream import pick_device

                on_bytes = progress(share_label("scoring"), prepared.score_bytes, "bytes")
                mask, _, seconds = select_reset(prepared, pick_device(job.device), on_bytes)
                summary["reset"] = reset_summary(prepared, mask, seconds)
            return FuseResult(summary)
        on_score = progress(share_label("scoring"), prepared.score_bytes, "bytes") \
            if prepared.resetting else None  # fmt: skip
        # every rank's bytes: rank 0's bar adds the others' (executor.write_shards)
        on_bytes = progress("fusing", prepared.plan.out_bytes, "bytes")
        summary = run_fuse(prepared, on_bytes=on_bytes, on_score_bytes=on_score, say=notes)
        return FuseResult(summary | {"dry_run": False})
    finally:
        prepared.close()


def fuse(base: str | Path, sft: str | Path, out: Path | str, *, overwrite: bool = False,
         dry_run: bool = False, progress: Progress | None = None,
         notes: Callable[[str], None] | None = None, **settings) -> FuseResult:  # fmt: skip
    """Fuse SFT with BASE into `out`: θ = θ_base + α(θ_sft − θ_base), then the reset.

    `settings` are `rejuv fuse`'s, by name (alpha=0.4, fraction=0.02, select="dormant",
    modules="k,v,mlp" or ["k", "v", "mlp"], recipe="fusion-only", mask=PATH, device="cpu",
    ...); omitted ones take the recipe's value, else the default, as on the command line.
    Returns the run's summary (FuseResult); raises rejuv_cli.errors.RejuvError subclasses with
    the CLI's one-line messages.

        from rejuv_cli import fuse
        result = fuse("./base", "./sft", "./out", alpha=0.4, fraction=0.02)
        print(result.out, result.reset["selected"])
    """
    job = fuse_job(base, sft, out, overwrite=overwrite, **settings)
    return run_fuse_job(job, dry_run=dry_run, progress=progress, notes=notes)


def _disk_warning(disk: dict) -> str:
    from rejuv_cli.report.console import human_bytes

    return (f"the output needs {human_bytes(disk['needed_bytes'])} but the filesystem of "
            f"{disk['filesystem_of']} has {human_bytes(disk['free_bytes'])} free: "
            "the real run would stop before writing")  # fmt: skip
