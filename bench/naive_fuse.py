"""The fusion script a user would write without rejuv, as fuse_bench.py's memory reference.

    python bench/naive_fuse.py BASE SFT --out OUT [--alpha 0.5]

Loads both models with transformers, computes θ_b + α·(θ_s − θ_b) per state-dict entry in
float32, rounds once to bf16 and saves with `save_pretrained`. It is the careful version of
the naive script (results written in place into the BASE model, no third copy, no autograd),
so its peak memory is what loading two full models costs, not an artefact of sloppy code.
The arithmetic is the same as rejuv's (sub, mul, add in float32; one rounding), so both
outputs should be bit-identical.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM


def main() -> None:
    parser = argparse.ArgumentParser(description="Naive transformers-based fusion.")
    parser.add_argument("base", type=Path)
    parser.add_argument("sft", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--alpha", type=float, default=0.5)
    args = parser.parse_args()

    base = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.bfloat16)
    sft = AutoModelForCausalLM.from_pretrained(args.sft, dtype=torch.bfloat16)
    sft_state = sft.state_dict()
    seen: set[int] = set()
    with torch.no_grad():
        for name, b in base.state_dict().items():
            if b.data_ptr() in seen:  # tied weights: fuse the shared storage once, not twice
                continue
            seen.add(b.data_ptr())
            b32 = b.float()
            fused = b32 + args.alpha * (sft_state[name].float() - b32)
            b.copy_(fused.to(torch.bfloat16))
    base.save_pretrained(args.out)


if __name__ == "__main__":
    main()
