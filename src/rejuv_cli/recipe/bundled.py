"""The recipes shipped with rejuv (recipes/*.yaml), found by file path or by name."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from rejuv_cli.errors import RecipeError


def bundled_dir() -> Path:
    """recipes/ shipped in the wheel, or at the repository root for an editable install."""
    packaged = resources.files("rejuv_cli") / "recipes"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[3] / "recipes"


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
