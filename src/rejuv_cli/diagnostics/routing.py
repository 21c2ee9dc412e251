"""The report's `routing` section for mixture-of-experts models (docs/method.md section 5,
"Routing"): per MoE layer, each expert's share of the routed tokens, the router's mean
entropy, the dead experts and the usage KL to BASE, for BASE, SFT and the candidate; and the
model-level figures the verdict and `--fail-on` read.

SFT's numbers sit at the section's root, BASE's and the candidate's under `base` and
`candidate`, as in `output` and `units`. Pure numpy over the counts calib/routing.py
collected.
"""

from __future__ import annotations

from rejuv_cli.calib.routing import (
    DEAD_SHARE,
    KL_PSEUDOCOUNT,
    RoutingRecord,
    dead_experts,
    router_paths,
    shares,
    usage_kl,
)


def routing_summary(rec: RoutingRecord, base: RoutingRecord | None) -> dict:
    """One model's block: its layers and the model-level figures; `base` None for BASE
    itself (no KL, no increase over BASE)."""
    layers, dead_total, experts_total = [], 0, 0
    kls: list[float] = []
    increases: list[float] = []
    entropies = []
    for i, lr in sorted(rec.layers.items()):
        counts = lr.count_array()
        share = shares(counts)
        dead = dead_experts(share)
        row = {
            "layer": i,
            "experts": lr.experts,
            "share": [float(x) for x in share],
            "entropy_mean": lr.entropy_mean(),
            "dead_share": len(dead) / lr.experts,
            "dead": dead,
        }
        dead_total += len(dead)
        experts_total += lr.experts
        entropies.append(row["entropy_mean"])
        if base is not None:
            theirs = base.layers.get(i)
            row["kl_to_base"] = None
            if theirs is not None and theirs.experts == lr.experts:
                base_counts = theirs.count_array()
                row["kl_to_base"] = usage_kl(counts, base_counts)
                kls.append(row["kl_to_base"])
                base_dead = len(dead_experts(shares(base_counts))) / theirs.experts
                increases.append(row["dead_share"] - base_dead)
        layers.append(row)
    top_k = next((lr.top_k for lr in rec.layers.values() if lr.top_k), None)
    out = {
        "tokens": max((lr.tokens for lr in rec.layers.values()), default=0),
        "top_k": top_k,
        "dead_share": dead_total / experts_total if experts_total else None,
        "dead_share_max": max((r["dead_share"] for r in layers), default=None),
        "dead_experts": dead_total,
        "entropy_mean": sum(entropies) / len(entropies) if entropies else None,
        "layers": layers,
    }
    if base is not None:
        out["kl_mean"] = sum(kls) / len(kls) if kls else None
        out["kl_max"] = max(kls, default=None)
        out["dead_increase"] = max(increases, default=None)
    return out


def routing_section(records: dict, config, warnings: list[str]) -> tuple[dict | None, str | None]:
    """The `routing` section from the calibration pass's records (role -> ModelRecord), or
    (None, why) when SFT has no router that was measured. Routers that could not be read are
    added to `warnings`."""
    for role, rec in records.items():
        warnings.extend(f"{role.upper()}: {p}" for p in rec.routing.problems)
    paths = router_paths(config)
    sft = records["sft"].routing
    if not paths:
        model_type = getattr(config, "model_type", None)
        return None, (f"not measured: model_type {model_type!r} has no mixture-of-experts "
                      "router in rejuv's unit maps (dense models have none)")  # fmt: skip
    if not sft.layers:
        if not sft.routers:
            return None, f"not measured: no router module at {' or '.join(paths)} in the SFT model"
        return None, f"not measured: no router's output at {sft.where} could be read (see warnings)"
    base = records["base"].routing
    section = {
        "router": sft.where,
        "dead_below": DEAD_SHARE,
        "kl_pseudocount": KL_PSEUDOCOUNT,
        **routing_summary(sft, base),
        "base": routing_summary(base, None),
        "candidate": None,
    }
    if "candidate" in records:
        section["candidate"] = routing_summary(records["candidate"].routing, base)
    return section, None
