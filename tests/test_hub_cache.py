"""Checkpoints from a Hugging Face Hub cache, as huggingface_hub writes it: every file in
snapshots/<commit>/ is a relative link to ../../blobs/<hash>, outside the snapshot directory.

The cache comes from the real snapshot_download against a local stand-in for the Hub
(tests/hub_cache.py, fixture `hub_cache`). Commands on Hub ids run in a subprocess with
HF_HUB_OFFLINE=1 and HF_HUB_CACHE set (huggingface_hub reads them at import); commands on
directories run in-process.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import bits, load_dir, read_json, reference_fuse, run_cli
from hub_cache import assert_hub_layout, rejuv_offline
from safetensors import safe_open
from safetensors.torch import load_file

from rejuv_cli.checkpoint.reader import Checkpoint
from rejuv_cli.errors import CheckpointError

BASE, SFT = "acme/tiny-base", "acme/tiny-sft"
SIDE_FILES = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
]
CALIB = ("--samples", "4", "--max-tokens", "32", "--sharpness-draws", "0")


def save_mask_args(root: Path) -> list:
    """fuse arguments after BASE SFT: a 5% reset whose mask is saved under `root`."""
    return ["--out", root / "reset", "--reset", "0.05", "--save-mask", root / "mask.safetensors",
            "-q"]  # fmt: skip


@pytest.fixture(scope="module")
def plain(llama, tmp_path_factory):
    """The same commands on the plain llama directories (in-process): the reference."""
    root = tmp_path_factory.mktemp("plain")
    runs = {
        "weights": run_cli("diagnose", *llama, "--weights-only", "--json", "-"),
        "calib": run_cli("diagnose", *llama, *CALIB, "--json", "-"),
        "inspect": run_cli("inspect", llama[1], "--json"),
        "mask": run_cli("fuse", *llama, *save_mask_args(root)),
    }
    for name, r in runs.items():
        assert r.exit_code == 0, (name, r.stderr)
    return root, runs


@pytest.fixture(scope="module")
def hub(hub_cache, plain, tmp_path_factory):
    """The commands on Hub ids, from the cache, offline, in one subprocess."""
    root = tmp_path_factory.mktemp("from-hub")
    commit = hub_cache.commit(SFT)
    commands = {
        "fuse": ["fuse", BASE, f"{SFT}@{commit}", "--out", root / "fused", "--reset", "0", "-q"],
        "weights": ["diagnose", BASE, SFT, "--weights-only", "--json", "-"],
        "calib": ["diagnose", BASE, SFT, *CALIB, "--json", "-"],
        "inspect": ["inspect", SFT, "--json"],
        "mask": ["fuse", BASE, SFT, *save_mask_args(root)],
        "with-mask": [
            "fuse",
            BASE,
            SFT,
            "--out",
            root / "masked",
            "--mask",
            plain[0] / "mask.safetensors",
            "-q",
        ],  # fmt: skip
    }
    runs = dict(zip(commands, rejuv_offline(hub_cache.cache, *commands.values()), strict=True))
    for name, r in runs.items():
        assert r.code == 0, (name, r.stderr)
    return root, runs


def assert_fused(out: Path, llama) -> None:
    """Every tensor is the float32 reference fusion at α = 0.5 of the plain inputs; the side
    files are regular files (not links into the cache) with the SFT's bytes."""
    base, sft, fused = load_dir(llama[0]), load_dir(llama[1]), load_dir(out)
    assert sorted(fused) == sorted(sft)
    for name, s in sft.items():
        assert bits(fused[name]) == bits(reference_fuse(base[name], s, 0.5)), name
    for name in SIDE_FILES:
        assert not os.path.islink(out / name) and (out / name).is_file(), name
        if name != "config.json":  # config.json is rewritten only for an explicit --dtype
            assert (out / name).read_bytes() == (llama[1] / name).read_bytes(), name
    assert read_json(out / "config.json") == read_json(llama[1] / "config.json")
    assert not [p for p in out.rglob("*") if p.is_symlink()]


def test_the_cache_is_huggingface_hubs_own(hub_cache):
    assert_hub_layout(hub_cache)  # relative links to ../../blobs/<sha256 | git sha1>
    for repo_id, snap in hub_cache.snapshots.items():
        repo_dir = snap.parent.parent
        assert (repo_dir / "refs" / "main").read_text() == hub_cache.commit(repo_id) == snap.name
        blobs = {p.name for p in (repo_dir / "blobs").iterdir()}
        shards = [os.readlink(p) for p in snap.glob("*.safetensors")]
        assert len(shards) == 3 and all(re.fullmatch(r"\.\./\.\./blobs/[0-9a-f]{64}", t)
                                        for t in shards)  # fmt: skip
        assert re.fullmatch(r"\.\./\.\./blobs/[0-9a-f]{40}", os.readlink(snap / "config.json"))
        assert blobs == {Path(os.readlink(p)).name for p in snap.iterdir()}
    # Metadata came from HEAD /resolve, LFS bytes from the other origin ("CDN").
    requests = hub_cache.hub.requests
    assert ("GET", f"/api/models/{SFT}/revision/main") in requests
    assert (
        "HEAD",
        f"/{SFT}/resolve/{hub_cache.commit(SFT)}/model.safetensors.index.json",
    ) in requests
    assert sum(path.startswith("/lfs/") for _, path in requests) == 6
    # rejuv's patterns: consolidated* and original/ are listed by the Hub but never fetched.
    assert not [p for _, p in requests if "consolidated" in p or "original/" in p]
    assert sorted(p.name for p in hub_cache.snapshots[SFT].iterdir()) == sorted(
        ["README.md", "model.safetensors.index.json", *SIDE_FILES]
        + [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    )
    # rejuv resolving the Hub ids online finds the same snapshots and commits.
    for repo_id, snap in hub_cache.snapshots.items():
        resolved = hub_cache.online[repo_id]
        assert resolved["path"] == str(snap) and resolved["commit"] == hub_cache.commit(repo_id)
        assert resolved["repo_id"] == repo_id and resolved["revision"] == "main"


def test_fuse_hub_ids(hub, hub_cache, llama):
    root, runs = hub
    assert_fused(root / "fused", llama)
    inputs = read_json(root / "fused" / "rejuv.json")["inputs"]
    assert inputs["sft"]["commit"] == inputs["sft"]["revision"] == hub_cache.commit(SFT)
    assert inputs["base"]["path"] == str(hub_cache.snapshots[BASE])


def test_fuse_snapshot_directories_given_as_paths(hub, hub_cache, llama, tmp_path):
    base, sft = hub_cache.snapshots[BASE], hub_cache.snapshots[SFT]
    r = run_cli("fuse", base, sft, "--out", tmp_path / "o", "--reset", "0", "-q")
    assert r.exit_code == 0, r.stderr
    assert_fused(tmp_path / "o", llama)
    for shard in (tmp_path / "o").glob("*.safetensors"):  # same bytes as from the Hub ids
        assert shard.read_bytes() == (hub[0] / "fused" / shard.name).read_bytes()
    inputs = read_json(tmp_path / "o" / "rejuv.json")["inputs"]
    want = {"spec": str(sft), "path": str(sft), "repo_id": SFT, "revision": None,
            "commit": hub_cache.commit(SFT)}  # fmt: skip
    assert {k: inputs["sft"][k] for k in want} == want
    card = (tmp_path / "o" / "README.md").read_text()
    assert f"- {BASE}\n- {SFT}\n" in card and f"commit `{hub_cache.commit(BASE)}`" in card


def assert_close(a, b, where="") -> None:
    """Equal, floats to 1e-12 relative (some sums run in set order, which varies by process)."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-12), (where, a, b)
    else:
        assert a == b, (where, a, b)


def test_diagnose_hub_ids_measure_what_the_plain_directories_do(hub, plain):
    for kind in ("weights", "calib"):
        ours, ref = json.loads(hub[1][kind].stdout), json.loads(plain[1][kind].stdout)
        w, w_ref = ours["weights"], ref["weights"]
        # Drift per tensor, layer, module and overall: exactly the plain directories' values.
        for key in ("overall", "tensors", "layers", "layer_modules", "drift_max", "units"):
            assert w[key] == w_ref[key], key
        assert (
            w["overall"]["rel_drift"] > 0.01 and w["drift_max_tensor"] == w_ref["drift_max_tensor"]
        )
        # The suggested command names the inputs as given: Hub ids here, paths there.
        command = ours["verdict"].pop("suggested_command")
        assert command.startswith(f"rejuv diagnose {BASE} {SFT} ")
        assert ref["verdict"].pop("suggested_command").startswith("rejuv diagnose /")
        for section in ("weights", "output", "units", "sharpness", "verdict"):
            assert_close(ours[section], ref[section], section)
        assert ours["inputs"]["models"]["sft"]["repo_id"] == SFT
    calib = json.loads(hub[1]["calib"].stdout)
    assert calib["output"]["entropy_mean"] > 0 and calib["units"] is not None


def test_inspect_hub_id_and_snapshot_path(hub, plain, hub_cache, llama):
    ref = json.loads(plain[1]["inspect"].stdout)
    disk = sum(p.stat().st_size for p in llama[1].glob("*.safetensors"))
    path_run = run_cli("inspect", hub_cache.snapshots[SFT], "--json")
    assert path_run.exit_code == 0, path_run.stderr
    for report in (json.loads(hub[1]["inspect"].stdout), json.loads(path_run.stdout)):
        assert report["path"] == str(hub_cache.snapshots[SFT])
        assert report["commit"] == hub_cache.commit(SFT)
        assert report["disk_bytes"] == disk == ref["disk_bytes"]  # the blobs, not the links
        drop = ("path", "spec", "commit")
        assert {k: v for k, v in report.items() if k not in drop} == {
            k: v for k, v in ref.items() if k not in drop
        }


def mask_metadata(path: Path) -> dict:
    with safe_open(path, "pt") as f:
        return f.metadata()


def test_reset_mask_from_hub_ids_is_the_plain_directories_mask(hub, plain, hub_cache):
    (hroot, _), (proot, _) = hub, plain
    # The selection is bit-identical; the metadata differs only where it names the inputs.
    ours, ref = load_file(hroot / "mask.safetensors"), load_file(proot / "mask.safetensors")
    assert ours.keys() == ref.keys() and all(bits(ours[k]) == bits(ref[k]) for k in ref)
    assert sum(int(m.sum()) for m in ours.values()) == 16  # 5% of 320 units
    meta, meta_ref = (
        mask_metadata(hroot / "mask.safetensors"),
        mask_metadata(proot / "mask.safetensors"),
    )
    assert meta["input.sft"] == SFT and meta["input.sft_commit"] == hub_cache.commit(SFT)
    assert {k: v for k, v in meta.items() if not k.startswith("input.")} == {
        k: v for k, v in meta_ref.items() if not k.startswith("input.")
    }
    # Fused shards: the same bytes, whether scored from the Hub ids or given the plain mask.
    ref_shards = {p.name: p.read_bytes() for p in (proot / "reset").glob("*.safetensors")}
    assert ref_shards
    for out in ("reset", "masked"):
        got = {p.name: p.read_bytes() for p in (hroot / out).glob("*.safetensors")}
        assert got == ref_shards, out


# ---- dangling links: a blob missing from the cache -------------------------------------------
DANGLING = {  # case -> the SFT file whose blob is deleted
    "shard": "model-00002-of-00003.safetensors",
    "index": "model.safetensors.index.json",
    "config": "config.json",
    "tokenizer": "tokenizer.json",
}


@pytest.fixture
def broken_cache(hub_cache, tmp_path):
    """A copy of the cache with one repo per case: acme/<case> is acme/tiny-sft without the
    blob of DANGLING[case]; acme/<case>-old also lacks trees/ (caches written before
    huggingface_hub kept tree listings, where snapshot_download does not check completeness)."""
    cache = tmp_path / "hub"
    shutil.copytree(hub_cache.cache, cache, symlinks=True)
    sft_repo = cache / "models--acme--tiny-sft"
    links = {}
    for case, fname in DANGLING.items():
        for name in (case, f"{case}-old"):
            repo = cache / f"models--acme--{name}"
            shutil.copytree(sft_repo, repo, symlinks=True)
            link = repo / "snapshots" / hub_cache.commit(SFT) / fname
            (link.parent / os.readlink(link)).unlink()
            if name.endswith("-old"):
                shutil.rmtree(repo / "trees", ignore_errors=True)
            assert link.is_symlink() and not link.exists()
            links[name] = link
    missing = cache / "models--acme--missing"  # a file not downloaded at all: no link
    shutil.copytree(sft_repo, missing, symlinks=True)
    (missing / "snapshots" / hub_cache.commit(SFT) / "tokenizer.json").unlink()
    return cache, links


def assert_one_line_naming(stderr: str, link: Path) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert f"'{link.name}'" in lines[0] and f"'{os.readlink(link)}'" in lines[0], lines[0]
    assert "does not exist" in lines[0] and "hf download acme/" in lines[0], lines[0]


def test_dangling_blob_links_are_one_line_errors(broken_cache, hub_cache, tmp_path):
    cache, links = broken_cache
    # Hub ids, offline: huggingface_hub finds the snapshot incomplete (or, for older caches,
    # returns it and rejuv finds the link).
    names = sorted(links)
    fuses = [["fuse", BASE, f"acme/{n}", "--out", tmp_path / n, "-q"] for n in names]
    *runs, missing = rejuv_offline(cache, *fuses, ["inspect", "acme/missing"])
    for name, r in zip(names, runs, strict=True):
        assert r.code == 1, (name, r.stdout, r.stderr)
        assert_one_line_naming(r.stderr, links[name])
        assert not (tmp_path / name).exists()
    # A file not downloaded at all (no link): huggingface_hub's own finding, on one line.
    r = missing
    assert r.code == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "MODEL acme/missing: " in r.stderr and "is incomplete" in r.stderr
    assert "tokenizer.json" in r.stderr and "hf download acme/missing --revision" in r.stderr
    # Snapshot directories given as paths: rejuv finds the link itself.
    for case in DANGLING:
        link = links[case]
        out = tmp_path / f"{case}-path"
        r = run_cli("fuse", hub_cache.snapshots[BASE], link.parent, "--out", out, "-q")
        assert r.exit_code == 1, (case, r.stderr)
        assert_one_line_naming(r.stderr, link)
        assert f"SFT {link.parent}:" in r.stderr and not out.exists()


# ---- index entries are checked by name, not by where links lead ------------------------------
def _point(sft: Path, tensor: str, fname: str) -> None:
    index = read_json(sft / "model.safetensors.index.json")
    index["weight_map"][tensor] = fname
    (sft / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize(
    "fname",
    ["ABS", "../x.safetensors", "sub/../../x.safetensors", "..", "", "./../x.safetensors"],
)
def test_index_entries_leaving_the_directory_are_refused(llama_copy, fname, tmp_path):
    _, sft = llama_copy
    shard = read_json(sft / "model.safetensors.index.json")["weight_map"]["lm_head.weight"]
    shutil.copy(sft / shard, tmp_path / "x.safetensors")  # it exists: refused by name alone
    (sft / "sub").mkdir()
    fname = str(sft / shard) if fname == "ABS" else fname  # absolute, even pointing inside
    _point(sft, "lm_head.weight", fname)
    with pytest.raises(CheckpointError) as e:
        Checkpoint.open(sft, "SFT")
    assert f"points to {fname!r}, outside the checkpoint directory" in str(e.value)
    r = run_cli("inspect", sft)
    assert r.exit_code == 1 and "outside the checkpoint directory" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_index_entry_in_a_subfolder_linking_out_is_read(llama, llama_copy, tmp_path):
    """sub/<shard> stays inside by name; that it is a link to a blob elsewhere is fine."""
    base, sft = llama_copy
    shard = read_json(sft / "model.safetensors.index.json")["weight_map"]["lm_head.weight"]
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (sft / shard).rename(blobs / "abc123")
    (sft / "sub").mkdir()
    (sft / "sub" / shard).symlink_to(Path("..") / ".." / "blobs" / "abc123")
    index = read_json(sft / "model.safetensors.index.json")
    for tensor, f in index["weight_map"].items():
        if f == shard:
            _point(sft, tensor, f"sub/{shard}")
    r = run_cli("fuse", base, sft, "--out", tmp_path / "o", "--reset", "0", "-q")
    assert r.exit_code == 0, r.stderr
    assert_fused(tmp_path / "o", llama)
