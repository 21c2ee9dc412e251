"""Benchmark `rejuv sweep` against the separate runs it replaces, side by side in one run.

    .venv/bin/python bench/sweep_bench.py                  # part of `make bench`
    .venv/bin/python bench/sweep_bench.py --samples 32     # quicker

On the ~300M-parameter bench pair (.bench/pair, built by make_pair.py when missing), with the
same calibration data (builtin:math, --samples examples) and the default reset:

  sweep     `rejuv sweep BASE SFT --alphas 0.3,0.5,0.7,0.9,1` (one process)
  separate  for each of the 5 α: `rejuv fuse --alpha α` then
            `rejuv diagnose BASE SFT --candidate OUT --sharpness-draws 0` (10 processes;
            sharpness off because the sweep does not measure it)

Target (issue #15): sweep wall time <= 0.5 × separate. Reports the wall time of each (the
separate runs summed, each process timed spawn-to-reap) and the peak RSS of each (the largest
single process for the separate runs). The rounds alternate sweep / separate, the inputs are
read once untimed first. Results go to stdout and bench/results/sweep_bench.{md,json}, with
their provenance (bench/provenance.py; docs/bench_tables.py copies the figures into the README);
the sweep's own JSON checks that its numbers match the separate runs' (1e-5 relative).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import provenance  # noqa: E402
from fuse_bench import run_measured, warm_cache  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(".bench")
PAIR = BENCH_DIR / "pair"
RESULTS = REPO / "bench" / "results"
ALPHAS = (0.3, 0.5, 0.7, 0.9, 1.0)
TARGET = 0.5
AGREEMENT = 1e-5  # the largest relative difference allowed between sweep and diagnose


def rejuv() -> str:
    return str(Path(sys.executable).parent / "rejuv")


def run_sweep(base: Path, sft: Path, data: list[str], work: Path) -> dict:
    out = work / "sweep.json"
    argv = [rejuv(), "sweep", str(base), str(sft), "--alphas", ",".join(f"{a:g}" for a in ALPHAS),
            *data, "--json", str(out), "--quiet"]  # fmt: skip
    wall, rss, code = run_measured(argv, work / "sweep.log")
    if code != 0:
        raise SystemExit(f"sweep failed: see {work / 'sweep.log'}")
    return {"wall": wall, "peak_rss": rss, "report": json.loads(out.read_text())}


def run_separate(base: Path, sft: Path, data: list[str], work: Path) -> dict:
    wall, peak, rows = 0.0, 0, {}
    for alpha in ALPHAS:
        out = work / f"fused-{alpha:g}"
        shutil.rmtree(out, ignore_errors=True)
        os.sync()
        steps = [
            [rejuv(), "fuse", str(base), str(sft), "--out", str(out), "--alpha", f"{alpha:g}",
             "--quiet"],
            [rejuv(), "diagnose", str(base), str(sft), "--candidate", str(out), *data,
             "--sharpness-draws", "0", "--json", str(work / f"diagnose-{alpha:g}.json"),
             "--quiet"],
        ]  # fmt: skip
        for i, argv in enumerate(steps):
            w, rss, code = run_measured(argv, work / f"separate-{alpha:g}-{i}.log")
            if code != 0:
                raise SystemExit(f"{argv[1]} failed: see {work}/separate-{alpha:g}-{i}.log")
            wall, peak = wall + w, max(peak, rss)
        rows[alpha] = json.loads((work / f"diagnose-{alpha:g}.json").read_text())["output"]
        shutil.rmtree(out, ignore_errors=True)
    return {"wall": wall, "peak_rss": peak, "outputs": rows}


def agreement(sweep: dict, outputs: dict) -> float:
    """The largest relative difference between the sweep's rows and diagnose's candidates."""
    worst = 0.0
    for row in sweep["rows"]:
        cand = outputs[row["alpha"]]["candidate"]
        for key in ("entropy_mean", "kl_mean", "nll_mean", "skill_retained"):
            a, b = row[key], cand[key]
            if a is None or b is None:  # skill retained is null when SFT gained no NLL
                worst = worst if a is b else float("inf")
                continue
            worst = max(worst, abs(a - b) / max(abs(b), 1e-12))
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description="rejuv sweep vs separate fuse + diagnose runs.")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    origin = provenance.gather()  # before anything is built or written
    os.chdir(REPO)
    if not (PAIR / "sft" / "config.json").is_file():
        subprocess.run([sys.executable, "bench/make_pair.py", "--preset", "bench", "--out",
                        str(PAIR)], check=True)  # fmt: skip
    base, sft = PAIR / "base", PAIR / "sft"
    work = BENCH_DIR / "sweep"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    warm_cache([base, sft])
    data = ["--calib", "builtin:math", "--samples", str(args.samples)]
    sweeps, separates = [], []
    for r in range(args.rounds):
        order = (run_sweep, run_separate) if r % 2 == 0 else (run_separate, run_sweep)
        for fn in order:
            result = fn(base, sft, data, work)
            (sweeps if fn is run_sweep else separates).append(result)
            print(f"round {r + 1}: {fn.__name__.removeprefix('run_')} {result['wall']:.1f} s, "
                  f"peak RSS {result['peak_rss'] / 2**30:.2f} GiB", flush=True)  # fmt: skip
    sweep_wall = statistics.median(s["wall"] for s in sweeps)
    separate_wall = statistics.median(s["wall"] for s in separates)
    result = {
        "provenance": origin,
        "alphas": list(ALPHAS),
        "samples": args.samples,
        "rounds": args.rounds,
        "sweep": {"wall_s": round(sweep_wall, 2),
                  "peak_rss_gib": round(max(s["peak_rss"] for s in sweeps) / 2**30, 3)},
        "separate": {"wall_s": round(separate_wall, 2),
                     "peak_rss_gib": round(max(s["peak_rss"] for s in separates) / 2**30, 3)},
        "ratio": round(sweep_wall / separate_wall, 3),
        "target": TARGET,
        "max_rel_diff": agreement(sweeps[-1]["report"], separates[-1]["outputs"]),
        "max_rel_diff_limit": AGREEMENT,
    }  # fmt: skip
    result["pass"] = result["ratio"] <= TARGET and result["max_rel_diff"] <= AGREEMENT
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sweep_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    md = ("# rejuv sweep vs separate runs\n\n" + "\n".join(provenance.markdown_lines(origin))
          + f"\n\n{len(ALPHAS)} α ({', '.join(map(str, ALPHAS))}), "
          f"builtin:math × {args.samples}, default reset, median of {args.rounds} round(s)\n\n"
          "| case | wall (s) | peak RSS (GiB) |\n|---|---|---|\n"
          f"| sweep (1 process) | {result['sweep']['wall_s']} | "
          f"{result['sweep']['peak_rss_gib']} |\n"
          f"| separate fuse + diagnose (10 processes, largest RSS) | "
          f"{result['separate']['wall_s']} | {result['separate']['peak_rss_gib']} |\n\n"
          f"ratio sweep / separate: **{result['ratio']}** (target <= {TARGET}); largest "
          f"relative difference of the metrics: {result['max_rel_diff']:.2e}\n")  # fmt: skip
    (RESULTS / "sweep_bench.md").write_text(md)
    print(md)
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
