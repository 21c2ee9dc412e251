"""torch.distributed.checkpoint directories (checkpoint/dcp.py), saved by `dcp.save` from an
FSDP2 model in 2 gloo processes (tests/producers_dist.py): top-level model keys, accelerate's
{"model": sd} nesting next to an optimizer and a pickled train_state, and column-split
(Shard(1)) matrices.

Oracles: torch's own consolidation (`format_utils.dcp_to_torch_save`, which loads everything
with plain pickle: fine for our own fixtures) and the trained model's save_pretrained copy.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from producers_dist import Shape, produce, read_range, read_rows
from safetensors.torch import load_file

from rejuv_cli.checkpoint import dcp_metadata
from rejuv_cli.checkpoint.formats import open_source
from rejuv_cli.checkpoint.shard_rows import fill_rows, tiles
from rejuv_cli.errors import CheckpointError

VARIANTS = ["flat", "nested", "columns"]
SHAPE = Shape(vocab=127, kv_heads=1, head_dim=4)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The dcp/ directory: flat/, nested/, columns/, full.pt, reference/. Read-only."""
    return produce(tmp_path_factory.mktemp("dcp"), ["dcp"], world=2, shape=SHAPE)["dcp"]


@pytest.fixture(scope="module")
def consolidated(run, tmp_path_factory):
    """variant -> torch's own consolidation of it (the model part)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = {}
    for v in VARIANTS:
        path = tmp_path_factory.mktemp("oracle") / f"{v}.pt"
        dcp_to_torch_save(run / v, path)
        sd = torch.load(path, weights_only=False)
        out[v] = sd["model"] if v == "nested" else sd
    return out


def torch_metadata(d: Path):
    """The directory's Metadata as torch reads it (plain pickle: our own fixture only)."""
    from torch.distributed.checkpoint import FileSystemReader

    return FileSystemReader(str(d)).read_metadata()


def open_dcp(d: Path, run: Path):
    return open_source(d, "SFT", config_from=run / "reference")


@pytest.mark.parametrize("variant", VARIANTS)
def test_reads_equal_consolidated(run, consolidated, variant):
    ref = load_file(run / "reference" / "model.safetensors")
    oracle = consolidated[variant]
    with open_dcp(run / variant, run) as src:
        assert src.format == "dcp"
        assert sorted(src.tensors) == sorted(ref) == sorted(oracle)  # no "model.model."
        for name, info in src.tensors.items():
            want = oracle[name]
            assert torch.equal(want, ref[name])
            assert info.dtype == "F32" and info.shape == tuple(want.shape)
            for rows in (1, 5, 64):
                assert torch.equal(read_rows(src, name, rows), want), (name, rows)
            n = want.numel()
            assert torch.equal(read_range(src, name, 3, n - 2), want.reshape(-1)[3 : n - 2])


def test_layouts_are_what_the_tests_claim(run):
    """flat/nested chunks are Shard(0) row slabs (uneven for the 127-row vocabulary); columns/
    splits matrices by columns, so its reads assemble rows from two chunks."""
    emb = "model.embed_tokens.weight"
    flat = torch_metadata(run / "flat").state_dict_metadata[emb].chunks
    assert [(list(c.offsets), list(c.sizes)) for c in flat] == [([0, 0], [64, 64]),
                                                                 ([64, 0], [63, 64])]  # fmt: skip
    cols = torch_metadata(run / "columns").state_dict_metadata[emb].chunks
    assert sorted(list(c.offsets) for c in cols) == [[0, 0], [0, 32]]
    with open_dcp(run / "columns", run) as src:
        assert not src.slabs[emb] and src.slabs["model.norm.weight"]


def test_nesting_is_read_from_planner_data(run):
    nested = torch_metadata(run / "nested")
    fqn = "model.model.layers.0.mlp.up_proj.weight"
    assert nested.planner_data[fqn] == ("model", "model.layers.0.mlp.up_proj.weight")
    with open_dcp(run / "nested", run) as src, open_dcp(run / "flat", run) as flat:
        assert list(src.tensors) == list(flat.tensors)
        assert all(n.startswith(("model.", "lm_head.")) for n in src.tensors)


def test_describe_and_skipped_entries(run):
    with open_dcp(run / "flat", run) as src:
        assert src.describe() == {"format": "dcp", "chunks": 2 * len(src.tensors),
                                  "ranks_written": [0, 1], "skipped_entries": 0}  # fmt: skip
        assert src.warnings == []
        assert [p.name for p in src.weight_files()] == ["__0_0.distcp", "__1_0.distcp"]
    meta = torch_metadata(run / "nested")
    others = [k for k in meta.state_dict_metadata if not k.startswith("model.")]
    assert {k.split(".")[0] for k in others} == {"optimizer", "train_state"}
    with open_dcp(run / "nested", run) as src:
        facts = src.describe()
        assert facts["skipped_entries"] == len(others) == src.skipped
        n_opt = sum(k.startswith("optimizer.") for k in others)
        (warning,) = src.warnings
        assert f"optimizer {n_opt}" in warning and "train_state 2" in warning
    with open_dcp(run / "columns", run) as src:
        chunks = torch_metadata(run / "columns").state_dict_metadata
        assert src.describe()["chunks"] == sum(len(m.chunks) for m in chunks.values())


def test_train_state_bytes_are_never_loaded(run, tmp_path):
    """The pickled train_state blob is overwritten with garbage: reading the model still works,
    so it was never unpickled (torch itself loads it with weights_only=False)."""
    d = tmp_path / "nested"
    shutil.copytree(run / "nested", d)
    meta = torch_metadata(d)
    for index, info in meta.storage_data.items():
        if index.fqn.startswith("train_state."):
            path = d / info.relative_path
            data = bytearray(path.read_bytes())
            data[info.offset : info.offset + info.length] = b"\x80" * info.length
            path.write_bytes(bytes(data))
    with open_dcp(d, run) as src:
        for name in src.tensors:
            read_rows(src, name, 64)


def test_chunks_held_while_streaming(run):
    """Row slabs: a forward read holds the chunks of the current rows only; another tensor's
    chunks are dropped. Column chunks: every read needs all of them."""
    emb, head = "model.embed_tokens.weight", "lm_head.weight"  # chunks: rows 0..63, 64..126
    with open_dcp(run / "flat", run) as src:
        read_range(src, emb, 0, 64 * 10)
        assert src._cache[0] == emb and sorted(src._cache[1]) == [0]
        read_range(src, emb, 64 * 60, 64 * 70)  # across the seam
        assert sorted(src._cache[1]) == [0, 1]
        read_range(src, emb, 64 * 100, 64 * 101)
        assert sorted(src._cache[1]) == [1]
        assert torch.equal(read_range(src, emb, 5, 9), read_rows(src, emb, 64).reshape(-1)[5:9])
        read_range(src, head, 0, 10)
        assert src._cache[0] == head and sorted(src._cache[1]) == [0]
    with open_dcp(run / "columns", run) as src:
        read_range(src, emb, 64 * 100, 64 * 101)
        assert len(src._cache[1]) == 2


def test_allowlist_covers_what_torch_writes(run):
    """An independent record of the globals in the fixtures' .metadata: each is allowlisted."""
    seen = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            seen.add((module, name))
            return super().find_class(module, name)

    for v in VARIANTS:
        with open(run / v / ".metadata", "rb") as f:
            Recorder(f).load()
    dtypes = {(m, n) for m, n in seen if m == "torch" and n != "Size"}
    assert dtypes and all(isinstance(getattr(torch, n), torch.dtype) for _, n in dtypes)
    assert seen - dtypes <= dcp_metadata.ALLOWED
    assert {("torch.distributed.checkpoint.metadata", "Metadata"), ("pathlib", "PosixPath"),
            ("torch.distributed.checkpoint.metadata", "BytesStorageMetadata")} <= seen  # fmt: skip


@pytest.fixture
def copy(run, tmp_path):
    d = tmp_path / "flat"
    shutil.copytree(run / "flat", d)
    return d


def refused(d: Path, run: Path, *phrases: str, read: bool = False) -> str:
    with pytest.raises(CheckpointError) as e:
        src = open_dcp(d, run)
        if read:
            for name in src.tensors:
                read_rows(src, name, 64)
    msg = str(e.value)
    assert "\n" not in msg
    for p in phrases:
        assert p in msg, msg
    return msg


class _Payload:
    """Unpickling this calls `func` (it is only ever refused here)."""

    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


@pytest.mark.parametrize("func", [os.system, eval])
def test_metadata_with_a_foreign_global_is_refused_unrun(copy, run, tmp_path, func):
    marker = tmp_path / "ran"
    arg = f"touch {marker}" if func is os.system else f"open({str(marker)!r}, 'w')"
    (copy / ".metadata").write_bytes(pickle.dumps(_Payload(func, arg)))
    msg = refused(copy, run, str(copy / ".metadata"), "refused to unpickle", func.__name__)
    assert not marker.exists(), msg


def test_metadata_global_inside_real_metadata_is_refused(copy, run, tmp_path):
    """The foreign global hidden in a real Metadata (as a checkpoint_id) is refused too."""
    marker = tmp_path / "ran"
    meta = torch_metadata(copy)
    meta.storage_meta.checkpoint_id = _Payload(os.system, f"touch {marker}")
    (copy / ".metadata").write_bytes(pickle.dumps(meta))
    refused(copy, run, "system")
    assert not marker.exists()


def test_corrupt_metadata(copy, run):
    data = (copy / ".metadata").read_bytes()
    (copy / ".metadata").write_bytes(data[: len(data) // 2])
    refused(copy, run, str(copy / ".metadata"), "not a valid DCP metadata file")
    (copy / ".metadata").write_bytes(pickle.dumps({"not": "metadata"}))
    refused(copy, run, str(copy / ".metadata"), "not DCP Metadata")


def test_missing_data_file(copy, run):
    (copy / "__1_0.distcp").unlink()
    refused(copy, run, "__1_0.distcp", "missing")


def test_truncated_data_file(copy, run):
    path = copy / "__1_0.distcp"
    path.write_bytes(path.read_bytes()[:-100])
    refused(copy, run, str(path), "truncated")


def test_corrupt_chunk(copy, run):
    meta = torch_metadata(copy)
    index, info = next((i, s) for i, s in meta.storage_data.items()
                       if i.fqn == "model.norm.weight")  # fmt: skip
    path = copy / info.relative_path
    data = bytearray(path.read_bytes())
    data[info.offset : info.offset + info.length] = b"\x00" * info.length
    path.write_bytes(bytes(data))
    refused(copy, run, str(path), "'model.norm.weight'", read=True)


def test_transform_descriptors_are_refused(copy, run):
    meta = torch_metadata(copy)
    info = next(iter(meta.storage_data.values()))
    info.transform_descriptors = ["zstd"]
    (copy / ".metadata").write_bytes(pickle.dumps(meta))
    refused(copy, run, "zstd", "stream transform")


def test_chunks_that_do_not_tile_are_refused(copy, run):
    meta = torch_metadata(copy)
    chunks = meta.state_dict_metadata["model.norm.weight"].chunks
    chunks.append(chunks[0])  # stored twice
    (copy / ".metadata").write_bytes(pickle.dumps(meta))
    refused(copy, run, "'model.norm.weight'", "do not add up")


def test_no_model_tensors(run, tmp_path):
    d = tmp_path / "nested"
    shutil.copytree(run / "nested", d)
    meta = torch_metadata(d)
    for k in [k for k in meta.state_dict_metadata if k.startswith("model.")]:
        del meta.state_dict_metadata[k]
        del meta.planner_data[k]
    (d / ".metadata").write_bytes(pickle.dumps(meta))
    refused(d, run, "no model tensors", "optimizer, train_state")


def test_config_needed(copy, run):
    with pytest.raises(CheckpointError, match="without a config.json.*--config-from"):
        open_source(copy, "SFT")
    shutil.copy(run / "reference" / "config.json", copy / "config.json")
    with open_source(copy, "SFT") as src:
        assert src.meta_root == copy and src.config["vocab_size"] == 127


def test_model_names():
    tensor = dict.fromkeys(["model.layers.0.w", "lm_head.weight"], True)
    flat = {k: (k,) for k in tensor}
    assert dcp_metadata.model_names(tensor, flat)[0] == {k: k for k in tensor}
    assert dcp_metadata.model_names(tensor, None)[0] == {k: k for k in tensor}  # no nesting known
    entries = {"model.model.layers.0.w": True, "model.lm_head.weight": True,
               "optimizer.state.model.lm_head.weight.exp_avg": True,
               "train_state.blob": False, "model.extra": False}  # fmt: skip
    paths = {"model.model.layers.0.w": ("model", "model.layers.0.w"),
             "model.lm_head.weight": ("model", "lm_head.weight"),
             "optimizer.state.model.lm_head.weight.exp_avg":
                 ("optimizer", "state", "model.lm_head.weight", "exp_avg"),
             "train_state.blob": ("train_state", "blob"),
             "model.extra": ("model", "extra")}  # fmt: skip
    names, skipped = dcp_metadata.model_names(entries, paths)
    assert names == {"model.model.layers.0.w": "model.layers.0.w",
                     "model.lm_head.weight": "lm_head.weight"}  # fmt: skip
    assert skipped == {"optimizer": 1, "train_state": 1, "model (not tensors)": 1}
    # top-level tensors next to trainer state saved at the top level
    top = {"layers.0.w": True, "lr_scheduler": False, "step": True, "optimizer.x": True}
    names, skipped = dcp_metadata.model_names(top, {"optimizer.x": ("optimizer", "x")})
    assert names == {"layers.0.w": "layers.0.w", "step": "step"}
    assert skipped == {"lr_scheduler": 1, "optimizer": 1}


def test_tiles_and_fill_rows():
    shape = (4, 6)
    grid = [((0, 0), (2, 6)), ((2, 0), (2, 3)), ((2, 3), (2, 3))]
    assert tiles(shape, grid) is None
    # the right total, but row 2 twice and row 3 never
    assert "overlap" in tiles(shape, [((0, 0), (3, 6)), ((2, 0), (1, 6))])
    assert "overlap" in tiles(shape, [((0, 0), (4, 4)), ((0, 3), (4, 2))])  # columns 3 twice
    assert "add up" in tiles(shape, grid[:2])
    assert "outside" in tiles(shape, [((0, 0), (5, 6))])
    assert tiles((), [((), ())]) is None
    full = torch.arange(24.0).reshape(shape)
    pieces = [(o, full[o[0] : o[0] + s[0], o[1] : o[1] + s[1]]) for o, s in grid]
    for r0 in range(4):
        for r1 in range(r0 + 1, 5):
            block = torch.full((r1 - r0, 6), -1.0)
            fill_rows(block, r0, pieces)
            assert torch.equal(block, full[r0:r1])


@pytest.mark.slow
def test_world_3_empty_chunks(tmp_path):
    """3 ranks: k_proj's 4 rows split 2, 2, 0 and the 127-row vocabulary 43, 43, 41."""
    d = produce(tmp_path, ["dcp"], world=3, shape=SHAPE)["dcp"]
    full = torch.load(d / "full.pt")
    for v in VARIANTS:
        with open_dcp(d / v, d) as src:
            assert sorted(src.tensors) == sorted(full)
            for name in src.tensors:
                assert torch.equal(read_rows(src, name, 5), full[name]), (v, name)


def test_fuse_equals_fuse_from_the_consolidated_checkpoint(run, tmp_path):
    """`rejuv fuse` with the nested DCP directory as SFT (config from --config-from) writes the
    tensors it writes from the save_pretrained copy, default reset included (BASE: the copy with
    seeded noise, so that every tensor is fused and the drift scorer has work)."""
    from conftest import noisy_copy, read_json, run_cli

    ref = run / "reference"
    base = noisy_copy(ref, tmp_path / "base")
    out_dcp, out_hf = tmp_path / "dcp", tmp_path / "hf"
    r = run_cli("fuse", base, run / "nested", "--config-from", ref, "--out", out_dcp, "-q")
    assert r.exit_code == 0, r.stderr
    assert run_cli("fuse", base, ref, "--out", out_hf, "-q").exit_code == 0
    got, want = (load_file(d / "model.safetensors") for d in (out_dcp, out_hf))
    assert sorted(got) == sorted(want) == sorted(load_file(ref / "model.safetensors"))
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert not torch.equal(
        got["lm_head.weight"], load_file(ref / "model.safetensors")["lm_head.weight"]
    )
    assert read_json(out_dcp / "rejuv.json")["reset"]["units"] > 0


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_single_process_save_scalars_and_dtypes(run, tmp_path):
    """`dcp.save` without a process group (one chunk per tensor): a 0-d tensor, bf16, int64
    and an empty tensor are read back as saved, in their own dtypes."""
    import torch.distributed.checkpoint as tdcp

    gen = torch.Generator().manual_seed(3)
    sd = {"scale": torch.tensor(2.5), "w": torch.randn(5, 3, generator=gen).bfloat16(),
          "ids": torch.arange(7), "none": torch.empty(0, 4)}  # fmt: skip
    tdcp.save({"model": sd}, checkpoint_id=str(tmp_path / "d"))
    with open_dcp(tmp_path / "d", run) as src:
        assert {n: t.dtype for n, t in src.tensors.items()} == {
            "scale": "F32", "w": "BF16", "ids": "I64", "none": "F32"}  # fmt: skip
        assert src.tensors["scale"].shape == ()
        assert torch.equal(read_range(src, "scale", 0, 1), sd["scale"].reshape(1))
        assert torch.equal(read_rows(src, "w", 2), sd["w"])
        assert torch.equal(read_range(src, "ids", 2, 6), sd["ids"][2:6])
        assert src.tensors["none"].nbytes == 0


def test_diagnose_sweep_and_inspect_a_dcp_directory(run, tmp_path):
    """diagnose's weight statistics read the DCP values (equal to the save_pretrained copy's);
    forward passes (diagnose, sweep) load the temporary copy, float32 here (config.json comes
    from --config-from, the float32 reference); inspect reports the chunks. BASE: the
    reference with seeded noise, so that there is drift to measure."""
    import json

    from conftest import noisy_copy, run_cli

    ref = run / "reference"
    base = noisy_copy(ref, tmp_path / "base")

    def report(command, sft, *flags):
        r = run_cli(command, base, sft, *flags, "--json", "-", "-q")
        assert r.exit_code == 0, r.stderr
        return json.loads(r.stdout)

    dcp_dir = ["--config-from", ref]
    got = report("diagnose", run / "nested", "--weights-only", *dcp_dir)
    assert got["weights"] == report("diagnose", ref, "--weights-only")["weights"]
    assert got["weights"]["drift_max"] > 0
    assert got["inputs"]["models"]["sft"]["format"] == "dcp"
    flags = ["--calib", "builtin:math", "--samples", "8"]
    got = report("diagnose", run / "nested", *flags, "--sharpness-draws", "0", *dcp_dir)
    want = report("diagnose", ref, *flags, "--sharpness-draws", "0")
    assert got["output"] == want["output"] and got["units"] == want["units"]
    got = report("sweep", run / "nested", *flags, "--alphas", "0.5", *dcp_dir)
    want = report("sweep", ref, *flags, "--alphas", "0.5")
    assert got["sft"] == want["sft"] and got["sft"]["kl_mean"] > 0
    assert [r | {"seconds": 0} for r in got["rows"]] == [r | {"seconds": 0} for r in want["rows"]]
    facts = json.loads(run_cli("inspect", run / "nested", *dcp_dir, "--json").stdout)["input"]
    assert facts["format"] == "dcp" and facts["ranks_written"] == [0, 1]


def test_a_dcp_directory_as_base(run, tmp_path):
    """BASE may be a DCP directory too (config from --config-from; SFT has its own)."""
    from conftest import noisy_copy, run_cli

    ref = run / "reference"
    sft = noisy_copy(ref, tmp_path / "sft", seed=1)
    out_dcp, out_hf = tmp_path / "dcp", tmp_path / "hf"
    r = run_cli("fuse", run / "flat", sft, "--config-from", ref, "--out", out_dcp, "-q")
    assert r.exit_code == 0, r.stderr
    assert run_cli("fuse", ref, sft, "--out", out_hf, "-q").exit_code == 0
    got, want = (load_file(d / "model.safetensors") for d in (out_dcp, out_hf))
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)
