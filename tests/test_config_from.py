"""Inputs without their own config.json (`--config-from`), and the temporary Hugging Face copy
that forward passes load for inputs transformers cannot (checkpoint/staging.py).

The copy is exercised here with a plain sharded checkpoint whose config.json lives elsewhere:
the model is the same, so every number diagnose measures through the copy must equal the
numbers measured on the original directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest
from conftest import fails, read_json, run_cli

from rejuv_cli.checkpoint.formats import open_source
from rejuv_cli.checkpoint.output import TMP_TAG, host_tag
from rejuv_cli.checkpoint.staging import drop_staged, loadable_dir, staging_root


@pytest.fixture
def no_config(llama, tmp_path):
    """(base, sft weights only, sft's original directory): SFT's shards and index without
    config.json, tokenizer or chat template."""
    weights = tmp_path / "weights"
    weights.mkdir()
    for f in llama[1].iterdir():
        if f.name.endswith((".safetensors", ".index.json")):
            shutil.copy(f, weights / f.name)
    return llama[0], weights, llama[1]


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """A private TMPDIR, so the test sees exactly what staging leaves there."""
    where = tmp_path / "tmpdir"
    where.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(where))
    return where


def test_fuse_takes_config_and_tokenizer_from_config_from(no_config, tmp_path):
    base, weights, sft = no_config
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert run_cli("fuse", base, sft, "--out", ref, "-q").exit_code == 0
    r = run_cli("fuse", base, weights, "--config-from", sft, "--out", out, "-q")
    assert r.exit_code == 0, r.stderr
    names = sorted(p.name for p in ref.iterdir())
    assert names == sorted(p.name for p in out.iterdir())
    for name in names:  # shards, index, config.json, tokenizer: the same bytes
        if name not in ("README.md", "rejuv.json"):
            assert (ref / name).read_bytes() == (out / name).read_bytes(), name
    assert "--config-from" in read_json(out / "rejuv.json")["command"]


def test_without_config_from_the_error_says_how(no_config, tmp_path):
    base, weights, _ = no_config
    r = run_cli("fuse", base, weights, "--out", tmp_path / "o")
    fails(r, 1, "has no config.json", "--config-from DIR", one_line=True)
    r = run_cli("fuse", base, weights, "--config-from", tmp_path, "--out", tmp_path / "o")
    fails(r, 2, f"--config-from {tmp_path}: no config.json there", one_line=True)


def test_diagnose_through_the_staged_copy_measures_the_same(no_config, private_tmp):
    """Forward passes on the copy (SFT has no config.json of its own) give the numbers of the
    original directory, and the copy is gone afterwards."""
    base, weights, sft = no_config
    flags = ["--calib", "builtin:math", "--samples", "8", "--sharpness-draws", "0", "--json", "-"]
    ref = run_cli("diagnose", base, sft, *flags)
    got = run_cli("diagnose", base, weights, "--config-from", sft, *flags)
    assert ref.exit_code == 0 and got.exit_code == 0, got.stderr
    import json

    a, b = json.loads(ref.stdout), json.loads(got.stdout)
    assert a["output"] == b["output"] and a["units"] == b["units"] and a["weights"] == b["weights"]
    assert b["inputs"]["models"]["sft"]["input"] == "Hugging Face safetensors"
    assert list(private_tmp.iterdir()) == []  # the staged copy was removed


def test_staged_copy_is_a_loadable_checkpoint_of_the_same_tensors(no_config, private_tmp):
    from safetensors.torch import load_file

    base, weights, sft = no_config
    with open_source(weights, "SFT", config_from=sft) as source:
        staged = loadable_dir(source)
        assert staged.parent == staging_root() and staged.parent.parent == private_tmp
        assert loadable_dir(source) == staged  # written once
        ours = {}
        for f in staged.glob("*.safetensors"):
            ours.update(load_file(f))
        theirs = {}
        for f in weights.glob("*.safetensors"):
            theirs.update(load_file(f))
        assert ours.keys() == theirs.keys()
        assert all(ours[k].dtype == theirs[k].dtype and ours[k].equal(theirs[k]) for k in ours)
        assert (staged / "tokenizer.json").read_bytes() == (sft / "tokenizer.json").read_bytes()
        drop_staged(source)
    assert not staged.exists() and not staging_root().exists()


def test_a_killed_runs_staged_copy_is_removed_by_the_next(no_config, private_tmp):
    """A process killed while its copy exists leaves it; the next run on this host removes
    it (dead PID in its name), and leaves a live process's alone."""
    base, weights, sft = no_config
    code = (
        "import os, sys; from pathlib import Path; "
        "from rejuv_cli.checkpoint.formats import open_source; "
        "from rejuv_cli.checkpoint.staging import loadable_dir; "
        "loadable_dir(open_source(Path(sys.argv[1]), 'SFT', config_from=Path(sys.argv[2]))); "
        "os._exit(0)"
    )  # fmt: skip  (os._exit: no atexit cleanup, as under SIGKILL)
    env = os.environ | {"TMPDIR": str(private_tmp)}
    subprocess.run([sys.executable, "-c", code, weights, sft], check=True, env=env)
    [left] = list(private_tmp.iterdir())
    assert left.name.startswith(f".rejuv-staged.{TMP_TAG}-{host_tag()}-")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        mine = private_tmp / f".rejuv-staged.{TMP_TAG}-{host_tag()}-{live.pid}"
        mine.mkdir()
        with open_source(weights, "SFT", config_from=sft) as source:
            loadable_dir(source)
            drop_staged(source)
        assert sorted(private_tmp.iterdir()) == [mine]
    finally:
        live.kill()
