"""UnitScores: what every scorer returns, so selection, the per-module cap, protection and
masks go through the same code whatever ranked the units."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rejuv_cli.reset.norms import TensorNorms


@dataclass
class UnitScores:
    """Per-instance arrays in layout order: the score (higher = reset first) and the squared
    base norm of each unit (for protection)."""

    scores: list[np.ndarray]
    base_norm_sq: list[np.ndarray]
    norms: dict[str, TensorNorms]
    seconds: float = 0.0
    info: dict = field(default_factory=dict)  # what a data scorer used and found, for reports
