"""Fusing from what trainers save (issue #19, point 6): peak memory and time, direct vs the usual
route (convert to a Hugging Face checkpoint first, then fuse).

    make bench-inputs    # -> bench/results/inputs_bench.json (README block: make docs)

On the fuse benchmark's ~301.5M-parameter bf16 Llama pair (.bench/pair, bench/make_pair.py),
the SFT model is written in three more forms (built once into .bench/inputs, untimed):

  lora  a PEFT adapter over BASE, r = 16 on every linear layer, made by PEFT (get_peft_model +
        save_pretrained, random-perturbed as if trained); SFT for this row is BASE + s·B·A
  dcp   SFT loaded into an FSDP2 model (fully_shard, 2 gloo processes) and saved by
        torch.distributed.checkpoint (get_model_state_dict): rows split across the 2 ranks
  fsdp  the same model saved in verl's layout: model_world_size_2_rank_{0,1}.pt (torch.save of
        the FSDP2 model's state_dict, as verl's checkpoint manager does), fsdp_config.json,
        huggingface/ with config and tokenizer (tests/producers_dist.shard_checkpoint)

Each then runs, in its own process, measured (wall time spawn-to-reap, peak RSS from wait4):
  direct  `rejuv fuse BASE INPUT --out ...` (default flags: α 0.5, 1% drift reset)
  convert the usual route's conversion: PEFT's merge_and_unload + save_pretrained (lora);
          torch's dcp_to_torch_save then a safetensors save (dcp); verl's merger approach, all
          rank files loaded, shards concatenated, save_pretrained (fsdp; our script following
          verl/model_merger/fsdp_model_merger.py, verl itself needs ray and a GPU stack)
  then    `rejuv fuse BASE CONVERTED --out ...`
and `rejuv fuse BASE SFT` on the safetensors pair as the reference. Both routes' outputs are
compared tensor by tensor. bf16 throughout (verl saves fp32 master weights by default; bf16
keeps every row the same size as the reference's).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import provenance  # noqa: E402
from fuse_bench import REPO, RESULTS, compare_outputs, run_measured, warm_cache  # noqa: E402
from make_pair import build  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from producers_dist import shard_checkpoint  # noqa: E402  (the FSDP2 + dcp.save producer)

BENCH_DIR = Path(".bench")
PAIR = BENCH_DIR / "pair"
INPUTS = BENCH_DIR / "inputs"
OUT = BENCH_DIR / "out-inputs"
LORA_RANK = 16
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
WORLD = 2


# ---- building the inputs (untimed) ------------------------------------------------------------
def build_lora(base: Path, out: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    config = LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, target_modules=TARGETS,
                        init_lora_weights=False)  # fmt: skip
    model = get_peft_model(model, config)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.mul_(0.1)
    model.save_pretrained(out)


# ---- the usual route's conversions (timed, each in its own process) ---------------------------
def convert(kind: str, base: Path, src: Path, out: Path, meta: Path) -> None:
    """Write `src` (kind lora/dcp/fsdp) as a Hugging Face checkpoint at `out`."""
    import torch

    if kind == "lora":
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
        PeftModel.from_pretrained(model, src).merge_and_unload().save_pretrained(out)
    else:
        if kind == "dcp":
            from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

            tmp = out.parent / f"{out.name}.pt"
            dcp_to_torch_save(src, tmp)
            state = torch.load(tmp, weights_only=True)
            tmp.unlink()
        else:  # verl's merger: every rank file in memory, Shard(0) pieces concatenated
            import torch.distributed.tensor  # noqa: F401  (allowlists DTensor for weights_only)

            ranks = [torch.load(src / f"model_world_size_{WORLD}_rank_{r}.pt", weights_only=True,
                                map_location="cpu") for r in range(WORLD)]  # fmt: skip
            state = {k: torch.cat([r[k]._local_tensor for r in ranks]) for k in ranks[0]}
        from transformers import AutoConfig, AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(meta))
        model.to(torch.bfloat16).load_state_dict(state)
        model.save_pretrained(out)
    for f in meta.iterdir():  # tokenizer and chat template, as the merge scripts copy them
        if f.is_file() and not f.name.endswith((".safetensors", ".index.json", "config.json")):
            shutil.copy(f, out / f.name)


# ---- measuring ---------------------------------------------------------------------------------
def measured(name: str, argv: list[str]) -> dict:
    log = REPO / OUT / f"{name}.log"
    wall, rss, code = run_measured(argv, log)
    if code != 0:
        print(log.read_text()[-3000:], file=sys.stderr)
        sys.exit(f"{name}: {' '.join(argv)} failed ({code})")
    print(f"{name:16s} peak RSS {rss / 2**20:7.0f} MiB  {wall:6.1f} s")
    return {"peak_rss_bytes": rss, "seconds": round(wall, 1), "command": " ".join(argv[1:])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rebuild", action="store_true", help="rebuild the inputs")
    # the steps that import torch run as children (see `measure_only_children` below)
    parser.add_argument(
        "--convert", nargs=5, metavar=("KIND", "BASE", "SRC", "OUT", "META"), help=argparse.SUPPRESS
    )
    parser.add_argument("--build", nargs=2, metavar=("BASE", "SFT"), help=argparse.SUPPRESS)
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.convert:
        kind, *paths = args.convert
        convert(kind, *map(Path, paths))
        return 0
    if args.build:
        base, sft = map(Path, args.build)
        inputs = REPO / INPUTS
        build_lora(base, inputs / "lora")
        shards = shard_checkpoint(sft, inputs / "sharded", WORLD)
        shards["verl"].rename(inputs / "fsdp")
        shards["dcp"].rename(inputs / "dcp")
        return 0
    if args.compare:
        print(json.dumps(compare_outputs(*map(Path, args.compare))))
        return 0
    meta = provenance.gather()
    base, sft = build("bench", REPO / PAIR)
    inputs = REPO / INPUTS
    if args.rebuild or not (inputs / "fsdp" / "fsdp_config.json").is_file():
        shutil.rmtree(inputs, ignore_errors=True)
        inputs.mkdir(parents=True)
        subprocess.run([sys.executable, __file__, "--build", str(base), str(sft)], check=True)
    shutil.rmtree(REPO / OUT, ignore_errors=True)
    (REPO / OUT).mkdir(parents=True)
    warm_cache([base, sft, inputs])
    # A child's peak RSS (wait4) counts what it shared with this process when it forked: this
    # process must not hold torch, or every row would carry its ~0.2-1 GB.
    assert "torch" not in sys.modules, "measure from a process without torch"
    rejuv = str(Path(sys.executable).parent / "rejuv")
    py = sys.executable
    b = str(PAIR / "base")

    def fuse(src: Path, out: str, *extra: str) -> list[str]:
        return [rejuv, "fuse", b, str(src), "--out", str(OUT / out), "--quiet", *extra]

    def compare(a: str, b: str) -> dict:
        done = subprocess.run([py, __file__, "--compare", str(REPO / OUT / a), str(REPO / OUT / b)],
                              check=True, capture_output=True, text=True)  # fmt: skip
        return json.loads(done.stdout)

    rows = {"safetensors": {"direct": measured("safetensors", fuse(PAIR / "sft", "ref"))}}
    for kind in ("lora", "dcp", "fsdp"):
        src = INPUTS / kind
        meta_dir = PAIR / "base" if kind == "lora" else PAIR / "sft"
        # a DCP directory holds no config: the SFT's (what a trainer would hand over with it)
        extra = ("--config-from", str(PAIR / "sft")) if kind == "dcp" else ()
        row = {"direct": measured(f"{kind} direct", fuse(src, f"{kind}-direct", *extra))}
        conv = OUT / f"{kind}-converted"
        row["convert"] = measured(f"{kind} convert", [py, "bench/inputs_bench.py", "--convert",
                                  kind, b, str(src), str(conv), str(meta_dir)])  # fmt: skip
        row["then_fuse"] = measured(f"{kind} then fuse", fuse(conv, f"{kind}-route"))
        row["outputs"] = compare(f"{kind}-direct", f"{kind}-route")
        rows[kind] = row
    ref = rows["safetensors"]["direct"]["peak_rss_bytes"]
    for kind in ("lora", "dcp", "fsdp"):
        r = rows[kind]
        r["rss_vs_safetensors"] = round(r["direct"]["peak_rss_bytes"] / ref, 2)
        route_rss = max(r["convert"]["peak_rss_bytes"], r["then_fuse"]["peak_rss_bytes"])
        r["rss_direct_vs_route"] = round(r["direct"]["peak_rss_bytes"] / route_rss, 2)
        route_s = r["convert"]["seconds"] + r["then_fuse"]["seconds"]
        r["time_direct_vs_route"] = round(r["direct"]["seconds"] / route_s, 2)
    result = {"provenance": meta, "pair": str(PAIR), "lora_rank": LORA_RANK, "world_size": WORLD,
              "rows": rows}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "inputs_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    print("-> bench/results/inputs_bench.json (README: make docs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
