"""Hub ids resolve through huggingface_hub; HF_HUB_OFFLINE=1 works from the local cache."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import read_json


def rejuv(*args, env):
    return subprocess.run(
        [sys.executable, "-m", "rejuv_cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_offline_hub_ids_from_the_local_cache(hub_cache, tmp_path):
    """A cache written by huggingface_hub (files are links to ../../blobs/<hash>), offline."""
    env = hub_cache.env()
    commit = hub_cache.commit("acme/tiny-sft")
    out = tmp_path / "o"
    r = rejuv("fuse", "acme/tiny-base", f"acme/tiny-sft@{commit}", "--out", out, "--quiet", env=env)
    assert r.returncode == 0, r.stderr
    inputs = read_json(out / "rejuv.json")["inputs"]
    base_commit = hub_cache.commit("acme/tiny-base")
    assert inputs["base"]["repo_id"] == "acme/tiny-base" and inputs["base"]["commit"] == base_commit
    assert inputs["sft"]["revision"] == commit and inputs["sft"]["commit"] == commit
    assert inputs["sft"]["path"] == str(hub_cache.snapshots["acme/tiny-sft"])
    card = (out / "README.md").read_text()
    assert "- acme/tiny-base\n- acme/tiny-sft\n" in card and f"commit `{commit}`" in card

    r = rejuv("fuse", "acme/not-cached", "acme/tiny-sft", "--out", tmp_path / "o2", env=env)
    assert r.returncode == 1
    assert "acme/not-cached: not in the local Hub cache" in r.stderr
    assert "HF_HUB_OFFLINE=1" in r.stderr and "Traceback" not in r.stderr


def test_help_is_fast_and_imports_no_torch():
    code = (
        "import sys, rejuv_cli.cli; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'transformers', 'safetensors', 'numpy'))))"
    )
    r = subprocess.run(
        [sys.executable, "-c", "import json; " + code], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []
    r = subprocess.run(
        [sys.executable, "-m", "rejuv_cli", "--help"], capture_output=True, text=True
    )
    assert r.returncode == 0 and "rejuv fuse ./base ./sft --out ./rejuvenated" in r.stdout
    assert "Exit codes: 0 ok" in r.stdout
