"""What a fuse is asked to do (FuseJob) and a fuse ready to run (Prepared: the resolved and
opened checkpoints, the plan, the units that may be reset). Declared apart from pipeline.py so
that fuse_summary.py, which pipeline.py calls, can describe a Prepared without importing it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rejuv_cli import dist
from rejuv_cli.arch.layout import UnitLayout
from rejuv_cli.checkpoint.resolve import ResolvedModel
from rejuv_cli.checkpoint.source import ModelSource
from rejuv_cli.checkpoint.staging import drop_staged
from rejuv_cli.plan import FusePlan
from rejuv_cli.recipe import Recipe


@dataclass
class FuseJob:
    """Everything `rejuv fuse` was asked to do."""

    base: str
    sft: str
    out: Path | None  # None: plan and score only (rejuv sweep without --out)
    recipe: Recipe
    device: str = "auto"
    overwrite: bool = False
    alpha_from_flag: bool = False
    command: str = ""
    mask_in: Path | None = None  # --mask: reuse these units, skip scoring
    mask_out: Path | None = None  # --save-mask
    max_memory: int | None = None  # --max-memory: model weights budget of the data scorers
    config_from: Path | None = None  # --config-from: config/tokenizer for inputs with none


@dataclass
class Prepared:
    job: FuseJob
    base_model: ResolvedModel
    sft_model: ResolvedModel
    base: ModelSource
    sft: ModelSource
    plan: FusePlan
    plan_seconds: float
    layout: UnitLayout | None = None  # the units that may be reset; None: fusion only

    @property
    def resetting(self) -> bool:
        return self.layout is not None

    @property
    def score_bytes(self) -> int:
        """BASE bytes this process's scoring pass reads (it reads as many from SFT); for
        progress bars. Under torchrun, the rank's share (reset/norms.stream_norms's split)."""
        sizes = {n: self.base.tensors[n].nbytes for n in self.layout.tensor_axes()}
        return sum(sizes[n] for n in dist.mine(sizes))

    def close(self) -> None:
        for source in (self.base, self.sft):
            source.close()
            drop_staged(source)
