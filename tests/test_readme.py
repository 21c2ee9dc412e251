"""The README's claims that a test can check: its usage blocks are the commands' own flags
(docs/usage.py writes them), and every command example in it runs.

Examples are the lines of its ```bash blocks (and the `$ ` lines of plain blocks), continuation
lines joined. Each runs through bash, as a user would paste it, in a fresh directory holding the
tiny llama fixture pair as ./base and ./sft (also $BASE and $SFT), a fused ./sft-rejuv, and the
repository's bench/ (the demo pair); Hub ids run offline from a Hub cache huggingface_hub wrote
(fixture `hub_cache`). An example that needs a GPU, or is the test suite itself, is in SKIPS
with that reason; slower ones (SLOW) run in `make test-all`; a new example runs by default.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
sys.path.insert(0, str(ROOT / "docs"))

from usage import render  # noqa: E402

# (pattern in the example, reason it does not run here)
SKIPS = [
    (r"^make test\b", "more than a minute: the whole suite, this test included"),
    (r"^PYTHON=python3 make (test|bench)-gpu", "needs a GPU (CUDA)"),
    (r"^srun ", "needs a Slurm cluster"),
    (r"^docker ", "needs a Docker daemon (and pulls a base image)"),
]
# Examples that take more than a few seconds run in `make test-all` (marker slow), so that
# `make test` stays within CI's 5 minutes: the diagnose examples (forward passes, 4-11 s each),
# `make demo` (about 41 s), its sweep with --generate, and the GPU kit on the CPU.
# The FSDP and DCP examples need shards written by 2 gloo processes (about 10 s): slow too.
SHARDED = r"\./global_step_500|\./dcp-step-1000"
# The torchrun example repeats tests/test_torchrun.py's check (7 s of two processes' imports).
SLOW = [r"^make demo\b", r"rejuv diagnose ", r"rejuv sweep bench/handoff/demo/",
        r"^DRY_RUN=1 make (test|bench)-gpu", SHARDED, r"^torchrun "]  # fmt: skip
# Hub ids in the examples -> repos of the offline Hub cache that huggingface_hub wrote.
HUB_IDS = {"Qwen/Qwen2.5-1.5B": "acme/tiny-base", "Qwen/Qwen3-8B": "acme/tiny-sft"}
GATE_TRIPPED = 3  # an example with --fail-on may trip its gate on the fixture: that is its job


@dataclass(frozen=True)
class Example:
    line: int  # in README.md
    command: str

    @property
    def skip(self) -> str | None:
        return next((why for pattern, why in SKIPS if re.search(pattern, self.command)), None)


def examples(text: str) -> list[Example]:
    found = []
    for m in re.finditer(r"(<!-- usage: \S+ -->\n)?```(\w*)\n(.*?)```", text, re.S):
        usage, lang, body = m.groups()
        if usage or lang not in ("", "bash", "console"):
            continue
        first = text.count("\n", 0, m.start(3)) + 1
        lines = body.splitlines()
        i = 0
        while i < len(lines):
            start, cmd = i, lines[i]
            while cmd.endswith("\\") and i + 1 < len(lines):
                i += 1
                cmd = cmd[:-1] + " " + lines[i].strip()
            i += 1
            cmd = cmd.strip()
            if lang == "bash" and cmd and not cmd.startswith("#"):
                found.append(Example(first + start, cmd))
            elif lang != "bash" and cmd.startswith("$ "):
                found.append(Example(first + start, cmd[2:]))
    return found


EXAMPLES = examples(README.read_text())
PARAMS = [pytest.param(e, id=f"L{e.line}:{e.command[:40]}",
                       marks=[pytest.mark.slow] if any(re.search(p, e.command) for p in SLOW)
                       else [])
          for e in EXAMPLES]  # fmt: skip


def test_usage_blocks_are_the_commands_flags():
    """docs/usage.py renders every block from the commands' parameters; a flag added to a
    command but not the README (or the reverse) shows up here. Fix: `make docs`."""
    text = README.read_text()
    blocks = re.findall(r"<!-- usage: (\S+) -->", text)
    assert set(blocks) == {"rejuv", "fuse", "diagnose", "sweep", "inspect", "recipes",
                           "validate"}  # fmt: skip
    assert render(text) == text, "README.md usage blocks are out of date: run `make docs`"


def test_usage_block_lists_every_option_of_fuse():
    """The renderer itself, against Click's own list: every long option of `rejuv fuse`."""
    import typer

    from rejuv_cli.cli import app

    fuse = typer.main.get_command(app).commands["fuse"]
    block = re.search(r"<!-- usage: fuse -->\n```bash\n(.*?)```", README.read_text(), re.S)[1]
    listed = set(re.findall(r"(--[a-z-]+)", block))
    declared = {max(p.opts, key=len) for p in fuse.params if p.param_type_name == "option"}
    assert listed == declared and "--max-memory" in listed and "--calib" in listed


def test_the_readme_has_examples_and_every_skip_is_used():
    assert len(EXAMPLES) >= 15
    used = {pattern for pattern, _ in SKIPS if any(re.search(pattern, e.command)
                                                   for e in EXAMPLES)}  # fmt: skip
    assert used == {pattern for pattern, _ in SKIPS}, "a SKIPS entry matches no example"
    slow = {p for p in SLOW if any(re.search(p, e.command) for e in EXAMPLES)}
    assert slow == set(SLOW), "a SLOW pattern matches no example"


@pytest.fixture(scope="module")
def workdir_template(llama, hub_cache, tmp_path_factory):
    """./base, ./sft, ./my-sft, ./sft-rejuv and bench/ for the examples, plus the environment."""
    root = tmp_path_factory.mktemp("readme")
    for name, src in (("base", llama[0]), ("sft", llama[1]), ("my-sft", llama[1])):
        (root / name).symlink_to(src)
    result = run_cli("fuse", llama[0], llama[1], "--out", root / "sft-rejuv", "--quiet")
    assert result.exit_code == 0, result.stderr
    (root / "bench").symlink_to(ROOT / "bench")
    # what trainers save (README "Inputs trainers save"), made by their producers: a PEFT
    # adapter over ./base, and the pair in block-scaled FP8 (hand-written layout)
    from peft import LoraConfig
    from producers_fp8 import write_fp8
    from producers_peft import save_adapter

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                      init_lora_weights=False)  # fmt: skip
    save_adapter(llama[0], root / "adapter", lora, dtype=torch.bfloat16)
    write_fp8(llama[0], root / "base-fp8")
    write_fp8(llama[1], root / "sft-fp8")
    bin_dir = root / ".bin"
    bin_dir.mkdir()
    if shutil.which("jq") is None:  # the examples pipe JSON into jq; a stand-in for `jq .a.b`
        shim = bin_dir / "jq"
        shim.write_text(f"#!{sys.executable}\nimport json, sys\nv = json.load(sys.stdin)\n"
                        "for k in filter(None, sys.argv[1].split('.')):\n    v = v[k]\n"
                        "print(json.dumps(v, indent=2))\n")  # fmt: skip
        shim.chmod(0o755)
    env = hub_cache.env() | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{bin_dir}{os.pathsep}"
        + os.environ.get("PATH", ""),
        "BASE": "base",
        "SFT": "sft",
    }
    return root, env


@pytest.fixture(scope="module")
def sharded(llama, tmp_path_factory):
    """./global_step_500 (verl's rank files) and ./dcp-step-1000 (dcp.save) of ./sft, written
    by FSDP2 on 2 gloo processes (tests/producers_dist.py)."""
    from producers_dist import shard_checkpoint

    made = shard_checkpoint(llama[1], tmp_path_factory.mktemp("sharded"))
    return {"global_step_500": made["verl"], "dcp-step-1000": made["dcp"]}


@pytest.mark.parametrize("example", PARAMS)
def test_readme_example_runs(example, workdir_template, tmp_path, request):
    if example.skip:
        pytest.skip(example.skip)
    template, env = workdir_template
    for entry in template.iterdir():  # a fresh directory: examples writing ./out don't collide
        (tmp_path / entry.name).symlink_to(entry.resolve() if entry.is_symlink() else entry)
    if re.search(SHARDED, example.command):
        for name, path in request.getfixturevalue("sharded").items():
            (tmp_path / name).symlink_to(path)
    command = example.command
    for hub_id, local in HUB_IDS.items():
        command = command.replace(hub_id, local)
    # make targets run where the Makefile is, as the README says; they write only ignored paths
    cwd = ROOT if re.match(r"^(\w+=\S+ )*make ", command) else tmp_path
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    allowed = {0, GATE_TRIPPED} if "--fail-on" in command else {0}
    assert done.returncode in allowed, (
        f"README.md line {example.line}: `{example.command}` exited {done.returncode}\n"
        f"{done.stderr[-2000:]}"
    )
