"""The container (Dockerfile, .dockerignore) without a Docker daemon: hadolint, the rules it
cannot see (a base image pinned through a build arg, a USER at all, ADD of a URL), the build
context the docker client sends, and where each command the RUN lines call comes from. A real
build runs only where `docker info` answers and the base image is already present: tests pull
nothing."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest
from docker.utils.build import exclude_paths
from dockerfile_parse import DockerfileParser

import rejuv_cli

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
PARSED = DockerfileParser(str(DOCKERFILE))
INSTRUCTIONS = [(i["instruction"], i["value"]) for i in PARSED.structure]
# The commands pyproject.toml's [project.scripts] declares, as pip installed them.
SCRIPTS = {e.name for e in distribution("rejuv-cli").entry_points if e.group == "console_scripts"}

# What the RUN lines may call, by where it comes from. The base image (python:*-slim, Debian;
# a CUDA base image, Ubuntu) has coreutils, passwd and apt; the venv the Dockerfile creates
# brings pip and python; the project's own commands are SCRIPTS.
BASE_IMAGE_TOOLS = {"python3", "apt-get", "rm", "mkdir", "chmod", "useradd"}
VENV_TOOLS = {"pip", "python"}
SHELL_KEYWORDS = {"if", "then", "elif", "else", "fi", "!"}
COMMAND_STARTS = {"&&", "||", ";", "|", "(", ")"} | SHELL_KEYWORDS


def dev_tool(name: str) -> str:
    """A linter the dev extras install, from this interpreter's environment first."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} is not installed: pip install -e '.[dev]' (it is in the dev extras)"
    return found


def hadolint(path: Path) -> list[str]:
    """The rule codes hadolint reports for a Dockerfile, info level included."""
    done = subprocess.run([dev_tool("hadolint"), "--no-color", "--format", "json", str(path)],
                          capture_output=True, text=True)  # fmt: skip
    return [finding["code"] for finding in json.loads(done.stdout)]


def command_words(script: str) -> list[str]:
    """The commands a shell line calls: the first word of each simple command."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words, expect_command = [], True
    for token in lexer:
        if expect_command and token not in COMMAND_STARTS:
            words.append(token)
        expect_command = token in COMMAND_STARTS
    return words


def runs() -> list[str]:
    return [value for instruction, value in INSTRUCTIONS if instruction == "RUN"]


def docker_context(root: Path) -> set[str]:
    """The paths the docker client sends as build context for `root`, from docker-py (the
    Python client): .dockerignore read as it reads it (lines stripped, blanks and # dropped)."""
    lines = (root / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return exclude_paths(str(root), patterns)


# --------------------------------------------------------------------------------------------
# lint


def test_hadolint_finds_nothing():
    assert hadolint(DOCKERFILE) == []


MUTATIONS = {  # a rule this Dockerfile relies on hadolint for -> an edit that breaks it
    "DL3042": ("pip install --no-cache-dir /opt", "pip install /opt"),
    "DL3025": ('ENTRYPOINT ["rejuv"]', "ENTRYPOINT rejuv"),
    "DL3002": ("USER 10001", "USER root"),
    "DL3015": ("install -y --no-install-recommends", "install -y"),
}


@pytest.mark.parametrize("rule", sorted(MUTATIONS))
def test_hadolint_catches_each_rule_we_rely_on(tmp_path, rule):
    """The lint above can fail: each of its rules, broken on purpose, is reported."""
    old, new = MUTATIONS[rule]
    text = DOCKERFILE.read_text()
    assert text.count(old) == 1
    (tmp_path / "Dockerfile").write_text(text.replace(old, new))
    assert rule in hadolint(tmp_path / "Dockerfile")


# --------------------------------------------------------------------------------------------
# rules hadolint cannot see: it reads neither ARG defaults in FROM nor a missing USER


def pinned(image: str) -> bool:
    """A digest, or a tag naming a full version (python:3.12.11-slim-bookworm)."""
    tag = image.rsplit("/", 1)[-1].partition(":")[2]  # a registry may have a :port
    return "@sha256:" in image or bool(re.match(r"\d+\.\d+\.\d+", tag))


def test_the_base_image_is_pinned():
    assert [v for i, v in INSTRUCTIONS if i == "FROM"] == ["${BASE_IMAGE}"]
    assert pinned(PARSED.baseimage)
    assert pinned("registry.local:5000/python:3.12.11-slim") and pinned("python@sha256:" + "0" * 64)
    not_pinned = ["python", "python:latest", "python:3.12-slim", "registry.local:5000/python"]
    assert not any(map(pinned, not_pinned))


def test_a_non_root_user_runs_the_project_entry_point():
    names = [i for i, _ in INSTRUCTIONS]
    users = [v for i, v in INSTRUCTIONS[: names.index("ENTRYPOINT")] if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "USER" not in names[names.index("ENTRYPOINT") :]
    (entrypoint,) = [v for i, v in INSTRUCTIONS if i == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["rejuv"] and "rejuv" in SCRIPTS  # JSON form: no shell


def test_no_add_and_every_pip_install_skips_the_cache():
    assert "ADD" not in {i for i, _ in INSTRUCTIONS}  # COPY only: ADD also fetches URLs
    installs = [cmd for run in runs() for cmd in re.split(r"&&|;", run) if "pip install" in cmd]
    assert len(installs) == 2 and all("--no-cache-dir" in cmd for cmd in installs)


def test_torch_is_the_build_make_install_pins():
    """One torch for CI, the Action and the image: the Makefile's pin, the CPU wheel."""
    pin = re.search(r"^TORCH\s*\?=\s*(\S+)$", (ROOT / "Makefile").read_text(), re.M)[1]
    assert f"torch=={PARSED.args['TORCH_VERSION']}" == pin
    assert PARSED.args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"


def test_the_hugging_face_cache_is_a_volume():
    assert PARSED.envs["HF_HOME"] == "/cache"
    assert ("VOLUME", "/cache") in INSTRUCTIONS


# --------------------------------------------------------------------------------------------
# what the build reads and runs


def copied_sources() -> list[str]:
    sources = []
    for instruction, value in INSTRUCTIONS:
        if instruction == "COPY":
            args = [a for a in shlex.split(value) if not a.startswith("--")]
            sources += args[:-1]  # the last one is the destination
    return sources


def test_every_copied_path_exists_and_is_in_the_build_context():
    sources = copied_sources()
    assert sources == ["pyproject.toml", "README.md", "src", "recipes"]
    context = docker_context(ROOT)
    for source in sources:
        path = ROOT / source
        assert path.exists(), source
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        wanted = {p.relative_to(ROOT).as_posix() for p in files
                  if "__pycache__" not in p.parts and ".egg-info" not in str(p)}  # fmt: skip
        assert wanted <= context, sorted(wanted - context)[:5]


def test_the_build_context_is_what_the_build_reads(tmp_path):
    """On a tree with the local state a developer has, only the copied paths (and the two files
    docker always sends) remain: no venv, benchmark output, wheels, tests or their data."""
    kept = ["pyproject.toml", "README.md", "src/rejuv_cli/__init__.py", "recipes/paper.yaml"]
    left_out = [".venv/bin/python", ".bench/pair/model.safetensors", "dist/rejuv_cli-0.1.whl",
                "tests/data/junit.xsd", "tests/test_action.py", ".git/HEAD",
                "bench/handoff/demo/base/model.safetensors", "src/rejuv_cli/__pycache__/x.pyc",
                "src/rejuv_cli.egg-info/PKG-INFO", ".digests/a.json", "CHANGELOG.md"]  # fmt: skip
    for name in kept + left_out:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    for name in ("Dockerfile", ".dockerignore"):
        shutil.copy(ROOT / name, tmp_path / name)
    files = {p for p in docker_context(tmp_path) if (tmp_path / p).is_file()}
    assert files == {*kept, "Dockerfile", ".dockerignore"}


def unexplained_commands(parsed: DockerfileParser) -> list[str]:
    """The commands RUN lines call that come neither from the base image, nor from the venv
    (created by an earlier or the same RUN, first on PATH), nor from pyproject's scripts."""
    venv = parsed.envs["VIRTUAL_ENV"]
    assert parsed.envs["PATH"].startswith(f"{venv}/bin:")
    runs = [i["value"] for i in parsed.structure if i["instruction"] == "RUN"]
    created = next(n for n, run in enumerate(runs) if 'python3 -m venv "${VIRTUAL_ENV}"' in run)
    problems = []
    for n, word in ((n, w) for n, run in enumerate(runs) for w in command_words(run)):
        if word in VENV_TOOLS | SCRIPTS and n < created:
            problems.append(f"{word}: called before the venv exists")
        elif word not in VENV_TOOLS | SCRIPTS | BASE_IMAGE_TOOLS:
            problems.append(f"{word}: not from the base image, the venv or pyproject")
    return problems


def test_every_command_the_runs_call_comes_from_somewhere():
    assert unexplained_commands(PARSED) == []
    assert {w for run in runs() for w in command_words(run)} >= {"pip", "rejuv", "useradd"}


def test_an_unexplained_command_is_caught(tmp_path):
    """The check above can fail: a download piped to a shell, and pip before the venv."""
    text = DOCKERFILE.read_text()
    bad = text.replace(
        "\nENV VIRTUAL_ENV=", "\nRUN curl -fsSL https://x.test/i | sh && pip -V\nENV VIRTUAL_ENV="
    )
    assert bad != text
    (tmp_path / "Dockerfile").write_text(bad)
    assert unexplained_commands(DockerfileParser(str(tmp_path / "Dockerfile"))) == [
        "curl: not from the base image, the venv or pyproject",
        "sh: not from the base image, the venv or pyproject",
        "pip: called before the venv exists",
    ]


def test_command_words_reads_compound_lines():
    line = 'if ! python3 -c "import a; b" 2>/dev/null; then apt-get update && rm -rf /x; fi'
    assert command_words(line) == ["python3", "apt-get", "rm"]


# --------------------------------------------------------------------------------------------
# a real build, where a daemon and the base image are at hand


def docker_unavailable() -> str | None:
    """Why the image cannot be built here, or None."""
    if not shutil.which("docker"):
        return "no docker client on PATH"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer in 30 s"
    if info.returncode != 0:
        return f"`docker info` fails (no Docker daemon): {info.stderr.strip().splitlines()[-1]}"
    image = subprocess.run(["docker", "image", "inspect", PARSED.baseimage], capture_output=True)
    if image.returncode != 0:
        return f"base image {PARSED.baseimage} is not present locally (tests pull nothing)"
    return None


@pytest.mark.slow
def test_the_image_builds_and_runs_rejuv_as_a_non_root_user():
    if why := docker_unavailable():
        pytest.skip(why)
    tag = "rejuv-test:container"
    subprocess.run(["docker", "build", "-t", tag, str(ROOT)], check=True)
    version = subprocess.run(["docker", "run", "--rm", tag, "--version"], capture_output=True,
                             text=True, check=True)  # fmt: skip
    assert f"rejuv {rejuv_cli.__version__}" in version.stdout
    uid = subprocess.run(["docker", "run", "--rm", "--entrypoint", "id", tag, "-u"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert uid.stdout.strip() == [v for i, v in INSTRUCTIONS if i == "USER"][-1]
