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
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from rejuv_cli.errors import RecipeError, first_line

DTYPES = ("auto", "bf16", "fp16", "fp32")
DEFAULT_SHARD_SIZE = "5GB"
RESET_MODES = ("base", "shrink-perturb", "reinit")
MAX_RESET_FRACTION = 0.5
MAX_RECIPE_BYTES = 256 * 1024  # recipes are a few lines; this bounds parse time (~1 s)


@dataclass(frozen=True)
class Range:
    """The values one numeric setting accepts. NaN and ±inf never do: NaN compares false with
    every bound, so a plain `lo <= v <= hi` test would let it through."""

    lo: float
    hi: float = math.inf
    lo_open: bool = False  # lo itself excluded
    integer: bool = False

    def problem(self, value) -> str | None:
        """Why `value` does not fit (one phrase, e.g. "must be >= 0.0 and <= 0.5 (got 1.5)"),
        or None when it does."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            kind = "an integer >= " + str(self.lo) if self.integer else "a number"
            return f"must be {kind} (got {show(value)})"
        if not math.isfinite(value):
            return f"must be a finite number (got {value})"
        if self.integer:
            if not isinstance(value, int) or value < self.lo or value > self.hi:
                return f"must be an integer >= {self.lo} (got {show(value)})"
            return None
        if value < self.lo or value > self.hi or (self.lo_open and value == self.lo):
            low = f"> {self.lo}" if self.lo_open else f">= {self.lo}"
            return f"must be {low} and <= {self.hi} (got {value})"
        return None


# Every numeric recipe setting, by key; the matching CLI flags have the same ranges (a test
# checks both, and that every numeric field of Recipe and ResetSettings is listed here).
NUMBERS: dict[str, Range] = {
    "fuse.alpha": Range(0.0, 1.0),  # and each fuse.rules[i].alpha value
    "reset.fraction": Range(0.0, MAX_RESET_FRACTION),
    "reset.max_per_module": Range(0.0, 1.0, lo_open=True),
    "reset.protect": Range(0.0, 0.5),
    "reset.omega": Range(0.0, 1.0),
    "reset.noise": Range(0.0, 10.0),
    "reset.seed": Range(0, integer=True),
    "reset.samples": Range(1, integer=True),
    "reset.max_tokens": Range(8, integer=True),
}


def show(value, limit: int = 60) -> str:
    """repr of a user's value for a one-line message, cut to `limit` characters."""
    try:
        text = repr(value)
    except ValueError:  # an int with more digits than Python converts to text
        return "a number too long to show"
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


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
    """Read and validate one recipe file; RecipeError lists every problem.

    Malformed files are one line each: not UTF-8, too large, not YAML, YAML aliases (an alias
    bomb expands exponentially once walked), duplicate keys (YAML would keep the last one
    silently), nesting too deep, text that is not valid Unicode.
    """
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_RECIPE_BYTES + 1)
    except OSError as e:
        raise RecipeError(f"{path}: cannot read recipe: {e.strerror or e}") from e
    if len(raw) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{path}: larger than {MAX_RECIPE_BYTES // 1024} KiB; a recipe is a "
                          "short YAML file (is this the right file?)")  # fmt: skip
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise RecipeError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset "
                          f"{e.start}); save the recipe as UTF-8") from None  # fmt: skip
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = " ".join(str(e.problem or e.context or "").split())
        raise RecipeError(f"{path}: not valid YAML: {problem}{at}") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise RecipeError(f"{path}: not valid YAML: nested too deeply") from None
    except ValueError as e:  # an integer with more digits than Python converts, ...
        why = "a number has too many digits" if "digits" in str(e) else first_line(e)[:200]
        raise RecipeError(f"{path}: not valid YAML: {why}") from None
    bad = _invalid_text(data)
    if bad is not None:
        raise RecipeError(f"{path}: {bad}")
    return parse_recipe({} if data is None else data, str(path))


class _StrictLoader(yaml.SafeLoader):
    """yaml.safe_load without aliases and with duplicate keys refused."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"aliases (*{event.anchor}) are not supported in recipes; write the "
                "value out", event.start_mark)  # fmt: skip
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = first.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # unhashable: SafeLoader's own error names it
                    continue
                if seen != key_node.start_mark.line + 1:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {show(key)} (first at line {seen})",
                        key_node.start_mark)  # fmt: skip
        return super().construct_mapping(node, deep=deep)


def _invalid_text(data, where: str = "") -> str | None:
    """'KEY: not valid Unicode text ...' for the first string holding a lone surrogate (YAML's
    "\\ud800" escape makes one; no file or terminal can encode it), else None."""
    if isinstance(data, str):
        try:
            data.encode("utf-8")
        except UnicodeEncodeError as e:
            return (f"{where or 'value'}: not valid Unicode text (lone surrogate "
                    f"\\u{ord(data[e.start]):04x} at character {e.start})")  # fmt: skip
        return None
    if isinstance(data, dict):
        keys = [k if isinstance(k, str) and k.isprintable() else show(k) for k in data]
        items = [(where or "a key", k) for k in data if isinstance(k, str)]
        items += [
            (f"{where}.{k}" if where else k, v) for k, v in zip(keys, data.values(), strict=True)
        ]
    elif isinstance(data, list):
        items = [(f"{where}[{i}]", v) for i, v in enumerate(data)]
    else:
        return None
    for sub, value in items:
        bad = _invalid_text(value, sub)
        if bad is not None:
            return bad
    return None


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
        if isinstance(output["dtype"], str) and output["dtype"] in DTYPES:
            kwargs["dtype"] = output["dtype"]
        else:
            err("output.dtype", f"must be one of {', '.join(DTYPES)} (got {show(output['dtype'])})")
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

    for name, rng in NUMBERS.items():
        section_name, key = name.split(".")
        if section_name != "reset" or key not in section:
            continue
        problem = rng.problem(section[key])
        if problem is not None:
            err(name, problem)
        else:
            values[key] = section[key] if rng.integer else float(section[key])
    if "calib" in section:
        calib = section["calib"]
        if not isinstance(calib, str) or not calib.strip():
            err("reset.calib", f"must be builtin:NAME or a JSONL path (got {show(calib)})")
        else:
            values["calib"] = calib
    if "mode" in section:
        if isinstance(section["mode"], str) and section["mode"] in RESET_MODES:
            values["mode"] = section["mode"]
        else:
            err(
                "reset.mode",
                f"must be one of {', '.join(RESET_MODES)} (got {show(section['mode'])})",
            )
    if "select" in section:
        from rejuv_cli.scoring import SCORERS

        if isinstance(section["select"], str) and section["select"] in SCORERS:
            values["select"] = section["select"]
        else:
            err("reset.select", f"must be one of {', '.join(sorted(SCORERS))} "
                f"(got {show(section['select'])})")  # fmt: skip
    if "modules" in section:
        from rejuv_cli.arch.units import resolve_modules

        mods = section["modules"]
        if not isinstance(mods, list) or not mods or not all(isinstance(m, str) for m in mods):
            err("reset.modules", f"must be a non-empty list of module names (got {show(mods)})")
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
            k = k if isinstance(k, str) and k.isprintable() and len(k) <= 60 else show(k)
            err(
                f"{where}.{k}" if where else k,
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
        err(key, f"must be {kind} (got {show(value)})")
        return None
    rng = NUMBERS["fuse.alpha"]
    if not math.isfinite(value):
        err(key, f"must be a finite number (got {value})")
        return None
    if not rng.lo <= value <= rng.hi:
        err(key, f"must be between {rng.lo:g} and {rng.hi:g} (got {value})")
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
