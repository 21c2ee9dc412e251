"""The toy SFT -> RL handoff experiment (`make handoff`; CPU only, ~20 minutes on 2 cores).

    python bench/handoff/run.py                 # full run -> bench/handoff/results/
    python bench/handoff/run.py --quick         # a smoke run in ~2 minutes (not a result)

1. Base: pretrain a tiny Llama (character tokenizer) on broad arithmetic text.
2. SFT ladder: fine-tune it on 256 worked three-term sums at a constant learning rate, fixed
   order, saving after 1, 2, 4, 8, 16 and 32 epochs.
3. Rejuvenated variants of the 32-epoch checkpoint made with the real CLI:
   `rejuv fuse --alpha 0.5 --reset 0` and `rejuv fuse --alpha 0.5` (default 1% drift reset).
4. RL: the same GRPO run (group 8, binary reward, fixed steps, fresh optimizer) from every
   checkpoint with each seed; held-out test problems never seen in SFT or RL.
5. Report: results.json (everything), results.md (the table), gain_vs_epochs.png.

Pre-RL entropy comes from `rejuv diagnose BASE CKPT --calib calib.jsonl --json -`, i.e. the
teacher-forced next-token entropy on held-out worked problems.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

EPOCHS = [1, 2, 4, 8, 16, 32]
SFT_EXAMPLES = 256
SEEDS = {"pretrain": 0, "sft": 1, "test": 2, "calib": 3}
FULL = dict(pretrain_steps=3000, grpo_steps=150, seeds=3, test=256)
QUICK = dict(pretrain_steps=300, grpo_steps=5, seeds=2, test=64)
DEMO = HERE / "demo"  # the shipped pair `make demo` uses: base and the 32-epoch SFT


def rejuv(*args: str) -> str:
    """Run the real CLI (the installed `rejuv` next to this interpreter); returns stdout."""
    exe = Path(sys.executable).with_name("rejuv")
    done = subprocess.run([str(exe), *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"rejuv {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def _grpo_job(job) -> dict:
    import torch

    torch.set_num_threads(1)  # two workers on two cores
    from grpo import GRPOSettings, run

    name, path, seed, steps, test, sft_set = job
    result = run(Path(path), seed, GRPOSettings(steps=steps), test, sft_set)
    return {"checkpoint": name, **result}


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path(".handoff"), help="checkpoints go here")
    ap.add_argument("--results", type=Path, default=HERE / "results")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run; not a result")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite results.md and the plot from RESULTS/results.json")  # fmt: skip
    args = ap.parse_args()
    if args.report_only:
        log = json.loads((args.results / "results.json").read_text())
        names = [row["checkpoint"] for row in log.pop("table")]
        write_results(log, names, args.results, quick=log.get("quick", False))
        return
    cfg = QUICK if args.quick else FULL
    import torch

    torch.set_num_threads(2)
    from task import problems
    from train import pretrain, sft_ladder

    t0 = time.perf_counter()
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = {
        "quick": args.quick,
        "config": cfg,
        "epochs": EPOCHS,
        "sft_examples": SFT_EXAMPLES,
        "seeds": SEEDS,
    }

    print(f"[1/5] pretraining the base ({cfg['pretrain_steps']} steps)", flush=True)
    log["pretrain"] = pretrain(work / "base", cfg["pretrain_steps"], SEEDS["pretrain"])
    print(f"      {log['pretrain']}", flush=True)
    print(f"[2/5] SFT ladder {EPOCHS} epochs on {SFT_EXAMPLES} examples", flush=True)
    log["sft"] = sft_ladder(work / "base", work, EPOCHS, SFT_EXAMPLES, SEEDS["sft"])

    print("[3/5] rejuvenated variants with rejuv fuse", flush=True)
    last = work / f"sft-e{EPOCHS[-1]}"
    checkpoints = {f"sft-e{e}": work / f"sft-e{e}" for e in EPOCHS}
    variants = {"fuse-a0.5": ["--alpha", "0.5", "--reset", "0"],
                "rejuv-a0.5-r1%": ["--alpha", "0.5"]}  # fmt: skip
    log["fuse_commands"] = {}
    for name, extra in variants.items():
        out = work / name
        cmd = [str(work / "base"), str(last), "--out", str(out), *extra, "--json", "-q"]
        summary = json.loads(rejuv("fuse", *cmd))
        log["fuse_commands"][name] = "rejuv fuse " + " ".join(cmd[:-2])
        log.setdefault("fuse", {})[name] = {"reset": summary.get("reset")}
        checkpoints[name] = out

    print("[4/5] pre-RL entropy with rejuv diagnose", flush=True)
    sft_set = set(problems(SEEDS["sft"], SFT_EXAMPLES))
    calib = work / "calib.jsonl"
    with calib.open("w") as f:
        for p in problems(SEEDS["calib"], 128, sft_set):
            f.write(
                json.dumps({"prompt": p.prompt, "response": p.worked, "answer": p.answer}) + "\n"
            )
    diag = {}
    for name, path in checkpoints.items():
        report = json.loads(rejuv("diagnose", str(work / "base"), str(path), "--calib",
                                  str(calib), "--samples", "128", "--sharpness-draws", "0",
                                  "--json", "-", "-q"))  # fmt: skip
        diag[name] = {"entropy": report["output"]["entropy_mean"],
                      "verdict": report["verdict"]["label"],
                      "drift": report["weights"]["overall"]["rel_drift"]}  # fmt: skip
    log["diagnose"] = diag

    test = problems(SEEDS["test"], cfg["test"], sft_set)  # held out from SFT and RL
    jobs = [(name, str(path), seed, cfg["grpo_steps"], test, sft_set)
            for name, path in checkpoints.items() for seed in range(cfg["seeds"])]  # fmt: skip
    print(f"[5/5] GRPO: {len(jobs)} runs of {cfg['grpo_steps']} steps, "
          f"{args.workers} workers", flush=True)  # fmt: skip
    runs = []
    with mp.get_context("spawn").Pool(args.workers) as pool:
        for r in pool.imap_unordered(_grpo_job, jobs):
            runs.append(r)
            print(f"      {r['checkpoint']} seed {r['seed']}: {r['pre']:.3f} -> {r['post']:.3f}"
                  f" ({r['seconds']:.0f} s)", flush=True)  # fmt: skip
    log["runs"] = sorted(runs, key=lambda r: (list(checkpoints).index(r["checkpoint"]), r["seed"]))
    log["seconds"] = time.perf_counter() - t0
    write_results(log, list(checkpoints), args.results, args.quick)
    if not args.quick:
        ship_demo(work, last, calib)
    print(f"done in {log['seconds'] / 60:.1f} min -> {args.results}", flush=True)


def ship_demo(work: Path, sft: Path, calib: Path) -> None:
    """Copy the base, the most over-trained SFT and the calibration file to bench/handoff/demo
    (about 1 MB per checkpoint), replacing what was there."""
    shutil.rmtree(DEMO, ignore_errors=True)
    DEMO.mkdir()
    shutil.copytree(work / "base", DEMO / "base")
    shutil.copytree(sft, DEMO / "sft")
    shutil.copy(calib, DEMO / "calib.jsonl")


def table_rows(log: dict, names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        runs = [r for r in log["runs"] if r["checkpoint"] == name]
        rows.append({
            "checkpoint": name,
            "sft_epochs": int(name.split("-e")[1]) if name.startswith("sft-e") else EPOCHS[-1],
            "pre": mean_std([r["pre"] for r in runs]),
            "post": mean_std([r["post"] for r in runs]),
            "gain": mean_std([r["gain"] for r in runs]),
            "zero_variance_early": mean_std([r["zero_variance_early"] for r in runs]),
            **log["diagnose"][name],
        })  # fmt: skip
    return rows


def write_results(log: dict, names: list[str], out: Path, quick: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = table_rows(log, names)
    (out / "results.json").write_text(json.dumps(log | {"table": rows}, indent=1) + "\n")
    pm = lambda ms: f"{ms[0]:.3f} ± {ms[1]:.3f}"  # noqa: E731
    lines = [
        "| checkpoint | SFT epochs | pre-RL acc | post-RL acc | gain | entropy (nats) "
        "| zero-var groups, first 10 steps | rel. drift | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['checkpoint']} | {r['sft_epochs']} | {pm(r['pre'])} | {pm(r['post'])}"
                     f" | {pm(r['gain'])} | {r['entropy']:.3f} | {pm(r['zero_variance_early'])}"
                     f" | {r['drift']:.3f} | {r['verdict']} |")  # fmt: skip
    runs = log["config"]["seeds"]
    head = ("QUICK SMOKE RUN: not a result.\n\n" if quick else "") + (
        f"Mean ± std over {runs} GRPO seeds; accuracy = greedy pass rate on "
        f"{log['config']['test']} held-out problems. Total time {log['seconds'] / 60:.1f} min.\n\n"
    )
    (out / "results.md").write_text(head + "\n".join(lines) + "\n")
    plot(rows, out / "gain_vs_epochs.png", quick)


def plot(rows: list[dict], path: Path, quick: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ladder = [r for r in rows if r["checkpoint"].startswith("sft-e")]
    others = [r for r in rows if not r["checkpoint"].startswith("sft-e")]
    for ax, key, label in ((axes[0], "gain", "RL gain (post − pre accuracy)"),
                           (axes[1], "post", "post-RL accuracy")):  # fmt: skip
        x = [r["sft_epochs"] for r in ladder]
        ax.errorbar(x, [r[key][0] for r in ladder], yerr=[r[key][1] for r in ladder],
                    marker="o", capsize=3, label="SFT checkpoints")  # fmt: skip
        for r, marker in zip(others, ("s", "D", "^"), strict=False):
            legend = f"{r['checkpoint']} (of 32 ep.)"
            ax.errorbar([r["sft_epochs"] * 1.08], [r[key][0]], yerr=[r[key][1]], marker=marker,
                        capsize=3, linestyle="none", label=legend)  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xticks(x, [str(e) for e in x])
        ax.set_xlabel("SFT epochs")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    title = "Toy SFT→RL handoff: GRPO from each checkpoint (mean ± std over seeds)"
    fig.suptitle(("QUICK SMOKE RUN — " if quick else "") + title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
