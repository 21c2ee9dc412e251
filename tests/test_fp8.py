"""Block-scaled FP8 checkpoints as BASE and SFT, and `--dtype fp8` output.

There is no offline producer: transformers refuses to quantize without a GPU, DeepSeek's scripts
need triton and CUDA. So tests/producers_fp8.py writes the layout by hand, checked against the
producers' source (its docstring cites them): DeepSeek-V3 README_WEIGHTS.md ("FP8 Weight
Documentation": quantization_config, float32 `weight_scale_inv`, zero-padded edge blocks) and
inference/fp8_cast_bf16.py `main` (scale name `f"{w}_scale_inv"`, found through the index) and
kernel.py `weight_dequant_kernel` / `weight_quant_kernel`; transformers 5.24
integrations/finegrained_fp8.py `FP8Linear.__init__` (ceil-div float32 scale grid),
`Fp8Quantize._quantize_one` and `Fp8Dequantize._dequantize_one`, `replace_with_fp8_linear`
(only decoder Linear weights become FP8). The fixture is a tiny Llama saved by save_pretrained
(hidden 256: q/k/v/o in whole 128x128 blocks; intermediate 200: gate/up/down with partial edge
blocks), quantized with transformers' arithmetic; one scale sits in another shard than its
weight. transformers itself then loads it on CPU (it dequantizes without a GPU) and gives our
values bit for bit for the whole-block weights; for the ragged ones it derives 100-row blocks
from 200 rows / 2 scale rows (`block_m = rows // scale_rows`) and differs, so those are checked
against an independent float64 numpy decoding only.

Exactness: float(Q) · S is rounded once to float32 (with float32 scales the exact product needs
up to 28 bits: it is not exact in float32, and the read equals the float64 product rounded to
float32 bit for bit); with bf16 scales it needs 12 bits and is exact.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import bits, fails, load_dir, run_cli
from producers_fp8 import (
    FP8_CONFIG,
    LLAMA,
    MOVED_SCALE,
    dequantize_numpy,
    per_element,
    quantize_like_deepseek,
    write_dequantized,
    write_fp8,
)
from safetensors.torch import load_file, save_file

import rejuv_cli.checkpoint.stream as stream
from rejuv_cli.checkpoint.formats import open_source
from rejuv_cli.checkpoint.fp8 import Fp8Checkpoint
from rejuv_cli.ops.fp8 import dequantize, quantize_rows
from rejuv_cli.testing.synth import make_pair

GRID = {(256, 256): (2, 2), (128, 256): (1, 2), (200, 256): (2, 2), (256, 200): (2, 2)}
ALIGNED = ("q_proj", "k_proj", "v_proj", "o_proj")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """name -> directory: base/sft (bf16, save_pretrained), fp8_base/fp8_sft (transformers'
    arithmetic, float32 scales), fp8_sft_bf16 (bf16 scales), fp8_sft_ds (DeepSeek's
    weight_quant arithmetic), deq_* (each FP8 one dequantized to float32 by numpy)."""
    root = tmp_path_factory.mktemp("fp8")
    base, sft = make_pair(root / "pair", "llama", seed=11, config_overrides=LLAMA,
                          max_shard_size="200KB")  # fmt: skip
    d = {"base": base, "sft": sft}
    d["fp8_base"] = write_fp8(base, root / "fp8_base")
    d["fp8_sft"] = write_fp8(sft, root / "fp8_sft")
    d["fp8_sft_bf16"] = write_fp8(sft, root / "fp8_sft_bf16", scale_dtype=torch.bfloat16)
    d["fp8_sft_ds"] = write_fp8(sft, root / "fp8_sft_ds", quantize=quantize_like_deepseek)
    for name in ("fp8_base", "fp8_sft", "fp8_sft_bf16"):
        d["deq_" + name[4:]] = write_dequantized(d[name], root / ("deq_" + name[4:]))
    return d


def read_all(src, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
    info = src.tensors[name]
    stop = info.numel if stop is None else stop
    out = np.empty((stop - start) * 4, dtype=np.uint8)
    src.read_into(name, start, stop, out)
    return out.view(np.float32)


# ---- reading -------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["fp8_sft", "fp8_sft_bf16"])
def test_reads_weights_dequantized_exactly(dirs, which):
    """Every FP8 weight reads as float(Q)·S of its block, equal bit for bit to float64 numpy
    rounded once to float32, whole or from any element range; other tensors as stored."""
    stored = load_dir(dirs[which])
    with open_source(dirs[which], "SFT") as src:
        assert isinstance(src, Fp8Checkpoint) and src.format == "fp8-block"
        fp8 = sorted(n for n, t in stored.items() if t.dtype == torch.float8_e4m3fn)
        assert len(fp8) == 14 and src.quantized == set(fp8)
        assert not any(n.endswith("_scale_inv") for n in src.tensors)
        assert set(src.tensors) == {n for n in stored if not n.endswith("_scale_inv")}
        inexact = 0
        for name in fp8:
            info = src.tensors[name]
            assert (info.dtype, info.out_dtype, info.nbytes) == ("F32", "BF16", info.numel * 4)
            want = dequantize_numpy(stored[name], stored[name + "_scale_inv"]).reshape(-1)
            assert bits(torch.from_numpy(read_all(src, name))) == bits(torch.from_numpy(want))
            cols = info.shape[1]
            last = min(info.shape[0], 130) * cols  # rows 126..129 cross a block boundary
            for start, stop in ((37, 37 + 3 * cols + 5), (last - 4 * cols + 3, last - 1)):
                got = read_all(src, name, start, stop)
                assert np.array_equal(got.view(np.uint32), want[start:stop].view(np.uint32))
            q64 = stored[name].to(torch.float64).numpy()  # the exact product, in float64
            exact = q64 * per_element(stored[name + "_scale_inv"], q64.shape)
            inexact += int(np.count_nonzero(exact != want.reshape(q64.shape)))
        # float32 scales: 514,708 of the 700,416 products are rounded; bf16 ones: none
        assert (inexact > 0) == (which == "fp8_sft")
        for name in set(src.tensors) - set(fp8):
            assert src.tensors[name] is src.inner.tensors[name]
        assert src.describe() == {
            "format": "fp8-block",
            "quantization": {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128],
                             "activation_scheme": "dynamic",
                             "scale_dtype": "BF16" if which.endswith("bf16") else "F32"},
            "fp8_tensors": 14,
        }  # fmt: skip
        assert MOVED_SCALE in load_file(sorted(dirs[which].glob("*.safetensors"))[0])


def test_transformers_dequantizes_whole_block_weights_the_same(dirs):
    """transformers 5.24 on CPU (no GPU: it dequantizes, Fp8Dequantize) gives our float32
    values for the weights made of whole 128x128 blocks."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(dirs["fp8_sft"], dtype=torch.float32)
    state = model.state_dict()
    with open_source(dirs["fp8_sft"], "SFT") as src:
        checked = [n for n in src.quantized if n.split(".")[-2] in ALIGNED]
        assert len(checked) == 8
        for name in checked:
            got = read_all(src, name).reshape(src.tensors[name].shape)
            assert bits(state[name]) == bits(torch.from_numpy(got)), name


# ---- the quantization rule ------------------------------------------------------------------
def test_the_scale_rule_round_trips_for_every_float32_mantissa():
    """s = fl(a / 448) gives back s from the block's dequantized maximum, fl(fl(448 s) / 448),
    for every float32 mantissa (exponent scaling is exact); transformers' 1 / (448 / a) does
    not for 6.8% of them, which is why ops/fp8.py uses amax / 448."""
    a = (np.arange(2**23, dtype=np.uint32) | np.uint32(127 << 23)).view(np.float32)
    m = np.float32(448)
    s = a / m
    assert np.array_equal((m * s) / m, s)
    inv = np.float32(1) / (m / a)
    again = np.float32(1) / (m / (m * inv))
    assert np.count_nonzero(again != inv) == 569_468  # of 8_388_608


@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16])
def test_quantize_rows_matches_deepseek_and_round_trips(scale_dtype):
    """quantize_rows = DeepSeek's weight_quant rule (numpy, tests/producers_fp8.py) bit for bit,
    on ragged shapes with an all-zero and a tiny block; quantizing the dequantized weight again
    gives the same codes and scales."""
    gen = torch.Generator().manual_seed(0)
    for shape in ((200, 256), (256, 200), (130, 7), (5, 300)):
        w = torch.randn(shape, generator=gen) * torch.exp(torch.randn(shape[0], 1, generator=gen))
        w[:128, :128] = 0.0  # an all-zero block: scale 1, codes 0
        if shape[1] > 128:
            w[:128, 128:256] *= 1e-30
        q, s = quantize_rows(w, (128, 128), scale_dtype)
        q_ref, s_ref = quantize_like_deepseek(w, (128, 128), scale_dtype)
        assert bits(q) == bits(q_ref) and bits(s) == bits(s_ref), shape
        assert s.dtype == scale_dtype and s[0, 0] == 1 and q[:128, :128].float().abs().max() == 0
        q2, s2 = quantize_rows(dequantize(q, s, (128, 128)), (128, 128), scale_dtype)
        assert bits(q2) == bits(q) and bits(s2) == bits(s), shape


def test_requantizing_transformers_codes_keeps_them(dirs):
    """A checkpoint quantized with transformers' arithmetic, dequantized and quantized again:
    the same codes; each scale s becomes fl(fl(448·s) / 448) (its block's largest code is
    448), which is s or 1 float32 ulp from it: here 12 of the 48 differ by 1 ulp."""
    stored = load_dir(dirs["fp8_sft"])
    differ = 0
    for name in (n for n, t in stored.items() if t.dtype == torch.float8_e4m3fn):
        q, s = stored[name], stored[name + "_scale_inv"]
        q2, s2 = quantize_rows(dequantize(q, s, (128, 128)), (128, 128), torch.float32)
        assert bits(q2) == bits(q), name
        m = np.float32(448)
        assert np.array_equal(s2.numpy(), (m * s.numpy()) / m), name
        gap = (s2.view(torch.int32).long() - s.view(torch.int32).long()).abs()
        assert int(gap.max()) <= 1, name
        differ += int(gap.sum())
    assert differ == 12


# ---- fuse ----------------------------------------------------------------------------------
def fuse(tmp_path, name, *args):
    out = tmp_path / name
    r = run_cli("fuse", *args, "--out", out, "--quiet")
    assert r.exit_code == 0, r.stderr
    return out


def config(path):
    return json.loads((path / "config.json").read_text())


def test_fuse_of_fp8_equals_fuse_of_the_dequantized(dirs, tmp_path):
    """FP8 BASE and SFT fuse (and reset: the default 1% drift reset) exactly like the same
    weights dequantized to float32 in a plain checkpoint: bf16 output, bit for bit, and a
    config.json without quantization_config. BASE FP8 + SFT bf16 too."""
    cases = [((dirs["fp8_base"], dirs["fp8_sft"]), (dirs["deq_base"], dirs["deq_sft"])),
             ((dirs["fp8_base"], dirs["sft"]), (dirs["deq_base"], dirs["sft"]))]  # fmt: skip
    for i, (fp8, deq) in enumerate(cases):
        a = fuse(tmp_path, f"fp8{i}", *fp8)
        b = fuse(tmp_path, f"deq{i}", *deq, "--dtype", "bf16")
        got, want = load_dir(a), load_dir(b)
        assert got.keys() == want.keys() and len(got) == 21
        for name in got:
            assert got[name].dtype == torch.bfloat16 and bits(got[name]) == bits(want[name])
        assert "quantization_config" not in config(a) and config(a) == config(b)
        assert json.loads((a / "rejuv.json").read_text())["counts"]["reset"] > 0


def quantized_like_deepseek(values: dict, stored_scales: dict) -> dict:
    out = {}
    for name, w in values.items():
        scale = stored_scales.get(name + "_scale_inv")
        if scale is not None:
            out[name], out[name + "_scale_inv"] = quantize_like_deepseek(w, (128, 128),
                                                                        scale.dtype)  # fmt: skip
    return out


def test_dtype_fp8_requantizes_the_fp8_weights(dirs, tmp_path, monkeypatch):
    """--dtype fp8: every weight FP8 in an input is written as F8_E4M3 with fresh block scales
    next to it (same shard, the input's scale dtype), equal bit for bit to quantizing the
    float32 fuse of the dequantized inputs; the rest as --dtype auto; config keeps
    quantization_config. Loads back as FP8 (rejuv, transformers)."""
    out = fuse(tmp_path, "fp8", dirs["fp8_base"], dirs["fp8_sft"], "--dtype", "fp8",
               "--shard-size", "150KB")  # fmt: skip
    auto = load_dir(fuse(tmp_path, "auto", dirs["fp8_base"], dirs["fp8_sft"]))
    f32 = load_dir(fuse(tmp_path, "f32", dirs["deq_base"], dirs["deq_sft"], "--dtype", "fp32"))
    got, stored = load_dir(out), load_dir(dirs["fp8_sft"])
    fp8 = {n for n, t in stored.items() if t.dtype == torch.float8_e4m3fn}
    assert set(got) == set(auto) | {n + "_scale_inv" for n in fp8}
    want = quantized_like_deepseek({n: f32[n] for n in fp8}, stored)
    worst = 0.0
    for name in fp8:
        q, s = got[name], got[name + "_scale_inv"]
        assert q.dtype == torch.float8_e4m3fn and s.dtype == torch.float32
        assert tuple(s.shape) == GRID[tuple(q.shape)]
        assert bits(q) == bits(want[name]) and bits(s) == bits(want[name + "_scale_inv"]), name
        # so within FP8 rounding of the float result: half an e4m3 step of |w| / s, times s
        w, d = f32[name].double().numpy(), dequantize_numpy(q, s).astype(np.float64)
        s_full = per_element(s, w.shape)
        step = np.exp2(np.floor(np.log2(np.maximum(np.abs(w) / s_full, 2.0**-6))) - 3)
        ratio = np.abs(d - w) / (step / 2 * s_full + np.abs(w) * 2.0**-23)
        worst = max(worst, float(ratio.max()))
    assert worst <= 1.0
    for name in set(auto) - fp8:
        assert bits(got[name]) == bits(auto[name]), name
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(index.values())) > 1
    assert all(index[n + "_scale_inv"] == index[n] for n in fp8)
    assert config(out)["quantization_config"] == FP8_CONFIG
    with open_source(out, "OUT") as again:  # the output is an FP8 input again
        assert isinstance(again, Fp8Checkpoint) and again.quantized == fp8
    from transformers import AutoModelForCausalLM  # and transformers reads it as FP8

    state = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).state_dict()
    for name in (n for n in fp8 if n.split(".")[-2] in ALIGNED):
        want = dequantize_numpy(got[name], got[name + "_scale_inv"])
        assert bits(state[name]) == bits(torch.from_numpy(want)), name


def test_dtype_fp8_alpha_1_gives_the_sft_bytes(dirs, tmp_path):
    """α = 1, no reset, SFT quantized by DeepSeek's rule: codes and scales are SFT's own bytes
    (re-quantizing is lossless). BASE FP8 with float32 scales, SFT with bf16 scales: the scales
    are written in SFT's dtype."""
    out = fuse(tmp_path, "a1", dirs["fp8_base"], dirs["fp8_sft_ds"], "--dtype", "fp8",
               "--alpha", "1", "--reset", "0")  # fmt: skip
    got, stored = load_dir(out), load_dir(dirs["fp8_sft_ds"])
    assert got.keys() == stored.keys()
    for name in stored:
        assert bits(got[name]) == bits(stored[name]), name
    out = fuse(tmp_path, "bf16", dirs["fp8_base"], dirs["fp8_sft_bf16"], "--dtype", "fp8")
    scales = {n: t.dtype for n, t in load_dir(out).items() if n.endswith("_scale_inv")}
    assert len(scales) == 14 and set(scales.values()) == {torch.bfloat16}


def test_dtype_fp8_with_bf16_sft_takes_base_format(dirs, tmp_path, monkeypatch):
    """BASE FP8 + SFT bf16 under --dtype fp8: BASE's FP8 weights are FP8 in the output, with
    BASE's quantization_config in SFT's config; chunks of whole 128-row blocks give the same
    bytes as one chunk per tensor."""
    one = fuse(tmp_path, "one", dirs["fp8_base"], dirs["sft"], "--dtype", "fp8")
    monkeypatch.setitem(stream.CHUNK_ELEMENTS, "cpu", 1000)  # 128-row chunks for FP8 weights
    many = fuse(tmp_path, "many", dirs["fp8_base"], dirs["sft"], "--dtype", "fp8")
    assert (one / "model.safetensors").read_bytes() == (many / "model.safetensors").read_bytes()
    got = load_dir(one)
    assert sum(t.dtype == torch.float8_e4m3fn for t in got.values()) == 14
    cfg, sft_cfg = config(one), config(dirs["sft"])
    assert cfg.pop("quantization_config") == FP8_CONFIG
    assert cfg == sft_cfg


def test_row_chunks_hold_whole_row_blocks():
    """FP8 weights stream in whole blocks of rows: a multiple of 128 rows per chunk, at least
    128 (the last may hold fewer: the bottom edge), however small the chunk budget."""
    chunks = list(stream.row_chunks((200, 256), None, 1000, rows_multiple=128))
    assert chunks == [(0, 128 * 256, True), (128 * 256, 200 * 256, True)]
    chunks = list(stream.row_chunks((600, 10), None, 3000, rows_multiple=128))
    assert [(a // 10, b // 10) for a, b, _ in chunks] == [(0, 256), (256, 512), (512, 600)]


def test_in_memory_values_are_what_a_loader_reconstructs(dirs):
    """rejuv sweep copies `Executor.outputs(dequantized=True)` into a model: for FP8 weights,
    codes × scales of the chunks `outputs()` writes."""
    import dataclasses

    from rejuv_cli.executor import Executor
    from rejuv_cli.plan import build_plan
    from rejuv_cli.recipe import Recipe

    recipe = dataclasses.replace(Recipe(), alpha=0.3, dtype="fp8")
    cpu = torch.device("cpu")
    with open_source(dirs["fp8_base"], "BASE") as b, open_source(dirs["fp8_sft"], "SFT") as s:
        plan = build_plan(b, s, recipe)
        written = {}
        for target, _, _, values in Executor(plan, b, s, cpu).outputs():
            written.setdefault(target.name, []).append(values.clone())
        memory = {t.name: v.clone() for t, _, _, v in Executor(plan, b, s, cpu).outputs(True)}
    assert set(memory) == {n for n in written if not n.endswith("_scale_inv")}
    for name, values in memory.items():
        if name not in plan.fp8:
            assert bits(values) == bits(written[name][0])
            continue
        shape = plan.by_name()[name].sft.shape
        q = torch.cat(written[name]).view(shape)
        s = written[name + "_scale_inv"][0].view(plan.fp8[name].scale.shape)
        assert bits(values.view(shape)) == bits(dequantize(q, s, (128, 128)))


# ---- refusals ------------------------------------------------------------------------------
def _edit_config(**changes):
    def edit(d):
        cfg = config(d)
        cfg["quantization_config"] = {**cfg["quantization_config"], **changes}
        for k, v in changes.items():
            if v is None:
                del cfg["quantization_config"][k]
        (d / "config.json").write_text(json.dumps(cfg))

    return edit


def _edit_tensor(change):
    def edit(d):
        for f in d.glob("*.safetensors"):
            state = load_file(f)
            if change(state):
                save_file(state, f, metadata={"format": "pt"})
                index = d / "model.safetensors.index.json"
                wm = json.loads(index.read_text())
                wm["weight_map"] = {k: v for k, v in wm["weight_map"].items() if v != f.name}
                wm["weight_map"] |= dict.fromkeys(state, f.name)
                index.write_text(json.dumps(wm))

    return edit


Q0 = "model.layers.0.self_attn.q_proj.weight"


def _set(name, value):
    """In the shard holding Q0: tensor `name` = value(that shard's tensors)."""

    def change(state):
        if Q0 not in state:
            return False
        state[name] = value(state)
        return True

    return change


def _drop(name):
    return lambda state: state.pop(name, None) is not None


# id -> (edit of a copy of fp8_sft, exit code, fragments of the one error line)
REFUSED = {
    "static-scheme": (_edit_config(activation_scheme="static"), 1,
                      ["SFT", "static activation scales",
                       "quantization_config.activation_scheme=static"]),
    "activation-scale": (_edit_tensor(_set(Q0.replace("weight", "activation_scale"),
                                           lambda st: torch.tensor(1.0))), 1,
                         ["static activation scales", "q_proj.activation_scale'"]),
    "ue8m0": (_edit_config(scale_fmt="ue8m0"), 1, ["scale_fmt=ue8m0", "power-of-two"]),
    "block-1d": (_edit_config(weight_block_size=[128]), 1,
                 ["weight_block_size is [128]", "two positive integers"]),
    "scale-shape": (_edit_tensor(_set(Q0 + "_scale_inv", lambda st: torch.ones(1, 1))), 1,
                    [f"'{Q0}_scale_inv'", "has shape [1, 1]", "needs [2, 2]"]),
    "u8-scale": (_edit_tensor(_set(Q0 + "_scale_inv",
                                   lambda st: torch.ones(2, 2, dtype=torch.uint8))), 1,
                 ["stores block scales as U8", "not e8m0 exponents"]),
    "e5m2": (_edit_tensor(_set(Q0, lambda st: st[Q0].float().to(torch.float8_e5m2))), 1,
             [f"tensor '{Q0}' is F8_E5M2 with block scales", "e4m3 (F8_E4M3) FP8 only"]),
    "gptq-tensors": (_edit_tensor(_set("model.layers.0.mlp.extra.qweight",
                                       lambda st: torch.zeros(4, 8, dtype=torch.int32))), 1,
                     ["besides block-scaled FP8 weights it has GPTQ/AWQ packed integer weights",
                      "'model.layers.0.mlp.extra.qweight'"]),
    "orphan-scale": (_edit_tensor(_set("model.layers.0.mlp.extra.weight_scale_inv",
                                       lambda st: torch.ones(1, 1))), 1,
                     ["scales 'model.layers.0.mlp.extra.weight', which does not exist"]),
    "no-scale": (_edit_tensor(_drop(Q0 + "_scale_inv")), 1,
                 [f"tensor '{Q0}'", "is F8_E4M3 without its block scales", "shard missing"]),
    "per-tensor": (_edit_config(weight_block_size=None), 1,
                   ["SFT is quantized: FP8 with per-tensor scales"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REFUSED))
def test_unsupported_fp8_variants_are_refused(case, dirs, tmp_path):
    edit, code, fragments = REFUSED[case]
    sft = tmp_path / "sft"
    shutil.copytree(dirs["fp8_sft"], sft)
    edit(sft)
    out = tmp_path / "o"
    fails(run_cli("fuse", dirs["base"], sft, "--out", out), code, *fragments, one_line=True)
    assert not out.exists()


def test_dtype_fp8_needs_an_fp8_input(dirs, tmp_path):
    out = tmp_path / "o"
    r = run_cli("fuse", dirs["base"], dirs["sft"], "--out", out, "--dtype", "fp8")
    fails(r, 2, "--dtype fp8 re-quantizes the weights that are block-scaled FP8", "neither is",
          one_line=True)  # fmt: skip
    assert not out.exists()
