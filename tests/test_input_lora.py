"""A PEFT LoRA adapter as SFT, end to end through the commands a user runs.

The adapter is made by PEFT itself (get_peft_model + save_pretrained) over the shared bf16
llama fixture; the equivalent Hugging Face checkpoint is PEFT's own merge (merge_and_unload),
saved in float32 for fusion (the adapter's targets are read unrounded, base + s·B·A in float32)
and in bf16 for forward passes (the copy forward passes load is written in BASE's dtype, as
PEFT's merge of a bf16 model saved in bf16 would be). tests/test_lora_source.py checks the
reader tensor by tensor against the same oracle.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import bits, fails, load_dir, read_json, run_cli

pytest.importorskip("peft")  # a dev dependency (pyproject [dev]); `make test` installs it
from peft import LoraConfig  # noqa: E402
from producers_peft import peft_merged, save_adapter  # noqa: E402

TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def _save_merged(base, adapter, out, dtype):
    """PEFT's merge of `adapter` saved as a checkpoint in `dtype`, with BASE's config and
    tokenizer (what the usual route, merge then fuse, writes)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    state = {k: v.to(dtype) for k, v in peft_merged(base, adapter).items()}
    config = AutoConfig.from_pretrained(base)
    model = AutoModelForCausalLM.from_config(config).to(dtype)
    model.load_state_dict(state)
    model.save_pretrained(out)
    for name in TOKENIZER:
        if (base / name).is_file():
            shutil.copy(base / name, out / name)
    return out


@pytest.fixture(scope="module")
def lora(llama, tmp_path_factory):
    """(base, adapter, merged float32, merged bf16)."""
    root = tmp_path_factory.mktemp("lora_cli")
    base = llama[0]
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                        target_modules=["q_proj", "v_proj", "down_proj"])  # fmt: skip
    adapter = save_adapter(base, root / "adapter", config)
    return (base, adapter, _save_merged(base, adapter, root / "merged32", torch.float32),
            _save_merged(base, adapter, root / "merged16", torch.bfloat16))  # fmt: skip


def _weights(d):
    """name -> (dtype, exact bytes) of every tensor (files may order them differently: the
    output follows SFT's storage order, and save_pretrained's merge stores its own)."""
    return {k: (t.dtype, bits(t)) for k, t in load_dir(d).items()}


def test_fuse_from_the_adapter_equals_fuse_from_peft_merge(lora, tmp_path):
    """Bit for bit, default reset included: both read the same float32 SFT values."""
    base, adapter, merged32, _ = lora
    a, b = tmp_path / "a", tmp_path / "b"
    flags = ("--dtype", "bf16", "-q")
    assert run_cli("fuse", base, adapter, "--out", a, *flags).exit_code == 0
    assert run_cli("fuse", base, merged32, "--out", b, *flags).exit_code == 0
    assert _weights(a) == _weights(b) and _weights(a)
    ra, rb = read_json(a / "rejuv.json"), read_json(b / "rejuv.json")
    assert ra["reset"]["units"] == rb["reset"]["units"] > 0
    sft = ra["inputs"]["sft"]
    assert sft["format"] == "peft-lora"
    assert sft["input"]["rank"] == 4 and sft["input"]["lora_alpha"] == 8
    assert sft["input"]["targets"] == ["down_proj", "q_proj", "v_proj"]
    assert ra["inputs"]["base"]["format"] == "safetensors"
    card = (a / "README.md").read_text()
    assert "| SFT | " in card and "PEFT LoRA adapter: rank 4; lora_alpha 8" in card
    # config and tokenizer: BASE's (the adapter directory has none)
    assert (a / "config.json").read_bytes() == (base / "config.json").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (base / "tokenizer.json").read_bytes()
    assert not (a / "adapter_config.json").exists()


def test_auto_dtype_writes_the_targets_in_base_dtype(lora, tmp_path):
    from safetensors import safe_open

    base, adapter, _, _ = lora
    out = tmp_path / "o"
    assert run_cli("fuse", base, adapter, "--out", out, "--reset", "0", "-q").exit_code == 0
    assert read_json(out / "rejuv.json")["out_dtypes"] == {"BF16": 21}
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}  # noqa: SIM118


def test_diagnose_an_adapter_measures_what_the_merged_model_measures(lora):
    """Forward passes on the adapter (through the temporary copy) equal those on PEFT's merge
    saved in bf16; the weight statistics read the adapter's unrounded values."""
    base, adapter, _, merged16 = lora
    flags = ["--calib", "builtin:math", "--samples", "8", "--sharpness-draws", "0", "--json", "-"]
    got = run_cli("diagnose", base, adapter, *flags)
    ref = run_cli("diagnose", base, merged16, *flags)
    assert got.exit_code == 0 and ref.exit_code == 0, got.stderr
    a, b = json.loads(got.stdout), json.loads(ref.stdout)
    assert a["output"] == b["output"] and a["units"] == b["units"]
    assert a["inputs"]["models"]["sft"]["format"] == "peft-lora"
    assert a["inputs"]["models"]["sft"]["input"].startswith("PEFT LoRA adapter: rank 4; ")
    assert a["weights"]["drift_max"] > 0


def test_inspect_an_adapter_alone_and_over_its_base(lora):
    base, adapter, _, _ = lora
    r = run_cli("inspect", adapter, "--json")
    assert r.exit_code == 0, r.stderr
    alone = json.loads(r.stdout)
    assert alone["format"] == "peft-lora" and alone["adapter_only"]
    assert alone["input"] | {"base_model_name_or_path": None} == {
        "format": "peft-lora", "rank": 4, "lora_alpha": 8, "use_rslora": False,
        "targets": ["down_proj", "q_proj", "v_proj"], "target_tensors": 6,
        "modules_to_save": [], "trainable_token_rows": 0, "base_model_name_or_path": None,
        "peft_version": alone["input"]["peft_version"],
    }  # fmt: skip
    table = run_cli("inspect", adapter)
    assert "PEFT LoRA adapter: rank 4" in table.stdout and "--base BASE" in table.stdout
    over = json.loads(run_cli("inspect", adapter, "--base", base, "--json").stdout)
    plain = json.loads(run_cli("inspect", base, "--json").stdout)
    assert over["input"]["target_tensors"] == 6 and over["format"] == "peft-lora"
    assert over["modules"] == plain["modules"] and over["parameters"] == plain["parameters"]


def test_an_adapter_needs_base(lora, tmp_path):
    base, adapter, _, _ = lora
    r = run_cli("fuse", adapter, base, "--out", tmp_path / "o")
    fails(r, 2, "BASE", "is a PEFT LoRA adapter", "needs the model it was trained on as BASE",
          one_line=True)  # fmt: skip


def test_sweep_over_an_adapter(lora):
    """The SFT row is measured on the adapter's model: equal to the merged bf16 model's."""
    base, adapter, _, merged16 = lora
    flags = ["--calib", "builtin:math", "--samples", "8", "--alphas", "0.5,1.0", "--json", "-",
             "-q"]  # fmt: skip
    got, ref = run_cli("sweep", base, adapter, *flags), run_cli("sweep", base, merged16, *flags)
    assert got.exit_code == 0 and ref.exit_code == 0, got.stderr
    a, b = json.loads(got.stdout), json.loads(ref.stdout)
    assert a["sft"] == b["sft"] and a["base"] == b["base"]
    assert [r["alpha"] for r in a["rows"]] == [0.5, 1.0]
    assert a["inputs"]["models"]["sft"]["format"] == "peft-lora"
