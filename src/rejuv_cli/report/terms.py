"""The terms the reports use, defined once: the terminal prints them as legend lines under the
table that uses them, the HTML page as a legend under its table and as tooltips on the column
heads. Pure standard library. Sources: docs/method.md section 5 and the schema's labels."""

from __future__ import annotations

TERMS: dict[str, str] = {
    # weights
    "rel drift": "‖Δ‖/‖θ_base‖ with Δ = θ − θ_base (relative: 0.1 = moved by a tenth of its norm)",
    "cosine": "cosine of θ and θ_base (1 = same direction)",
    "msd": "mean squared difference, the mean of Δ² over the entries (weight units²)",
    "kurtosis": "kurtosis of Δ's entries (3 for a Gaussian; larger = a few entries carry most "
    "of the change)",
    "top 0.1% share": "share of ‖Δ‖² in the largest 0.1% of Δ's entries (about 1.3% for a "
    "Gaussian Δ)",
    "max|Δ|/std": "largest |Δ| entry in standard deviations of Δ",
    "spikiness": "the matrices' top 0.1% shares, weighted by size; the spiky_drift rule fires "
    "above 10%",
    "s_j": "per-unit drift score, √(Σ‖Δ‖²) / √(Σ‖θ_base‖²) over the unit's rows and columns "
    "(relative; the drift scorer's)",
    # output
    "entropy": "mean entropy of the next-token distribution on the response tokens (nats)",
    "H / H_base": "that entropy divided by BASE's (relative)",
    "p_max": "probability of the most likely next token",
    "NLL": "negative log-likelihood of the calibration responses (nats/token)",
    "skill": "skill retained, (NLL_base − NLL) / (NLL_base − NLL_sft): the share of SFT's NLL "
    "gain over BASE kept (relative: 1 = SFT, 0 = BASE)",
    "KL": "KL divergence of the model's next-token distribution from BASE's (nats/token)",
    # --generate
    "accuracy": "greedy accuracy on the examples with a reference answer",
    "accuracy retained": "share of SFT's accuracy gain over BASE kept (relative: 1 = SFT, "
    "0 = BASE)",
    "pass@1, pass@k": "mean success of the k samples, and share of prompts with a correct one",
    "learnable share": "share of prompts whose k samples have mixed outcomes (some right, some "
    "wrong): the groups that give GRPO a non-zero advantage",
    # units
    "ReDo": "ReDo score s_j = E|h_j| / the mean over the module's units of E|h|, h_j the "
    "unit's activation on the calibration tokens (Sokar et al. 2023; 1 = an average unit, "
    "0 = silent)",
    "dormant ≤τ": "share of units with a ReDo score ≤ τ",
    "saturated": "share of units at least as active as their module's mean and steady across "
    "tokens (coefficient of variation ≤ 0.25; ours)",
    # routing (mixture of experts)
    "dead expert": "an expert whose share of the routed (token, slot) pairs in its layer is "
    "below a tenth of the uniform share 1/E; shown: the share of experts that are dead",
    "dead rise": "the largest rise, over the MoE layers, of a layer's dead-expert share over "
    "BASE's on the same tokens; the routing_collapse rule fires above 10 points",
    "router entropy": "entropy of the router's softmax over all experts, mean over real "
    "tokens and MoE layers (nats; ln E when uniform)",
    "usage KL": "KL(the model's expert usage ‖ BASE's) per MoE layer, ½ added to every count "
    "(nats); mean and largest over the layers",
    # sharpness
    "sharpness": "rise of the calibration NLL under random weight noise of relative size σ_rel, "
    "(L(θ+u) + L(θ−u))/2 − L(θ) averaged over the draws (nats); ratio: over BASE's (relative)",
    # before / after
    "change": "the candidate against SFT in the metric's better direction: better, worse, or "
    "no change (equal)",
    # conventions
    "%": "a share; JSON and --fail-on keep the fraction (59.1% is 0.591)",
}

# The next step when `rejuv sweep` recommends no surgery (terminal and HTML).
NO_SURGERY_NEXT = "go on to RL with SFT as it is (the rule above finds no α worth fusing)"


def legend(*terms: str) -> str:
    """One legend line: `term: definition; term: definition`."""
    return "; ".join(f"{t}: {TERMS[t]}" for t in terms)


# The next step after a verdict, in words (the command is verdict.suggested_command).
_SWEEP_WHY = (
    "it measures the fusion with BASE at several α on the same data and writes the α "
    'it recommends, if any; README, "Choosing α"'
)
NEXT_STEP = {
    "ok": "go on to RL with SFT as it is (no rule fired); to keep it so, gate later checkpoints "
    "in CI with this command, which exits with code 3 when one turns rigid",
    "watch": _SWEEP_WHY,
    "rigid": _SWEEP_WHY,
}


def next_step(label: str) -> str:
    """What `suggested_command` is for, in words, by verdict label: for `ok` the next step
    itself (the command is optional), for the others why the command."""
    return NEXT_STEP.get(label, "")
