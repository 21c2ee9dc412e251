"""The layering of docs/architecture.md, read from the code: every `rejuv_cli` import (at the top
of a module or inside a function) goes down the layers or stays in its own package, never up,
and a few packages keep stricter rules. A new module must be placed in LAYERS."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "rejuv_cli"

# Highest first; a module may import its own package and anything in a lower layer. A name is a
# package (every module under it) or a single module; the longest matching name wins.
LAYERS: list[set[str]] = [
    {"cli", "__main__", "__init__"},  # __init__: rejuv_cli.fuse etc., loaded from api on use
    {"commands"},
    {"api"},  # fuse, diagnose and sweep as functions: the commands are shells over them
    {"sweeping"},  # runs the fuse path and the diagnostics for several α
    {"pipeline", "diagnostics", "inspection"},  # a command's work, end to end
    {"executor", "fuse_summary"},  # streams chunks into the writer; what a fuse reports
    {"fuse_job"},  # what a fuse was asked to do, and the fuse ready to run
    {"reset", "plan"},  # what to reset; what happens to each tensor
    {"pairing", "recipe", "settings", "reset.registry"},  # inputs to both: pairs and settings
    {"calib", "checkpoint", "report", "testing", "rank_progress"},  # data, I/O, rendering
    {"arch", "ops"},  # architecture knowledge as data; pure tensor math
    {"errors", "jsonio", "dist"},  # dist: which torchrun rank this is
]
# Stricter rules than the layers: (importer prefix, imported prefix) never allowed.
FORBIDDEN = [
    ("ops", "rejuv_cli"),  # pure math: only errors (allowed below)
    ("arch", "rejuv_cli"),
    ("calib", "rejuv_cli.reset"),
    ("report", "rejuv_cli.calib"),  # calib loads models: torch
]
ALWAYS_ALLOWED = {"rejuv_cli.errors", "rejuv_cli.jsonio", "rejuv_cli"}
NO_TORCH = ("report",)  # rendering never needs tensors


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__") or "__init__"


def rejuv_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of a rejuv_cli module or of torch in `path`."""
    found = []
    tree = ast.parse(path.read_text(), str(path))
    type_only = {  # `if TYPE_CHECKING:` imports never run: annotations only
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        for inner in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # from pkg import x: x may be a module of pkg, or a name defined in pkg
            found += [(node.lineno, _module_or_package(node.module, a.name)) for a in node.names]
    return [(n, m) for n, m in found if m.split(".")[0] in ("rejuv_cli", "torch")]


def _module_or_package(package: str, name: str) -> str:
    if package.split(".")[0] != "rejuv_cli":
        return package
    folder = PACKAGE.joinpath(*package.split(".")[1:])
    is_module = (folder / f"{name}.py").exists() or (folder / name).is_dir()
    return f"{package}.{name}" if is_module else package


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, the LAYERS name that matched) of a module path inside rejuv_cli."""
    best = None
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (
                best is None or len(name) > len(best[1])
            ):
                best = (index, name)
    if best is None:
        raise AssertionError(f"rejuv_cli.{module} is in no layer of tests/test_architecture.py")
    return best


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) for p in MODULES])
def test_imports_follow_the_layers(path):
    importer = module_name(path)
    level, home = layer_of(importer)
    wrong = []
    for line, target in rejuv_imports(path):
        if target.startswith("torch"):
            if importer.startswith(NO_TORCH):
                wrong.append(f"line {line}: imports {target} (report/ never imports torch)")
            continue
        if target in ALWAYS_ALLOWED:
            continue
        inner = target.removeprefix("rejuv_cli.")
        target_level, target_home = layer_of(inner)
        for prefix, banned in FORBIDDEN:
            if target_home == home:
                break  # a package's modules may import each other
            if importer.startswith(prefix) and (target + ".").startswith(banned + "."):
                wrong.append(f"line {line}: imports {target} ({prefix} may not import {banned})")
        if target_level < level and target_home != home:
            wrong.append(f"line {line}: imports {target}, a higher layer ({target_home})")
    assert not wrong, f"rejuv_cli.{importer}:\n" + "\n".join(wrong)


def test_every_module_has_a_layer():
    for path in MODULES:
        layer_of(module_name(path))


def import_graph() -> dict[str, set[str]]:
    """module -> the rejuv_cli modules it imports (packages resolve to their __init__)."""
    known = {module_name(p) for p in MODULES}
    graph: dict[str, set[str]] = {}
    for path in MODULES:
        targets = set()
        for _, target in rejuv_imports(path):
            inner = target.removeprefix("rejuv_cli.").removeprefix("rejuv_cli")
            while inner and inner not in known:  # `from pkg.mod import name` -> pkg.mod
                inner = inner.rpartition(".")[0]
            if inner:
                targets.add(inner)
        graph[module_name(path)] = targets - {module_name(path)}
    return graph


def test_no_import_circles():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(" -> ".join([*trail[trail.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not circles, "import circles:\n" + "\n".join(circles)
