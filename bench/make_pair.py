"""Build a synthetic BASE/SFT Llama pair for quick trials and the fuse benchmark (no network).

    python bench/make_pair.py --preset demo  --out .demo         # ~0.1M params, a few seconds
    python bench/make_pair.py --preset bench --out .bench/pair   # ~301.5M params bf16, ~20 s
    python bench/make_pair.py --preset 1b --out .bench/pair-1b   # ~981M params bf16
    python bench/make_pair.py --preset moe --out .bench/moe       # Mixtral, 8 experts, ~89M
    python bench/make_pair.py --preset moe-dense --out .bench/moe-dense  # Llama, same count

Writes OUT/base and OUT/sft: real Hugging Face checkpoints (sharded safetensors + index,
config.json, tokenizer with a chat template) made by `rejuv_cli.testing.synth.make_pair`, so
`AutoModelForCausalLM.from_pretrained` loads them. SFT = BASE + seeded noise of 2% of each
tensor's std. An existing pair of the same shape is reused unless --force is given.

The bench preset goes through transformers `from_config` too: at 300M parameters that takes
about 20 s and under 2 GB of RAM on a 2-core machine, and it produces exactly what
`save_pretrained` writes (shard naming, index metadata, config fields), which a hand-written
safetensors writer would only imitate.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

# Shapes only: everything else (vocab 128 for the demo, GQA, untied lm_head, special token
# ids) comes from rejuv_cli.testing.synth's defaults for the family (Llama unless "family").
# "moe" and "moe-dense" have the same parameter count (up to the routers' 8 × 512 per layer):
# the dense MLP is as wide as the 8 experts together (8 × 704 = 5632), so the pair compares
# what measuring experts costs against a dense model of the same size (bench/moe_memory.py).
_MOE_SHAPE = dict(vocab_size=32000, hidden_size=512, num_hidden_layers=6,
                  num_attention_heads=8, num_key_value_heads=4)  # fmt: skip
PRESETS: dict[str, dict] = {
    "moe": {
        "family": "mixtral",
        "max_shard_size": "100MB",
        "config": dict(
            _MOE_SHAPE, intermediate_size=704, num_local_experts=8, num_experts_per_tok=2
        ),  # fmt: skip
    },
    "moe-dense": {
        "max_shard_size": "100MB",
        "config": dict(_MOE_SHAPE, intermediate_size=8 * 704),
    },
    "demo": {
        "max_shard_size": "200KB",  # several shards even for a tiny model
        "config": dict(
            hidden_size=64,
            intermediate_size=176,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
        ),
    },
    "1b": {  # bench/torchrun_bench.py: 1 process vs 2 torch.distributed ranks
        "max_shard_size": "250MB",  # ~2 GB of bf16 -> 9 shards per model, dealt by bytes
        # 18 × 47.2M (attention 12.6M + MLP 34.6M) + 2 × 65.5M (embed_tokens, lm_head) ≈ 981M.
        "config": dict(
            vocab_size=32000,
            hidden_size=2048,
            intermediate_size=5632,
            num_hidden_layers=18,
            num_attention_heads=16,
            num_key_value_heads=8,
        ),
    },
    "bench": {
        "max_shard_size": "200MB",  # ~603 MB of bf16 -> 4 shards per model
        # 20 × 11.8M (attention + MLP) + 2 × 32.8M (embed_tokens, lm_head) ≈ 301.5M params.
        "config": dict(
            vocab_size=32000,
            hidden_size=1024,
            intermediate_size=2816,
            num_hidden_layers=20,
            num_attention_heads=16,
            num_key_value_heads=8,
        ),
    },
}


def _existing_matches(root: Path, config: dict) -> bool:
    """True when root/{base,sft} hold a finished pair with the preset's shapes.

    Both config.json files must exist (the pair is built in a scratch directory and moved
    into place last, so their presence means the weights were written too), and the shape
    fields must match, so a demo pair left at the bench path is not silently benchmarked.
    """
    for side in ("base", "sft"):
        path = root / side / "config.json"
        if not path.is_file():
            return False
        saved = json.loads(path.read_text(encoding="utf-8"))
        if any(saved.get(k) != v for k, v in config.items()):
            print(f"{path}: shapes differ from this preset; rebuilding", file=sys.stderr)
            return False
    return True


def count_parameters(model_dir: Path) -> tuple[int, int]:
    """(parameters, tensor bytes) from the safetensors headers; reads no tensor data."""
    from rejuv_cli.checkpoint.reader import Checkpoint

    with Checkpoint.open(model_dir, "MODEL") as ckpt:
        return sum(t.numel for t in ckpt.tensors.values()), ckpt.total_bytes()


def build(preset: str, out: Path, seed: int = 0, force: bool = False) -> tuple[Path, Path]:
    """Write (or reuse) out/base and out/sft for `preset`; returns their paths."""
    spec = PRESETS[preset]
    base_dir, sft_dir = out / "base", out / "sft"
    if not force and _existing_matches(out, spec["config"]):
        print(f"reusing existing {preset} pair at {out} (pass --force to rebuild)")
        return base_dir, sft_dir

    from transformers.utils import logging as hf_logging

    from rejuv_cli.testing.synth import make_pair

    hf_logging.disable_progress_bar()  # per-shard bars would bury the one line that matters
    t0 = time.perf_counter()
    # Build next to the target and move into place at the end: an interrupted build must not
    # leave a config.json that the reuse check above would take for a finished pair.
    scratch = out / ".building"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    make_pair(
        scratch,
        spec.get("family", "llama"),
        seed=seed,
        max_shard_size=spec["max_shard_size"],
        config_overrides=spec["config"],
    )
    for side in ("base", "sft"):
        shutil.rmtree(out / side, ignore_errors=True)
        (scratch / side).rename(out / side)
    scratch.rmdir()
    params, nbytes = count_parameters(base_dir)
    shards = len(list(base_dir.glob("*.safetensors")))
    print(
        f"built {preset} pair at {out} in {time.perf_counter() - t0:.1f} s: "
        f"{params:,} parameters, {nbytes:,} bytes of tensors in {shards} shards per model"
    )
    return base_dir, sft_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), required=True)
    parser.add_argument("--out", type=Path, required=True, help="writes OUT/base and OUT/sft")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if a pair exists")
    args = parser.parse_args(argv)
    build(args.preset, args.out, seed=args.seed, force=args.force)


if __name__ == "__main__":
    main()
