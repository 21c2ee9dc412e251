"""`rejuv sweep` as a function: `sweep(base, sft, **settings)` -> SweepResult."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rejuv_cli.api.checks import (
    Progress,
    check_calib,
    check_checkable,
    check_mask_settings,
    no_progress,
    parse_max_memory,
    settings_for,
)
from rejuv_cli.errors import UsageError
from rejuv_cli.settings import SETTINGS

# The fuse settings a sweep passes on to each candidate (its α comes from `alphas`).
FUSE_SETTINGS = ("recipe", "dtype", "shard_size", "fraction", "select", "calib", "samples",
                 "max_tokens", "prompt_field", "response_field", "answer_field",
                 "messages_field", "modules", "max_per_module", "protect", "mode", "omega",
                 "noise", "seed", "mask", "device", "max_memory", "config_from")  # fmt: skip


@dataclass(frozen=True)
class SweepResult:
    """The sweep's report (`report`: what `rejuv sweep --json` writes, `rejuv schema sweep`):
    BASE's and SFT's rows, one row per α, the recommendation."""

    report: dict

    @property
    def rows(self) -> list[dict]:
        return self.report["rows"]

    @property
    def recommended_alpha(self) -> float | None:
        """The α to fuse with; None: the recommendation is no surgery."""
        return self.report["recommendation"]["alpha"]

    @property
    def recommendation(self) -> dict:
        return self.report["recommendation"]


def sweep(base: str | Path, sft: str | Path, *, out: Path | str | None = None,
          overwrite: bool = False, generate: bool = False, outputs: tuple = (),
          progress: Progress | None = None,
          **settings) -> SweepResult:  # fmt: skip
    """Measure BASE, SFT and one candidate per α (`alphas="0.3,0.5,0.7"` or a list), and
    recommend the most plastic α that keeps `min_skill` of SFT's skill; with `out`, write the
    recommended candidate there as `rejuv fuse` would.

    `settings` are `rejuv sweep`'s, by name (alphas, fraction, select, calib, samples,
    device, ...). `outputs`: report files the caller will write (checkpoint.preflight.Output),
    checked against the inputs before any work.

        from rejuv_cli import sweep
        result = sweep("./base", "./sft", alphas=[0.5, 0.7, 0.9], calib="data.jsonl")
        print(result.recommended_alpha)
    """
    from rejuv_cli.jsonio import json_safe
    from rejuv_cli.recipe import Recipe, find_recipe, load_recipe
    from rejuv_cli.reset.registry import check_scorer_modules
    from rejuv_cli.settings import command_line
    from rejuv_cli.sweeping.job import SweepJob
    from rejuv_cli.sweeping.run import run_sweep

    base, sft = str(base), str(sft)  # a directory or a Hub id, as on the command line
    v = settings_for("sweep", settings)
    alphas = SETTINGS["alphas"].parse_flag(v["alphas"])
    loaded = load_recipe(find_recipe(v["recipe"])) if v["recipe"] else Recipe(source=None)
    recipe = loaded.with_flags(v)
    check_mask_settings(v)
    if v["mask"] is None and recipe.reset.fraction > 0:
        check_scorer_modules(recipe.reset.select, recipe.reset.modules)
    check_calib(recipe.reset)
    if generate:
        check_checkable(recipe.reset)
    if overwrite and out is None:
        raise UsageError("--overwrite: there is no --out to replace")
    out = None if out is None else Path(out)
    _check_outputs(base, sft, recipe, outputs, out, overwrite)
    job = SweepJob(
        base, sft, recipe, alphas,
        fuse_values={k: v[k] for k in FUSE_SETTINGS},
        device=v["device"], batch_tokens=v["batch_tokens"],
        max_memory=parse_max_memory(v["max_memory"]), min_skill=v["min_skill"],
        generate=generate, group_size=v["group_size"], max_new_tokens=v["max_new_tokens"],
        checker=v["checker"],
        mask_in=v["mask"], out=out, overwrite=overwrite, config_from=v["config_from"],
        command=command_line(["rejuv", "sweep", base, sft], v, "sweep")
        + (" --generate" if generate else ""),
        outputs=tuple(o for o in outputs if o is not None),
    )  # fmt: skip
    return SweepResult(json_safe(run_sweep(job, progress or no_progress)))


def _check_outputs(base, sft, recipe, outputs: tuple, out: Path | None, overwrite: bool) -> None:
    from rejuv_cli.checkpoint.preflight import Output, check_outputs

    calib = recipe.reset.calib
    calib_file = None if calib.startswith("builtin:") else calib
    files = [o for o in outputs if o is not None]
    if out is not None:
        files.append(Output("--out", out, directory=True))
    check_outputs({"BASE": base, "SFT": sft, "--calib": calib_file, "--recipe": recipe.source},
                  files, overwrite)  # fmt: skip
