"""`make bench-gpu`: `rejuv fuse` on CUDA against the I/O floor, on a pair of a few GB.

    make bench-gpu                                # ~1.5B-param bf16 Llama pair, 3 GB per model
    DRY_RUN=1 make bench-gpu                      # ~100M params, --device cpu: proves it runs
    BENCH_ARGS="--params 0.8e9 --repeats 2" make bench-gpu

No install: run from the source tree (PYTHONPATH=src, which the Makefile sets) with any
interpreter that has torch, transformers, safetensors, typer, rich, huggingface_hub, pyyaml,
xxhash and accelerate. Without CUDA it stops at once with one line (unless DRY_RUN=1).

Reuses bench/make_pair.py (`build`, with a size-derived Llama preset added at run time; the
pair lands in .bench/gpu-pair-<size> and is reused when present) and bench/fuse_bench.py
(`run_measured`: wall time spawn to reap and the child's own peak RSS; `warm_cache`,
`weight_bytes`, `compare_outputs`) and bench/provenance.py (`gather`: commit, dirty tree,
machine, command; `machine_info`). Each case is its own process, run from the repository root
with a warm page cache (inputs read once untimed; outputs removed and os.sync before each run,
untimed):

  floor   bench/io_floor.py: the same reads and writes, no math, in rejuv's chunk size
  device  rejuv fuse --device cuda --reset 0              (fusion on the GPU)
  reset   rejuv fuse --device cuda                        (+ the default 1% drift reset)
  cpu     rejuv fuse --device cpu --reset 0               (the CPU path on this machine's cores)

then compares the device and CPU outputs byte for byte (they must be identical) and writes
bench/results/gpu_bench.{json,md} (gpu_bench-dry-run.* for a dry run). Cases run in that order
and a case that would start after --budget-s seconds is skipped (noted), so the whole step
stays inside the GPU window; the pair build is timed and reported separately.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
import provenance  # noqa: E402

RESULTS = REPO / "bench" / "results"
BENCH_DIR = Path(".bench")  # relative to REPO, as in fuse_bench.py
TARGET_WALL_VS_FLOOR = {"device": 1.5, "reset": 2.2}  # fuse_bench.py's targets
NEEDED = ("torch", "transformers", "safetensors", "accelerate", "typer", "rich",
          "huggingface_hub", "yaml", "xxhash")  # fmt: skip


def llama_shape(params: float) -> dict:
    """A Llama config of about `params` parameters (untied embeddings, vocab 32000, GQA)."""
    if params >= 1e9:  # TinyLlama-like width
        hidden, inter, heads, kv = 2048, 5632, 16, 4
    elif params >= 3e8:  # make_pair.py's bench preset width
        hidden, inter, heads, kv = 1024, 2816, 16, 8
    else:
        hidden, inter, heads, kv = 768, 2048, 12, 4
    vocab = 32000
    kv_dim = kv * hidden // heads
    per_layer = 2 * hidden * hidden + 2 * hidden * kv_dim + 3 * hidden * inter + 2 * hidden
    layers = max(2, round((params - 2 * vocab * hidden - hidden) / per_layer))
    return dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=kv)  # fmt: skip


def size_label(params: float) -> str:
    return f"{params / 1e9:g}B" if params >= 1e9 else f"{params / 1e6:g}M"


def same_bytes(a_dir: Path, b_dir: Path) -> dict:
    """Byte comparison of the weight files and index of two output directories."""
    names = sorted(p.name for p in a_dir.iterdir() if p.name.startswith("model"))
    differing = []
    for name in names:
        a, b = a_dir / name, b_dir / name
        if not b.is_file() or a.stat().st_size != b.stat().st_size:
            differing.append(name)
            continue
        with open(a, "rb") as fa, open(b, "rb") as fb:
            while True:
                x, y = fa.read(64 << 20), fb.read(64 << 20)
                if x != y:
                    differing.append(name)
                    break
                if not x:
                    break
    return {"files": len(names), "differing": differing}


PROBE = """
import json, torch
ok = torch.cuda.is_available()
p = torch.cuda.get_device_properties(0) if ok else None
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": ok,
                  "name": p.name if p else None,
                  "memory_gib": round(p.total_memory / 2**30, 1) if p else None}))
"""


def build_pair(out: Path, params: float, rebuild: bool) -> None:
    """The child that builds (or reuses) the pair; prints one JSON line for the parent."""
    sys.path.insert(0, str(REPO / "src"))
    import make_pair

    label = size_label(params)
    config = llama_shape(params)
    preset = f"gpu-{label}"
    make_pair.PRESETS[preset] = {"max_shard_size": "1GB", "config": config}
    existed = not rebuild and make_pair._existing_matches(out, config)
    base, sft = make_pair.build(preset, out, force=rebuild)
    n, _ = make_pair.count_parameters(base)
    print(json.dumps({"base": str(base), "sft": str(sft), "parameters": n,
                      "built": "reused" if existed else "built"}))  # fmt: skip


def render(r: dict) -> str:
    m, p, c = r["machine"], r["pair"], r["cases"]
    gpu = r["gpu"].get("name") or "no GPU"
    lines = [
        "# rejuv fuse on " + ("CUDA" if r["device"].startswith("cuda") else "CPU (dry run)"),
        "",
        f"{r['date']} · {gpu} · {m['cpu']} · nproc {m['nproc']} · {m['mem_total_gb']} GB RAM · "
        f"torch {m['torch']} (CUDA {r['gpu'].get('cuda')}) · git {m['git']}",
        "",
        *(provenance.markdown_lines(r["provenance"]) + [""] if r.get("provenance") else []),
        f"Pair: synthetic Llama, {p['parameters']:,} parameters per model, bf16, "
        f"{p['shards']} shards; BASE {p['base_weight_bytes'] / 1e9:.2f} GB + SFT "
        f"{p['sft_weight_bytes'] / 1e9:.2f} GB read, ~{p['sft_weight_bytes'] / 1e9:.2f} GB "
        f"written. Build {p['build_seconds']:.1f} s ({p['built']}). Warm page cache. Repeats: "
        f"{r['repeats']}.",
        "",
        "| case | wall s (median) | peak RSS GB | wall / floor | own timer s | GB/s by own "
        "timer | own / floor's own | rejuv's plan / score / write s |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    written = p["sft_weight_bytes"] / 1e9
    floor = c.get("floor", {}).get("wall_s_median")
    floor_own = c.get("floor", {}).get("own_s")
    for x in c.values():
        if x.get("skipped"):
            lines.append(f"| {x['title']} | skipped: {x['skipped']} | | | | | | |")
            continue
        wall, own = x["wall_s_median"], x.get("own_s")
        parts = x.get("seconds")
        parts = (
            f"{parts['plan']:.2f} / {parts['score']:.2f} / {parts['write']:.2f}" if parts else ""
        )
        cells = [
            x["title"],
            f"{wall:.2f}",
            f"{x['peak_rss_bytes'] / 1e9:.2f}",
            f"{wall / floor:.2f}×" if floor else "",
            f"{own:.2f}" if own else "",
            f"{written / own:.2f}" if own else "",
            f"{own / floor_own:.2f}×" if own and floor_own else "",
            parts,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Wall time includes interpreter start-up and imports (and CUDA initialisation); the "
        "own timer is the streaming work alone: rejuv.json's seconds.total, io_floor's printed "
        "time. GB/s = GB written / own seconds."
    )
    lines += ["", "| target | value | result |", "|---|---:|---|"]
    for t in r["targets"]:
        lines.append(f"| {t['name']} | {t['value']:.2f} (limit {t['limit']}) | "
                     f"{'PASS' if t['passed'] else 'FAIL'} |")  # fmt: skip
    same = r.get("device_vs_cpu")
    if same:
        verdict = "byte-identical" if not same["differing"] else f"DIFFER: {same['differing']}"
        lines += ["", f"Device output vs CPU output ({same['files']} weight files and index): "
                  f"{verdict}."]  # fmt: skip
    if r["failures"]:
        lines += ["", f"Failures: {r['failures']}"]
    lines += ["", f"Total {r['total_seconds']:.0f} s (build included)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    dry = os.environ.get("DRY_RUN", "").strip().lower() in ("1", "yes", "true", "on")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--params",
        type=float,
        default=1e8 if dry else 1.5e9,
        help="parameters per model (default 1.5e9; 1e8 with DRY_RUN=1)",
    )
    parser.add_argument(
        "--device",
        default="cpu" if dry else "cuda",
        help="device of the rejuv cases (default cuda; cpu with DRY_RUN=1)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per case (median)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=200.0,
        help="start no case after this many seconds (default 200)",
    )
    parser.add_argument("--rebuild", action="store_true", help="regenerate the pair")
    parser.add_argument("--keep", action="store_true", help="keep the outputs in .bench/gpu")
    parser.add_argument("--build-only", type=Path, help=argparse.SUPPRESS)  # the build child
    args = parser.parse_args(argv)  # fmt: skip
    who = f"make bench-gpu ({sys.executable})"
    if args.build_only:
        build_pair(args.build_only, args.params, args.rebuild)
        return 0
    origin = provenance.gather()  # before anything is built or written

    import importlib.util

    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        print(f"{who}: missing {', '.join(missing)}; use PYTHON=/path/to/python with them",
              file=sys.stderr)  # fmt: skip
        return 2
    t_start = time.perf_counter()
    os.chdir(REPO)
    src = str(REPO / "src")
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join([src, *paths])  # children import from src/
    py = sys.executable
    # This process stays small (no torch): a child's peak RSS (wait4) counts what it inherited
    # from its parent before exec, so torch and the pair build run in children.
    probe = subprocess.run([py, "-c", PROBE], capture_output=True, text=True)
    if probe.returncode != 0:
        print(f"{who}: cannot import torch: {probe.stderr.strip().splitlines()[-1:]}",
              file=sys.stderr)  # fmt: skip
        return 2
    gpu = json.loads(probe.stdout)
    if args.device.startswith("cuda") and not gpu["cuda_available"]:
        build = f"CUDA build {gpu['cuda']}" if gpu["cuda"] else "a CPU-only build"
        print(f"{who}: torch {gpu['torch']} ({build}) sees no CUDA device; run it on the "
              "GPU machine, or DRY_RUN=1 make bench-gpu for the small CPU run",
              file=sys.stderr)  # fmt: skip
        return 2
    import fuse_bench

    label = size_label(args.params)
    config = llama_shape(args.params)
    pair = BENCH_DIR / f"gpu-pair-{label}"
    print(f"== pair: {pair} {config}", flush=True)
    t0 = time.perf_counter()
    build = [py, str(Path(__file__).relative_to(REPO)), "--build-only", str(pair),
             "--params", repr(args.params)] + (["--rebuild"] if args.rebuild else [])  # fmt: skip
    done = subprocess.run(build, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        print(f"{who}: building the pair failed (exit {done.returncode})", file=sys.stderr)
        return 1
    built = json.loads(done.stdout.strip().splitlines()[-1])
    build_s = time.perf_counter() - t0
    base, sft, params = Path(built["base"]), Path(built["sft"]), built["parameters"]
    print(f"   {params:,} parameters per model, {build_s:.1f} s ({built['built']})", flush=True)
    warmed = fuse_bench.warm_cache([base, sft])
    print(f"== warm-up: read {warmed / 1e9:.2f} GB untimed", flush=True)

    work = BENCH_DIR / "gpu"
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    chunk_mib = "32" if args.device.startswith("cuda") else "1"  # rejuv's chunk: 2^24 / 2^19 bf16

    def fuse(out: Path, device: str, *extra: str) -> list[str]:
        return [py, "-m", "rejuv_cli", "fuse", str(base), str(sft), "--out", str(out),
                "--overwrite", "--quiet", "--device", device, *extra]  # fmt: skip

    cases = {
        "floor": ("I/O floor (io_floor.py)", work / "out-floor",
                  lambda out: [py, "bench/io_floor.py", str(base), str(sft), "--out", str(out),
                               "--chunk-mib", chunk_mib]),
        "device": (f"rejuv fuse --device {args.device} --reset 0", work / "out-device",
                   lambda out: fuse(out, args.device, "--reset", "0")),
        "reset": (f"rejuv fuse --device {args.device} (1% drift reset)", work / "out-reset",
                  lambda out: fuse(out, args.device)),
        "cpu": ("rejuv fuse --device cpu --reset 0", work / "out-cpu",
                lambda out: fuse(out, "cpu", "--reset", "0")),
    }  # fmt: skip
    results, failures = {}, []
    for key, (title, out, argv_of) in cases.items():
        elapsed = time.perf_counter() - t_start
        if elapsed > args.budget_s:
            results[key] = {"title": title, "skipped": f"time budget ({elapsed:.0f} s used)"}
            print(f"   {key}: skipped, {elapsed:.0f} s > --budget-s {args.budget_s:.0f}")
            continue
        runs = []
        for rep in range(1, args.repeats + 1):
            shutil.rmtree(out, ignore_errors=True)
            os.sync()
            log = logs / f"{key}-{rep}.log"
            wall, rss, rc = fuse_bench.run_measured(argv_of(out), log)
            print(f"   run {rep}/{args.repeats} {key:6s}: {wall:6.2f} s, {rss / 1e9:5.2f} GB "
                  f"peak RSS" + ("" if rc == 0 else f", EXIT {rc}"), flush=True)  # fmt: skip
            if rc != 0:
                tail = log.read_text(errors="replace")[-3000:]
                print(f"   {key} failed (exit {rc}); {log}:\n{tail}", file=sys.stderr)
                failures.append({"case": key, "repeat": rep, "exit": rc, "log": str(log)})
                continue
            runs.append((wall, rss))
        if not runs:
            results[key] = {"title": title, "skipped": "failed"}
            continue
        x = results[key] = {
            "title": title,
            "command": " ".join(argv_of(out)),
            "wall_s_median": statistics.median(w for w, _ in runs),
            "wall_s_runs": [round(w, 3) for w, _ in runs],
            "peak_rss_bytes": max(r for _, r in runs),
        }
        meta = out / "rejuv.json"
        if meta.is_file():
            x["seconds"] = json.loads(meta.read_text())["seconds"]
            x["own_s"] = x["seconds"]["total"]
        else:  # io_floor prints "... in X s"
            found = re.search(r" in ([0-9.]+) s$", log.read_text(), re.M)
            x["own_s"] = float(found.group(1)) if found else None

    floor = results.get("floor", {}).get("wall_s_median")
    targets = []
    for key, limit in TARGET_WALL_VS_FLOOR.items():
        wall = results.get(key, {}).get("wall_s_median")
        if wall and floor:
            targets.append({"name": f"{key} wall / floor", "value": wall / floor,
                            "limit": limit, "passed": wall / floor <= limit})  # fmt: skip
    device_vs_cpu = None
    if "wall_s_median" in results.get("device", {}) and "wall_s_median" in results.get("cpu", {}):
        device_vs_cpu = same_bytes(work / "out-device", work / "out-cpu")
        if device_vs_cpu["differing"]:
            device_vs_cpu["tensors"] = fuse_bench.compare_outputs(
                work / "out-device", work / "out-cpu"
            )
            failures.append({"case": "device vs cpu", "differing": device_vs_cpu["differing"]})
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": args.device,
        "dry_run": dry,
        "machine": provenance.machine_info(),
        "provenance": origin,
        "gpu": gpu,
        "repeats": args.repeats,
        "pair": {
            "path": str(pair),
            "config": config,
            "parameters": params,
            "base_weight_bytes": fuse_bench.weight_bytes(base),
            "sft_weight_bytes": fuse_bench.weight_bytes(sft),
            "shards": len(list(base.glob("*.safetensors"))),
            "build_seconds": round(build_s, 2),
            "built": built["built"],
        },
        "cases": results,
        "targets": targets,
        "device_vs_cpu": device_vs_cpu,
        "failures": failures,
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }  # fmt: skip
    stem = "gpu_bench-dry-run" if dry else "gpu_bench"
    RESULTS.mkdir(parents=True, exist_ok=True)
    markdown = render(result)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown)
    if not args.keep:
        for _, out, _ in cases.values():
            shutil.rmtree(out, ignore_errors=True)
    print()
    print(markdown)
    print(f"(written to bench/results/{stem}.md and .json)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
