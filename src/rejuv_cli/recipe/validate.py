"""A recipe's parsed YAML -> Recipe, every problem reported at once with file and key.

Each key's value goes through its setting's validator (rejuv_cli.settings), the same one that
checks the matching command-line flag, so both give the same phrase.
"""

from __future__ import annotations

import dataclasses

from rejuv_cli.errors import RecipeError
from rejuv_cli.recipe.model import FuseRule, Recipe, ResetSettings
from rejuv_cli.settings import BY_KEY, Invalid, show

_KNOWN = {
    "": {"description", "fuse", "reset", "output"},
    "fuse": {"alpha", "rules"},
    "reset": {f.name for f in dataclasses.fields(ResetSettings)} - {"explicit"},
    "output": {"dtype", "shard_size"},
    "rule": {"match", "alpha"},
}

# The order of the messages: fuse, the reset's numbers, its names, output.
ORDER = ("fuse.alpha", "fuse.rules",
         *[k for k, s in BY_KEY.items() if k.startswith("reset.") and s.range is not None],
         "reset.calib", "reset.prompt_field", "reset.response_field", "reset.answer_field",
         "reset.messages_field", "reset.mode", "reset.select", "reset.modules",
         "output.dtype", "output.shard_size")  # fmt: skip


def parse_recipe(data, source: str) -> Recipe:
    """Validate a recipe's data (a mapping from YAML); RecipeError lists every problem."""
    errors: list[str] = []

    def err(key: str, msg: str) -> None:
        errors.append(f"{source}: {key}: {msg}" if key else f"{source}: {msg}")

    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a mapping (got {type(data).__name__})")
    _unknown(data, "", err)
    sections = {name: _section(data, name, err) for name in ("fuse", "output", "reset")}
    kwargs: dict = {"source": source}
    if "description" in data:
        if isinstance(data["description"], str):
            kwargs["description"] = data["description"]
        else:
            err("description", "must be a string")
    reset: dict = {"explicit": True}
    for key in ORDER:
        section, field = key.split(".")
        if field not in sections[section]:
            continue
        if key == "fuse.rules":
            kwargs["rules"] = _rules(sections["fuse"]["rules"], err)
            continue
        try:
            value = BY_KEY[key].check(sections[section][field])
        except Invalid as e:
            err(key, str(e))
            continue
        (reset if section == "reset" else kwargs)[BY_KEY[key].name] = value
    if "reset" in data:
        kwargs["reset"] = ResetSettings(**reset)
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
            k = k if isinstance(k, str) and k.isprintable() and len(k) <= 60 else show(k)
            err(
                f"{where}.{k}" if where else k,
                f"unknown key (allowed: {', '.join(sorted(allowed))})",
            )


def _alphas(value, key: str, err):
    """A rule's alpha: a number or a non-empty list of numbers, each checked like fuse.alpha."""
    if isinstance(value, list):
        if not value:
            err(key, "list must not be empty")
            return None
        items = [_alpha(v, f"{key}[{i}]", err) for i, v in enumerate(value)]
        return None if None in items else tuple(items)
    if isinstance(value, bool) or not isinstance(value, int | float):
        err(key, f"must be a number or a list of numbers (got {show(value)})")
        return None
    return _alpha(value, key, err)


def _alpha(value, key: str, err) -> float | None:
    try:
        return BY_KEY["fuse.alpha"].check(value)
    except Invalid as e:
        err(key, str(e))
        return None


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
        alpha = _alphas(rule["alpha"], f"{key}.alpha", err)
        if isinstance(match, str) and match and alpha is not None:
            rules.append(FuseRule(match, alpha))
    return tuple(rules)
