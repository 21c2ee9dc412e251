"""Shared fixtures: tiny real-format checkpoint pairs built once per session with transformers."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import rejuv_cli
from rejuv_cli.cli import app
from rejuv_cli.testing.synth import make_pair

FAMILIES = ["llama", "qwen2", "mistral", "gemma2", "phi3", "gpt2", "mixtral"]


@pytest.fixture(scope="session")
def pairs(tmp_path_factory):
    """family -> (base_dir, sft_dir): bf16, several shards. Read-only: copy before modifying."""
    root = tmp_path_factory.mktemp("pairs")
    return {f: make_pair(root / f, f, seed=FAMILIES.index(f)) for f in FAMILIES}


# The mixture-of-experts pairs #18 measures: Mixtral at the size (3 layers, 4 experts,
# hidden 64, intermediate 96), Qwen2-MoE (a shared expert with its own gate) and Qwen3-MoE.
MOE_FAMILIES = {
    "mixtral": dict(num_hidden_layers=3, hidden_size=64, intermediate_size=96),
    "qwen2_moe": {},
    "qwen3_moe": {},
}


@pytest.fixture(scope="session")
def moe_pairs(tmp_path_factory):
    """family -> (base_dir, sft_dir) for MOE_FAMILIES, saved by transformers' save_pretrained
    (per-expert tensors on disk, fused 3-D expert parameters in memory). Read-only."""
    root = tmp_path_factory.mktemp("moe")
    return {f: make_pair(root / f, f, seed=20 + i, config_overrides=o)
            for i, (f, o) in enumerate(MOE_FAMILIES.items())}  # fmt: skip


@pytest.fixture(scope="session")
def llama(pairs):
    return pairs["llama"]


@pytest.fixture(scope="session")
def hub_cache(llama, tmp_path_factory):
    """The llama pair as Hub repos acme/tiny-base and acme/tiny-sft, downloaded into a Hub cache
    by huggingface_hub itself from a local stand-in for the Hub (tests/hub_cache.py): files in
    snapshots/<commit>/ are relative links to ../../blobs/<hash>. Read-only: copy to modify.
    The SFT repo also has files rejuv must not download (consolidated*, original/)."""
    from hub_cache import FakeHub, HubRepo, build_hub_cache

    skipped = {"consolidated.safetensors": b"not downloaded", "original/params.json": b"{}"}
    repos = [HubRepo.from_dir("acme/tiny-base", llama[0]),
             HubRepo.from_dir("acme/tiny-sft", llama[1], extra=skipped)]  # fmt: skip
    with FakeHub(repos) as hub:
        yield build_hub_cache(tmp_path_factory.mktemp("hub"), hub)


@pytest.fixture
def llama_copy(llama, tmp_path):
    """A private, writable copy of the llama pair (for tests that corrupt it)."""
    base, sft = tmp_path / "base", tmp_path / "sft"
    shutil.copytree(llama[0], base)
    shutil.copytree(llama[1], sft)
    return base, sft


def run_cli(*args: str, env: dict | None = None):
    """Invoke the CLI in-process; returns the click Result (exit_code, stdout, stderr). Every
    report the command wrote (diagnose/sweep --json, rejuv.json under --out) is validated
    against its published JSON Schema first (`check_reports`)."""
    words = [str(a) for a in args]
    result = CliRunner().invoke(app, words, env=env)
    check_reports(words, result.exit_code, result.stdout)
    return result


REPORT_SCHEMAS = {"diagnose": "diagnose", "sweep": "sweep"}  # command -> its --json schema
GPU_KIT_DEVICE = "REJUV_TEST_GPU_DEVICE"  # set by tests/gpu_helpers.py for the kit's runs


def check_reports(words: list[str], exit_code: int, stdout: str) -> int:
    """Validate the reports a finished `rejuv` command line wrote; returns how many. A report
    that does not match its schema fails the test that produced it."""
    if not words or exit_code not in (0, 3):  # 3: a tripped gate, the report is written
        return 0
    if os.environ.get(GPU_KIT_DEVICE):  # the GPU kit: it runs where only rejuv's runtime
        return 0  # dependencies exist (no jsonschema); the CPU suite validates these reports
    command, checked = words[0], 0
    if command in REPORT_SCHEMAS and "--json" in words:
        target = words[words.index("--json") + 1]
        if target == "-":
            report = json.loads(stdout)
        elif Path(target).is_file():
            report = json.loads(Path(target).read_text())
        else:
            report = None
        if report is not None:
            validate_report(REPORT_SCHEMAS[command], report)
            checked += 1
    if command in ("fuse", "sweep") and "--out" in words and "--dry-run" not in words:
        provenance = Path(words[words.index("--out") + 1]) / "rejuv.json"
        if provenance.is_file():
            validate_report("rejuv.json", json.loads(provenance.read_text()))
            checked += 1
    return checked


@functools.cache
def _validator(name: str):
    import jsonschema

    from rejuv_cli.report.json_schemas import schema_file

    text = (Path(rejuv_cli.__file__).parent / "schemas" / schema_file(name)).read_text()
    return jsonschema.Draft202012Validator(json.loads(text))


def validate_report(name: str, report: dict) -> None:
    """Fail with every violation listed when `report` does not match schema `name`."""
    errors = sorted(_validator(name).iter_errors(report), key=lambda e: list(e.path))
    assert not errors, f"{name} report does not match its schema:\n" + "\n".join(
        f"  {'.'.join(map(str, e.path)) or '(top)'}: {e.message[:300]}" for e in errors[:20]
    )


def load_dir(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory, read with the reference safetensors library."""
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def reference_fuse(b: torch.Tensor, s: torch.Tensor, alpha: float, dtype=None) -> torch.Tensor:
    """Independent reference: float32 numpy math θ_b + α(θ_s − θ_b), rounded once by torch."""
    b32 = b.to(torch.float32).numpy()
    s32 = s.to(torch.float32).numpy()
    fused = b32 + np.float32(alpha) * (s32 - b32)
    return torch.from_numpy(fused).to(dtype or s.dtype)


def edit_checkpoint(src: Path, dst: Path, edit) -> None:
    """Copy checkpoint dir `src` to `dst`, then call edit(state) on each shard's tensors; a
    shard is rewritten when edit returns True (it changed something there)."""
    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        state = load_file(f)
        if edit(state):
            save_file(state, f, metadata={"format": "pt"})


def noisy_copy(src: Path, dst: Path, seed: int = 0, scale: float = 0.01) -> Path:
    """A copy of checkpoint `src` with seeded Gaussian noise (`scale`) added to every floating
    tensor: a BASE that differs from `src` in every tensor, for tests whose fixture trains one
    model only."""
    gen = torch.Generator().manual_seed(seed)

    def perturb(state):
        for k, v in state.items():
            if v.is_floating_point():
                noise = torch.randn(v.shape, generator=gen, dtype=torch.float32)
                state[k] = (v.float() + scale * noise).to(v.dtype)
        return True

    edit_checkpoint(src, dst, perturb)
    return dst


def bf16_copy(src: Path, dst: Path) -> Path:
    """A copy of checkpoint `src` with every float32 tensor rounded to bf16: what the temporary
    copy for forward passes holds for an input read in float32 but stored as bf16 (LoRA targets
    over a bf16 BASE, dequantized FP8, fp32 training shards whose config declares bf16)."""
    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        state = {k: v.to(torch.bfloat16) if v.dtype == torch.float32 else v
                 for k, v in load_file(f).items()}  # fmt: skip
        save_file(state, f, metadata={"format": "pt"})
    return dst


def bits(t: torch.Tensor) -> bytes:
    """The exact bytes of a tensor (for bit-for-bit comparisons, NaN- and -0.0-safe)."""
    return t.contiguous().view(torch.uint8).numpy().tobytes()


def read_json(path: Path):
    return json.loads(path.read_text())


def fails(result, code: int, *fragments: str, one_line: bool = False) -> str:
    """stderr of a CLI run that must exit `code` without a traceback and mention each fragment;
    with `one_line`, exactly one `rejuv: error:` line, which is returned instead."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    err = result.stderr
    for fragment in fragments:
        assert fragment in err, err
    assert "Traceback" not in err
    if not one_line:
        return err
    lines = [line for line in err.splitlines() if line.startswith("rejuv: error:")]
    assert len(lines) == 1, err
    return lines[0]


def kill_mlp_unit(src: Path, dst: Path, layer: int = 1, unit: int = 5, mlp: str = "mlp.",
                  projections: tuple[str, str] = ("gate_proj", "up_proj")) -> None:  # fmt: skip
    """A copy of checkpoint `src` in `dst` with one MLP unit dead: its gate and up rows zeroed
    (h = act(0)·0 = 0). `mlp`: the MLP's prefix in the layer (an expert's, for MoE)."""

    def kill(state):
        hit = False
        for proj in projections:
            name = f"model.layers.{layer}.{mlp}{proj}.weight"
            if name in state:
                state[name][unit] = 0
                hit = True
        return hit

    edit_checkpoint(src, dst, kill)


@pytest.fixture
def mounts(tmp_path):
    """mount(*mount args, where) -> where: a real mount, undone at the end; skips the test where
    this machine does not allow mounting."""
    done: list[Path] = []

    def mount(*args: str, where: Path) -> Path:
        r = subprocess.run(["mount", *args, str(where)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount here: {r.stderr.strip()}")
        done.append(where)
        return where

    yield mount
    for where in reversed(done):
        subprocess.run(["umount", "-l", str(where)], check=False)
