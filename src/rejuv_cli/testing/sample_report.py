"""A realistic `rejuv diagnose` report built without models, for the HTML report's tests and the
headless-browser check (rejuv_cli.testing.browser, bench/check_html.py)."""

from __future__ import annotations

import math
import random

MODULES = ("q", "k", "v", "o", "mlp", "norm")
LAYERS = 4
EVIL = "model.layers.0.mlp.<script>alert(1)</script>.weight"
SVG_IDS = ("drift-heatmap", "drift-heatmap-candidate", "entropy-histogram", "drift-layers")
TENSOR_SUFFIX = {
    "q": "self_attn.q_proj.weight",
    "k": "self_attn.k_proj.weight",
    "v": "self_attn.v_proj.weight",
    "o": "self_attn.o_proj.weight",
    "mlp": "mlp.up_proj.weight",
    "norm": "input_layernorm.weight",
}


def _stats(rng: random.Random, drift: float) -> dict:
    return {
        "rel_drift": drift,
        "cosine": 1 - drift**2 / 2,
        "msd": drift**2 * 1e-4,
        "kurtosis": 3 + rng.random() * 40,
        "top_share": rng.random() * 0.05,
        "max_over_std": 5 + rng.random() * 30,
    }


def _weights(seed: int, scale: float) -> dict:
    rng = random.Random(seed)
    layer_modules, tensors, layers = {}, {}, {}
    for layer in range(LAYERS):
        drifts = []
        for j, m in enumerate(MODULES):
            d = scale * (0.002 + 0.004 * layer + 0.003 * j + rng.random() * 0.002)
            drifts.append(d)
            layer_modules[f"{layer}.{m}"] = _stats(rng, d)
            tensors[f"model.layers.{layer}.{TENSOR_SUFFIX[m]}"] = _stats(rng, d) | {
                "numel": 4096 if m == "norm" else 4096 * 1024
            }
        layers[str(layer)] = _stats(rng, sum(drifts) / len(drifts))
    tensors["model.embed_tokens.weight"] = _stats(rng, scale * 0.001) | {"numel": 32000 * 4096}
    tensors[EVIL] = _stats(rng, scale * 0.5) | {"numel": 7}
    top = max(tensors, key=lambda n: tensors[n]["rel_drift"])
    return {
        "overall": _stats(rng, scale * 0.012),
        "drift_max": tensors[top]["rel_drift"],
        "drift_max_tensor": top,
        "layers": layers,
        "layer_modules": layer_modules,
        "tensors": tensors,
        "units": {
            "mlp": {"count": 11008 * LAYERS, "p50": 0.01, "p90": 0.03, "p99": 0.08, "max": 0.4},
            "q": {"count": 4096 * LAYERS, "p50": 0.008, "p90": 0.02, "p99": 0.05, "max": 0.2},
        },
    }


def _hist(seed: int, peak: float, tokens: int) -> dict:
    """Entropy histogram with 30 bins over [0, 6] nats, mass around `peak`."""
    rng = random.Random(seed)
    edges = [i * 0.2 for i in range(31)]
    weights = [math.exp(-(((e + 0.1) - peak) ** 2) / 0.8) + 0.02 * rng.random() for e in edges[:-1]]
    total = sum(weights)
    return {"edges": edges, "counts": [round(tokens * w / total) for w in weights]}


def _units(seed: int, dormant: float) -> dict:
    rng = random.Random(seed)
    taus = [0.01, 0.025, 0.1]
    rows = [
        {
            "layer": layer,
            "module": m,
            "units": 11008 if m == "mlp" else 4096,
            "dormant": {str(t): dormant * (1 + 10 * t) * (1 + rng.random()) for t in taus},
            "saturated": rng.random() * 0.01,
            "percentiles": {"p1": 0.001, "p5": 0.01, "p50": 0.3, "p95": 1.9, "p99": 3.1},
        }
        for layer in range(LAYERS)
        for m in ("mlp", "attn")
    ]
    return {
        "taus": taus,
        "dormant": {str(t): dormant * (1 + 10 * t) for t in taus},
        "saturated": 0.004,
        "layers": rows,
    }


def sample_report(candidate: bool = True, weights_only: bool = False) -> dict:
    """A realistic schema-1 report: 4 layers × (q, k, v, o, mlp, norm)."""
    weights = _weights(1, 1.0)
    report = {
        "schema_version": 1,
        "tool": "rejuv 0.1.0",
        "inputs": {
            "base": "/models/Qwen2.5-Math-7B",
            "sft": "/runs/sft-<v2>&final",
            "candidate": "/runs/fused-a0.5" if candidate else None,
            "calib": None if weights_only else "builtin:math",
            "samples": None if weights_only else 64,
            "max_tokens": None if weights_only else 512,
            "device": "cpu",
            "weights_only": weights_only,
        },
        "verdict": {
            "label": "rigid",
            "heuristic": True,
            "reasons": [
                {
                    "id": "low_entropy",
                    "level": "rigid",
                    "metric": "output.entropy_mean",
                    "value": 0.02,
                    "threshold": 0.18,
                    "message": "mean token entropy 0.02 nats < 0.18: near-deterministic",
                },
                {
                    "id": "dormant_units",
                    "level": "watch",
                    "metric": "units.dormant.0.025",
                    "value": 0.071,
                    "threshold": 0.05,
                    "message": "7.1% of MLP units dormant at τ=0.025",
                },
            ],
            "suggested_command": "rejuv fuse /models/Qwen2.5-Math-7B '/runs/sft-<v2>&final' "
            "--out fused --recipe paper",
            "candidate": None,
        },
        "weights": weights,
        "output": {
            "entropy_mean": 0.31,
            "p_max_mean": 0.93,
            "confident_share": 0.88,
            "nll_mean": 0.41,
            "skill_retained": 1.0,
            "kl_mean": 0.77,
            "entropy_ratio": 0.29,
            "tokens": 30000,
            "entropy_hist": _hist(2, 0.3, 30000),
            "base": {
                "entropy_mean": 1.07,
                "p_max_mean": 0.71,
                "confident_share": 0.52,
                "nll_mean": 0.93,
                "skill_retained": 0.0,
                "tokens": 30000,
                "entropy_hist": _hist(3, 1.6, 30000),
            },
        },
        "units": _units(4, 0.02) | {"base": _units(5, 0.005)},
        "sharpness": {
            "sft": 0.118,
            "base": 0.041,
            "ratio": 2.878,
            "candidate": None,
            "candidate_ratio": None,
            "sigma_rel": 0.01,
            "draws": 8,
            "seed": 0,
        },
        "comparison": None,
    }
    if candidate:
        cand_w = _weights(6, 0.5)
        del cand_w["units"]
        report["weights"]["candidate"] = cand_w
        report["output"]["candidate"] = {
            "entropy_mean": 0.62,
            "p_max_mean": 0.85,
            "confident_share": 0.74,
            "nll_mean": 0.45,
            "skill_retained": 0.923,
            "kl_mean": 0.35,
            "entropy_ratio": 0.58,
            "tokens": 30000,
            "entropy_hist": _hist(7, 0.8, 30000),
        }
        report["units"]["candidate"] = _units(8, 0.01)
        report["sharpness"] |= {"candidate": 0.07, "candidate_ratio": 1.707}
        report["verdict"]["candidate"] = {
            "label": "watch",
            "reasons": [
                {
                    "id": "entropy_ratio",
                    "level": "watch",
                    "metric": "output.entropy_ratio",
                    "value": 0.58,
                    "threshold": 0.6,
                    "message": "entropy still below 0.6× base",
                }
            ],
            "suggested_command": None,
        }
        report["comparison"] = [
            {
                "metric": "output.entropy_mean",
                "label": "entropy (nats)",
                "sft": 0.31,
                "candidate": 0.62,
                "better": "higher",
                "improved": True,
                "change": "better",
            },
            {
                "metric": "output.nll_mean",
                "label": "NLL (nats)",
                "sft": 0.41,
                "candidate": 0.45,
                "better": "lower",
                "improved": False,
                "change": "worse",
            },
        ]
    if weights_only:
        report |= {"output": None, "units": None, "sharpness": None, "comparison": None}
        report["verdict"] = {
            "label": "ok",
            "heuristic": True,
            "reasons": [],
            "suggested_command": None,
            "candidate": None,
        }
    return report
