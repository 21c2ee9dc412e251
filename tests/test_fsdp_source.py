"""verl FSDP rank files (checkpoint/fsdp.py), written by torch's FSDP1 and FSDP2 in 3 gloo
processes the way verl's checkpoint manager writes them (tests/producers_dist.py).

World size 3 with a 127-row vocabulary and a 4-row k_proj: every layout FSDP makes is here,
even shards, uneven ones (43, 43, 41 rows) and empty ones (2, 2, 0 rows). The oracles are the
consolidated state dict torch gathers itself and the trained model's save_pretrained copy.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from producers_dist import Shape, produce, read_range, read_rows
from safetensors.torch import load_file

from rejuv_cli.checkpoint import fsdp
from rejuv_cli.checkpoint.formats import open_source
from rejuv_cli.checkpoint.shard_rows import chunk_rows, declared_dtype, flat_spans, write_as
from rejuv_cli.errors import CheckpointError, UsageError

WORLD = 3
SHAPE = Shape(vocab=127, kv_heads=1, head_dim=4)
KINDS = ["fsdp2", "fsdp1", "hsdp2", "hsdp1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """kind -> its directory (ckpt/, full.pt, reference/). Read-only: copy to modify."""
    return produce(tmp_path_factory.mktemp("fsdp"), KINDS, world=WORLD, shape=SHAPE)


def oracles(run: Path) -> tuple[dict, dict]:
    return torch.load(run / "full.pt"), load_file(run / "reference" / "model.safetensors")


def check_reads(src, full: dict, ref: dict) -> None:
    """Every tensor, read in whole-row chunks of several sizes and one odd element range,
    equals both oracles bit for bit."""
    assert sorted(src.tensors) == sorted(ref)  # the names save_pretrained writes
    for name, info in src.tensors.items():
        want = full[name]
        assert info.dtype == "F32" and info.shape == tuple(want.shape)
        assert torch.equal(want, ref[name])
        for rows in (1, 5, 64):
            assert torch.equal(read_rows(src, name, rows), want), (name, rows)
        n = want.numel()
        assert torch.equal(read_range(src, name, 3, n - 2), want.reshape(-1)[3 : n - 2])


@pytest.mark.parametrize("kind", KINDS)
def test_reads_equal_consolidated_state(runs, kind):
    full, ref = oracles(runs[kind])
    with open_source(runs[kind] / "ckpt", "SFT") as src:
        assert src.format == "fsdp"
        assert list(src.tensors) == list(full)  # the model's own order
        check_reads(src, full, ref)
        # bytes come from the rank files by pread: no tensor is held, no file stays mapped
        assert all(p.tensor is None for ps in src.pieces.values() for p in ps)
        assert not any(fsdp.mapped_regions(f) for f in src.files)


def test_uneven_and_empty_shards(runs):
    """The layouts torch.chunk makes: what each rank holds, and reads across their seams."""
    full, _ = oracles(runs["fsdp2"])
    with open_source(runs["fsdp2"] / "ckpt", "SFT") as src:
        held = {n: [p.rows for p in src.pieces[n]] for n in src.tensors}
        assert held["model.embed_tokens.weight"] == [43, 43, 41]
        assert held["model.layers.0.self_attn.k_proj.weight"] == [2, 2, 0]
        assert held["model.norm.weight"] == [22, 22, 20]
        for name, rows in held.items():  # each rank's file holds exactly that many rows
            for r, n in enumerate(rows):
                local = torch.load(src.files[r], weights_only=True, mmap=True)[name]._local_tensor
                assert local.shape[0] == n
        k = full["model.layers.0.self_attn.k_proj.weight"].reshape(-1)
        name = "model.layers.0.self_attn.k_proj.weight"
        assert torch.equal(read_range(src, name, 100, 200), k[100:200])  # ranks 0 and 1
        e = full["model.embed_tokens.weight"].reshape(-1)
        seam = 86 * 64  # rank 1 -> rank 2
        assert torch.equal(read_range(src, "model.embed_tokens.weight", seam - 7, seam + 9),
                           e[seam - 7 : seam + 9])  # fmt: skip


def test_reads_from_the_map_where_offsets_are_unknown(runs, monkeypatch):
    """Without /proc/self/maps the pieces are copied from the mapped tensors: same values."""
    monkeypatch.setattr(fsdp, "mapped_regions", lambda path: [])
    full, ref = oracles(runs["hsdp1"])
    with open_source(runs["hsdp1"] / "ckpt", "SFT") as src:
        assert any(p.tensor is not None for ps in src.pieces.values() for p in ps)
        check_reads(src, full, ref)


@pytest.mark.parametrize(
    "kind, facts",
    [
        ("fsdp2", {"fsdp_version": 2, "placements": ["Shard(dim=0)"], "mesh": ["fsdp"],
                   "mesh_shape": [3]}),
        ("fsdp1", {"fsdp_version": 1, "placements": ["Shard(dim=0)"], "mesh": ["fsdp"],
                   "mesh_shape": [3]}),
        ("hsdp2", {"fsdp_version": 2, "placements": ["Replicate()", "Shard(dim=0)"],
                   "mesh": ["ddp", "fsdp"], "mesh_shape": [1, 3]}),
    ],
)  # fmt: skip
def test_describe(runs, kind, facts):
    with open_source(runs[kind] / "ckpt", "SFT") as src:
        assert src.describe() == {"format": "fsdp", "world_size": WORLD, **facts}
        ranks = [runs[kind] / "ckpt" / f"model_world_size_3_rank_{r}.pt" for r in range(3)]
        assert src.weight_files() == ranks
        assert src.total_bytes() == sum(t.numel() * 4 for t in oracles(runs[kind])[0].values())


def test_config_and_dtype_from_huggingface_folder(runs):
    """verl's huggingface/ declares the release dtype (bf16) while the shards hold fp32 master
    weights: tensors are read as F32 and written as BF16 under --dtype auto."""
    ckpt = runs["fsdp2"] / "ckpt"
    declared = json.loads((ckpt / "huggingface" / "config.json").read_text())["dtype"]
    assert declared == "bfloat16"
    with open_source(ckpt, "SFT") as src:
        assert src.meta_root == ckpt / "huggingface"
        assert src.config["vocab_size"] == 127
        assert {(t.dtype, t.out_dtype) for t in src.tensors.values()} == {("F32", "BF16")}


def test_config_from(runs):
    ckpt, ref = runs["fsdp2"] / "ckpt", runs["fsdp2"] / "reference"
    with open_source(ckpt, "SFT", config_from=ref) as src:
        assert src.meta_root == ref
        assert src.config["dtype"] == "float32"  # the fp32 save_pretrained copy
        assert {t.out_dtype for t in src.tensors.values()} == {None}
    with pytest.raises(UsageError, match="--config-from"):
        open_source(ckpt, "SFT", config_from=ckpt)  # no config.json there


@pytest.fixture
def ckpt(runs, tmp_path):
    """A writable copy of the FSDP2 checkpoint (model rank files, fsdp_config, huggingface/)."""
    dst = tmp_path / "ckpt"
    skip = shutil.ignore_patterns("optim_*", "extra_*")
    shutil.copytree(runs["fsdp2"] / "ckpt", dst, ignore=skip)
    return dst


def rank(d: Path, r: int, world: int = WORLD) -> Path:
    return d / f"model_world_size_{world}_rank_{r}.pt"


def refused(d: Path, *phrases: str, config_from: Path | None = None) -> str:
    with pytest.raises(CheckpointError) as e:
        open_source(d, "SFT", config_from=config_from)
    msg = str(e.value)
    assert "\n" not in msg
    for p in phrases:
        assert p in msg, msg
    return msg


def test_missing_config(ckpt):
    shutil.rmtree(ckpt / "huggingface")
    refused(ckpt, "without a config.json", "--config-from")


def test_missing_rank_file(ckpt):
    rank(ckpt, 1).unlink()
    refused(ckpt, "model_world_size_3_rank_1.pt is missing")


def test_extra_rank_file(ckpt):
    shutil.copy(rank(ckpt, 0), rank(ckpt, 3))
    refused(ckpt, "model_world_size_3_rank_3.pt", "outside world size 3")


def test_file_names_disagree_with_fsdp_config(ckpt):
    shutil.copy(rank(ckpt, 0), rank(ckpt, 0, world=2))
    refused(ckpt, "model_world_size_2_rank_0.pt", "fsdp_config.json")
    rank(ckpt, 0, world=2).unlink()
    (ckpt / "fsdp_config.json").write_text('{"FSDP_version": 2, "world_size": 2}')
    refused(ckpt, "model_world_size_3_rank_0.pt", "world size", "2")


def test_without_fsdp_config_world_size_from_names(runs, ckpt):
    (ckpt / "fsdp_config.json").unlink()
    full, ref = oracles(runs["fsdp2"])
    with open_source(ckpt, "SFT") as src:
        assert src.describe()["world_size"] == 3 and src.describe()["fsdp_version"] is None
        check_reads(src, full, ref)
    shutil.copy(rank(ckpt, 0), rank(ckpt, 0, world=2))
    refused(ckpt, "world sizes [2, 3]", "model_world_size_2_rank_0.pt")


def test_bad_fsdp_config(ckpt):
    (ckpt / "fsdp_config.json").write_text('{"world_size": "three"}')
    refused(ckpt, "fsdp_config.json", "world_size")


def test_truncated_rank_file(ckpt):
    data = rank(ckpt, 1).read_bytes()
    rank(ckpt, 1).write_bytes(data[: len(data) // 2])
    refused(ckpt, str(rank(ckpt, 1)), "cannot read this rank file")


def test_not_a_torch_file(ckpt):
    rank(ckpt, 2).write_bytes(b"not a zip archive at all")
    refused(ckpt, str(rank(ckpt, 2)))


class _Payload:
    """Unpickling this runs os.system (it is only ever refused here)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_foreign_pickle_is_refused_without_running_it(ckpt, tmp_path):
    marker = tmp_path / "ran"
    torch.save({"model.norm.weight": _Payload(marker)}, rank(ckpt, 1))
    msg = refused(ckpt, str(rank(ckpt, 1)), "weights_only", "system")
    assert not marker.exists(), msg


def test_rank_files_of_another_run(runs, ckpt):
    """A rank file from another checkpoint (HSDP placements) does not fit rank 0's."""
    shutil.copy(rank(runs["hsdp2"] / "ckpt", 1), rank(ckpt, 1))
    refused(ckpt, str(rank(ckpt, 1)), "not placed as on rank 0")


def _resave(d: Path, change) -> None:
    import torch.distributed.tensor  # noqa: F401  (lets weights_only load DTensors)

    for r in range(WORLD):
        state = torch.load(rank(d, r), weights_only=True)
        change(r, state)
        torch.save(state, rank(d, r))


def test_plain_tensors_must_agree_across_ranks(runs, ckpt):
    """A value saved as a plain tensor on every rank (a buffer FSDP does not shard) is read
    once when the ranks agree, and refused when they do not."""
    extra = torch.arange(6, dtype=torch.int64)
    _resave(ckpt, lambda r, s: s.__setitem__("model.extra_buffer", extra.clone()))
    with open_source(ckpt, "SFT") as src:
        assert src.tensors["model.extra_buffer"].dtype == "I64"
        assert torch.equal(read_range(src, "model.extra_buffer", 1, 5), extra[1:5])
    _resave(ckpt, lambda r, s: s["model.extra_buffer"].add_(r))
    refused(ckpt, str(rank(ckpt, 1)), "'model.extra_buffer'", "differs from rank 0")


def test_placement_kinds():
    from torch.distributed.tensor import Partial, Replicate, Shard
    from torch.distributed.tensor.placement_types import _StridedShard

    kind = fsdp._placement_kind
    assert kind((Shard(0),)) == "shard"
    assert kind((Replicate(), Shard(0))) == "shard"
    assert kind((Replicate(),)) == kind((Replicate(), Replicate())) == "replicate"
    for refused_ in [(Shard(1),), (Partial(),), (Shard(0), Shard(0)), (Replicate(), Shard(1)),
                     (_StridedShard(0, split_factor=2),), (Shard(0), Replicate())]:  # fmt: skip
        assert kind(refused_) is None, refused_


def test_chunk_rows_is_torch_chunk():
    for total in range(0, 12):
        for parts in range(1, 6):
            want = [len(c) for c in torch.arange(total).chunk(parts)]
            want += [0] * (parts - len(want))
            assert chunk_rows(total, parts) == want, (total, parts)


def test_flat_spans_against_concatenation():
    """Every element range of pieces [3, 0, 2, 4] rows x 5: the spans pick exactly the
    elements torch.cat(pieces)[start:stop] holds."""
    rows, width = [3, 0, 2, 4], 5
    pieces = [torch.arange(n * width) + 1000 * i for i, n in enumerate(rows)]
    whole = torch.cat(pieces)
    for start in range(0, whole.numel()):
        for stop in range(start + 1, whole.numel() + 1, 3):
            got = torch.empty(stop - start, dtype=whole.dtype)
            for i, a, b, at in flat_spans(rows, width, start, stop):
                assert rows[i] > 0
                got[at : at + b - a] = pieces[i][a:b]
            assert torch.equal(got, whole[start:stop]), (start, stop)


def test_declared_dtype():
    assert declared_dtype({"dtype": "bfloat16"}) == "BF16"
    assert declared_dtype({"torch_dtype": "float16"}) == "F16"
    assert declared_dtype({"text_config": {"dtype": "bfloat16"}}) == "BF16"
    assert declared_dtype({"dtype": "auto"}) is None and declared_dtype({}) is None
    assert write_as("F32", "BF16") == "BF16"
    assert write_as("F32", "F32") is None and write_as("I64", "BF16") is None


@pytest.mark.slow
def test_world_2_and_hsdp_replicas(tmp_path):
    """World size 2 (the default shape), and a (2, 2) ("ddp", "fsdp") HSDP mesh in 4
    processes: ranks 2 and 3 hold replicas, which are not read; a 4-rank Shard(0) mesh with
    2-row k_proj leaves ranks 2 and 3 empty."""
    two = produce(tmp_path / "w2", ["fsdp2", "fsdp1"], world=2)
    four = produce(tmp_path / "w4", ["hsdp2", "hsdp1", "fsdp2"], world=4, replicas=2,
                   shape=Shape(vocab=127, kv_heads=1, head_dim=2))  # fmt: skip
    for run in [*two.values(), *four.values()]:
        full, ref = oracles(run)
        with open_source(run / "ckpt", "SFT") as src:
            check_reads(src, full, ref)
            facts = src.describe()
            if facts["mesh"] == ["ddp", "fsdp"]:
                assert facts["mesh_shape"] == [2, 2]
                assert src.weight_files() == [rank(run / "ckpt", r, 4) for r in (0, 1)]
            elif facts["world_size"] == 4:
                k = src.pieces["model.layers.0.self_attn.k_proj.weight"]
                assert [p.rows for p in k] == [1, 1, 0, 0]


def test_fuse_equals_fuse_from_the_consolidated_checkpoint(runs, tmp_path):
    """`rejuv fuse` with the rank files as SFT writes the tensors it writes from the
    save_pretrained copy, in float32; and with --dtype auto, the bf16 the huggingface/ config
    declares. BASE: another run's model with seeded noise (the runs train alike)."""
    from conftest import noisy_copy, run_cli

    base, sft = noisy_copy(runs["fsdp1"] / "reference", tmp_path / "base"), runs["fsdp2"]
    outs = {}
    for tag, src in [("shards", sft / "ckpt"), ("hf", sft / "reference")]:
        outs[tag] = tmp_path / tag
        r = run_cli("fuse", base, src, "--out", outs[tag], "--alpha", "0.5", "--dtype", "fp32",
                    "-q")  # fmt: skip
        assert r.exit_code == 0, r.stderr
    got, want = (load_file(outs[t] / "model.safetensors") for t in ("shards", "hf"))
    assert sorted(got) == sorted(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    r = run_cli("fuse", base, sft / "ckpt", "--out", tmp_path / "auto", "--alpha", "0.5", "-q")
    assert r.exit_code == 0, r.stderr
    auto = load_file(tmp_path / "auto" / "model.safetensors")
    assert {t.dtype for t in auto.values()} == {torch.bfloat16}
    assert all(torch.equal(auto[k], want[k].to(torch.bfloat16)) for k in want)


def _diagnose(*args) -> dict:
    import json

    from conftest import run_cli

    r = run_cli("diagnose", *args, "--json", "-")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def test_diagnose_and_inspect_rank_files(runs, tmp_path):
    """diagnose reads the rank files' float32 values (weight statistics equal those of the
    save_pretrained copy) and runs forward passes on the temporary copy, written in the bf16
    huggingface/config.json declares (equal to the copy rounded to bf16); inspect reports the
    layout."""
    import json

    from conftest import bf16_copy, noisy_copy, run_cli

    base, sft = noisy_copy(runs["fsdp1"] / "reference", tmp_path / "base"), runs["fsdp2"]
    got = _diagnose(base, sft / "ckpt", "--weights-only")
    assert got["weights"] == _diagnose(base, sft / "reference", "--weights-only")["weights"]
    assert got["inputs"]["models"]["sft"]["input"].startswith(
        f"verl FSDP shards: world_size {WORLD}"
    )
    assert got["weights"]["drift_max"] > 0
    flags = ["--calib", "builtin:math", "--samples", "8", "--sharpness-draws", "0"]
    got = _diagnose(base, sft / "ckpt", *flags)
    want = _diagnose(base, bf16_copy(sft / "reference", tmp_path / "bf16"), *flags)
    assert got["output"] == want["output"] and got["units"] == want["units"]
    report = json.loads(run_cli("inspect", sft / "ckpt", "--json").stdout)
    assert report["format"] == "fsdp" and report["input"]["world_size"] == WORLD
    assert report["input"]["fsdp_version"] == 2 and report["unit_map"] == "llama-like"
    assert "verl FSDP shards: world_size 3" in run_cli("inspect", sft / "ckpt").stdout
