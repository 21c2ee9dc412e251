"""Block-scaled FP8 checkpoints through diagnose and inspect (fuse: tests/test_fp8.py).

The fixture is test_fp8's layout (hand-written in the published format; no offline producer
exists): a tiny Llama whose decoder Linear weights are F8_E4M3 codes with 128x128 block scales.
Weight statistics read the dequantized float32 values, so they must equal the statistics of
the float32 dequantized checkpoint exactly; forward passes load the temporary copy, written
in bf16 (the output dtype of an FP8 weight), so they must equal the forward passes of the
dequantized checkpoint rounded to bf16.
"""

from __future__ import annotations

import json

import pytest
from conftest import bf16_copy, run_cli
from producers_fp8 import LLAMA, write_dequantized, write_fp8

from rejuv_cli.testing.synth import make_pair


@pytest.fixture(scope="module")
def fp8(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp8_cli")
    base, sft = make_pair(root / "pair", "llama", seed=12, config_overrides=LLAMA,
                          max_shard_size="200KB")  # fmt: skip
    d = {"base": write_fp8(base, root / "fp8_base"), "sft": write_fp8(sft, root / "fp8_sft")}
    d["deq_base"] = write_dequantized(d["base"], root / "deq_base")
    d["deq_sft"] = write_dequantized(d["sft"], root / "deq_sft")
    d["bf16_base"] = bf16_copy(d["deq_base"], root / "bf16_base")
    d["bf16_sft"] = bf16_copy(d["deq_sft"], root / "bf16_sft")
    return d


def _diagnose(*args):
    r = run_cli("diagnose", *args, "--json", "-")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def test_weight_statistics_read_the_dequantized_values(fp8):
    got = _diagnose(fp8["base"], fp8["sft"], "--weights-only")
    ref = _diagnose(fp8["deq_base"], fp8["deq_sft"], "--weights-only")
    assert got["weights"] == ref["weights"] and got["weights"]["drift_max"] > 0
    line = got["inputs"]["models"]["sft"]["input"]
    assert line.startswith("FP8 with 128x128 block scales: ") and "fp8_tensors 14" in line


def test_forward_passes_load_the_bf16_copy(fp8):
    flags = ["--calib", "builtin:math", "--samples", "8", "--sharpness-draws", "0"]
    got = _diagnose(fp8["base"], fp8["sft"], *flags)
    ref = _diagnose(fp8["bf16_base"], fp8["bf16_sft"], *flags)
    assert got["output"] == ref["output"] and got["units"] == ref["units"]
    assert got["output"]["entropy_mean"] > 0


def test_inspect_reports_the_quantization(fp8):
    r = run_cli("inspect", fp8["sft"], "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["format"] == "fp8-block"
    assert report["input"]["quantization"]["quant_method"] == "fp8"
    assert report["unit_map"] == "llama-like" and report["misfits"] == []
    table = run_cli("inspect", fp8["sft"]).stdout
    assert "FP8 with 128x128 block scales: " in table


def test_sweep_over_fp8_inputs(fp8):
    """BASE and SFT rows are measured on the bf16 copies; each α row on the candidate fused
    from the dequantized float32 values (so only BASE/SFT rows can equal the bf16 pair's)."""
    flags = ["--calib", "builtin:math", "--samples", "8", "--alphas", "0.5,1.0", "--json", "-",
             "-q"]  # fmt: skip
    got = run_cli("sweep", fp8["base"], fp8["sft"], *flags)
    ref = run_cli("sweep", fp8["bf16_base"], fp8["bf16_sft"], *flags)
    assert got.exit_code == 0 and ref.exit_code == 0, got.stderr
    a, b = json.loads(got.stdout), json.loads(ref.stdout)
    assert a["base"] == b["base"] and a["sft"] == b["sft"]
    assert [r["alpha"] for r in a["rows"]] == [0.5, 1.0]
    assert a["inputs"]["models"]["sft"]["format"] == "fp8-block"
