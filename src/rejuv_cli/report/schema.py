"""The structure of the `rejuv diagnose` report, declared once: every value's path, its kind,
the readable label the reports show beside the path, and when a section exists.

The report builder (diagnostics/) takes labels and the reasons a section is null from here; the
terminal and HTML reports print each metric's gate path next to its label; `--fail-on` paths
are checked against this before the run (`check_gate`), so a typo or a section this run will
not measure is a usage error at once rather than after an hour of forward passes. A test
checks that every path of real reports is declared here and every declared path occurs.

Patterns are tuples of keys: ANY stands for any object key (tensor names, layer numbers,
module kinds), EACH for any list index. Pure standard library; no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rejuv_cli.errors import UsageError
from rejuv_cli.report.gates import Gate, format_path, parse_gate

ANY = "*"
EACH = "#"
TAUS = ("0.01", "0.025", "0.1")  # dormant thresholds as the report keys them (ops/activity.TAUS)
ROLES = ("base", "sft", "candidate")


@dataclass(frozen=True)
class Leaf:
    """A scalar in the report. kind: "number", "integer", "string", "boolean" or "any"; `label`
    is the readable name the reports show; `nullable` says why it may be null in a complete
    run."""

    kind: str
    label: str = ""
    nullable: str = ""


@dataclass(frozen=True)
class Condition:
    """When the section at a pattern exists; `flag` names the run setting it depends on."""

    flag: str  # "forward", "candidate", "rank", "sharpness" or "never" (see RunFlags.holds)
    absent: str  # completes "'<path>' …": why it is null or missing without it


N = "number"
STATS = {
    "rel_drift": Leaf(N, "relative drift ‖Δ‖/‖θ_base‖"),
    "cosine": Leaf(N, "cosine(θ, θ_base)"),
    "msd": Leaf(N, "mean squared difference"),
    "kurtosis": Leaf(N, "kurtosis of Δ"),
    "top_share": Leaf(N, "share of ‖Δ‖² in the top 0.1% entries"),
    "max_over_std": Leaf(N, "max|Δ| / std(Δ)"),
}
RANK = {
    "stable_rank": Leaf(N, "stable rank of Δ"),
    "effective_rank": Leaf(N, "effective rank of Δ"),
}
UNIT_DRIFT = {
    "count": Leaf("integer", "units"),
    **{k: Leaf(N, f"unit drift s_j, {k}") for k in ("mean", "p50", "p90", "p99", "max")},
}


def _weights(with_units: bool) -> dict:
    block = {
        "overall": STATS,
        "spikiness": Leaf(N, "spikiness (matrices' top-0.1% energy share)"),
        "drift_max": Leaf(N, "largest tensor drift"),
        "drift_max_tensor": Leaf("string", "most-drifted tensor", "no tensor pair to compare"),
        "layers": {ANY: STATS},
        "layer_modules": {ANY: STATS},
        "tensors": {ANY: STATS | {"numel": Leaf("integer", "elements")}},
        "rank": {
            "modules_mean": {ANY: RANK | {"max_rank": Leaf(N, "max rank")}},
            "tensors": {ANY: RANK | {"max_rank": Leaf("integer", "max rank")}},
        },
    }
    if with_units:
        block["units"] = {ANY: UNIT_DRIFT}
    return block


def _output(vs_base: bool) -> dict:
    block = {
        "entropy_mean": Leaf(N, "mean entropy (nats)"),
        "p_max_mean": Leaf(N, "mean max-probability"),
        "confident_share": Leaf(N, "share of tokens with p_max > 0.99"),
        "nll_mean": Leaf(N, "NLL of the calibration responses"),
        "tokens": Leaf("integer", "response tokens scored"),
        "entropy_hist": {
            "edges": {EACH: Leaf(N, "bin edge")},
            "counts": {EACH: Leaf("integer", "tokens in bin")},
        },  # fmt: skip
    }
    if vs_base:
        block["kl_mean"] = Leaf(N, "KL to BASE (nats/token)")
        block["entropy_ratio"] = Leaf(
            N, "entropy / BASE entropy", "BASE's mean entropy is 0, so a ratio to it is undefined"
        )
    return block


def _units(vs_base: bool) -> dict:
    dormant = {t: Leaf(N, f"dormant units (ReDo ≤ {t})") for t in TAUS}
    block = {
        "taus": {EACH: Leaf(N, "ReDo threshold")},
        "dormant": dormant,
        "saturated": Leaf(N, "saturated units"),
        "units": Leaf("integer", "units measured"),
        "layers": {EACH: {
            "layer": Leaf("integer", "layer"), "module": Leaf("string", "module"),
            "key": Leaf("string", "module instance"), "units": Leaf("integer", "units"),
            "dormant": dormant, "saturated": Leaf(N, "saturated units"),
            "percentiles": {p: Leaf(N, f"ReDo score {p}") for p in ("p1", "p5", "p50", "p95",
                                                                       "p99")},
        }},
        "not_measured": {EACH: Leaf("string", "module instance not hooked")},
    }  # fmt: skip
    if vs_base:
        block["dormant_increase"] = Leaf(N, "dormant share (≤ 0.025) minus BASE's")
    return block


_SHARP_MODEL = {
    "loss": Leaf(N, "calibration NLL"),
    "perturbed": {EACH: Leaf(N, "NLL at θ + u")},
    "mirrored": {EACH: Leaf(N, "NLL at θ − u")},
    "draw_values": {EACH: Leaf(N, "sharpness of one draw")},
    "value": Leaf(N, "sharpness"),
    "stderr": Leaf(N, "standard error of the sharpness", "one draw has no standard error"),
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
                          "the SFT tokenizer has no unknown token"),
        "models": {role: _MODEL_INFO for role in ROLES},
    },  # fmt: skip
    "verdict": {
        "label": Leaf("string", "verdict"),
        "heuristic": Leaf("boolean", "heuristic"),
        "reasons": {EACH: _REASON},
        "suggested_command": Leaf("string", "suggested command", "the verdict is ok"),
        "measured": Leaf("string", "measured"),
        "candidate": {"label": Leaf("string", "candidate verdict"), "reasons": {EACH: _REASON}},
    },
    "weights": _weights(True) | {"candidate": _weights(False)},
    "output": _output(True) | {"base": _output(False), "candidate": _output(True)},
    "units": _units(True) | {"base": _units(False), "candidate": _units(True)},
    "sharpness": {
        "sft": Leaf(N, "SFT sharpness"), "base": Leaf(N, "BASE sharpness"),
        "ratio": Leaf(N, "sharpness / BASE sharpness", "BASE's sharpness is ≤ 0"),
        "candidate": Leaf(N, "candidate sharpness"),
        "candidate_ratio": Leaf(N, "candidate sharpness / BASE sharpness",
                                "BASE's sharpness is ≤ 0"),
        "sigma_rel": Leaf(N, "noise σ relative to each matrix's RMS"),
        "draws": Leaf("integer", "random directions (each probed as ±u)"),
        "seed": Leaf("integer", "seed"),
        "per_model": {role: _SHARP_MODEL for role in ROLES},
    },
    "comparison": {EACH: {
        "metric": Leaf("string", "gate path"),
        "candidate_metric": Leaf("string", "the candidate's gate path"),
        "label": Leaf("string", "metric"), "sft": Leaf(N, "SFT"),
        "candidate": Leaf(N, "candidate"), "better": Leaf("string", "better direction"),
        "improved": Leaf("boolean", "improved"),
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
_INPUTS = ("calib", "samples", "max_tokens", "response_tokens", "batches", "batch_tokens",
           "dtype", "unk_share")  # fmt: skip
_CANDIDATE = [("inputs", "candidate"), ("inputs", "models", "candidate"),
              ("verdict", "candidate"), ("sharpness", "candidate_ratio"), ("comparison",),
              ("sharpness", "per_model", "candidate")]  # fmt: skip
_CANDIDATE += [(section, "candidate") for section in ("weights", "output", "units", "sharpness")]
CONDITIONS: dict[tuple, Condition | tuple[Condition, ...]] = {
    **{("inputs", key): _FORWARD for key in _INPUTS},
    ("output",): _FORWARD,
    ("units",): _FORWARD,
    ("sharpness",): (_FORWARD, Condition("sharpness", "is not measured with --sharpness-draws 0")),
    **{prefix: _CAND for prefix in _CANDIDATE},
    ("weights", "rank"): Condition("rank", "needs --rank"),
    ("weights", "candidate", "rank"): Condition("rank", "needs --rank"),
    ("gates",): Condition("never", "is written after the gates are evaluated; not gateable"),
}
# Sections that a run may leave out whatever its flags (the builder records why).
RUNTIME = {
    ("sharpness",): "skipped when a model is offloaded (see warnings) or --sharpness-draws 0",
    ("units",): "needs a unit map for the architecture",
}


@dataclass(frozen=True)
class RunFlags:
    """What the command line says will be measured."""

    weights_only: bool = False
    candidate: bool = False
    rank: bool = False
    sharpness: bool = True  # --sharpness-draws > 0

    def holds(self, flag: str) -> bool:
        return {"forward": not self.weights_only, "candidate": self.candidate,
                "rank": self.rank, "sharpness": self.sharpness, "never": False}[flag]  # fmt: skip


def _matches(part, key) -> bool:
    if key == ANY:
        return isinstance(part, str)
    if key == EACH:
        return isinstance(part, int)
    return part == key


def node_at(path) -> object | None:
    """The schema node (a Leaf or a dict of children) a concrete path names, or None."""
    pattern = pattern_of(path)
    if pattern is None:
        return None
    node: object = SCHEMA
    for key in pattern:
        node = node[key]
    return node


def leaf_patterns(node: dict | None = None, prefix: tuple = ()) -> dict[tuple, Leaf]:
    """Every declared scalar: pattern -> Leaf."""
    out = {}
    for key, child in (SCHEMA if node is None else node).items():
        if isinstance(child, Leaf):
            out[prefix + (key,)] = child
        else:
            out.update(leaf_patterns(child, prefix + (key,)))
    return out


def pattern_of(path) -> tuple | None:
    """The declared pattern a concrete path matches (ANY / EACH in place of its keys)."""
    node, out = SCHEMA, []
    for part in path:
        if not isinstance(node, dict):
            return None
        key = part if part in node and part not in (ANY, EACH) else next(
            (k for k in node if k in (ANY, EACH) and _matches(part, k)), None)  # fmt: skip
        if key is None:
            return None
        out.append(key)
        node = node[key]
    return tuple(out)


def unmet(path, flags: RunFlags) -> str | None:
    """Why these flags leave out the value at `path` ("'output' is not measured with
    --weights-only"), or None when they do not."""
    pattern = pattern_of(path) or ()
    for i in range(1, len(pattern) + 1):
        conditions = CONDITIONS.get(pattern[:i], ())
        for c in conditions if isinstance(conditions, tuple) else (conditions,):
            if not flags.holds(c.flag):
                return f"'{format_path(pattern[:i])}' {c.absent}"
    return None


def parse_path(text: str) -> tuple:
    """A path in gate syntax (`units.dormant["0.025"]`) as a tuple of keys and indexes."""
    return parse_gate(f"{text}==0").path


def label(*path) -> str:
    """The readable label of the value at a concrete path ('' when it has none)."""
    node = node_at(path)
    return node.label if isinstance(node, Leaf) else ""


def check_gate(gate: Gate, flags: RunFlags) -> None:
    """Refuse, before the run, a gate whose path is not in the report's structure, names a
    section these flags leave out, or compares a value of the wrong kind."""

    def fail(message: str) -> UsageError:
        return UsageError(f"--fail-on {gate.text!r}: {message}")

    node: object = SCHEMA
    for depth, part in enumerate(gate.path):
        here = format_path(gate.path[:depth])
        under = f"under '{here}'" if depth else "at the top level"
        if not isinstance(node, dict):
            raise fail(f"'{here}' is a {node.kind}, not an object; it has no {part!r}")
        child = node_at(gate.path[: depth + 1])
        if child is None:
            raise fail(f"{_show(part)} is not a key of the report {under}; {_keys(node)}")
        node = child
    if why := unmet(gate.path, flags):
        raise fail(why)
    where = format_path(gate.path)
    if isinstance(node, dict):
        raise fail(f"'{where}' is an object or list, not a number or string; {_keys(node)}")
    text = isinstance(gate.value, str)
    if text and node.kind != "string":
        raise fail(f"'{where}' is a {node.kind}, but the gate compares it with the string "
                   f"{gate.value!r}; use a number")  # fmt: skip
    if not text and node.kind == "string":
        raise fail(f"'{where}' is a string, but the gate compares it with a number; use == "
                   "or != with a word")  # fmt: skip


def _show(part) -> str:
    return f"[{part}]" if isinstance(part, int) else repr(part)


def _keys(node: dict) -> str:
    names = []
    for k in node:
        names.append({ANY: "any key (e.g. a tensor name or layer number)",
                      EACH: "a list index [n]"}.get(k, k))  # fmt: skip
    return "available: " + ", ".join(names)


def explain_nulls(report: dict, flags: RunFlags, known: dict[str, str]) -> dict[str, str]:
    """`known` (reasons the builder recorded, by gate path) plus a reason for every other null
    or non-finite number in `report`: the flag that leaves it out, the declared reason it may
    be null, or "not a finite number". Keys are canonical gate paths; a reason for a section
    covers everything inside it."""
    out = dict(known)

    def covered(path: tuple) -> bool:
        return any(format_path(path[:i]) in out for i in range(1, len(path) + 1))

    def walk(node, path: tuple) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if path or key != "null_reasons":
                    walk(value, (*path, key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, (*path, i))
        elif isinstance(node, float) and not math.isfinite(node):
            if not covered(path):
                out[format_path(path)] = f"not a finite number ({node}); JSON has none"
        elif node is None and not covered(path):
            leaf = node_at(path)
            declared = leaf.nullable if isinstance(leaf, Leaf) else ""
            pattern = pattern_of(path) or ()
            out[format_path(path)] = (
                unmet(path, flags) or declared or RUNTIME.get(pattern) or "not measured"
            )

    walk(report, ())
    return out
