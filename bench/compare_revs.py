"""Fuse wall time of this tree against another git revision, alternated in one run.

    .venv/bin/python bench/compare_revs.py 032e982             # 5 rounds, ~3 min on 2 cores
    .venv/bin/python bench/compare_revs.py HEAD~3 --rounds 9

Checks REV out into a temporary git worktree and runs the same commands from both source trees
(`python -m rejuv_cli` with PYTHONPATH set to each tree's src/, the same interpreter and
packages) on the bench pair (.bench/pair, built by make_pair.py when missing): fusion only
(`--reset 0`) and fusion + the default 1% drift reset. The two trees alternate, A B B A ...,
so drift in the machine's speed hits both alike; inputs are read once untimed first and every
output is removed and flushed (os.sync) untimed before each run. Prints the median wall time of
each and the ratio this tree / REV; a ratio above 1.05 is a slowdown beyond the redesign's 5%.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAIR = REPO / ".bench" / "pair"
CASES = {"fusion": ["--reset", "0"], "fusion+reset": []}


def fuse_seconds(src: Path, extra: list[str], out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    os.sync()
    env = {**os.environ, "PYTHONPATH": str(src)}
    command = [sys.executable, "-m", "rejuv_cli", "fuse", str(PAIR / "base"), str(PAIR / "sft"),
               "--out", str(out), "--quiet", "--device", "cpu", *extra]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(command, env=env, check=True, cwd=REPO)
    return time.perf_counter() - t0


def warm_inputs() -> None:
    for path in sorted(PAIR.rglob("*.safetensors")):
        with path.open("rb") as f:
            while f.read(1 << 24):
                pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rev", help="the revision to compare with, e.g. a commit")
    parser.add_argument("--rounds", type=int, default=5)
    ns = parser.parse_args()
    if not (PAIR / "sft").is_dir():
        subprocess.run([sys.executable, "bench/make_pair.py", "--preset", "bench", "--out",
                        str(PAIR.relative_to(REPO))], cwd=REPO, check=True)  # fmt: skip
    warm_inputs()
    with tempfile.TemporaryDirectory(prefix="rejuv-rev-") as scratch:
        old_tree = Path(scratch) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(old_tree), ns.rev],
                       cwd=REPO, check=True)  # fmt: skip
        try:
            trees = {"this tree": REPO / "src", ns.rev: old_tree / "src"}
            times = {(case, name): [] for case in CASES for name in trees}
            out = Path(scratch) / "out"
            for round_ in range(ns.rounds):
                order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
                for case, extra in CASES.items():
                    for name in order:
                        times[case, name].append(fuse_seconds(trees[name], extra, out))
                print(f"round {round_ + 1}/{ns.rounds} done", file=sys.stderr)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=REPO)
    print(f"| case | this tree (s) | {ns.rev} (s) | ratio |\n|---|---|---|---|")
    for case in CASES:
        new = statistics.median(times[case, "this tree"])
        old = statistics.median(times[case, ns.rev])
        print(f"| {case} | {new:.2f} | {old:.2f} | {new / old:.3f} |")
    print(f"medians of {ns.rounds} alternated runs each; bench pair {PAIR.relative_to(REPO)}")


if __name__ == "__main__":
    main()
