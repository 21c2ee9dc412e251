"""The verdict: `rigid`, `watch` or `ok`, with the reasons that fired. Heuristics (ours).

No single metric is a validated predictor of RL gain (docs/method.md section 5). The thresholds
below come from the two published reference points we know of, plus simple multiples of what
an unremarkable update looks like; they are a starting point for a CI gate, not a test of
plasticity. Each rule reads one metric by its JSON path in the report.
"""

from __future__ import annotations

import operator
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath

from rejuv_cli.report.paths import lookup
from rejuv_cli.settings import SETTINGS


@dataclass(frozen=True)
class Rule:
    id: str
    level: str  # "rigid": fires the verdict on its own; "watch": a warning sign
    metric: str  # JSON path in the report
    op: str  # "<" or ">"
    threshold: float
    why: str  # completes "… {value} {op} {threshold}: {why}"


RULES = (
    Rule("low_entropy", "rigid", "output.entropy_mean", "<", 0.18,
         "over-confident next-token distributions; arXiv 2606.18487 flags H < 0.18 nats as a "
         "high RL risk (the Rejuvenation paper's over-trained checkpoint: 0.024)"),
    Rule("entropy_collapse", "watch", "output.entropy_ratio", "<", 0.5,
         "SFT kept less than half of BASE's mean entropy"),
    Rule("overconfident", "watch", "output.confident_share", ">", 0.75,
         "most response tokens are predicted with p_max > 0.99"),
    Rule("spiky_drift", "watch", "weights.spikiness", ">", 0.10,
         "the update of a typical matrix is concentrated in a few entries (a Gaussian update "
         "puts ~1.3% of its energy in its top 0.1%)"),
    Rule("large_drift", "watch", "weights.drift_max", ">", 0.5,
         "some tensor moved by more than half its own norm"),
    Rule("sharp", "watch", "sharpness.ratio", ">", 2.0,
         "the calibration loss is more than twice as sensitive to random weight noise as BASE's"),
    Rule("dormant_growth", "watch", "units.dormant_increase", ">", 0.05,
         "over 5% more units became dormant (ReDo score <= 0.025) than in BASE"),
    # Mixture-of-experts only: the largest per-layer rise of the dead-expert share (share of
    # routed tokens below a tenth of the uniform 1/E) over BASE's on the same tokens.
    Rule("routing_collapse", "watch", "routing.dead_increase", ">", 0.1,
         "in some MoE layer the share of dead experts (below a tenth of the uniform share of "
         "routed tokens) rose by over 10 points from BASE's: SFT narrowed the routing"),
    # SFT's own value is 1 by definition, so this rule only ever fires for a candidate; the
    # threshold is the min_skill setting (--min-skill), passed to judge() as `thresholds`.
    Rule("low_skill", "watch", "output.skill_retained", "<", SETTINGS["min_skill"].default,
         "the model kept less of SFT's NLL gain over BASE on the calibration responses than "
         "--min-skill asks, whatever its entropy"),
    # --generate only; threshold: --min-learnable. All-right and all-wrong groups give GRPO a
    # zero advantage, so RL would learn from few of these prompts.
    Rule("low_learnable", "watch", "output.learnable_share", "<",
         SETTINGS["min_learnable"].default,
         "few prompts have mixed outcomes over the k samples (the rest are all right or all "
         "wrong), so few GRPO groups would have a non-zero advantage on this data"),
)  # fmt: skip
WATCH_FOR_RIGID = 3  # this many warning signs together also make a checkpoint rigid
_OPS = {"<": operator.lt, ">": operator.gt}


@dataclass(frozen=True)
class RuleCheck:
    """One rule applied to one model: the value it read (None: not measured in this run) and
    the threshold it compared it with. `judge` decides from these; `--junit` lists them all."""

    rule: Rule
    metric: str  # where the judged model's value sits in the report
    value: float | None
    threshold: float

    @property
    def fired(self) -> bool:
        return self.value is not None and _OPS[self.rule.op](self.value, self.threshold)

    def reason(self) -> dict:
        """The verdict's `reasons` entry of a rule that fired."""
        r = self.rule
        message = f"{self.metric} = {self.value:.4g} {r.op} {self.threshold:g}: {r.why}"
        return {"id": r.id, "level": r.level, "metric": self.metric, "value": self.value,
                "threshold": self.threshold, "op": r.op, "message": message}  # fmt: skip


def check_rules(metrics: dict[str, float | None], paths: dict[str, str] | None = None,
                thresholds: dict[str, float] | None = None) -> list[RuleCheck]:  # fmt: skip
    """Every rule of RULES, in order, applied to metric values by path; arguments as `judge`'s."""
    paths, thresholds = paths or {}, thresholds or {}
    return [RuleCheck(r, paths.get(r.metric, r.metric), metrics.get(r.metric),
                      thresholds.get(r.id, r.threshold)) for r in RULES]  # fmt: skip


def judge(metrics: dict[str, float | None], paths: dict[str, str] | None = None,
          thresholds: dict[str, float] | None = None) -> tuple[str, list[dict]]:  # fmt: skip
    """Apply RULES to metric values by path (absent or None: not measured, rule skipped).

    Returns (label, reasons): rigid if a rigid rule fired or WATCH_FOR_RIGID watch rules did,
    watch if any fired, else ok. `paths` maps a rule's metric to where the judged model's value
    sits in the report (the candidate's: `output.candidate.entropy_mean`); a reason names that.
    `thresholds` overrides a rule's threshold by rule id (a setting's value, e.g. --min-skill).
    """
    return verdict_of(check_rules(metrics, paths, thresholds))


def verdict_of(checks: list[RuleCheck]) -> tuple[str, list[dict]]:
    """(label, reasons) from the rules as `check_rules` applied them (see `judge`)."""
    reasons = [c.reason() for c in checks if c.fired]
    watch = sum(1 for x in reasons if x["level"] == "watch")
    if any(x["level"] == "rigid" for x in reasons) or watch >= WATCH_FOR_RIGID:
        return "rigid", reasons
    return ("watch" if reasons else "ok"), reasons


def rule_metrics(report: dict, paths: dict[str, str] | None = None) -> dict[str, float | None]:
    """The values the rules read from `report`, keyed by each rule's metric path. `paths` moves
    a rule to where another model's value sits (`output.entropy_mean` ->
    `output.candidate.entropy_mean`); a value this run did not measure is None."""
    paths = paths or {}
    return {r.metric: lookup(report, paths.get(r.metric, r.metric)) for r in RULES}


def suggested_command(
    label: str,
    base: str,
    sft: str,
    sweep_flags: Sequence[str] = (),
    diagnose_flags: Sequence[str] = (),
) -> str:
    """The command to run next (`report.terms.next_step` says why).

    `watch` or `rigid`: the `rejuv sweep` line that measures the fusion at several α on the
    same data, recommends one (or no surgery) and writes that candidate. `ok`: SFT goes to RL
    as it is; the line is the same diagnose as a CI gate for later checkpoints, exit code 3
    when one turns rigid.

    `sweep_flags` / `diagnose_flags` are the user's measurement flags that the command takes
    (calibration, samples, device, --generate, ...): the next run must measure the way this
    one did, or its numbers are not comparable (the demo's char-level tokenizer cannot
    represent builtin:math text)."""
    stem = _stem(sft)
    if label == "ok":
        words = ["rejuv", "diagnose", base, sft, *diagnose_flags, "--json",
                 f"{stem}-diagnose.json", "--fail-on", "verdict.label==rigid"]  # fmt: skip
        return shlex.join(words)
    words = ["rejuv", "sweep", base, sft, *sweep_flags, "--out", f"{stem}-rejuv",
             "--html", f"{stem}-sweep.html"]  # fmt: skip
    return shlex.join(words)


def _stem(spec: str) -> str:
    name = PurePath(spec.split("@", 1)[0].rstrip("/")).name
    return name or "model"
