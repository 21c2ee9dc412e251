"""The release: the sdist and wheel `make dist` builds, the wheel's files, and the wheel installed
(not editable) in a fresh venv running rejuv's commands from that venv's site-packages, so the
packaged data is proven to ship; `rejuv --version` and its no-torch start."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from conftest import bits, load_dir, reference_fuse, run_cli

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "rejuv_cli"
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
CALIB_SETS = sorted((PACKAGE / "calib" / "builtin").glob("*.jsonl"))


def run(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env)
    assert r.returncode == 0, f"{args}: exit {r.returncode}\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="session")
def dist(tmp_path_factory) -> dict[str, Path]:
    """`make dist`'s build, once per session: python -m build makes the sdist from the checkout,
    then the wheel from that sdist (its default), so the sdist is proven to hold what a build
    needs. Its isolated build env gets hatchling from the package index."""
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--outdir", out, REPO)
    sdists, wheels = sorted(out.glob("*.tar.gz")), sorted(out.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(out.iterdir())
    return {"sdist": sdists[0], "wheel": wheels[0]}


def wheel_version(wheel: Path) -> str:
    return wheel.name.split("-")[1]  # name-version-python-abi-platform.whl


@pytest.fixture(scope="session")
def wheel_venv(dist, tmp_path_factory) -> dict[str, Path]:
    """A fresh venv with the wheel installed, not editable, without downloading anything.

    Third-party packages (torch, transformers, ...) come from this interpreter's site-packages,
    named as a plain path line in a .pth file: site.py appends such a line to sys.path but reads
    no .pth file inside it, so the editable install's own .pth (which puts src/ on sys.path) is
    not followed and `import rejuv_cli` finds the wheel's copy. test_the_wheel_is_what_runs
    checks that rather than trusting it."""
    venv = tmp_path_factory.mktemp("wheel") / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)  # pip runs from here (--python)
    python = venv / "bin" / "python"
    site = Path(
        run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip()
    )
    project_site = dict.fromkeys(sysconfig.get_path(k) for k in ("purelib", "platlib"))
    (site / "project_site_packages.pth").write_text("".join(f"{p}\n" for p in project_site))
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
        "--quiet", dist["wheel"])  # fmt: skip
    return {"python": python, "rejuv": venv / "bin" / "rejuv", "site": site}


def venv_env(**extra: str) -> dict[str, str]:
    """The environment for commands in the wheel venv: nothing that adds to sys.path, no Hub."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONNOUSERSITE="1", HF_HUB_OFFLINE="1", **extra)
    return env


@pytest.fixture(scope="session")
def wheel_files(dist) -> dict[str, bytes]:
    """Every file of the wheel: its path inside the wheel -> its bytes."""
    with zipfile.ZipFile(dist["wheel"]) as z:
        return {name: z.read(name) for name in z.namelist()}


def matching(files: dict[str, bytes], pattern: str) -> dict[str, bytes]:
    return {name: data for name, data in files.items() if re.fullmatch(pattern, name)}


def test_the_wheel_ships_the_package_data_and_not_the_test_builders(wheel_files):
    assert matching(wheel_files, r"rejuv_cli/testing/.*") == {}
    source_code = {
        "rejuv_cli/" + p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*.py")
        if p.relative_to(PACKAGE).parts[0] != "testing"
    }
    assert set(matching(wheel_files, r".*\.py")) == source_code
    assert matching(wheel_files, r"rejuv_cli/recipes/[^/]+\.yaml") == {
        f"rejuv_cli/recipes/{p.name}": p.read_bytes() for p in RECIPES
    }
    assert matching(wheel_files, r"rejuv_cli/calib/builtin/[^/]+\.jsonl") == {
        f"rejuv_cli/calib/builtin/{p.name}": p.read_bytes() for p in CALIB_SETS
    }
    schemas = sorted((PACKAGE / "schemas").glob("*.schema.json"))  # what `rejuv schema` prints
    assert len(schemas) == 3
    assert matching(wheel_files, r"rejuv_cli/schemas/[^/]+\.json") == {
        f"rejuv_cli/schemas/{p.name}": p.read_bytes() for p in schemas
    }


def test_shipped_code_never_imports_the_test_builders(wheel_files):
    # Text, not only import statements: importlib.import_module("rejuv_cli.testing...") counts.
    uses = re.compile(r"rejuv_cli\.testing\b|from\s+rejuv_cli\s+import\s[^\n]*\btesting\b")
    code = matching(wheel_files, r".*\.py")
    assert [name for name, data in code.items() if uses.search(data.decode())] == []


def test_the_sdist_holds_the_sources_tests_and_recipes(dist):
    """A wheel is built from this sdist by the fixture; here: what else a checkout has that a
    build or a test run from the sdist needs."""
    with tarfile.open(dist["sdist"]) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    recipes = [f"recipes/{p.name}" for p in RECIPES]
    needed = ["pyproject.toml", "README.md", "CHANGELOG.md", "tests/conftest.py",
              "src/rejuv_cli/testing/synth.py", *recipes]  # fmt: skip
    assert [n for n in needed if n not in names] == []


def test_the_wheel_is_what_runs(wheel_venv):
    probe = (
        "import json, sys, rejuv_cli\n"
        "from rejuv_cli.recipe.bundled import bundled_dir\n"
        "try:\n    import rejuv_cli.testing\n    testing = 'importable'\n"
        "except ModuleNotFoundError as e:\n    testing = e.name\n"
        "print(json.dumps({'file': rejuv_cli.__file__, 'path': sys.path,\n"
        "                  'recipes': str(bundled_dir()), 'testing': testing}))"
    )
    seen = json.loads(run(wheel_venv["python"], "-c", probe, env=venv_env()).stdout)
    site = wheel_venv["site"]
    assert Path(seen["file"]) == site / "rejuv_cli" / "__init__.py"
    assert Path(seen["recipes"]) == site / "rejuv_cli" / "recipes"
    assert str(REPO / "src") not in seen["path"]  # the editable install's .pth was not read
    assert seen["testing"] == "rejuv_cli.testing"


def test_version_from_the_wheel_names_torch_and_transformers_without_importing_them(
    dist, wheel_venv
):
    import torch
    import transformers

    # PYTHONPROFILEIMPORTTIME is -X importtime for a console script: every import, on stderr.
    r = run(wheel_venv["rejuv"], "--version", env=venv_env(PYTHONPROFILEIMPORTTIME="1"))
    assert r.stdout.splitlines() == [
        f"rejuv {wheel_version(dist['wheel'])}",
        f"torch {torch.__version__}",
        f"transformers {transformers.__version__}",
    ]
    imported = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if "|" in line}
    assert "rejuv_cli.cli" in imported  # the profile covers the CLI's imports
    assert not {m for m in imported if m.split(".")[0] in ("torch", "transformers")}


def test_version_says_not_installed_for_a_missing_package(monkeypatch):
    real = metadata.version

    def without_transformers(name: str) -> str:
        if name == "transformers":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "version", without_transformers)
    r = run_cli("--version")
    assert r.exit_code == 0
    assert r.stdout.splitlines()[1:] == [f"torch {real('torch')}", "transformers not installed"]


def test_recipes_from_the_wheel(wheel_venv):
    listed = json.loads(run(wheel_venv["rejuv"], "recipes", "--json", env=venv_env()).stdout)
    assert [r["name"] for r in listed] == [p.stem for p in RECIPES]
    for recipe, source in zip(listed, RECIPES, strict=True):
        path = Path(recipe["path"])
        assert path.parent == wheel_venv["site"] / "rejuv_cli" / "recipes"
        assert path.read_bytes() == source.read_bytes()


def test_fuse_with_a_bundled_recipe_from_the_wheel(llama, wheel_venv, tmp_path):
    recipe = yaml.safe_load((REPO / "recipes" / "fusion-only.yaml").read_text())
    assert recipe["reset"]["fraction"] == 0  # so every tensor is the plain fusion
    out = tmp_path / "out"
    run(wheel_venv["rejuv"], "fuse", *llama, "--out", out, "--recipe", "fusion-only", "--quiet",
        env=venv_env())  # fmt: skip
    base, sft, fused = load_dir(llama[0]), load_dir(llama[1]), load_dir(out)
    assert sorted(fused) == sorted(sft)
    alpha = recipe["fuse"]["alpha"]
    for name, s in sft.items():
        assert bits(fused[name]) == bits(reference_fuse(base[name], s, alpha)), name


def test_diagnose_with_builtin_calibration_from_the_wheel(llama, wheel_venv, tmp_path):
    from transformers import AutoTokenizer

    from rejuv_cli.calib.data import load_examples
    from rejuv_cli.calib.encode import encode

    samples, max_tokens = 4, 256
    report_path = tmp_path / "report.json"
    run(wheel_venv["rejuv"], "diagnose", *llama, "--calib", "builtin:math", "--samples", samples,
        "--max-tokens", max_tokens, "--sharpness-draws", 0, "--json", report_path,
        env=venv_env())  # fmt: skip
    inputs = json.loads(report_path.read_text())["inputs"]
    assert (inputs["calib"], inputs["samples"]) == ("builtin:math", samples)
    # The same examples as the source tree's builtin:math, tokenized with SFT's tokenizer.
    encoded, _ = encode(
        load_examples("builtin:math", samples), AutoTokenizer.from_pretrained(llama[1]), max_tokens
    )
    assert inputs["response_tokens"] == sum(sum(e.response) for e in encoded)
