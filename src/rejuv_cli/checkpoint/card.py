"""The model card (README.md) and the machine-readable provenance file (rejuv.json).

The card holds no timings or dates, so two identical runs write identical cards; run-specific
facts (timings, device) go to rejuv.json only.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from rejuv_cli import __version__
from rejuv_cli.jsonio import dumps

PAPER = "Liu, Liu, Wan, Fu, Pan: When RL Fails after SFT: Rejuvenating Model Plasticity for Robust SFT-to-RL Handoff, arXiv 2606.09932 (2026)"  # noqa: E501
PAPER_URL = "https://arxiv.org/abs/2606.09932"


# Who each reset scorer comes from (docs/method.md section 3): the card credits it by name.
SCORER_CREDIT = {
    "attribution": "the attribution scorer is the paper's; the global ranking, per-module cap "
    "and protection are rejuv's choices",
    "drift": "the drift scorer, global ranking, per-module cap and protection are rejuv's choices",
    "dormant": "the dormant scorer (the ReDo score of Sokar et al., ICML 2023), global "
    "ranking, per-module cap and protection are rejuv's choices",
    "saturated": "the saturated scorer, global ranking, per-module cap and protection are "
    "rejuv's choices",
}


def hub_ids(inputs: dict) -> list[str]:
    """The inputs' Hub model ids (BASE first), for the front matter's `base_model`, which the
    Hub reads as model ids. An input has one when it was given as a Hub id or as a Hub cache
    snapshot directory; a local directory has none, and config.json's `_name_or_path` is not
    used: it names whatever the training script loaded (for an SFT checkpoint usually its base
    model, or a local path), not the checkpoint itself."""
    return [m["repo_id"] for m in (inputs["base"], inputs["sft"]) if m.get("repo_id")]


def _front_matter(inputs: dict) -> dict:
    ids = hub_ids(inputs)
    linked = {"base_model": ids, "base_model_relation": "merge"} if ids else {}
    return linked | {
        "library_name": "transformers",
        "tags": ["rejuv", "rejuvenation", "merge", "sft-to-rl"],
    }


def _local_note(inputs: dict) -> str:
    """A line under the inputs table naming the inputs the front matter cannot (no Hub id)."""
    local = [role.upper() for role, m in inputs.items() if not m.get("repo_id")]
    if not local:
        return ""
    which = " and ".join(local)
    verb = "are local directories" if len(local) > 1 else "is a local directory"
    return (
        f"\n{which} {verb}, named in this table only: the metadata's `base_model` lists Hub "
        "model ids.\n"
    )


def _form(model: dict) -> str:
    """How an input was read (its format and facts: adapter rank, world size, FP8 blocks)."""
    from rejuv_cli.checkpoint.source import describe_line

    return describe_line(model.get("input") or {"format": model.get("format")}).replace("|", "/")


def _ranks_line(ranks: dict | None) -> str:
    """Under torchrun: how many processes wrote the shards (rejuv.json `ranks` says which)."""
    if not ranks:
        return ""
    return (
        f"Written by {ranks['world_size']} torchrun processes, the shards dealt by bytes "
        "(`ranks` in rejuv.json: which wrote each); the same bytes as one process.\n"
    )


def model_card(provenance: dict) -> str:
    front = _front_matter(provenance["inputs"])
    return f"""---
{yaml.safe_dump(front, sort_keys=False).rstrip()}
---

# Rejuvenated checkpoint

Made by rejuv {__version__} from an SFT checkpoint and its base model, to
restore plasticity before reinforcement learning (GRPO, PPO, ...). Method: "Rejuvenation",
{PAPER} ([paper]({PAPER_URL})). How rejuv implements it, each choice marked as the paper's or
rejuv's own, is described in docs/method.md of rejuv {__version__}.

{card_sections(provenance)}"""


def card_sections(provenance: dict, heading: str = "##") -> str:
    """The card's account of the run, from "What was done" to the end: the fusion, the reset,
    the inputs with their revisions or digests, the recipe and command, the result. `heading`
    is the level of its section heads; `rejuv fuse --markdown` writes these sections under a
    heading of its own (one level down)."""
    inputs, counts = provenance["inputs"], provenance["counts"]
    recipe_yaml = yaml.safe_dump(provenance["recipe"], sort_keys=False).rstrip()
    rows = "\n".join(
        f"| {role.upper()} | `{m['spec']}` | {_form(m)} | {_revision(m)} |"
        for role, m in inputs.items()
    )
    return f"""{heading} What was done

**Base-anchored fusion** (paper): every floating-point tensor was set to
`θ = θ_base + α·(θ_sft − θ_base)`, computed in float32 and rounded once to the output dtype.
The paper's default is α = 0.5 for all parameters; per-tensor rules and depth-interpolated α
(when the recipe below has `rules`) are rejuv's own extension, not the paper's.
Non-float tensors and tensors that exist only in the SFT checkpoint were copied from SFT;
embedding rows for tokens added during SFT kept their SFT values.

{_reset_section(provenance.get("reset"), provenance["recipe"]["reset"]["fraction"])}

Config, tokenizer, chat template and generation config are the SFT checkpoint's, so RL samples
in the SFT model's format.

{heading} Inputs

| role | model | read as | revision or content digest |
|---|---|---|---|
{rows}
{_local_note(inputs)}
{heading} Recipe

```yaml
{recipe_yaml}
```

Command:

```bash
{provenance["command"]}
```

{heading} Result

{counts["tensors"]} tensors: {counts["fused"]} fused, {counts["from_sft"]} SFT's (α = 1),
{counts["from_base"]} BASE's (α = 0), {counts["copied"]} copied whole from SFT (of them
{counts["sft_only"]} only in SFT); {counts["reset"]} of the {counts["tensors"]} hold reset units;
{counts["base_only_dropped"]} only in BASE (left out); {counts["shards"]} shard(s).
{_ranks_line(provenance.get("ranks"))}Full provenance: `rejuv.json`.
{_sweep_section(provenance.get("sweep"), heading)}"""


def _reset_section(r: dict | None, fraction: float) -> str:
    if r is None:
        why = (
            "reset fraction 0"
            if fraction == 0
            else "this model type has no unit map in rejuv; see the warnings in `rejuv.json`"
        )
        return f"**Targeted neuron reset** (paper): not applied in this checkpoint ({why})."
    cfg = r["settings"]
    # A reused mask (--mask) was chosen by the scorer its metadata names, not by --select.
    scorer = r["mask_metadata"].get("scorer") if "mask_metadata" in r else cfg["select"]
    credit = SCORER_CREDIT.get(scorer, "the scorer, global ranking, per-module cap and "
                               "protection are rejuv's choices")  # fmt: skip
    value = {
        "base": f"θ = ω·θ_base + (1−ω)·θ_fused with ω = {cfg['omega']}",
        "shrink-perturb": f"θ = ω·θ_base + (1−ω)·θ_fused + N(0, ({cfg['noise']}·std)²) with "
        f"ω = {cfg['omega']}, std the BASE tensor's, seed {cfg['seed']} (shrink-perturb)",
        "reinit": f"incoming weights redrawn from each BASE tensor's N(mean, std), outgoing "
        f"weights and biases zeroed, seed {cfg['seed']} (ReDo-style reinit)",
    }[cfg["mode"]]
    rows = "\n".join(
        f"| {name} | {m['units']} | {m['reset']} | {m['reset'] / max(m['units'], 1):.2%} |"
        for name, m in r["by_module"].items()
    )
    return f"""**Targeted neuron reset** (paper; {credit}):
{r["selected"]} of {r["units"]} units (target {r["target"]}, fraction {cfg["fraction"]}) chosen
by the {r["source"]}, ranked globally, at most
{cfg["max_per_module"]:.0%} of any one module, the largest-base-norm {cfg["protect"]:.1%} of
each module protected; their slices were set to {value}. A unit is a row of q/k/v (with its
bias), a column of o, or an MLP neuron (gate row, up row and down column together).

| module | units | reset | share |
|---|---|---|---|
{rows}"""


# (key in a sweep row, column header) of the card's sweep table; generation columns when measured
SWEEP_COLUMNS = (("entropy_mean", "entropy"), ("kl_mean", "KL to BASE"), ("nll_mean", "NLL"),
                 ("skill_retained", "skill kept"), ("accuracy", "accuracy"),
                 ("pass_at_k", "pass@k"), ("learnable_share", "learnable share"))  # fmt: skip


def _sweep_section(sweep: dict | None, heading: str) -> str:
    """The `rejuv sweep` table this checkpoint was chosen from (--out), or nothing."""
    if not sweep:
        return ""
    rows = [("BASE", sweep["base"]), ("SFT", sweep["sft"])]
    rows += [(f"α = {r['alpha']:g}", r) for r in sweep["rows"]]
    cols = [(k, h) for k, h in SWEEP_COLUMNS if any(r.get(k) is not None for _, r in rows)]
    rec = sweep["recommendation"]

    def cell(v) -> str:
        return "–" if v is None else f"{v:.4g}"

    lines = ["| model | " + " | ".join(h for _, h in cols) + " |",
             "|---|" + "---|" * len(cols)]  # fmt: skip
    for label, r in rows:
        mark = " (this checkpoint)" if r.get("alpha") is not None and r["alpha"] == rec["alpha"] \
            and label.startswith("α") else ""  # fmt: skip
        lines.append(f"| {label}{mark} | " + " | ".join(cell(r.get(k)) for k, _ in cols) + " |")
    table = "\n".join(lines)
    return f"""
{heading} How α was chosen

`rejuv sweep` measured each α on the calibration data and recommended this one (a heuristic,
not yet tested against RL outcomes): {rec["reason"]}

{table}
"""


def _revision(model: dict) -> str:
    if model.get("commit"):
        return f"commit `{model['commit']}`"
    return f"xxh3-128 `{model['tensor_digest']}`"


def write_card_and_provenance(out_dir: Path, provenance: dict) -> None:
    (out_dir / "README.md").write_text(model_card(provenance))
    (out_dir / "rejuv.json").write_text(dumps(provenance, "rejuv.json") + "\n")
