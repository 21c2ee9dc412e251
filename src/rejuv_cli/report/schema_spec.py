"""The declared structure of the `rejuv diagnose` report: every value's path pattern, its kind,
its readable label, why it may be null, and which run settings a section needs.

Data only; `report/schema.py` walks it. Patterns are tuples of keys: ANY stands for any object
key (tensor names, layer numbers, module kinds), EACH for any list index. Pure standard
library; no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

ANY = "*"
EACH = "#"
TAUS = ("0.01", "0.025", "0.1")  # dormant thresholds as the report keys them (ops/activity.TAUS)
ROLES = ("base", "sft", "candidate")


@dataclass(frozen=True)
class Leaf:
    """A scalar in the report. kind: "number", "integer", "string", "boolean" or "any"; `label`
    is the readable name the reports show; `nullable` says why it may be null in a complete
    run; `unit` how the reports show a number (report/numbers.py): SHARE (a fraction of a count
    or a total, shown as a percentage), NATS, RELATIVE (a ratio, shown as a plain number) or ""
    (plain; counts, ranks, seeds)."""

    kind: str
    label: str = ""
    nullable: str = ""
    unit: str = ""


@dataclass(frozen=True)
class Condition:
    """When the section at a pattern exists; `flag` names the run setting it depends on."""

    flag: str  # "forward", "candidate", "rank", "sharpness", "generate" or "never" (RunFlags)
    absent: str  # completes "'<path>' …": why it is null or missing without it


N = "number"
SHARE, NATS, RELATIVE = "share", "nats", "relative"  # Leaf.unit
STATS = {
    "rel_drift": Leaf(N, "relative drift ‖Δ‖/‖θ_base‖", unit=RELATIVE),
    "cosine": Leaf(N, "cosine(θ, θ_base)", unit=RELATIVE),
    "msd": Leaf(N, "mean squared difference (weight units²)"),
    "kurtosis": Leaf(N, "kurtosis of Δ (3 for a Gaussian)"),
    "top_share": Leaf(N, "share of ‖Δ‖² in the top 0.1% entries", unit=SHARE),
    "max_over_std": Leaf(N, "max|Δ| / std(Δ)", unit=RELATIVE),
}
RANK = {
    "stable_rank": Leaf(N, "stable rank of Δ"),
    "effective_rank": Leaf(N, "effective rank of Δ"),
}
UNIT_DRIFT = {
    "count": Leaf("integer", "units"),
    **{
        k: Leaf(N, f"unit drift s_j, {k}", unit=RELATIVE)
        for k in ("mean", "p50", "p90", "p99", "max")
    },
}


def _weights() -> dict:
    return {
        "overall": STATS,
        "spikiness": Leaf(N, "spikiness (matrices' top-0.1% energy share)", unit=SHARE),
        "drift_max": Leaf(N, "largest tensor drift", unit=RELATIVE),
        "drift_max_tensor": Leaf("string", "most-drifted tensor", "no tensor pair to compare"),
        "layers": {ANY: STATS},
        "layer_modules": {ANY: STATS},
        "tensors": {ANY: STATS | {"numel": Leaf("integer", "elements")}},
        "rank": {
            "modules_mean": {ANY: RANK | {"max_rank": Leaf(N, "max rank")}},
            "tensors": {ANY: RANK | {"max_rank": Leaf("integer", "max rank")}},
        },
        "units": {ANY: UNIT_DRIFT},
    }


def _output(vs_base: bool) -> dict:
    block = {
        "entropy_mean": Leaf(N, "mean entropy (nats)", unit=NATS),
        "p_max_mean": Leaf(N, "mean max-probability"),
        "confident_share": Leaf(N, "share of tokens with p_max > 0.99", unit=SHARE),
        "nll_mean": Leaf(N, "NLL of the calibration responses (nats/token)", unit=NATS),
        "skill_retained": Leaf(
            N,
            "skill retained: share of SFT's NLL gain over BASE kept (1 = SFT, 0 = BASE)",
            "SFT's NLL is not below BASE's by more than 0.01 nats/token",
            RELATIVE,
        ),
        "tokens": Leaf("integer", "response tokens scored"),
        "entropy_hist": {
            "edges": {EACH: Leaf(N, "bin edge")},
            "counts": {EACH: Leaf("integer", "tokens in bin")},
        },  # fmt: skip
    }
    block |= GENERATION
    if vs_base:
        block["kl_mean"] = Leaf(N, "KL to BASE (nats/token)", unit=NATS)
        block["entropy_ratio"] = Leaf(
            N,
            "entropy / BASE entropy",
            "BASE's mean entropy is 0, so a ratio to it is undefined",
            RELATIVE,
        )
    return block


# --generate (diagnostics/generation.py): in each model's output block.
GENERATION = {
    "accuracy": Leaf(N, "greedy accuracy on the checkable examples", unit=SHARE),
    "accuracy_retained": Leaf(
        N,
        "accuracy retained: share of SFT's accuracy gain over BASE kept (1 = SFT, 0 = BASE)",
        "SFT's greedy accuracy is not above BASE's",
        RELATIVE,
    ),
    "pass_at_1": Leaf(N, "pass@1 (mean success over the k samples)", unit=SHARE),
    "pass_at_k": Leaf(N, "pass@k (share of prompts with a correct sample)", unit=SHARE),
    "learnable_share": Leaf(
        N, "learnable share: prompts whose k samples have mixed outcomes", unit=SHARE
    ),
    "all_wrong_share": Leaf(N, "share of prompts with no correct sample", unit=SHARE),
    "all_right_share": Leaf(N, "share of prompts with every sample correct", unit=SHARE),
    "no_answer": Leaf("integer", "greedy outputs with no answer found"),
    "truncated": Leaf("integer", "greedy outputs cut at --max-new-tokens"),
}


def _units(vs_base: bool) -> dict:
    dormant = {t: Leaf(N, f"dormant units (ReDo ≤ {t})", unit=SHARE) for t in TAUS}
    saturated = Leaf(N, "saturated units", unit=SHARE)
    block = {
        "taus": {EACH: Leaf(N, "ReDo threshold", unit=RELATIVE)},
        "dormant": dormant,
        "saturated": saturated,
        "units": Leaf("integer", "units measured"),
        "layers": {EACH: {
            "layer": Leaf("integer", "layer"), "module": Leaf("string", "module"),
            "key": Leaf("string", "module instance"), "units": Leaf("integer", "units"),
            "dormant": dormant, "saturated": saturated,
            "percentiles": {p: Leaf(N, f"ReDo score {p}", unit=RELATIVE)
                            for p in ("p1", "p5", "p50", "p95", "p99")},
        }},
        "not_measured": {EACH: Leaf("string", "module instance not hooked")},
        "unrouted": {EACH: Leaf("string", "expert that received no calibration token")},
    }  # fmt: skip
    if vs_base:
        block["dormant_increase"] = Leaf(N, "dormant share (≤ 0.025) minus BASE's", unit=SHARE)
    return block


# Mixture-of-experts routing (diagnostics/routing.py, docs/method.md section 5, "Routing").
_NO_BASE_LAYER = "BASE has no measured router with as many experts in this layer"


def _routing(vs_base: bool) -> dict:
    block = {
        "tokens": Leaf("integer", "real tokens routed (prompt and response)"),
        "top_k": Leaf("integer", "experts chosen per token (k)"),
        "dead_share": Leaf(N, "dead experts (share < dead_below / E), over all MoE layers",
                           unit=SHARE),
        "dead_share_max": Leaf(N, "dead experts in the worst MoE layer", unit=SHARE),
        "dead_experts": Leaf("integer", "dead experts, all MoE layers"),
        "entropy_mean": Leaf(N, "router entropy, mean over MoE layers (nats)", unit=NATS),
        "layers": {EACH: {
            "layer": Leaf("integer", "layer"),
            "experts": Leaf("integer", "experts (E)"),
            "share": {EACH: Leaf(N, "expert's share of the routed (token, slot) pairs",
                                 unit=SHARE)},
            "entropy_mean": Leaf(N, "mean router entropy over all experts (nats)", unit=NATS),
            "dead_share": Leaf(N, "dead experts in this layer", unit=SHARE),
            "dead": {EACH: Leaf("integer", "dead expert (index)")},
        }},
    }  # fmt: skip
    if vs_base:
        block["layers"][EACH]["kl_to_base"] = Leaf(
            N, "KL(expert usage ‖ BASE's usage) in this layer (nats)", _NO_BASE_LAYER, NATS
        )
        block["kl_mean"] = Leaf(N, "usage KL to BASE, mean over MoE layers (nats)",
                                _NO_BASE_LAYER, NATS)  # fmt: skip
        block["kl_max"] = Leaf(N, "usage KL to BASE, largest over MoE layers (nats)",
                               _NO_BASE_LAYER, NATS)  # fmt: skip
        block["dead_increase"] = Leaf(
            N, "largest rise of a layer's dead-expert share over BASE's", _NO_BASE_LAYER, SHARE
        )
    return block


_SHARP_MODEL = {
    "loss": Leaf(N, "calibration NLL (nats/token)", unit=NATS),
    "perturbed": {EACH: Leaf(N, "NLL at θ + u (nats/token)", unit=NATS)},
    "mirrored": {EACH: Leaf(N, "NLL at θ − u (nats/token)", unit=NATS)},
    "draw_values": {EACH: Leaf(N, "sharpness of one draw (nats)", unit=NATS)},
    "value": Leaf(N, "sharpness (nats)", unit=NATS),
    "stderr": Leaf(
        N, "standard error of the sharpness (nats)", "one draw has no standard error", NATS
    ),
}
_REASON = {
    "id": Leaf("string", "rule"), "level": Leaf("string", "level"),
    "metric": Leaf("string", "metric path"), "value": Leaf(N, "value"),
    "threshold": Leaf(N, "threshold"), "op": Leaf("string", "comparison"),
    "message": Leaf("string", "message"),
}  # fmt: skip
_MODEL_INFO = {
    "spec": Leaf("string", "as given"), "path": Leaf("string", "local path"),
    "repo_id": Leaf("string", "Hub repository", "not from the Hub"),
    "revision": Leaf("string", "Hub revision", "not from the Hub"),
    "commit": Leaf("string", "Hub commit", "not from the Hub"),
    "format": Leaf("string", "input form (safetensors, bin, peft-lora, dcp, fsdp, fp8-block)"),
    "input": Leaf("string", "how the input was read: its form and facts (adapter rank and "
                  "targets, world size, FP8 blocks)"),
}  # fmt: skip
SCHEMA: dict = {
    "schema_version": Leaf("integer", "report schema version"),
    "tool": Leaf("string", "tool and version"),
    "inputs": {
        "base": Leaf("string", "BASE"), "sft": Leaf("string", "SFT"),
        "candidate": Leaf("string", "candidate"), "calib": Leaf("string", "calibration data"),
        "samples": Leaf("integer", "calibration examples used"),
        "max_tokens": Leaf("integer", "tokens per example"),
        "response_tokens": Leaf("integer", "response tokens"),
        "batches": Leaf("integer", "forward batches"),
        "batch_tokens": Leaf("integer", "tokens per batch"),
        "dtype": Leaf("string", "forward dtype"), "device": Leaf("string", "device"),
        "weights_only": Leaf("boolean", "weights only"),
        "unk_share": Leaf(N, "share of calibration tokens that are the unknown token",
                          "the SFT tokenizer has no unknown token", SHARE),
        "models": {role: _MODEL_INFO for role in ROLES},
        "generation": {
            "checkable": Leaf("integer", "examples with a reference answer"),
            "group_size": Leaf("integer", "samples per prompt (k)"),
            "max_new_tokens": Leaf("integer", "longest generated answer (tokens)"),
            "checker": Leaf("string", "answer checker"), "seed": Leaf("integer", "seed"),
            "temperature": Leaf(N, "sampling temperature"),
        },
    },  # fmt: skip
    "verdict": {
        "label": Leaf("string", "verdict"),
        "heuristic": Leaf("boolean", "heuristic"),
        "reasons": {EACH: _REASON},
        "suggested_command": Leaf("string", "suggested next command: rejuv sweep for watch and "
                                  "rigid, a --fail-on CI gate for ok"),
        "measured": Leaf("string", "what this run measured: weights, output, units, routing, "
                                   "sharpness, generation"),
        "candidate": {"label": Leaf("string", "candidate verdict"), "reasons": {EACH: _REASON}},
    },
    "weights": _weights() | {"candidate": _weights()},
    "output": _output(True) | {"base": _output(False), "candidate": _output(True)},
    "units": _units(True) | {"base": _units(False), "candidate": _units(True)},
    "routing": {
        "router": Leaf("string", "router module per MoE layer ({i}: the layer)"),
        "dead_below": Leaf(N, "dead expert: share below this fraction of the uniform 1/E",
                           unit=RELATIVE),
        "kl_pseudocount": Leaf(N, "count added to every expert before the usage KL"),
    } | _routing(True) | {"base": _routing(False), "candidate": _routing(True)},
    "sharpness": {
        "sft": Leaf(N, "SFT sharpness (nats)", unit=NATS),
        "base": Leaf(N, "BASE sharpness (nats)", unit=NATS),
        "ratio": Leaf(N, "sharpness / BASE sharpness", "BASE's sharpness is ≤ 0", RELATIVE),
        "candidate": Leaf(N, "candidate sharpness (nats)", unit=NATS),
        "candidate_ratio": Leaf(N, "candidate sharpness / BASE sharpness",
                                "BASE's sharpness is ≤ 0", RELATIVE),
        "sigma_rel": Leaf(N, "noise σ relative to each matrix's RMS", unit=RELATIVE),
        "draws": Leaf("integer", "random directions (each probed as ±u)"),
        "seed": Leaf("integer", "seed"),
        "per_model": {role: _SHARP_MODEL for role in ROLES},
    },
    "comparison": {EACH: {
        "metric": Leaf("string", "gate path"),
        "candidate_metric": Leaf("string", "the candidate's gate path"),
        "label": Leaf("string", "metric"), "sft": Leaf(N, "SFT"),
        "candidate": Leaf(N, "candidate"),
        "better": Leaf("string", "which direction is better: higher or lower"),
        "improved": Leaf("boolean", "the candidate's value is better than SFT's"),
        "change": Leaf("string", "the candidate against SFT: better, worse or no change"),
    }},
    "gates": {EACH: {
        "gate": Leaf("string", "gate"),
        "actual": Leaf("any", "actual value (number or string)", "not finite"),
        "tripped": Leaf("boolean", "tripped"),
    }},
    "warnings": {EACH: Leaf("string", "warning")},
    "null_reasons": {ANY: Leaf("string", "why this path is null")},
    "seconds": Leaf(N, "seconds"),
}  # fmt: skip

_FORWARD = Condition("forward", "is not measured with --weights-only")
_CAND = Condition("candidate", "needs --candidate")
_GENERATE = Condition("generate", "needs --generate")
_INPUTS = ("calib", "samples", "max_tokens", "response_tokens", "batches", "batch_tokens",
           "dtype", "unk_share")  # fmt: skip
_CANDIDATE = [("inputs", "candidate"), ("inputs", "models", "candidate"),
              ("verdict", "candidate"), ("sharpness", "candidate_ratio"), ("comparison",),
              ("sharpness", "per_model", "candidate")]  # fmt: skip
_CANDIDATE += [
    (section, "candidate") for section in ("weights", "output", "units", "routing", "sharpness")
]
CONDITIONS: dict[tuple, Condition | tuple[Condition, ...]] = {
    **{("inputs", key): _FORWARD for key in _INPUTS},
    ("output",): _FORWARD,
    ("units",): _FORWARD,
    ("routing",): _FORWARD,
    ("sharpness",): (_FORWARD, Condition("sharpness", "is not measured with --sharpness-draws 0")),
    **{prefix: _CAND for prefix in _CANDIDATE},
    ("weights", "rank"): Condition("rank", "needs --rank"),
    ("weights", "candidate", "rank"): Condition("rank", "needs --rank"),
    ("gates",): Condition("never", "is written after the gates are evaluated; not gateable"),
    ("inputs", "generation"): _GENERATE,
    **{
        (*block, key): _GENERATE
        for block in (("output",), ("output", "base"), ("output", "candidate"))
        for key in GENERATION
    },
}
# Sections that a run may leave out whatever its flags (the builder records why).
RUNTIME = {
    ("sharpness",): "skipped when a model is offloaded (see warnings) or --sharpness-draws 0",
    ("units",): "needs a unit map for the architecture",
    ("routing",): "needs a mixture-of-experts model whose routers the unit map names",
    ("weights", "units"): "needs a unit map for the architecture",
    ("weights", "candidate", "units"): "needs a unit map for the architecture",
}


@dataclass(frozen=True)
class RunFlags:
    """What the command line says will be measured."""

    weights_only: bool = False
    candidate: bool = False
    rank: bool = False
    sharpness: bool = True  # --sharpness-draws > 0
    generate: bool = False

    def holds(self, flag: str) -> bool:
        return {"forward": not self.weights_only, "candidate": self.candidate,
                "rank": self.rank, "sharpness": self.sharpness, "never": False,
                "generate": self.generate and not self.weights_only}[flag]  # fmt: skip
