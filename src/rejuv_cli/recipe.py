"""Recipes: YAML files describing a surgery, validated at load with every error reported at once.

    fuse:
      alpha: 0.5                      # global fusion coefficient, 0 = base, 1 = SFT
      rules:                          # ordered; the first rule whose glob matches a name wins
        - match: "*.self_attn.*"
          alpha: [0.4, 0.6]           # a list is interpolated linearly over layer depth
    reset:                            # targeted neuron reset after fusion (METHOD.md 2-4)
      fraction: 0.01                  # share of units reset; 0 = fusion only
      select: drift                   # scorer (see SCORERS)
      modules: [q, k, v, o, mlp]      # gate/up/down are one MLP unit; experts count as mlp
      max_per_module: 0.1             # at most this share of any one module (layer, expert)
      protect: 0.005                  # per module, the largest base-norm units are never reset
      mode: base                      # base | shrink-perturb | reinit
      omega: 1.0                      # θ = ω·θ_base + (1−ω)·θ_fused on the reset slices
      noise: 0.01                     # shrink-perturb / reinit: noise std relative to the tensor's
      seed: 0
    output:
      dtype: auto                     # auto (SFT's own per tensor) | bf16 | fp16 | fp32
      shard_size: 5GB

A rule with a list of alphas only applies to tensors inside a numbered layer; other tensors
fall through to the next rule or the global alpha.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from rejuv_cli.errors import RecipeError

DTYPES = ("auto", "bf16", "fp16", "fp32")
DEFAULT_SHARD_SIZE = "5GB"
RESET_MODES = ("base", "shrink-perturb", "reinit")
MAX_RESET_FRACTION = 0.5


@dataclass(frozen=True)
class ResetSettings:
    """Targeted neuron reset (METHOD.md sections 2-4). Defaults: the paper's 1%, ω = 1."""

    fraction: float = 0.01
    select: str = "drift"
    modules: tuple[str, ...] | None = None  # canonical names; None = every module the map has
    max_per_module: float = 0.1
    protect: float = 0.005
    mode: str = "base"
    omega: float = 1.0
    noise: float = 0.01
    seed: int = 0
    # calibration data for the data-driven scorers (dormant, saturated, attribution)
    calib: str = "builtin:math"
    samples: int = 128
    max_tokens: int = 1024
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
    alpha: float = 0.5
    rules: tuple[FuseRule, ...] = ()
    dtype: str = "auto"
    shard_size: str | int = DEFAULT_SHARD_SIZE
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


# ---- loading and validation ----------------------------------------------------------------
_KNOWN = {
    "": {"description", "fuse", "reset", "output"},
    "fuse": {"alpha", "rules"},
    "reset": {f.name for f in dataclasses.fields(ResetSettings)} - {"explicit"},
    "output": {"dtype", "shard_size"},
    "rule": {"match", "alpha"},
}


def load_recipe(path: Path) -> Recipe:
    """Read and validate one recipe file; RecipeError lists every problem."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise RecipeError(f"{path}: cannot read recipe: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML: {e}".replace("\n", " ")) from e
    return parse_recipe({} if data is None else data, str(path))


def parse_recipe(data, source: str) -> Recipe:
    errors: list[str] = []

    def err(key: str, msg: str) -> None:
        errors.append(f"{source}: {key}: {msg}" if key else f"{source}: {msg}")

    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a mapping (got {type(data).__name__})")
    _unknown(data, "", err)
    fuse = _section(data, "fuse", err)
    output = _section(data, "output", err)
    reset = _section(data, "reset", err)
    kwargs: dict = {"source": source}

    if "description" in data:
        if isinstance(data["description"], str):
            kwargs["description"] = data["description"]
        else:
            err("description", "must be a string")
    if "alpha" in fuse:
        a = _alpha(fuse["alpha"], "fuse.alpha", err, allow_list=False)
        if a is not None:
            kwargs["alpha"] = a
    if "rules" in fuse:
        kwargs["rules"] = _rules(fuse["rules"], err)
    if "reset" in data:
        kwargs["reset"] = _reset(reset, err)
    if "dtype" in output:
        if output["dtype"] in DTYPES:
            kwargs["dtype"] = output["dtype"]
        else:
            err("output.dtype", f"must be one of {', '.join(DTYPES)} (got {output['dtype']!r})")
    if "shard_size" in output:
        from rejuv_cli.checkpoint.writer import parse_size

        try:
            parse_size(output["shard_size"])
            kwargs["shard_size"] = output["shard_size"]
        except ValueError as e:
            err("output.shard_size", str(e))
    if errors:
        raise RecipeError("\n".join(errors))
    return Recipe(**kwargs)


def _reset(section: dict, err) -> ResetSettings:
    """The reset: section; every field optional, each checked against its range."""
    values: dict = {"explicit": True}

    def number(key: str, lo: float, hi: float, lo_open: bool = False) -> None:
        if key not in section:
            return
        v = section[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            err(f"reset.{key}", f"must be a number (got {v!r})")
        elif v < lo or v > hi or (lo_open and v == lo):
            low = f"> {lo}" if lo_open else f">= {lo}"
            err(f"reset.{key}", f"must be {low} and <= {hi} (got {v})")
        else:
            values[key] = float(v)

    number("fraction", 0.0, MAX_RESET_FRACTION)
    number("max_per_module", 0.0, 1.0, lo_open=True)
    number("protect", 0.0, 0.5)
    number("omega", 0.0, 1.0)
    number("noise", 0.0, 10.0)
    for key, lo in (("seed", 0), ("samples", 1), ("max_tokens", 8)):
        if key in section:
            v = section[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                err(f"reset.{key}", f"must be an integer >= {lo} (got {v!r})")
            else:
                values[key] = v
    if "calib" in section:
        calib = section["calib"]
        if not isinstance(calib, str) or not calib.strip():
            err("reset.calib", f"must be builtin:NAME or a JSONL path (got {calib!r})")
        else:
            values["calib"] = calib
    if "mode" in section:
        if section["mode"] in RESET_MODES:
            values["mode"] = section["mode"]
        else:
            err("reset.mode", f"must be one of {', '.join(RESET_MODES)} (got {section['mode']!r})")
    if "select" in section:
        from rejuv_cli.scoring import SCORERS

        if section["select"] in SCORERS:
            values["select"] = section["select"]
        else:
            err("reset.select", f"must be one of {', '.join(sorted(SCORERS))} "
                f"(got {section['select']!r})")  # fmt: skip
    if "modules" in section:
        from rejuv_cli.arch.units import resolve_modules

        mods = section["modules"]
        if not isinstance(mods, list) or not mods or not all(isinstance(m, str) for m in mods):
            err("reset.modules", f"must be a non-empty list of module names (got {mods!r})")
        else:
            try:
                values["modules"] = resolve_modules(mods)
            except ValueError as e:
                err("reset.modules", str(e))
    return ResetSettings(**values)


def _section(data: dict, key: str, err) -> dict:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        err(key, f"must be a mapping (got {type(value).__name__})")
        return {}
    _unknown(value, key, err)
    return value


def _unknown(d: dict, where: str, err) -> None:
    allowed = _KNOWN["rule" if where.startswith("fuse.rules") else where]
    for k in d:
        if k not in allowed:
            err(
                f"{where}.{k}" if where else str(k),
                f"unknown key (allowed: {', '.join(sorted(allowed))})",
            )


def _alpha(value, key: str, err, allow_list: bool):
    if allow_list and isinstance(value, list):
        if not value:
            err(key, "list must not be empty")
            return None
        items = [_alpha(v, f"{key}[{i}]", err, allow_list=False) for i, v in enumerate(value)]
        return None if None in items else tuple(items)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "a number or a list of numbers" if allow_list else "a number"
        err(key, f"must be {kind} (got {value!r})")
        return None
    if not 0.0 <= value <= 1.0:
        err(key, f"must be between 0 and 1 (got {value})")
        return None
    return float(value)


def _rules(value, err) -> tuple[FuseRule, ...]:
    if not isinstance(value, list):
        err("fuse.rules", "must be a list of {match, alpha} entries")
        return ()
    rules = []
    for i, rule in enumerate(value):
        key = f"fuse.rules[{i}]"
        if not isinstance(rule, dict):
            err(key, "must be a mapping with 'match' and 'alpha'")
            continue
        _unknown(rule, f"fuse.rules[{i}]", err)
        match = rule.get("match")
        if not isinstance(match, str) or not match:
            err(f"{key}.match", "must be a non-empty glob string, e.g. '*.mlp.*'")
        if "alpha" not in rule:
            err(f"{key}.alpha", "is required")
            continue
        alpha = _alpha(rule["alpha"], f"{key}.alpha", err, allow_list=True)
        if isinstance(match, str) and match and alpha is not None:
            rules.append(FuseRule(match, alpha))
    return tuple(rules)


# ---- bundled recipes -----------------------------------------------------------------------
def bundled_dir() -> Path:
    """recipes/ shipped in the wheel, or at the repository root for an editable install."""
    packaged = resources.files("rejuv_cli") / "recipes"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "recipes"


def bundled_recipes() -> list[Path]:
    d = bundled_dir()
    return sorted(d.glob("*.yaml")) if d.is_dir() else []


def find_recipe(spec: str) -> Path:
    """A path to a recipe file, or the name of a bundled one ('paper')."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    for candidate in bundled_recipes():
        if spec in (candidate.stem, candidate.name):
            return candidate
    names = ", ".join(p.stem for p in bundled_recipes()) or "none found"
    raise RecipeError(f"recipe {spec!r}: no such file, and not a bundled recipe ({names})")


def recipe_header(path: Path) -> list[str]:
    """The leading '#' comment lines of a recipe file, without the '# '."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return lines
