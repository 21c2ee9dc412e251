"""The pre-registered comparisons of the evidence run: paired differences over seeds and rank
correlations. Pure Python (no scipy): the numbers are small and the formulas short.

A GRPO seed fixes the RL prompts and the sampling generator, so two arms run with the same seed
see the same prompts: their post-RL accuracies are compared seed by seed (paired).
"""

from __future__ import annotations

import math
import statistics

VERDICT_CODE = {"ok": 0, "watch": 1, "rigid": 2}


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def paired(runs: list[dict], a: str, b: str, key: str = "post") -> dict | None:
    """Arm a minus arm b, seed by seed: mean ± std of the differences, how many seeds a wins,
    and the paired t statistic (mean / (std / sqrt(n))); None when a seed is missing."""
    by = {(r["checkpoint"], r["seed"]): r[key] for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    if not all((a, s) in by and (b, s) in by for s in seeds):
        return None
    diffs = [by[(a, s)] - by[(b, s)] for s in seeds]
    m, sd = mean_std(diffs)
    t = m / (sd / math.sqrt(len(diffs))) if sd > 0 else (math.copysign(math.inf, m) if m else 0.0)
    return {"a": a, "b": b, "key": key, "mean": m, "std": sd, "n": len(diffs),
            "wins": sum(d > 0 for d in diffs), "t": t, "diffs": diffs}  # fmt: skip


def ranks(xs: list[float]) -> list[float]:
    """Ranks 1..n, ties given their average rank."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    out = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation: Pearson's r of the ranks (ties averaged); None when either
    side is constant or there are fewer than 3 pairs."""
    if len(xs) != len(ys) or len(xs) < 3:
        return None
    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def questions(log: dict, rows: list[dict]) -> dict:
    """The pre-registered comparisons (README): every arm is reported, nothing is selected."""
    runs, chosen = log["runs"], log["chosen"]
    early = f"sft-e{chosen['early']}"
    ladder = [r for r in rows if r["arm"] == "sft"]
    out: dict = {
        "overtraining": {
            "n": len(ladder),
            "spearman": spearman([r["sft_epochs"] for r in ladder], [r["gain"][0] for r in ladder]),
            "over_vs_improving": paired(
                runs, f"sft-e{chosen['over']}", f"sft-e{chosen['improving']}", "gain"
            ),  # fmt: skip
        },
        "arms": [],
        "reset": [],
        "attribution": {},
        "sweep_rank": {},
        "predictors": {},
    }
    for r in rows:
        if r["arm"] == "sft":
            continue
        sft = r["checkpoint"].split("+")[0]
        out["arms"].append({"arm": r["checkpoint"], "vs_sft": paired(runs, r["checkpoint"], sft),
                            "vs_early": paired(runs, r["checkpoint"], early)})  # fmt: skip
        if r["arm"].startswith("rejuv-") or r["arm"] == "sweep-rejuv":
            fusion = r["checkpoint"].replace("+rejuv-", "+fuse-")
            fusion = fusion.replace("+sweep-rejuv", "+sweep-fuse")
            out["reset"].append({"arm": r["checkpoint"], "diff": paired(runs, r["checkpoint"],
                                                                        fusion)})  # fmt: skip
        if r["arm"] == "sweep-attribution":
            drift = r["checkpoint"].replace("+sweep-attribution", "+sweep-rejuv")
            out["attribution"][r["checkpoint"]] = paired(runs, r["checkpoint"], drift)
    for ck in log.get("sweep", {}):
        group = [r for r in rows if r["checkpoint"].split("+")[0] == ck]
        order = sorted(group, key=lambda r: -r["post"][0])
        rec = log["sweep"][ck]["recommendation"]["alpha"]
        target = f"{ck}+sweep-rejuv" if rec is not None else ck  # no surgery: SFT itself
        rank = 1 + [r["checkpoint"] for r in order].index(target)
        what = "no surgery" if rec is None else rec
        out["sweep_rank"][ck] = f"{target} ranks {rank} of {len(order)} (recommended α: {what})"
    gains = [r["gain"][0] for r in rows]
    for metric in ("entropy", "skill_retained", "learnable_share", "calib_accuracy", "verdict"):
        pairs = [(VERDICT_CODE[r[metric]] if metric == "verdict" else r[metric], g)
                 for r, g in zip(rows, gains, strict=True) if r[metric] is not None]  # fmt: skip
        out["predictors"][metric] = {"n": len(pairs),
                                     "spearman": spearman([p[0] for p in pairs],
                                                          [p[1] for p in pairs])}  # fmt: skip
    return out
