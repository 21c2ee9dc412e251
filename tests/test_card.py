"""The model card `rejuv fuse` writes (checkpoint/card.py), from provenance alone: `base_model`
holds Hub ids only, each scorer is credited to whom it comes from, the card points to
docs/method.md, and the same provenance gives the same bytes."""

from __future__ import annotations

import copy

import pytest

from rejuv_cli import __version__
from rejuv_cli.checkpoint.card import model_card
from rejuv_cli.recipe import Recipe, ResetSettings

COMMIT = "0123456789abcdef0123456789abcdef01234567"
# Every key a FusePlan's counts may hold (the card reads some of them).
COUNTS = {"tensors": 10, "fused": 9, "from_base": 0, "from_sft": 0, "copied": 1, "reset": None,
          "sft_only": 1, "base_only_dropped": 0, "added_token_rows": 0, "shards": 1}  # fmt: skip
TAGS = "library_name: transformers\ntags:\n- rejuv\n- rejuvenation\n- merge\n- sft-to-rl\n---\n"


def _model(spec: str, repo_id: str | None) -> dict:
    return {"spec": spec, "path": f"/data/{spec.strip('./')}", "repo_id": repo_id,
            "revision": None, "commit": COMMIT if repo_id else None,
            "tensor_digest": "f" * 32, "format": "safetensors",
            "input": {"format": "safetensors"}}  # fmt: skip


def _reset(select: str = "drift", mask_scorer: str | None = None) -> dict:
    by_module = {"mlp": {"units": 128, "reset": 3}, "q": {"units": 64, "reset": 0}}
    r = {"settings": ResetSettings(select=select).to_json(),
         "source": "mask units.safetensors" if mask_scorer else f"{select} scorer",
         "unit_map": "llama-like", "modules": ["q", "k", "v", "o", "mlp"], "units": 320,
         "target": 3, "selected": 3, "protected": 5, "by_module": by_module}  # fmt: skip
    if mask_scorer:
        r["mask_metadata"] = {"scorer": mask_scorer, "fraction": "0.01"}
    return r


def provenance(base=("./base", None), sft=("./sft", None), reset=None, fraction=0.01) -> dict:
    recipe = Recipe(reset=ResetSettings(fraction=fraction)).to_json()
    return {
        "rejuv_version": __version__,
        "command": "rejuv fuse ./base ./sft --out ./o",
        "inputs": {"base": _model(*base), "sft": _model(*sft)},
        "recipe": recipe,
        "counts": COUNTS,
        "reset": reset,
    }


def front_matter(card: str) -> str:
    assert card.startswith("---\n")
    return card[: card.index("---\n", 4) + 4]


def test_local_inputs_are_not_base_models():
    """A local directory has no Hub id: its folder name is not a model id, so the front matter
    names no base_model (and no relation); the inputs table names both inputs."""
    card = model_card(provenance())
    assert front_matter(card) == "---\n" + TAGS
    assert "| BASE | `./base` |" in card and "| SFT | `./sft` |" in card
    assert ("\n\nBASE and SFT are local directories, named in this table only: the metadata's "
            "`base_model` lists Hub model ids.\n\n## Recipe\n") in card  # fmt: skip


def test_hub_ids_are_the_base_models():
    card = model_card(provenance(("acme/base", "acme/base"), ("acme/sft@v1", "acme/sft")))
    assert front_matter(card) == (
        "---\nbase_model:\n- acme/base\n- acme/sft\nbase_model_relation: merge\n" + TAGS
    )
    assert "local director" not in card
    read_as = "Hugging Face safetensors"
    assert f"| BASE | `acme/base` | {read_as} | commit `{COMMIT}` |\n" in card
    assert f"| SFT | `acme/sft@v1` | {read_as} | commit `{COMMIT}` |\n\n## Recipe\n" in card


def test_a_local_base_with_a_hub_sft_lists_only_the_hub_id():
    card = model_card(provenance(sft=("acme/sft", "acme/sft")))
    assert front_matter(card) == "---\nbase_model:\n- acme/sft\nbase_model_relation: merge\n" + TAGS
    assert "\n\nBASE is a local directory, named in this table only: the metadata's " in card


def test_the_card_points_to_the_method_document_of_its_version():
    card = model_card(provenance())
    assert ("Method: \"Rejuvenation\",\nLiu, Liu, Wan, Fu, Pan: When RL Fails after SFT: "
            "Rejuvenating Model Plasticity for Robust SFT-to-RL Handoff, arXiv 2606.09932 (2026) "
            "([paper](https://arxiv.org/abs/2606.09932)). How rejuv implements it, each choice "
            "marked as the paper's or\nrejuv's own, is described in docs/method.md of rejuv "
            f"{__version__}.\n") in card  # fmt: skip


CREDITS = {
    "attribution": "the attribution scorer is the paper's; the global ranking, per-module cap "
    "and protection are rejuv's choices",
    "drift": "the drift scorer, global ranking, per-module cap and protection are rejuv's choices",
    "dormant": "the dormant scorer (the ReDo score of Sokar et al., ICML 2023), global ranking, "
    "per-module cap and protection are rejuv's choices",
    "saturated": "the saturated scorer, global ranking, per-module cap and protection are "
    "rejuv's choices",
}


@pytest.mark.parametrize("scorer", sorted(CREDITS))
def test_the_scorer_is_credited_to_whom_it_comes_from(scorer):
    card = model_card(provenance(reset=_reset(scorer)))
    assert f"**Targeted neuron reset** (paper; {CREDITS[scorer]}):\n3 of 320 units" in card
    assert f"chosen\nby the {scorer} scorer, ranked globally" in card


def test_a_reused_mask_is_credited_to_the_scorer_that_made_it():
    card = model_card(provenance(reset=_reset("drift", mask_scorer="attribution")))
    assert f"**Targeted neuron reset** (paper; {CREDITS['attribution']}):\n" in card
    assert "by the mask units.safetensors, ranked globally" in card


@pytest.mark.parametrize("fraction, why", [
    (0, "reset fraction 0"),
    (0.01, "this model type has no unit map in rejuv; see the warnings in `rejuv.json`"),
])  # fmt: skip
def test_a_reset_not_applied_says_why(fraction, why):
    card = model_card(provenance(fraction=fraction))
    assert f"**Targeted neuron reset** (paper): not applied in this checkpoint ({why}).\n" in card


def test_the_same_provenance_gives_the_same_card():
    p = provenance(sft=("acme/sft", "acme/sft"), reset=_reset("attribution"))
    assert model_card(p) == model_card(copy.deepcopy(p))
