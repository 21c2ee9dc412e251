"""The reset scorers, each declared once: name, what it reads, its parameters with defaults,
a one-line description and a reference. `SCORERS` is a plain dict; `--help`, recipe
validation and the unknown-name errors list what it holds (through `settings.scorer_names`).

No torch or transformers at import time: a scorer's code is imported when it runs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rejuv_cli.calib.fields import Fields

if TYPE_CHECKING:
    from rejuv_cli.reset.scores import UnitScores

# The calibration settings (ResetSettings fields) the data scorers read, with their defaults;
# rejuv_cli.settings declares these flags and recipe keys with these defaults, for fuse and for
# diagnose alike (README, "Calibration data": why 128 examples of up to 1024 tokens). The field
# names (prompt_field, ...) default to the format's own keys, declared in calib/data.Fields.
CALIB_PARAMS = {"calib": "builtin:math", "samples": 128, "max_tokens": 1024, **Fields().params()}


@dataclass(frozen=True)
class Scorer:
    """A way to rank units for the reset: higher score = reset first.

    Called as scorer(layout, base, sft, device, on_bytes, settings, max_memory) -> UnitScores;
    `entry` ("module:function") is imported on the first call.
    """

    name: str
    summary: str  # one line, for --help and `rejuv recipes`
    reference: str
    entry: str
    params: dict[str, object] = field(default_factory=dict)  # ResetSettings field -> default
    data: bool = False  # needs calibration data and forward passes of the models
    whole_experts: bool = False  # can score `whole_expert` units (docs/method.md section 3)

    def __call__(self, layout, base, sft, device, on_bytes=None, settings=None,
                 max_memory=None) -> UnitScores:  # fmt: skip
        module, func = self.entry.split(":")
        run = getattr(importlib.import_module(module), func)
        return run(layout, base, sft, device, on_bytes, settings, max_memory)


SCORERS: dict[str, Scorer] = {
    "drift": Scorer(
        "drift",
        "weights only: joint relative drift ‖Δ‖/‖θ_b‖ over all of a unit's slices",
        "rejuv (docs/method.md section 3)",
        "rejuv_cli.reset.drift:score_drift",
        whole_experts=True,
    ),
    "dormant": Scorer(
        "dormant",
        "lowest ReDo score E|h_j| / mean_k E|h_k| of SFT's activations on --calib data",
        "Sokar et al., The Dormant Neuron Phenomenon in Deep RL (ICML 2023)",
        "rejuv_cli.reset.activity:score_dormant",
        dict(CALIB_PARAMS),
        data=True,
    ),
    "saturated": Scorer(
        "saturated",
        "always-on units: highest ReDo score / (CV + 0.001) of SFT's activations",
        "rejuv (docs/method.md section 3)",
        "rejuv_cli.reset.activity:score_saturated",
        dict(CALIB_PARAMS),
        data=True,
    ),
    "attribution": Scorer(
        "attribution",
        "contributions to SFT's top-1 logit where SFT's and BASE's entropies differ most",
        "Liu et al., arXiv 2606.09932 (the paper's scorer; docs/method.md section 3)",
        "rejuv_cli.reset.attribution:score_attribution",
        dict(CALIB_PARAMS),
        data=True,
    ),
}
# Scorers that need --calib data and forward passes, in registry order.
DATA_SCORERS = tuple(name for name, s in SCORERS.items() if s.data)


def check_scorer_modules(select: str, modules: tuple[str, ...] | None) -> None:
    """UsageError (one line) when `select` cannot rank the units of `modules`: whole experts
    are scored only by the scorers that declare `whole_experts` (the activation scorers
    measure single neurons)."""
    from rejuv_cli.errors import UsageError

    if modules and "whole_expert" in modules and not SCORERS[select].whole_experts:
        able = ", ".join(f"--select {n}" for n, s in SCORERS.items() if s.whole_experts)
        raise UsageError(f"--modules whole_expert: the {select} scorer ranks single neurons, "
                         f"not whole experts; use {able} (or drop whole_expert)")  # fmt: skip
