"""Recipes: YAML files describing a surgery, validated at load with every error reported at once.

    fuse:
      alpha: 0.5                      # global fusion coefficient, 0 = base, 1 = SFT
      rules:                          # ordered; the first rule whose glob matches a name wins
        - match: "*.self_attn.*"
          alpha: [0.4, 0.6]           # a list is interpolated linearly over layer depth
    reset:                            # neuron reset after fusion (docs/method.md sections 2-4)
      fraction: 0.01                  # share of units reset; 0 = fusion only
      select: drift                   # scorer (see SCORERS)
      modules: [q, k, v, o, mlp]      # gate/up/down are one MLP unit; experts count as mlp
                                      # (or whole_expert: MoE experts reset whole, opt-in)
      max_per_module: 0.1             # at most this share of any one module (layer, expert)
      protect: 0.005                  # per module, the largest base-norm units are never reset
      mode: base                      # base | shrink-perturb | reinit
      omega: 1.0                      # θ = ω·θ_base + (1−ω)·θ_fused on the reset slices
      noise: 0.01                     # shrink-perturb: noise std relative to the BASE tensor's
      seed: 0
    output:
      dtype: auto                     # auto (SFT's own per tensor) | bf16 | fp16 | fp32
      shard_size: 5GB

A rule with a list of alphas only applies to tensors inside a numbered layer; other tensors
fall through to the next rule or the global alpha.

model.py holds the dataclasses, load.py reads a file safely, validate.py checks its keys with
the settings' validators (rejuv_cli.settings), bundled.py finds the shipped recipes.
"""

from rejuv_cli.recipe.bundled import bundled_dir, bundled_recipes, find_recipe, recipe_header
from rejuv_cli.recipe.load import MAX_RECIPE_BYTES, load_recipe
from rejuv_cli.recipe.model import FuseRule, Recipe, ResetSettings, interpolate
from rejuv_cli.recipe.validate import parse_recipe
from rejuv_cli.settings import NUMBERS, Range, show

__all__ = ["MAX_RECIPE_BYTES", "NUMBERS", "FuseRule", "Range", "Recipe", "ResetSettings",
           "bundled_dir", "bundled_recipes", "find_recipe", "interpolate", "load_recipe",
           "parse_recipe", "recipe_header", "show"]  # fmt: skip
