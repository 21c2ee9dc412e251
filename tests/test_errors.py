"""Bad input gets one clear line and the right exit code, and never a half-written OUT."""

from __future__ import annotations

import json
import pickle
import struct

import pytest
import torch
from conftest import fails, load_dir, run_cli
from safetensors.torch import save_file

from rejuv_cli.testing.synth import make_pair


def first_shard(d):
    return sorted(d.glob("model-*.safetensors"))[0]


def test_existing_out_is_refused_without_overwrite(llama, tmp_path):
    base, sft = llama
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    fails(run_cli("fuse", base, sft, "--out", out), 1, "already exists; pass --overwrite")
    assert (out / "keep.txt").read_text() == "mine"
    assert run_cli("fuse", base, sft, "--out", out, "--overwrite").exit_code == 0
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()


def test_out_inside_an_input_is_refused(llama_copy):
    base, sft = llama_copy
    fails(run_cli("fuse", base, sft, "--out", sft / "fused"), 1, "is inside SFT")
    fails(run_cli("fuse", base, sft, "--out", base.parent, "--overwrite"), 1, "is inside --out")
    assert (base / "config.json").exists()


def test_missing_shard(llama_copy, tmp_path):
    base, sft = llama_copy
    shard = first_shard(sft)
    shard.unlink()
    fails(
        run_cli("fuse", base, sft, "--out", tmp_path / "o"),
        1,
        f"shard '{shard.name}'",
        "is missing",
    )
    assert not (tmp_path / "o").exists()


def test_index_entry_escaping_the_directory(llama_copy, tmp_path):
    base, sft = llama_copy
    index_path = sft / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    name = next(iter(index["weight_map"]))
    index["weight_map"][name] = "../../etc/passwd"
    index_path.write_text(json.dumps(index))
    fails(
        run_cli("fuse", base, sft, "--out", tmp_path / "o"),
        1,
        f"'{name}'",
        "outside the checkpoint",
    )


def test_tensor_listed_but_absent(llama_copy, tmp_path):
    base, sft = llama_copy
    index_path = sft / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["model.layers.9.ghost.weight"] = first_shard(sft).name
    index_path.write_text(json.dumps(index))
    fails(
        run_cli("fuse", base, sft, "--out", tmp_path / "o"),
        1,
        "'model.layers.9.ghost.weight' is listed",
        "does not contain it",
    )


def test_truncated_shard(llama_copy, tmp_path):
    base, sft = llama_copy
    shard = first_shard(base)
    shard.write_bytes(shard.read_bytes()[:-100])
    fails(run_cli("fuse", base, sft, "--out", tmp_path / "o"), 1, str(shard), "truncated")


@pytest.mark.parametrize(
    "garbage",
    [b"\x05", struct.pack("<Q", 10**12) + b"{}", struct.pack("<Q", 4) + b"nope" + b"\0" * 8],
)
def test_corrupt_header(llama_copy, tmp_path, garbage):
    base, sft = llama_copy
    shard = first_shard(sft)
    shard.write_bytes(garbage)
    fails(
        run_cli("fuse", base, sft, "--out", tmp_path / "o"),
        1,
        str(shard),
        "not a valid safetensors",
    )


def test_non_finite_output_names_the_tensor_and_leaves_nothing(llama_copy, tmp_path):
    base, sft = llama_copy
    state = load_dir(sft)
    state["model.layers.1.mlp.down_proj.weight"][3, 4] = float("nan")
    for f in sft.glob("model*.safetensors*"):
        f.unlink()
    save_file(state, sft / "model.safetensors", metadata={"format": "pt"})
    fails(
        run_cli("fuse", base, sft, "--out", tmp_path / "o"),
        1,
        "'model.layers.1.mlp.down_proj.weight'",
        "NaN/inf",
    )
    assert not (tmp_path / "o").exists()
    assert not list(tmp_path.glob(".o.rejuv-tmp-*"))


def test_unsafe_bin_is_refused(llama, tmp_path):
    base, _ = llama
    sft = tmp_path / "sft"
    sft.mkdir()
    (sft / "config.json").write_text((base / "config.json").read_text())

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save(
        {"w": torch.zeros(2), "x": Payload()}, sft / "pytorch_model.bin", pickle_module=pickle
    )
    err = fails(
        run_cli("fuse", base, sft, "--out", tmp_path / "o"),
        1,
        "pytorch_model.bin",
        "weights_only=True",
    )
    assert "this must never run" not in err


def test_no_weights_in_directory(llama, tmp_path):
    base, _ = llama
    empty = tmp_path / "empty"
    empty.mkdir()
    fails(run_cli("fuse", base, empty, "--out", tmp_path / "o"), 1, "has no weights")


def test_model_type_mismatch(pairs, tmp_path):
    fails(
        run_cli("fuse", pairs["llama"][0], pairs["qwen2"][1], "--out", tmp_path / "o"),
        1,
        "BASE is a 'llama' model but SFT is 'qwen2'",
    )


def test_layer_count_mismatch(llama, tmp_path):
    _, sft3 = make_pair(tmp_path / "deep", "llama", config_overrides={"num_hidden_layers": 3})
    fails(
        run_cli("fuse", llama[0], sft3, "--out", tmp_path / "o"),
        1,
        "BASE has 2 layers but SFT has 3",
    )


def test_shape_mismatch_names_tensor_and_shapes(llama, tmp_path):
    _, wide = make_pair(tmp_path / "wide", "llama", config_overrides={"intermediate_size": 96})
    fails(
        run_cli("fuse", llama[0], wide, "--out", tmp_path / "o"),
        1,
        "tensor 'model.layers.0.mlp.down_proj.weight' has shape (32, 64) in BASE "
        "but (32, 96) in SFT",
    )


def test_missing_input_and_bad_hub_id(llama, tmp_path):
    fails(
        run_cli("fuse", tmp_path / "nope", llama[1], "--out", tmp_path / "o"),
        1,
        "no such directory, and not a Hub id",
    )


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--alpha", "1.5"], "--alpha: must be >= 0.0 and <= 1.0 (got 1.5)"),
        (["--dtype", "int8"], "--dtype: must be one of auto, bf16, fp16, fp32, fp8 (got 'int8')"),
        (["--shard-size", "lots"], "--shard-size: not a size"),
        (["--device", "tpu"], "--device: must be auto, cpu, cuda or cuda:N (got 'tpu')"),
    ],
)
def test_usage_errors_exit_2(llama, tmp_path, args, fragment):
    result = run_cli("fuse", *llama, "--out", tmp_path / "o", *args)
    fails(result, 2, fragment)


def test_bad_recipe_is_reported_with_file_and_keys(llama, tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(
        "fuse:\n  alpha: 1.5\n  rules: [{match: '*', alpha: [0.1, x]}]\noutput:\n  dtype: int4\n"
    )
    err = fails(run_cli("fuse", *llama, "--out", tmp_path / "o", "--recipe", recipe), 1)
    assert f"{recipe}: fuse.alpha: must be >= 0.0 and <= 1.0 (got 1.5)" in err
    assert f"{recipe}: fuse.rules[0].alpha[1]: must be a number" in err
    assert f"{recipe}: output.dtype: must be one of auto, bf16, fp16, fp32, fp8 (got 'int4')" in err


def test_interrupt_exits_130_and_leaves_no_output(llama, tmp_path, monkeypatch):
    import rejuv_cli.executor as executor

    calls = {"n": 0}
    original = executor.Executor._output_chunk

    def interrupted(self, chunk):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(self, chunk)

    monkeypatch.setattr(executor.Executor, "_output_chunk", interrupted)
    fails(run_cli("fuse", *llama, "--out", tmp_path / "o"), 130, "interrupted")
    assert not (tmp_path / "o").exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_interrupt_with_overwrite_keeps_the_old_output(llama, tmp_path, monkeypatch):
    import rejuv_cli.executor as executor

    out = tmp_path / "o"
    out.mkdir()
    (out / "old.txt").write_text("previous run")

    def boom(self, chunk):
        raise KeyboardInterrupt

    monkeypatch.setattr(executor.Executor, "_output_chunk", boom)
    fails(run_cli("fuse", *llama, "--out", out, "--overwrite"), 130)
    assert (out / "old.txt").read_text() == "previous run"


def test_debug_env_shows_traceback(llama, tmp_path):
    result = run_cli(
        "fuse", tmp_path / "nope", llama[1], "--out", tmp_path / "o", env={"REJUV_DEBUG": "1"}
    )
    assert result.exit_code == 1
    assert type(result.exception).__name__ == "ResolveError"
