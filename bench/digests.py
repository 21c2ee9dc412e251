"""Digests of rejuv's outputs on the demo and bench pairs: proof that a refactor changed nothing.

    .venv/bin/python bench/digests.py --write     # record bench/results/digests.json
    .venv/bin/python bench/digests.py             # rerun every case, compare, exit 1 on a change
    .venv/bin/python bench/digests.py --only demo # the demo cases only (~1 min)

Each case runs the CLI as a user would (its own process, `--device cpu`, every calibration
setting given explicitly so that a change of defaults does not show as a change of output) and
hashes what it wrote:

- fuse: the SHA-256 of every output file (shards, index, copied side files, model card), and
  of rejuv.json without its volatile keys (`seconds`, `host`);
- a mask (`--dry-run --save-mask`): the mask file's SHA-256;
- diagnose: the SHA-256 of its JSON report without the volatile keys, plus the report itself
  in the results, so a difference can be read.

The bench pair (~301.5M params, bf16) is built by make_pair.py at .bench/pair when missing
(~20 s); its cases take a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "digests.json"
WORK = Path(".digests")  # relative to REPO
DEMO = Path("bench/handoff/demo")
PAIR = Path(".bench/pair")
VOLATILE = {"seconds", "host"}  # wall times and the machine: differ between any two runs

DEMO_CALIB = ["--calib", str(DEMO / "calib.jsonl"), "--samples", "64", "--max-tokens", "256"]
PAIR_CALIB = ["--calib", "builtin:math", "--samples", "8", "--max-tokens", "64"]
SCORERS = ("drift", "dormant", "saturated", "attribution")
RESET_VARIANTS = {
    "fusion": ["--reset", "0"],
    "default-reset": [],
    "base-omega0.5": ["--omega", "0.5"],
    "shrink-perturb": ["--reset-mode", "shrink-perturb", "--seed", "3"],
    "reinit": ["--reset-mode", "reinit", "--seed", "3"],
    "alpha0.3-fp32": ["--alpha", "0.3", "--dtype", "fp32", "--reset", "0.02"],
}


def cases(pair: str) -> dict[str, list[str]]:
    """Case name -> rejuv arguments; the output path is added by `run`."""
    root, calib = (DEMO, DEMO_CALIB) if pair == "demo" else (PAIR, PAIR_CALIB)
    inputs = [str(root / "base"), str(root / "sft")]
    found: dict[str, list[str]] = {}
    for name, extra in RESET_VARIANTS.items():
        found[f"{pair}/fuse/{name}"] = ["fuse", *inputs, *extra]
    for scorer in SCORERS:
        data = calib if scorer != "drift" else []
        found[f"{pair}/mask/{scorer}"] = ["fuse", *inputs, "--dry-run", "--select", scorer,
                                          "--reset", "0.05", *data]  # fmt: skip
    if pair == "demo":
        found["demo/diagnose"] = ["diagnose", *inputs, *calib, "--rank"]
    return found


def strip_volatile(value):
    if isinstance(value, dict):
        return {k: strip_volatile(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [strip_volatile(v) for v in value]
    return value


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def json_digest(path: Path) -> tuple[str, object]:
    report = strip_volatile(json.loads(path.read_text()))
    return sha256(json.dumps(report, sort_keys=True).encode()), report


def run(name: str, args: list[str]) -> dict:
    """Run one case and return its digests."""
    out = WORK / name.replace("/", "-")
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "rejuv_cli", *args, "--device", "cpu", "-q"]
    if args[0] == "diagnose":
        command += ["--json", str(out.with_suffix(".json"))]
    elif "--dry-run" in args:
        command += ["--out", str(out), "--save-mask", str(out.with_suffix(".safetensors"))]
    else:
        command += ["--out", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{name}: exit {done.returncode}\n{done.stderr}")
    if args[0] == "diagnose":
        digest, report = json_digest(REPO / out.with_suffix(".json"))
        return {"report.json": digest, "report": report}
    if "--dry-run" in args:
        return {"mask": file_sha256(REPO / out.with_suffix(".safetensors"))}
    files = {}
    for path in sorted((REPO / out).iterdir()):
        if path.name == "rejuv.json":
            files[path.name] = json_digest(path)[0]
        else:
            files[path.name] = file_sha256(path)
    return files


def ensure_bench_pair() -> None:
    if not (REPO / PAIR / "sft").is_dir():
        build = [sys.executable, "bench/make_pair.py", "--preset", "bench", "--out", str(PAIR)]
        subprocess.run(build, cwd=REPO, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="record instead of comparing")
    parser.add_argument("--only", choices=["demo", "bench"], help="one pair's cases")
    ns = parser.parse_args()
    pairs = [ns.only] if ns.only else ["demo", "bench"]
    if "bench" in pairs:
        ensure_bench_pair()
    got = {}
    for pair in pairs:
        for name, args in cases(pair).items():
            print(f"{name} ...", file=sys.stderr, flush=True)
            got[name] = run(name, args)
    if ns.write:
        recorded = json.loads(RESULTS.read_text()) if RESULTS.exists() and ns.only else {}
        RESULTS.write_text(json.dumps({**recorded, **got}, indent=1, sort_keys=True) + "\n")
        print(f"recorded {len(got)} cases in {RESULTS.relative_to(REPO)}")
        return
    recorded = json.loads(RESULTS.read_text())
    changed = []
    for name, digests in got.items():
        before = recorded.get(name)
        for key, value in digests.items():
            if key != "report" and (before is None or before.get(key) != value):
                changed.append(f"{name}: {key}")
    for line in changed:
        print(f"CHANGED {line}")
    print(f"{len(got)} cases, {len(changed)} digests changed")
    sys.exit(1 if changed else 0)


if __name__ == "__main__":
    main()
