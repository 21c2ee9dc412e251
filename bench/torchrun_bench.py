"""`rejuv fuse` on 1 process against 2 torch.distributed ranks (issue #20, point 5): wall time and
peak memory per rank on a ~1B-parameter pair.

    make bench-torchrun    # -> bench/results/torchrun_bench.json (README block: make docs)

The pair (bench/make_pair.py --preset 1b, built once into .bench/pair-1b, untimed): Llama,
18 layers, hidden 2048, ~1.0B parameters in bf16, ~2 GB per model in 250 MB shards. Every run
is `rejuv fuse BASE SFT --out OUT --shard-size 250MB` (9 output shards to deal; otherwise default
flags: α 0.5, 1% drift reset, whose scoring pass is split between the ranks too), measured from
this process, which holds no torch:

  1 process     the usual command (torch's default threads: one per core)
  1 process, 1 thread    OMP_NUM_THREADS=1, what each rank below gets
  2 ranks       two `python -m rejuv_cli fuse` processes started here with RANK, WORLD_SIZE,
                MASTER_ADDR, MASTER_PORT and LOCAL_RANK set, as srun starts them (torchrun
                sets the same variables, and OMP_NUM_THREADS=1); each rank reaped with wait4,
                so its own peak RSS and its own finishing time are known

The configurations alternate, --repeats times, after a warm-up read of the inputs (page
cache); the median of each is reported. The 2-rank output is compared with the 1-process
output byte for byte.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import provenance  # noqa: E402
from fuse_bench import REPO, RESULTS, run_measured, warm_cache  # noqa: E402

PAIR = Path(".bench") / "pair-1b"
OUT = Path(".bench") / "out-torchrun"
WORLD = 2
# Output shards are what ranks share out: at the default 5GB the ~2 GB output is one shard and
# one rank would write it all. 250MB gives 9 shards, as the pair's own.
SHARD_SIZE = "250MB"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(argv: list[str], world: int, log_dir: Path) -> dict:
    """Start `world` ranks of argv as srun would and reap each: per-rank seconds and peak
    RSS, the run's wall time (the last rank's end) and every rank's exit code."""
    port = free_port()
    procs, logs = {}, []
    t0 = time.perf_counter()
    for rank in range(world):
        env = os.environ | {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                            "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
                            "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
                            "HF_HUB_OFFLINE": "1"}  # fmt: skip
        log = open(log_dir / f"rank{rank}.log", "wb")  # noqa: SIM115 (closed below)
        logs.append(log)
        p = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        procs[p.pid] = (rank, p)
    ranks: dict[int, dict] = {}
    while len(ranks) < world:
        pid, status, usage = os.wait4(-1, 0)
        if pid not in procs:
            continue
        rank, p = procs[pid]
        p.returncode = os.waitstatus_to_exitcode(status)
        ranks[rank] = {"seconds": round(time.perf_counter() - t0, 2),
                       "peak_rss_bytes": usage.ru_maxrss * 1024, "exit": p.returncode}  # fmt: skip
    for log in logs:
        log.close()
    return {"seconds": max(r["seconds"] for r in ranks.values()),
            "ranks": [ranks[r] for r in range(world)]}  # fmt: skip


def header_counts(model_dir: Path) -> tuple[int, int]:
    """(parameters, tensor bytes) from the safetensors headers, read as the format defines
    them (an 8-byte little-endian length, then JSON), so that this process needs no torch."""
    import math
    import struct

    params = nbytes = 0
    for shard in sorted(model_dir.glob("*.safetensors")):
        with open(shard, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for name, entry in header.items():
            if name != "__metadata__":
                params += math.prod(entry["shape"])
                nbytes += entry["data_offsets"][1] - entry["data_offsets"][0]
    return params, nbytes


def same_bytes(a: Path, b: Path) -> dict:
    """Files of two output directories compared byte for byte (rejuv.json and the card
    record the run, so they differ by design)."""
    names = sorted(p.name for p in a.iterdir())
    differ = [n for n in names if (a / n).read_bytes() != (b / n).read_bytes()]
    return {"files": len(names), "differ": differ}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    meta = provenance.gather()
    # Built (or reused) by its own process: this one must not import torch (see below).
    subprocess.run([sys.executable, "bench/make_pair.py", "--preset", "1b", "--out", str(PAIR)],
                   cwd=REPO, check=True)  # fmt: skip
    base, sft = REPO / PAIR / "base", REPO / PAIR / "sft"
    params, nbytes = header_counts(base)
    shutil.rmtree(REPO / OUT, ignore_errors=True)
    (REPO / OUT).mkdir(parents=True)
    warm_cache([base, sft])
    # A child's peak RSS (wait4) counts what it shared with this process when it forked.
    assert "torch" not in sys.modules, "measure from a process without torch"
    py = sys.executable
    logs = REPO / OUT / "logs"
    logs.mkdir()

    def fuse(out: str) -> list[str]:
        return [py, "-m", "rejuv_cli", "fuse", str(PAIR / "base"), str(PAIR / "sft"),
                "--out", str(OUT / out), "--shard-size", SHARD_SIZE, "--quiet"]  # fmt: skip

    def single(out: str, threads: int | None) -> dict:
        shutil.rmtree(REPO / OUT / out, ignore_errors=True)
        env = dict(os.environ)
        if threads is not None:
            os.environ["OMP_NUM_THREADS"] = str(threads)
        try:
            seconds, rss, code = run_measured(fuse(out), logs / f"{out}.log")
        finally:
            os.environ.clear()
            os.environ.update(env)
        assert code == 0, (logs / f"{out}.log").read_text()[-2000:]
        return {"seconds": round(seconds, 2), "peak_rss_bytes": rss}

    def ranks(out: str) -> dict:
        shutil.rmtree(REPO / OUT / out, ignore_errors=True)
        run = run_ranks(fuse(out), WORLD, logs)
        assert all(r["exit"] == 0 for r in run["ranks"]), (logs / "rank0.log").read_text()[-2000:]
        return run

    runs: dict[str, list[dict]] = {"one": [], "one_1thread": [], "two": []}
    for i in range(args.repeats):
        print(f"round {i + 1}/{args.repeats}", flush=True)
        runs["one"].append(single("one", None))
        runs["one_1thread"].append(single("one-1thread", 1))
        runs["two"].append(ranks("two"))

    def median(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    summary = {k: {"seconds": median(v, "seconds")} for k, v in runs.items()}
    for k in ("one", "one_1thread"):
        summary[k]["peak_rss_bytes"] = int(median(runs[k], "peak_rss_bytes"))
    summary["two"]["ranks"] = [
        {"seconds": statistics.median(run["ranks"][r]["seconds"] for run in runs["two"]),
         "peak_rss_bytes": int(statistics.median(run["ranks"][r]["peak_rss_bytes"]
                                                 for run in runs["two"]))}
        for r in range(WORLD)
    ]  # fmt: skip
    record = json.loads((REPO / OUT / "two" / "rejuv.json").read_text())
    result = {
        "provenance": meta,
        "pair": str(PAIR),
        "parameters": params,
        "tensor_bytes": nbytes,
        "world_size": WORLD,
        "shard_size": SHARD_SIZE,
        "repeats": args.repeats,
        "summary": summary,
        "speedup_vs_one": round(summary["one"]["seconds"] / summary["two"]["seconds"], 2),
        "speedup_vs_one_1thread": round(
            summary["one_1thread"]["seconds"] / summary["two"]["seconds"], 2
        ),
        "shards_per_rank": [
            sum(1 for r in record["ranks"]["shards"].values() if r == k) for k in range(WORLD)
        ],  # fmt: skip
        # the tools' own timers of the last run of each (rejuv.json `seconds`)
        "timers": {
            "one": json.loads((REPO / OUT / "one" / "rejuv.json").read_text())["seconds"],
            "two": record["seconds"],
        },  # fmt: skip
        "outputs": same_bytes(REPO / OUT / "one", REPO / OUT / "two"),
        "runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "torchrun_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print("-> bench/results/torchrun_bench.json (README: make docs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
