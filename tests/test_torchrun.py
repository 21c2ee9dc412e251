"""rejuv under torchrun (#20): 2 processes with the gloo backend on CPU.

Each run is launched by torch's own launcher (`python -m torch.distributed.run`, what the
`torchrun` script runs) on the shared fixtures. `rejuv fuse` writes with small shards so that
both ranks write some: the outputs must be byte-identical to one process's (shards, index,
config, tokenizer; rejuv.json differs only by its `ranks` record, timings and the --out path),
whichever scorer chose the units. `diagnose` and `sweep` split the calibration batches between
the ranks (an odd number, so the shares differ) and must report what one process reports.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import edit_checkpoint, run_cli

from rejuv_cli.dist import split_by_bytes

SHARDS = ("--shard-size", "20KB")  # the fixture's 54 KB output in 3 shards


def torchrun(*args, env=None, timeout=240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--standalone", "-m", "rejuv_cli", *map(str, args)]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def same_files(a, b) -> list[str]:
    """Names of files in both directories whose bytes differ."""
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    return [n for n in names if (a / n).read_bytes() != (b / n).read_bytes()]


def test_split_by_bytes_balances_and_keeps_order():
    sizes = {"a": 50, "b": 30, "c": 30, "d": 20, "e": 10}
    assert split_by_bytes(sizes, 2) == [["a", "d"], ["b", "c", "e"]]  # 70 / 70 bytes
    assert split_by_bytes(sizes, 1) == [list(sizes)]
    assert split_by_bytes({"x": 1}, 3) == [["x"], [], []]


@pytest.mark.parametrize(
    "flags",
    [
        (),
        pytest.param(("--reset", "0"), marks=pytest.mark.slow),  # fusion alone: the same path
        ("--select", "dormant"),  # a data scorer: batches split, activity sums all-reduced
        pytest.param(("--select", "saturated"), marks=pytest.mark.slow),
        pytest.param(("--select", "attribution"), marks=pytest.mark.slow),  # max-reduced
    ],
    ids=["default-reset", "fusion", "dormant", "saturated", "attribution"],
)
def test_two_ranks_write_what_one_process_writes(llama, tmp_path, flags):
    base, sft = llama
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_cli("fuse", base, sft, "--out", one, *SHARDS, *flags, "-q").exit_code == 0
    r = torchrun("fuse", base, sft, "--out", two, *SHARDS, *flags)
    assert r.returncode == 0, r.stderr[-3000:]
    assert same_files(one, two) == ["README.md", "rejuv.json"]
    a, b = (json.loads((d / "rejuv.json").read_text()) for d in (one, two))
    assert "ranks" not in a
    written = b.pop("ranks")
    for k in ("seconds", "command"):
        a.pop(k), b.pop(k)
    for k in set(a["reset"] or {}) | set(b["reset"] or {}):
        assert k == "seconds" or a["reset"][k] == b["reset"][k], k
    a["reset"], b["reset"] = (dict(x or {}, seconds=None) for x in (a["reset"], b["reset"]))
    assert a == b  # digests, counts, the reset's units: all as one process
    sizes = {s["file"]: s["bytes"] for s in b["shards"]}
    assert written["world_size"] == 2
    assert written["shards"] == {f: r for r, fs in enumerate(split_by_bytes(sizes, 2)) for f in fs}
    assert set(written["shards"].values()) == {0, 1}
    assert "Written by 2 torchrun processes" in (two / "README.md").read_text()
    assert list(tmp_path.iterdir()) == [one, two]  # no temporary directory left


def test_two_ranks_apply_a_mask(llama, tmp_path):
    base, sft = llama
    mask = tmp_path / "units.safetensors"
    r = run_cli("fuse", base, sft, "--out", tmp_path / "one", *SHARDS, "--save-mask", mask, "-q")
    assert r.exit_code == 0, r.stderr
    r = torchrun("fuse", base, sft, "--out", tmp_path / "two", *SHARDS, "--mask", mask)
    assert r.returncode == 0, r.stderr[-3000:]
    assert same_files(tmp_path / "one", tmp_path / "two") == ["README.md", "rejuv.json"]


def test_a_rank_that_fails_leaves_nothing(llama, tmp_path):
    """A NaN in one tensor of SFT: the rank that writes its shard fails with rejuv's one line,
    torchrun stops the other, and neither OUT nor a temporary directory is left."""
    base, sft = llama
    bad = tmp_path / "sft"

    def poison(state):
        if "model.norm.weight" in state:
            state["model.norm.weight"][0] = float("nan")
            return True
        return False

    edit_checkpoint(sft, bad, poison)
    work = tmp_path / "work"
    work.mkdir()
    r = torchrun("fuse", base, bad, "--out", work / "out", *SHARDS, "--reset", "0")
    assert r.returncode != 0
    assert "rejuv: error: tensor 'model.norm.weight' would be written with NaN" in r.stderr
    assert list(work.iterdir()) == []


def differences(a, b, path: str = "", rel: float = 1e-9) -> list[str]:
    """Paths where two JSON reports differ: floats beyond `rel`, anything else at all."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in differences(a.get(k), b.get(k), f"{path}.{k}", rel)]  # fmt: skip
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True))
                for d in differences(x, y, f"{path}[{i}]", rel)]  # fmt: skip
    if isinstance(a, float) and isinstance(b, float):
        return [] if abs(a - b) <= rel * max(1.0, abs(a)) else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


DIAGNOSE = ("--batch-tokens", "1024", "--sharpness-draws", "1")  # 7 batches: 4 and 3 per rank


@pytest.mark.slow  # 15 s each; make test keeps the data scorer's launch (the same reductions)
@pytest.mark.parametrize("family", ["mixtral", "llama"])  # mixtral: routing counts reduced too
def test_diagnose_on_two_ranks_reports_what_one_process_does(pairs, tmp_path, family):
    base, sft = pairs[family]
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    r = run_cli("diagnose", base, sft, *DIAGNOSE, "--json", one, "-q")
    assert r.exit_code == 0, r.output
    r = torchrun("diagnose", base, sft, *DIAGNOSE, "--json", two, "-q")
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a["inputs"]["batches"] == 7
    assert a["units"]["layers"] and (family != "mixtral" or a["routing"]["layers"])
    # Weight statistics are not split (every rank streams them), but torchrun's one thread per
    # process changes their last bits; the forward passes' reductions change only the order of
    # float64 sums.
    assert [d for d in differences(a, b, rel=1e-6) if not d.startswith(".seconds")] == []
    assert [d for d in differences(a, b) if not d.startswith((".seconds", ".weights."))] == []
    assert a["output"]["tokens"] == b["output"]["tokens"] > 0


@pytest.mark.slow  # the same reductions as diagnose, and the --out write path of fuse
def test_sweep_on_two_ranks_reports_and_writes_what_one_process_does(tmp_path):
    from test_sweep import BASE, CALIB, SFT

    flags = ("--calib", CALIB, "--samples", "32", "--batch-tokens", "256", "--alphas", "0.5,0.9",
             "--select", "dormant")  # fmt: skip
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    r = run_cli("sweep", BASE, SFT, *flags, "--json", one, "--out", tmp_path / "a", "-q")
    assert r.exit_code == 0, r.output
    r = torchrun("sweep", BASE, SFT, *flags, "--json", two, "--out", tmp_path / "b", "-q")
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a["recommendation"]["alpha"] is not None
    for report in (a, b):  # the --out paths differ, everything else must not
        report["out"] = dict(report["out"], path=None, command=None)
        report["recommendation"]["fuse_command"] = report["command"] = None
    assert [d for d in differences(a, b) if "seconds" not in d] == []
    assert same_files(tmp_path / "a", tmp_path / "b") == ["README.md", "rejuv.json"]


def test_rank_0_checks_that_every_shard_arrived(llama, tmp_path):
    """Without a shared filesystem another host's shards never reach rank 0's directory: one
    line naming the shard and its writer, before anything is renamed into place."""
    from rejuv_cli.errors import OutputError
    from rejuv_cli.executor import check_shards_arrived
    from rejuv_cli.pipeline import FuseJob, prepare_fuse
    from rejuv_cli.recipe import Recipe

    out = tmp_path / "o"
    assert run_cli("fuse", *llama, "--out", out, *SHARDS, "-q").exit_code == 0
    p = prepare_fuse(FuseJob(str(llama[0]), str(llama[1]), None, Recipe(shard_size="20KB")))
    p.close()
    writers = {s.filename: i % 2 for i, s in enumerate(p.plan.shards)}
    check_shards_arrived(p.plan, out, writers)  # all there
    second = p.plan.shards[1].filename
    (out / second).unlink()
    with pytest.raises(OutputError, match=f"{second}: shard written by rank 1 is missing"):
        check_shards_arrived(p.plan, out, writers)


def test_rank_0s_bar_counts_every_ranks_bytes(tmp_path, monkeypatch):
    """The fusing bar on rank 0 adds what the other ranks report through the shared directory,
    and the progress folder is gone before the output is renamed into place."""
    from rejuv_cli import dist, rank_progress

    monkeypatch.setattr(rank_progress, "INTERVAL", 0.0)
    monkeypatch.setattr(dist, "_current", dist.Ranks(1, 3))
    one = rank_progress.SharedProgress(tmp_path, None)
    one(300)
    one(200)
    one.finish()
    monkeypatch.setattr(dist, "_current", dist.Ranks(2, 3))
    two = rank_progress.SharedProgress(tmp_path, None)
    two(50)  # still writing: its last published count is what rank 0 sees
    monkeypatch.setattr(dist, "_current", dist.Ranks(0, 3))
    bar: list[int] = []
    main = rank_progress.SharedProgress(tmp_path, bar.append)
    main(100)
    assert bar == [100, 550] and sum(bar) == 650  # its own bytes, then ranks 1 and 2's
    main.poll()
    assert sum(bar) == 650  # nothing new: no second advance
    monkeypatch.setattr(dist, "_current", dist.Ranks(2, 3))
    two(25)
    two.finish()
    monkeypatch.setattr(dist, "_current", dist.Ranks(0, 3))
    main.close()
    assert sum(bar) == 100 + 500 + 75
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(autouse=True)
def _no_leftover_files(tmp_path):
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)


assert torch.distributed.is_available()
