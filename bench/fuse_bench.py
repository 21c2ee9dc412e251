"""Benchmark `rejuv fuse` against its I/O floor and the naive transformers script.

    make bench                                         # runs .venv/bin/python bench/fuse_bench.py
                                                       #   --repeats 5, then sweep_bench.py
    .venv/bin/python bench/fuse_bench.py --repeats 1   # quicker, noisier
    .venv/bin/python bench/fuse_bench.py --rebuild     # regenerate the model pair first

Builds (or reuses) a ~300M-parameter bf16 Llama pair at .bench/pair with make_pair.py, then
runs, each in its own process and `--repeats` times (cases interleaved so drift hits all alike):

  rejuv  `rejuv fuse BASE SFT --out .bench/out-rejuv --overwrite --quiet --reset 0` (fusion)
  reset  `rejuv fuse BASE SFT --out .bench/out-reset --overwrite --quiet` (fusion + the default
         1% drift reset: one more streaming pass over both models to score the units)
  floor  bench/io_floor.py: the same reads and writes, no math (the best any tool could do)
  naive  bench/naive_fuse.py: from_pretrained both, fuse the state dict, save_pretrained

and reports the median wall time and the largest peak RSS of each, against the targets
"fusion wall <= 1.5 x floor", "fusion + reset wall <= 2.2 x floor" and "peak RSS <= 40% of
naive" (both rejuv cases). Results go to stdout and to
bench/results/fuse_bench.{md,json}, with their provenance (bench/provenance.py: commit, dirty
tree, date, machine, command; docs/bench_tables.py copies the table and that line into the
README); the outputs stay in .bench/out-* for inspection.

Measurement: wall time is taken around spawn-to-reap, so interpreter start-up and imports
count (a user pays them too). Peak RSS is the child's own ru_maxrss from os.wait4, exact per
process, unlike RUSAGE_CHILDREN which keeps the maximum over all children so far. The page
cache cannot be dropped without root, so every input file is read once untimed first and all
cases run with a warm cache; before each run its output directory is removed and dirty pages
are flushed (os.sync), both untimed, so no run pays for the previous one's writeback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import provenance  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(".bench")  # relative to REPO, so commands read as a user would type them
PAIR = BENCH_DIR / "pair"
RESULTS = REPO / "bench" / "results"
TARGET_WALL_VS_FLOOR = {"rejuv": 1.5, "reset": 2.2}
TARGET_RSS_VS_NAIVE = 0.40


@dataclass
class Case:
    key: str
    title: str
    out: Path  # relative to REPO
    argv: list[str]


def cases(base: Path, sft: Path) -> list[Case]:
    py = sys.executable
    rejuv = str(Path(sys.executable).parent / "rejuv")  # the venv's entry point, not $PATH's
    out = {k: BENCH_DIR / f"out-{k}" for k in ("rejuv", "reset", "floor", "naive")}

    def fuse(key: str, *extra: str) -> list[str]:
        return [rejuv, "fuse", str(base), str(sft), "--out", str(out[key]), "--overwrite",
                "--quiet", *extra]  # fmt: skip

    return [
        Case("rejuv", "rejuv fuse --reset 0 (fusion)", out["rejuv"], fuse("rejuv", "--reset", "0")),
        Case("reset", "rejuv fuse (fusion + 1% reset)", out["reset"], fuse("reset")),
        Case(
            "floor",
            "I/O floor (io_floor.py)",
            out["floor"],
            [py, "bench/io_floor.py", str(base), str(sft), "--out", str(out["floor"])],
        ),
        Case(
            "naive",
            "naive transformers (naive_fuse.py)",
            out["naive"],
            [py, "bench/naive_fuse.py", str(base), str(sft), "--out", str(out["naive"])],
        ),
    ]


def run_measured(argv: list[str], log_path: Path) -> tuple[float, int, int]:
    """Run argv from REPO; returns (wall seconds, peak RSS bytes, exit code)."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # local paths only
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        # wait4 reaps the child and hands back its own rusage; tell Popen it is done.
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss * 1024, proc.returncode  # ru_maxrss is in KiB on Linux


def warm_cache(dirs: list[Path]) -> int:
    """Read every file under `dirs` once (the `cat > /dev/null` warm-up); returns bytes read."""
    total, buf = 0, bytearray(8 << 20)
    for d in dirs:
        for path in sorted(p for p in d.rglob("*") if p.is_file()):
            with open(path, "rb", buffering=0) as f:
                while n := f.readinto(buf):
                    total += n
    return total


def weight_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))


def compare_outputs(a_dir: Path, b_dir: Path) -> dict:
    """Compare every tensor of two safetensors checkpoints (streamed, one tensor at a time)."""
    import torch
    from safetensors import safe_open

    def locate(d: Path) -> dict[str, Path]:
        index = d / "model.safetensors.index.json"
        if index.is_file():
            return {k: d / v for k, v in json.loads(index.read_text())["weight_map"].items()}
        with safe_open(d / "model.safetensors", framework="pt") as f:
            return {k: d / "model.safetensors" for k in f.keys()}  # noqa: SIM118

    a_map, b_map = locate(a_dir), locate(b_dir)
    common = sorted(set(a_map) & set(b_map))
    max_diff, identical, worst = 0.0, 0, None
    for name in common:
        with (
            safe_open(a_map[name], framework="pt") as fa,
            safe_open(b_map[name], framework="pt") as fb,
        ):
            ta, tb = fa.get_tensor(name), fb.get_tensor(name)
        if ta.dtype == tb.dtype and ta.shape == tb.shape and torch.equal(ta, tb):
            identical += 1
            continue
        diff = float((ta.float() - tb.float()).abs().max())
        if diff >= max_diff:
            max_diff, worst = diff, name
    return {
        "tensors_compared": len(common),
        "only_in_rejuv": sorted(set(a_map) - set(b_map)),
        "only_in_naive": sorted(set(b_map) - set(a_map)),
        "bit_identical": identical,
        "max_abs_diff": max_diff,
        "worst_tensor": worst,
    }


def render_markdown(r: dict) -> str:
    c, t = r["cases"], r["targets"]
    pair = r["pair"]
    lines = [
        "# rejuv fuse benchmark",
        "",
        *provenance.markdown_lines(r["provenance"]),
        "",
        f"Pair: synthetic Llama, {pair['parameters']:,} parameters per model, bf16, "
        f"{pair['base_shards']} shards; BASE {pair['base_weight_bytes'] / 1e6:,.1f} MB + "
        f"SFT {pair['sft_weight_bytes'] / 1e6:,.1f} MB of safetensors read, "
        f"~{pair['sft_weight_bytes'] / 1e6:,.1f} MB written. Repeats: {r['repeats']}. "
        "Warm page cache: inputs read once untimed first (dropping the cache needs root).",
        "",
        "| case | wall s (median) | peak RSS MB | wall / floor | RSS / naive |",
        "|---|---:|---:|---:|---:|",
    ]
    floor_wall, naive_rss = c["floor"]["wall_s_median"], c["naive"]["peak_rss_bytes"]
    for key in ("rejuv", "reset", "floor", "naive"):
        x = c[key]
        lines.append(
            f"| {x['title']} | {x['wall_s_median']:.2f} | {x['peak_rss_bytes'] / 1e6:,.0f} | "
            f"{x['wall_s_median'] / floor_wall:.2f}× | {x['peak_rss_bytes'] / naive_rss:.0%} |"
        )
    s = r["startup"]
    lines += [
        "",
        f"Start-up alone (`python -c 'import torch'`, included in every row): "
        f"{s['wall_s_median']:.2f} s, {s['peak_rss_bytes'] / 1e6:,.0f} MB.",
    ]
    floor_sec = r.get("floor_internal_seconds")
    for key, sec in (r.get("internal_seconds") or {}).items():
        if sec and floor_sec:
            lines.append(
                f"Streaming work alone, {key} (each tool's own timer, last run): "
                f"{sec['total']:.2f} s (plan {sec['plan']:.2f}, score {sec.get('score', 0):.2f}, "
                f"write {sec['write']:.2f}) vs floor {floor_sec:.2f} s = "
                f"{sec['total'] / floor_sec:.2f}×."
            )
    lines += ["", "| target | value | result |", "|---|---:|---|"]
    for tgt in t:
        lines.append(
            f"| {tgt['name']} | {tgt['value']:.2f} (limit {tgt['limit']}) | "
            f"{'PASS' if tgt['passed'] else 'FAIL'} |"
        )
    cmp_ = r.get("correctness")
    if cmp_:
        lines += [
            "",
            "Correctness (rejuv --reset 0 vs naive output, all "
            f"{cmp_['tensors_compared']} tensors): "
            f"{cmp_['bit_identical']} bit-identical, max |diff| {cmp_['max_abs_diff']:.3g}"
            + (f" (worst: {cmp_['worst_tensor']})" if cmp_["worst_tensor"] else "")
            + ".",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description="rejuv fuse vs I/O floor vs naive script.")
    parser.add_argument("--repeats", type=int, default=3, help="runs per case (median wall time)")
    parser.add_argument("--rebuild", action="store_true", help="regenerate the model pair")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    origin = provenance.gather()  # before anything is built or written
    os.chdir(REPO)
    from make_pair import count_parameters

    print("== building (or reusing) the bench pair", flush=True)
    t0 = time.perf_counter()
    build = [sys.executable, "bench/make_pair.py", "--preset", "bench", "--out", str(PAIR)]
    subprocess.run(build + (["--force"] if args.rebuild else []), check=True)
    build_s = time.perf_counter() - t0
    base, sft = PAIR / "base", PAIR / "sft"
    params, tensor_bytes = count_parameters(base)

    logs = BENCH_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    print(
        "== warm-up: reading both models once, untimed (page cache cannot be dropped "
        "without root; every case runs with a warm cache)",
        flush=True,
    )
    warmed = warm_cache([base, sft])
    print(f"   read {warmed / 1e6:,.1f} MB", flush=True)

    todo = cases(base, sft)
    runs: dict[str, list[tuple[float, int]]] = {c.key: [] for c in todo}
    startup: list[tuple[float, int]] = []
    failures = []
    for rep in range(1, args.repeats + 1):
        for case in todo:
            shutil.rmtree(case.out, ignore_errors=True)
            os.sync()
            log = logs / f"{case.key}-{rep}.log"
            wall, rss, rc = run_measured(case.argv, log)
            print(
                f"   run {rep}/{args.repeats} {case.key:5s}: {wall:6.2f} s, "
                f"{rss / 1e6:7,.0f} MB peak RSS" + ("" if rc == 0 else f", EXIT {rc}"),
                flush=True,
            )
            if rc != 0:
                tail = log.read_text(errors="replace")[-3000:]
                print(f"   {case.key} failed (exit {rc}); log {log}:\n{tail}", file=sys.stderr)
                failures.append({"case": case.key, "repeat": rep, "exit": rc, "log": str(log)})
                continue
            runs[case.key].append((wall, rss))
        os.sync()
        wall, rss, _ = run_measured([sys.executable, "-c", "import torch"], logs / "startup.log")
        startup.append((wall, rss))

    missing = [k for k, v in runs.items() if not v]
    if missing:
        print(f"no successful run of: {', '.join(missing)}; see the logs above", file=sys.stderr)
        return 1

    def summarize(title: str, samples: list[tuple[float, int]]) -> dict:
        return {
            "title": title,
            "wall_s_median": statistics.median(w for w, _ in samples),
            "wall_s_runs": [round(w, 3) for w, _ in samples],
            "peak_rss_bytes": max(r for _, r in samples),
            "peak_rss_runs": [r for _, r in samples],
        }

    by_key = {c.key: summarize(c.title, runs[c.key]) for c in todo}
    for c in todo:
        by_key[c.key]["command"] = " ".join(c.argv)
        by_key[c.key]["output_weight_bytes"] = weight_bytes(REPO / c.out)
    targets = []
    for key, limit in TARGET_WALL_VS_FLOOR.items():
        ratio = by_key[key]["wall_s_median"] / by_key["floor"]["wall_s_median"]
        targets.append({"name": f"{key} wall / floor", "value": ratio, "limit": limit,
                        "passed": ratio <= limit})  # fmt: skip
    for key in TARGET_WALL_VS_FLOOR:
        ratio = by_key[key]["peak_rss_bytes"] / by_key["naive"]["peak_rss_bytes"]
        passed = ratio <= TARGET_RSS_VS_NAIVE
        targets.append({"name": f"{key} peak RSS / naive", "value": ratio,
                        "limit": TARGET_RSS_VS_NAIVE, "passed": passed})  # fmt: skip

    internal = {}
    for key in TARGET_WALL_VS_FLOOR:
        meta = REPO / BENCH_DIR / f"out-{key}" / "rejuv.json"
        internal[key] = json.loads(meta.read_text())["seconds"] if meta.is_file() else None
    # Start-up is a fixed ~1.5-2 s in every row, which flatters the wall ratio; the two tools'
    # own timers compare the streaming work alone.
    match = re.search(r" in ([0-9.]+) s$", (logs / f"floor-{args.repeats}.log").read_text(), re.M)
    floor_internal = float(match.group(1)) if match else None

    # The last run of a case may have failed (and left no output) even if an earlier one passed.
    out_rejuv, out_naive = REPO / BENCH_DIR / "out-rejuv", REPO / BENCH_DIR / "out-naive"
    correctness = None
    if out_rejuv.is_dir() and out_naive.is_dir():
        print(
            "== correctness: rejuv output vs naive output (not a pass/fail criterion)", flush=True
        )
        correctness = compare_outputs(out_rejuv, out_naive)

    result = {
        "provenance": origin,
        "repeats": args.repeats,
        "pair": {
            "path": str(PAIR),
            "parameters": params,
            "dtype": "bfloat16",
            "base_tensor_bytes": tensor_bytes,
            "base_weight_bytes": weight_bytes(base),
            "sft_weight_bytes": weight_bytes(sft),
            "base_shards": len(list(base.glob("*.safetensors"))),
            "build_or_reuse_seconds": round(build_s, 2),
        },
        "cache": "warm: both models read once untimed; outputs removed + os.sync before each run",
        "cases": by_key,
        "startup": summarize("python -c 'import torch'", startup),
        "internal_seconds": internal,
        "floor_internal_seconds": floor_internal,
        "targets": targets,
        "correctness": correctness,
        "failures": failures,
    }
    markdown = render_markdown(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fuse_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "fuse_bench.md").write_text(markdown)
    print()
    print(markdown)
    print(f"(written to {RESULTS.relative_to(REPO)}/fuse_bench.md and .json)")
    if failures:
        return 1
    return 1 if args.strict and not all(t["passed"] for t in targets) else 0


if __name__ == "__main__":
    sys.exit(main())
