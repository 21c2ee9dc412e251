"""Reading a recipe file safely: bounded size, UTF-8, YAML without aliases or duplicate keys.

Malformed files are one line each: not UTF-8, too large, not YAML, YAML aliases (an alias bomb
expands exponentially once walked), duplicate keys (YAML would keep the last one silently),
nesting too deep, text that is not valid Unicode.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from rejuv_cli.errors import RecipeError, first_line
from rejuv_cli.recipe.model import Recipe
from rejuv_cli.recipe.validate import parse_recipe
from rejuv_cli.settings import show

MAX_RECIPE_BYTES = 256 * 1024  # recipes are a few lines; this bounds parse time (~1 s)


def load_recipe(path: Path) -> Recipe:
    """Read and validate one recipe file; RecipeError lists every problem."""
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
