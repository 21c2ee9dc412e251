"""The recommended α of a sweep: a documented heuristic over the table's rows (pure, no torch).

Rule (README, "Choosing α"):

1. Skill kept. With `--generate` and checkable data, a candidate's skill is its greedy accuracy
   gain over BASE as a share of SFT's, `(acc_m − acc_base) / (acc_sft − acc_base)`
   (`accuracy_retained`); otherwise, or when SFT is not more accurate than BASE, the NLL share
   `skill_retained` (diagnose's). An α qualifies when it keeps at least `min_skill`.
2. Plasticity. Among the qualifying α, the one with the highest learnable share (the share of
   prompts whose k samples have mixed outcomes: GRPO's non-zero-advantage groups) when it was
   measured, else the highest mean entropy of the response tokens. Ties go to the larger α
   (closer to SFT, the smaller change).
3. That α is recommended only when it is more plastic than SFT itself on the same measure, and
   for the learnable share by more than sampling noise: one standard error of the difference
   of two shares over the n checked prompts, sqrt((p_α(1−p_α) + p_sft(1−p_sft)) / n)
   (unpaired, so conservative: both are measured on the same prompts). Otherwise, and when no
   α qualifies, the recommendation is no surgery.

It is a heuristic until the evidence experiment tests it (issue #16): neither threshold nor the
choice of measure comes from the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

from rejuv_cli.diagnostics.output import share_noise
from rejuv_cli.report.numbers import shown_at


@dataclass(frozen=True)
class Recommendation:
    alpha: float | None  # None: no surgery
    skill_measure: str  # "accuracy_retained" or "skill_retained"
    plasticity_measure: str  # "learnable_share" or "entropy_mean"
    qualifying: tuple[float, ...]  # the α that keep at least min_skill, in table order
    reason: str

    def to_json(self, min_skill: float) -> dict:
        return {
            "alpha": self.alpha,
            "surgery": self.alpha is not None,
            "min_skill": min_skill,
            "skill_measure": self.skill_measure,
            "plasticity_measure": self.plasticity_measure,
            "qualifying": list(self.qualifying),
            "reason": self.reason,
            "heuristic": True,
        }


def recommend(rows: list[dict], sft: dict, min_skill: float, prompts: int = 0) -> Recommendation:
    """Apply the rule to the α rows (dicts with "alpha" and the measures named above) and SFT's
    row; `prompts`: how many prompts the learnable shares were measured on (their noise). A
    measure missing from every α row falls back as the module docstring says."""
    skill = "accuracy_retained" if _measured(rows, "accuracy_retained") else "skill_retained"
    plastic = "learnable_share" if _measured(rows + [sft], "learnable_share") else "entropy_mean"
    if not _measured(rows, skill):
        return Recommendation(None, skill, plastic, (), (
            "no surgery: skill retained could not be measured (SFT's NLL is not below BASE's on "
            "this data; see null_reasons), so no α can be shown to keep SFT's skill"))  # fmt: skip
    ok = [r for r in rows if r.get(skill) is not None and r[skill] >= min_skill]
    qualifying = tuple(r["alpha"] for r in ok)
    if not ok:
        best = max((r for r in rows if r.get(skill) is not None), key=lambda r: r[skill])
        return Recommendation(None, skill, plastic, qualifying, (
            f"no surgery: no α keeps {min_skill:g} of SFT's skill ({skill}; the most is "
            f"{_fmt(skill, best[skill])} at α = {best['alpha']:g}); lower --min-skill to accept "
            "a larger loss"))  # fmt: skip
    candidates = [r for r in ok if r.get(plastic) is not None]
    if not candidates:
        return Recommendation(
            None,
            skill,
            plastic,
            qualifying,
            f"no surgery: {plastic} was not measured for the qualifying α",
        )
    best = max(candidates, key=lambda r: (r[plastic], r["alpha"]))
    noise = share_noise(best[plastic], sft.get(plastic), prompts) if plastic == \
        "learnable_share" else 0.0  # fmt: skip
    if sft.get(plastic) is not None and not best[plastic] - sft[plastic] > noise:
        beyond = f" by more than sampling noise ({_fmt(plastic, noise)}, one standard error " \
                 f"over {prompts} prompts)" if noise else ""  # fmt: skip
        return Recommendation(None, skill, plastic, qualifying, (
            f"no surgery: the most plastic qualifying α ({best['alpha']:g}, {plastic} "
            f"{_fmt(plastic, best[plastic])}) is not more plastic than SFT "
            f"({_fmt(plastic, sft[plastic])}){beyond}"))  # fmt: skip
    return Recommendation(best["alpha"], skill, plastic, qualifying, (
        f"α = {best['alpha']:g}: keeps {_fmt(skill, best[skill])} of SFT's skill ({skill} >= "
        f"{min_skill:g}) with the highest {plastic} among the {len(ok)} qualifying α "
        f"({_fmt(plastic, best[plastic])}; SFT {_fmt(plastic, sft.get(plastic))})"))  # fmt: skip


def _measured(rows: list[dict], key: str) -> bool:
    return any(r.get(key) is not None for r in rows)


def _fmt(key: str, x) -> str:
    """A value as the sweep table shows it (report/numbers.py; a share as a percentage), with
    its unit when it is in nats."""
    if x is None:
        return "not measured"
    text = shown_at(("output", key), x)
    return f"{text} nats" if key == "entropy_mean" else text
