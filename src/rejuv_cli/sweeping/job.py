"""What a `rejuv sweep` was asked to do, and the `rejuv fuse` job and command line that write
its candidate at one α (the --out path, the temporary checkpoints, the suggested next step)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rejuv_cli.fuse_job import FuseJob
from rejuv_cli.recipe import Recipe
from rejuv_cli.settings import SETTINGS


@dataclass
class SweepJob:
    base: str
    sft: str
    recipe: Recipe  # as for fuse (flags applied); its α is replaced by each of `alphas`
    alphas: tuple[float, ...]
    fuse_values: dict = field(default_factory=dict)  # the fuse settings given, for commands
    device: str = SETTINGS["device"].default
    batch_tokens: int | None = None
    max_memory: int | None = None
    min_skill: float = SETTINGS["min_skill"].default
    generate: bool = False
    group_size: int = SETTINGS["group_size"].default
    max_new_tokens: int = SETTINGS["max_new_tokens"].default
    checker: str = SETTINGS["checker"].default
    mask_in: Path | None = None
    config_from: Path | None = None  # --config-from
    out: Path | None = None  # write the recommended candidate here
    overwrite: bool = False
    command: str = ""
    outputs: tuple = ()  # report files (preflight.Output), checked against the inputs

    # The calibration data is the recipe's (reset.calib, ...): the data scorers and the
    # measurements read the same examples.
    @property
    def calib(self) -> str:
        return self.recipe.reset.calib

    @property
    def samples(self) -> int:
        return self.recipe.reset.samples

    @property
    def max_tokens(self) -> int:
        return self.recipe.reset.max_tokens


def fuse_job(job: SweepJob, alpha: float, out: Path | None) -> FuseJob:
    """The `rejuv fuse` job that writes this sweep's candidate at `alpha` into `out`."""
    recipe = job.recipe.with_overrides(alpha=alpha)
    return FuseJob(job.base, job.sft, out, recipe, job.device, job.overwrite, True,
                   fuse_command(job, alpha, out), mask_in=job.mask_in,
                   max_memory=job.max_memory, config_from=job.config_from)  # fmt: skip


def fuse_command(job: SweepJob, alpha: float, out: Path | None) -> str:
    """The `rejuv fuse` command line that writes the candidate at `alpha`: the sweep's fuse
    flags with `--alpha`; the calibration flags only where fuse reads them (data scorers)."""
    from rejuv_cli.reset.registry import DATA_SCORERS
    from rejuv_cli.settings import command_line

    values = dict(job.fuse_values) | {"alpha": alpha}
    reads_data = job.mask_in is None and job.recipe.reset.fraction > 0 \
        and job.recipe.reset.select in DATA_SCORERS  # fmt: skip
    if not reads_data:
        values |= {"calib": None, "samples": None, "max_tokens": None}
    words = ["rejuv", "fuse", job.base, job.sft, "--out", str(out or "OUT")]
    return command_line(words, values, "fuse")
