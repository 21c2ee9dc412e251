"""Peak memory of measuring a mixture-of-experts model (`make bench-moe`; issue #18, part 4).

    python bench/moe_memory.py    # -> bench/results/moe_memory.json (README block: make docs)

Runs `rejuv diagnose` (forward passes of BASE and SFT with unit-activity and routing hooks)
and `rejuv fuse --select dormant --dry-run --save-mask` (one SFT pass with activity hooks) on
two synthetic pairs of the same parameter count, made by bench/make_pair.py: "moe" (Mixtral,
8 experts, top 2) and "moe-dense" (Llama whose MLP is as wide as the 8 experts together).
Each command runs in its own process; its peak RSS comes from the kernel (wait4's
ru_maxrss), its wall time is recorded for the reader but judged nowhere.

The expert hooks recompute one expert's activations at a time for the tokens routed to it,
so what they add over the model's own forward pass is one [tokens routed to e, intermediate]
block, never experts × tokens × intermediate. Peak RSS is dominated by the weights of the
models held at once; the MoE/dense ratio is the number to read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import provenance  # noqa: E402
from fuse_bench import REPO, RESULTS, run_measured  # noqa: E402
from make_pair import build, count_parameters  # noqa: E402

BENCH_DIR = Path(".bench")  # relative to REPO, so commands read as a user would type them
PAIRS = {"moe": BENCH_DIR / "moe", "moe-dense": BENCH_DIR / "moe-dense"}
SAMPLES = "32"


def commands(base: Path, sft: Path, out: Path) -> dict[str, list[str]]:
    rejuv = str(Path(sys.executable).parent / "rejuv")  # the venv's entry point
    return {
        "diagnose": [rejuv, "diagnose", str(base), str(sft), "--samples", SAMPLES,
                     "--sharpness-draws", "0", "--json", str(out / "diagnose.json")],
        "dormant": [rejuv, "fuse", str(base), str(sft), "--out", str(out / "fused"),
                    "--select", "dormant", "--samples", SAMPLES, "--dry-run", "--save-mask",
                    str(out / "mask.safetensors"), "--quiet"],
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="rebuild the pairs")
    args = parser.parse_args()
    meta = provenance.gather()
    rows = {}
    for preset, root in PAIRS.items():
        base, sft = build(preset, REPO / root, force=args.force)
        params, nbytes = count_parameters(base)
        out = REPO / BENCH_DIR / f"out-{preset}"
        out.mkdir(parents=True, exist_ok=True)
        row = {"params": params, "tensor_bytes": nbytes}
        for name, argv in commands(base.relative_to(REPO), sft.relative_to(REPO),
                                   out.relative_to(REPO)).items():  # fmt: skip
            wall, rss, code = run_measured(argv, out / f"{name}.log")
            if code != 0:
                print((out / f"{name}.log").read_text()[-2000:], file=sys.stderr)
                sys.exit(f"{preset}: {' '.join(argv)} failed ({code})")
            row[name] = {"peak_rss_bytes": rss, "seconds": round(wall, 1),
                         "command": " ".join(argv[1:])}  # fmt: skip
            print(f"{preset:9s} {name:8s} peak RSS {rss / 2**20:8.0f} MiB  {wall:6.1f} s")
        report = json.loads((out / "diagnose.json").read_text())
        row["units_measured"] = report["units"]["units"]
        row["not_measured"] = len(report["units"]["not_measured"])
        row["unrouted"] = len(report["units"]["unrouted"])  # experts no calibration token reached
        row["experts"] = sum(len(layer["share"]) for layer in (report["routing"] or {}).get(
            "layers", []))  # fmt: skip
        rows[preset] = row
    ratios = {name: rows["moe"][name]["peak_rss_bytes"] / rows["moe-dense"][name]["peak_rss_bytes"]
              for name in ("diagnose", "dormant")}  # fmt: skip
    result = {"provenance": meta, "samples": int(SAMPLES), "pairs": rows,
              "rss_ratio_moe_to_dense": ratios}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "moe_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"MoE / dense peak RSS: diagnose {ratios['diagnose']:.2f}, dormant "
        f"{ratios['dormant']:.2f} -> bench/results/moe_memory.json (README: make docs)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
