"""What a recipe holds: the fusion coefficients, the reset settings and the output format.

Every default comes from `rejuv_cli.settings`, where each setting is declared once.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass

import yaml

from rejuv_cli.settings import SETTINGS


def _default(name: str):
    return SETTINGS[name].default


@dataclass(frozen=True)
class ResetSettings:
    """Targeted neuron reset (docs/method.md sections 2-4). Defaults: the paper's 1%, ω = 1."""

    fraction: float = _default("fraction")
    select: str = _default("select")
    modules: tuple[str, ...] | None = None  # canonical names; None = every module the map has
    max_per_module: float = _default("max_per_module")
    protect: float = _default("protect")
    mode: str = _default("mode")
    omega: float = _default("omega")
    noise: float = _default("noise")
    seed: int = _default("seed")
    # calibration data for the data-driven scorers (dormant, saturated, attribution)
    calib: str = _default("calib")
    samples: int = _default("samples")
    max_tokens: int = _default("max_tokens")
    # the keys or columns of the calibration data (calib/data.Fields)
    prompt_field: str = _default("prompt_field")
    response_field: str = _default("response_field")
    answer_field: str = _default("answer_field")
    messages_field: str = _default("messages_field")
    explicit: bool = False  # asked for by a flag or a recipe (an unmapped model is then an error)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("explicit")
        d["modules"] = list(self.modules) if self.modules is not None else "all"
        return d


@dataclass(frozen=True)
class FuseRule:
    match: str  # fnmatch glob over tensor names, case-sensitive
    alpha: float | tuple[float, ...]


@dataclass(frozen=True)
class Recipe:
    alpha: float = _default("alpha")
    rules: tuple[FuseRule, ...] = ()
    dtype: str = _default("dtype")
    shard_size: str | int = _default("shard_size")
    description: str = ""
    source: str | None = None  # file it came from, for messages and provenance
    reset: ResetSettings = ResetSettings()

    def alpha_for(self, name: str, layer: int | None, n_layers: int) -> tuple[float, str]:
        """The fusion coefficient for tensor `name`, and which setting chose it."""
        for i, rule in enumerate(self.rules):
            if not fnmatch.fnmatchcase(name, rule.match):
                continue
            if isinstance(rule.alpha, tuple):
                if layer is None:
                    continue
                return interpolate(rule.alpha, layer, n_layers), f"rules[{i}]"
            return rule.alpha, f"rules[{i}]"
        return self.alpha, "alpha"

    def with_overrides(self, **values) -> Recipe:
        """A copy with the given fields replaced (None means: keep the recipe's value)."""
        return dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None})

    def with_reset(self, **values) -> Recipe:
        """A copy whose reset settings take the given values (None: keep); given = explicit."""
        given = {k: v for k, v in values.items() if v is not None}
        if not given:
            return self
        return dataclasses.replace(
            self, reset=dataclasses.replace(self.reset, explicit=True, **given)
        )

    def with_flags(self, values: dict) -> Recipe:
        """A copy with the command-line values of recipe settings (name -> value, None: not
        given) applied over the recipe's; flags keep their text where the setting says so, so
        each value goes through its setting's validator (it passed it already while parsing)."""
        top, reset = {}, {}
        for name, value in values.items():
            s = SETTINGS[name]
            if s.key is None or value is None:
                continue
            value = s.parse_flag(value) if s.keep_text else value
            (reset if s.key.startswith("reset.") else top)[name] = value
        return self.with_overrides(**top).with_reset(**reset)

    def to_json(self) -> dict:
        return {
            "fuse": {
                "alpha": self.alpha,
                "rules": [
                    {
                        "match": r.match,
                        "alpha": list(r.alpha) if isinstance(r.alpha, tuple) else r.alpha,
                    }
                    for r in self.rules
                ],
            },
            "reset": self.reset.to_json(),
            "output": {"dtype": self.dtype, "shard_size": self.shard_size},
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_json(), sort_keys=False)


def interpolate(values: tuple[float, ...], layer: int, n_layers: int) -> float:
    """Piecewise-linear value at `layer` of [v_first, ..., v_last] spread evenly over depth."""
    if len(values) == 1 or n_layers <= 1:
        return values[0]
    pos = min(max(layer, 0), n_layers - 1) / (n_layers - 1) * (len(values) - 1)
    i = min(int(pos), len(values) - 2)
    frac = pos - i
    return values[i] + frac * (values[i + 1] - values[i])
