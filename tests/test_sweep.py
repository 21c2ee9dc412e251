"""`rejuv sweep` (issue #15, section 2): in-memory candidates bit-identical to `rejuv fuse`'s,
metrics equal to `rejuv diagnose --candidate` on the written checkpoint, the ends of the α
range, --max-memory, --out, the recommendation rule and bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import fails, load_dir, read_json, run_cli

from rejuv_cli.diagnostics.output import accuracy_retained
from rejuv_cli.sweeping.recommend import recommend

DEMO = Path(__file__).resolve().parents[1] / "bench" / "handoff" / "demo"
BASE, SFT, CALIB = DEMO / "base", DEMO / "sft", DEMO / "calib.jsonl"
DATA = ("--calib", CALIB, "--samples", "32")
MEASURES = ("entropy_mean", "entropy_ratio", "kl_mean", "nll_mean", "skill_retained",
            "p_max_mean", "confident_share")  # fmt: skip


def sweep(*args) -> dict:
    r = run_cli("sweep", *args, "--json", "-", "-q")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def close(a, b, rel=1e-5) -> bool:
    return a == pytest.approx(b, rel=rel, abs=1e-9)


@pytest.fixture(scope="module")
def demo_sweep():
    return sweep(BASE, SFT, *DATA, "--alphas", "0,0.5,1", "--reset", "0")


# ---- the weights -------------------------------------------------------------------------------
RESETS = {
    "fusion only": ("--reset", "0"),
    "base": ("--reset", "0.05"),
    "base, omega 0.5": ("--reset", "0.05", "--omega", "0.5"),
    "shrink-perturb": ("--reset", "0.05", "--reset-mode", "shrink-perturb", "--seed", "3"),
    "reinit": ("--reset", "0.05", "--reset-mode", "reinit", "--modules", "mlp,v"),
    "dormant scorer": (
        "--reset",
        "0.05",
        "--select",
        "dormant",
        "--calib",
        "builtin:math",
        "--samples",
        "4",
    ),  # fmt: skip
}


@pytest.mark.parametrize("flags", RESETS.values(), ids=RESETS.keys())
def test_in_memory_weights_equal_what_fuse_writes(llama, tmp_path, flags):
    """The working model at α holds, bit for bit, the values `rejuv fuse --alpha α` writes with
    the same flags (cast exactly to the model's float32, as loading the file would)."""
    from rejuv_cli.api.sweep import FUSE_SETTINGS as FUSE_FLAGS
    from rejuv_cli.checkpoint.stream import pick_device
    from rejuv_cli.pipeline import choose_reset, prepare_fuse
    from rejuv_cli.recipe import Recipe
    from rejuv_cli.sweeping.job import SweepJob, fuse_job
    from rejuv_cli.sweeping.weights import WorkingModel

    alpha = 0.37
    out = tmp_path / "fused"
    r = run_cli("fuse", *llama, "--out", out, "--alpha", alpha, *flags, "-q")
    assert r.exit_code == 0, r.output
    written = load_dir(out)

    values = {k: None for k in FUSE_FLAGS} | {
        s.name: text if s.keep_text else s.type(text)
        for s, text in zip([_setting(f) for f in flags[::2]], flags[1::2], strict=True)
    }
    recipe = Recipe(source=None).with_flags(values)
    job = SweepJob(str(llama[0]), str(llama[1]), recipe, (alpha,), fuse_values=values)
    device = pick_device("cpu")
    p = prepare_fuse(fuse_job(job, alpha, None))
    try:
        chosen = choose_reset(p, device) if p.resetting else None
        from rejuv_cli.calib.models import load_model

        model = load_model(p.sft_model.path, "SFT", device)
        working = WorkingModel(job, p, chosen, device, model, [])
        assert working.in_memory
        state = working.at(alpha, lambda n: None).state_dict()
    finally:
        p.close()
    assert set(written) <= set(state)
    for name, tensor in written.items():
        assert torch.equal(state[name], tensor.to(state[name].dtype)), name
    assert any(not torch.equal(written[n], load_dir(llama[1])[n]) for n in written)


def _setting(flag: str):
    from rejuv_cli.settings import SETTINGS

    return next(s for s in SETTINGS.values() if flag in s.flags)


# ---- the metrics -------------------------------------------------------------------------------
def test_metrics_equal_diagnose_on_the_written_candidate(tmp_path):
    """At α = 0.5 with the default reset, the sweep's row equals `rejuv diagnose --candidate` on
    the checkpoint `rejuv fuse` writes; its BASE and SFT rows equal diagnose's."""
    report = sweep(BASE, SFT, *DATA, "--alphas", "0.5")
    out = tmp_path / "fused"
    assert run_cli("fuse", BASE, SFT, "--out", out, "--alpha", "0.5", "-q").exit_code == 0
    r = run_cli("diagnose", BASE, SFT, "--candidate", out, *DATA, "--sharpness-draws", "0",
                "--json", "-", "-q")  # fmt: skip
    assert r.exit_code == 0, r.output
    output = json.loads(r.stdout)["output"]
    row = report["rows"][0]
    for key in MEASURES:
        assert close(row[key], output["candidate"][key]), key
        assert close(report["sft"][key], output[key]), key
    for key in ("entropy_mean", "nll_mean", "p_max_mean", "confident_share", "skill_retained"):
        assert close(report["base"][key], output["base"][key]), key
    assert row["tokens"] == output["candidate"]["tokens"] == report["inputs"]["response_tokens"]


def test_alpha_ends_give_base_and_sft(demo_sweep):
    """Without a reset, α = 1 is SFT and α = 0 is BASE (KL 0, skill 0)."""
    at = {r["alpha"]: r for r in demo_sweep["rows"]}
    for key in MEASURES:
        assert close(at[1.0][key], demo_sweep["sft"][key]), key
        assert close(at[0.0][key], demo_sweep["base"][key]), key
    assert at[0.0]["kl_mean"] == pytest.approx(0.0, abs=1e-6)
    assert at[0.5]["skill_retained"] == pytest.approx(
        (demo_sweep["base"]["nll_mean"] - at[0.5]["nll_mean"])
        / (demo_sweep["base"]["nll_mean"] - demo_sweep["sft"]["nll_mean"])
    )


def test_max_memory_gives_the_resident_results(demo_sweep):
    """With the weights offloaded each α is loaded from a temporary checkpoint: same numbers."""
    offloaded = sweep(BASE, SFT, *DATA, "--alphas", "0,0.5,1", "--reset", "0",
                      "--max-memory", "200KB")  # fmt: skip
    assert offloaded["inputs"]["offloaded"] and not offloaded["weights_in_memory"]
    assert demo_sweep["weights_in_memory"] and not demo_sweep["inputs"]["offloaded"]
    for a, b in zip(offloaded["rows"], demo_sweep["rows"], strict=True):
        for key in MEASURES:
            assert close(a[key], b[key]), (a["alpha"], key)
    assert any("temporary checkpoint" in w for w in offloaded["warnings"])


def test_converted_tensor_names_go_through_a_temporary_checkpoint(pairs, tmp_path):
    """transformers 5 loads Mixtral's per-expert tensors into fused parameters, so they cannot
    be copied in place; each α is then written and loaded, and measures as diagnose does."""
    base, sft = pairs["mixtral"]
    data = ("--samples", "4", "--max-tokens", "64")
    report = sweep(base, sft, *data, "--alphas", "0.5")
    assert not report["weights_in_memory"]
    assert any("has no tensor named" in w for w in report["warnings"])
    out = tmp_path / "fused"
    assert run_cli("fuse", base, sft, "--out", out, "--alpha", "0.5", "-q").exit_code == 0
    r = run_cli("diagnose", base, sft, "--candidate", out, *data, "--sharpness-draws", "0",
                "--json", "-", "-q")  # fmt: skip
    assert r.exit_code == 0, r.output
    cand = json.loads(r.stdout)["output"]["candidate"]
    for key in ("entropy_mean", "kl_mean", "nll_mean"):
        assert close(report["rows"][0][key], cand[key]), key


# ---- --out -------------------------------------------------------------------------------------
def test_out_writes_the_recommended_candidate_as_fuse_does(tmp_path):
    out = tmp_path / "rec"
    report = sweep(BASE, SFT, *DATA, "--alphas", "0.5,0.7,0.9", "--out", out)
    alpha = report["recommendation"]["alpha"]
    assert alpha is not None and report["out"]["alpha"] == alpha
    ref = tmp_path / "ref"
    r = run_cli("fuse", BASE, SFT, "--out", ref, "--alpha", alpha, "-q")
    assert r.exit_code == 0, r.output
    shards = sorted(p.name for p in ref.glob("*.safetensors"))
    assert shards == sorted(p.name for p in out.glob("*.safetensors"))
    for name in shards:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    card = (out / "README.md").read_text()
    assert "## How α was chosen" in card and f"α = {alpha:g} (this checkpoint)" in card
    provenance = read_json(out / "rejuv.json")
    assert provenance["sweep"]["recommendation"]["alpha"] == alpha
    assert [r["alpha"] for r in provenance["sweep"]["rows"]] == [0.5, 0.7, 0.9]
    assert f"--alpha {alpha:g}" in report["recommendation"]["fuse_command"]


def test_console_and_html(tmp_path):
    page = tmp_path / "s.html"
    r = run_cli("sweep", BASE, SFT, *DATA, "--alphas", "0.5,0.9", "--html", page)
    assert r.exit_code == 0, r.output
    assert "α=0.5" in r.stderr and " skill " in r.stderr and "recommendation" in r.stderr
    html = page.read_text()
    assert html.count('class="point"') == 4  # two α, BASE, SFT
    assert "<script" not in html and "skill retained" in html


def _generated(report: dict) -> dict:
    """`report` as if --generate had run: every model row with generation numbers whose
    cells are the widest the table shows (100.0%, a negative accuracy retained)."""
    out = json.loads(json.dumps(report))
    out["settings"] |= {"generate": True, "group_size": 4}
    out["inputs"]["checkable"] = 32
    for i, row in enumerate([out["base"], out["sft"], *out["rows"]]):
        row |= {"accuracy": 1.0 - i / 8, "accuracy_retained": -0.1176 + i / 3,
                "pass_at_1": 0.5156, "pass_at_k": 0.00078125,
                "learnable_share": 0.28125}  # fmt: skip
    return out


@pytest.mark.parametrize("width", [80, 40])
@pytest.mark.parametrize("generate", [False, True], ids=["", "generate"])
def test_console_table_keeps_every_number_whole(demo_sweep, width, generate):
    """The widest table (with --generate) fits 80 columns; at 40 each model is one line of
    head=value pairs. No cell is cut to "…"; numbers are formatted as diagnose formats them
    (shares as percentages) and appear whole."""
    import re

    from rich.console import Console

    from rejuv_cli.report.numbers import shown_at
    from rejuv_cli.report.sweep_console import columns, render_sweep, sweep_rows

    report = _generated(demo_sweep) if generate else demo_sweep
    console = Console(width=width, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    render_sweep(console, report)
    text = console.export_text()
    assert "…" not in text
    words = set(re.split(r"[\s=]+", text))
    cols = columns(report, console=True)
    for label, row in sweep_rows(report):
        for key, _ in cols:
            assert shown_at(("output", key), row[key]) in words, (label, key)
    if generate:
        assert "100.0%" in words and "0.078%" in words and "-0.1176" in words
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model ") or
                  line.startswith("BASE:"))  # fmt: skip
    table = lines[header : header + 2 + len(report["rows"])]
    if width == 80 or not generate:  # a table: one row per model, each line within the width
        assert lines[header].split()[0] == "model" and max(map(len, table)) <= width
    else:  # nine numbers do not fit 40 columns
        assert lines[header].startswith("BASE: H=")
    assert "next: " in text  # also when the recommendation is no surgery


# ---- the recommendation rule -------------------------------------------------------------------
def rows(*values):
    """(α, skill_retained, entropy_mean[, learnable_share]) -> table rows."""
    keys = ("alpha", "skill_retained", "entropy_mean", "learnable_share")
    return [dict(zip(keys, v, strict=False)) for v in values]


SFT_ROW = {"skill_retained": 1.0, "entropy_mean": 0.2}


def test_recommends_the_most_plastic_alpha_that_keeps_the_skill():
    table = rows((0.3, 0.5, 0.6), (0.5, 0.8, 0.5), (0.7, 0.93, 0.4), (0.9, 0.98, 0.3))
    rec = recommend(table, SFT_ROW, 0.9)
    assert rec.alpha == 0.7 and rec.qualifying == (0.7, 0.9)
    assert rec.skill_measure == "skill_retained" and rec.plasticity_measure == "entropy_mean"
    assert recommend(table, SFT_ROW, 0.75).alpha == 0.5


def test_learnable_share_decides_when_measured():
    table = rows((0.5, 0.95, 0.9, 0.2), (0.7, 0.97, 0.4, 0.5), (0.9, 0.99, 0.3, 0.4))
    rec = recommend(table, SFT_ROW | {"learnable_share": 0.1}, 0.9)
    assert rec.alpha == 0.7 and rec.plasticity_measure == "learnable_share"


def test_a_learnable_share_gain_within_sampling_noise_is_no_surgery():
    """The demo's α = 0.9: 0.734 vs SFT's 0.727 over 128 prompts is one prompt; the standard
    error of the difference is sqrt((0.734·0.266 + 0.727·0.273) / 128) = 0.0555."""
    from rejuv_cli.diagnostics.output import share_noise

    assert share_noise(0.734, 0.727, 128) == pytest.approx(0.05546, abs=1e-5)
    sft = SFT_ROW | {"learnable_share": 0.727}
    rec = recommend(rows((0.9, 0.99, 0.3, 0.734)), sft, 0.9, prompts=128)
    assert rec.alpha is None and "sampling noise (5.5%" in rec.reason  # a share: a percentage
    assert recommend(rows((0.9, 0.99, 0.3, 0.734)), sft, 0.9).alpha == 0.9  # noise unknown
    assert recommend(rows((0.8, 0.95, 0.3, 0.812)), sft, 0.9, prompts=128).alpha == 0.8


def test_none_qualifies_means_no_surgery():
    table = rows((0.3, 0.5, 0.6), (0.5, 0.8, 0.5))
    rec = recommend(table, SFT_ROW, 0.9)
    assert rec.alpha is None and rec.qualifying == ()
    assert "no α keeps 0.9" in rec.reason and "the most is 0.8 at α = 0.5" in rec.reason


def test_no_surgery_when_no_qualifying_alpha_is_more_plastic_than_sft():
    rec = recommend(rows((0.9, 0.99, 0.3, 0.2)), SFT_ROW | {"learnable_share": 0.25}, 0.9)
    assert rec.alpha is None and "not more plastic than SFT" in rec.reason


def test_accuracy_decides_the_skill_when_measured():
    table = [{"alpha": 0.5, "skill_retained": 0.95, "accuracy_retained": 0.5, "entropy_mean": 1},
             {"alpha": 0.8, "skill_retained": 0.99, "accuracy_retained": 0.92,
              "entropy_mean": 0.5}]  # fmt: skip
    rec = recommend(table, SFT_ROW, 0.9)
    assert rec.skill_measure == "accuracy_retained" and rec.alpha == 0.8
    assert accuracy_retained(0.1, 0.6, 0.35) == pytest.approx(0.5)
    assert accuracy_retained(0.6, 0.6, 0.6) is None  # SFT gained no accuracy
    # a gain of 0.015 inside the noise of 128 prompts: sqrt((0.025·0.975 + 0.01·0.99) / 128)
    # = 0.0164; 0.02 from 0.01 to 0.03 is just above its 0.0175
    assert accuracy_retained(0.01, 0.025, 0.05, checked=128) is None
    assert accuracy_retained(0.01, 0.03, 0.05, checked=128) == pytest.approx(2.0)
    assert accuracy_retained(0.01, 0.05, 0.03, checked=128) == pytest.approx(0.5)


def test_unmeasurable_skill_means_no_surgery():
    rec = recommend(rows((0.5, None, 0.6)), SFT_ROW, 0.9)
    assert rec.alpha is None and "could not be measured" in rec.reason


# ---- bad input, refused before any model is read -----------------------------------------------
@pytest.mark.parametrize(("alphas", "message"), [
    ("1.5", "each α must be >= 0.0 and <= 1.0 (got 1.5)"),
    ("-0.1,0.5", "each α must be >= 0.0 and <= 1.0"),
    ("", "must be a comma list of α values"),
    ("0.5,0.50", "lists 0.5 twice"),
    ("0.5,x", "must be numbers in [0, 1] (got 'x')"),
])  # fmt: skip
def test_bad_alphas_exit_2(alphas, message):
    fails(run_cli("sweep", "/no/base", "/no/sft", "--alphas", alphas), 2, f"--alphas: {message}")


def test_generate_without_answers_exits_2(tmp_path):
    data = tmp_path / "plain.jsonl"
    data.write_text('{"prompt": "1+1=", "response": "2"}\n')
    fails(run_cli("sweep", "/no/base", "/no/sft", "--calib", data, "--generate"), 2,
          "none of the 1 examples", "has a reference answer")  # fmt: skip


def test_a_small_temporary_directory_is_refused_before_any_model(mounts, tmp_path, monkeypatch):
    """BASE's logits are cached in TMPDIR; a real 512 KiB tmpfs cannot hold them (plus the 1 MiB
    margin): one line, exit 1, before a model is loaded."""
    import tempfile

    small = tmp_path / "small"
    small.mkdir()
    mounts("-t", "tmpfs", "-o", "size=512k", "tmpfs", where=small)
    monkeypatch.setattr(tempfile, "tempdir", str(small))
    fails(run_cli("sweep", BASE, SFT, *DATA, "--alphas", "0.5"), 1,
          "BASE's logit cache in the temporary directory (TMPDIR)", "not enough disk space",
          one_line=True)  # fmt: skip


def test_overwrite_without_out_exits_2():
    fails(run_cli("sweep", BASE, SFT, "--overwrite"), 2, "--overwrite: there is no --out")
