"""Recipes: YAML files describing a surgery, validated at load with every error reported at once.

    fuse:
      alpha: 0.5                      # global fusion coefficient, 0 = base, 1 = SFT
      rules:                          # ordered; the first rule whose glob matches a name wins
        - match: "*.self_attn.*"
          alpha: [0.4, 0.6]           # a list is interpolated linearly over layer depth
    output:
      dtype: auto                     # auto (SFT's own per tensor) | bf16 | fp16 | fp32
      shard_size: 5GB

A rule with a list of alphas only applies to tensors inside a numbered layer; other tensors
fall through to the next rule or the global alpha.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from rejuv_cli.errors import RecipeError

DTYPES = ("auto", "bf16", "fp16", "fp32")
DEFAULT_SHARD_SIZE = "5GB"


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
    "": {"description", "fuse", "output"},
    "fuse": {"alpha", "rules"},
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


_ = field  # dataclasses.field kept for future list-valued settings
