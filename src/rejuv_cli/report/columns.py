"""The diagnose tables' columns, shared by the terminal (report/diagnose_console.py) and the HTML
page (report/html/): (label, key) pairs, the key continuing a row's gate path, and the terms
(report/terms.py) each table's legend defines. Pure standard library."""

from __future__ import annotations

WEIGHT_COLS = (("rel drift", "rel_drift"), ("cosine", "cosine"), ("msd", "msd"),
               ("kurtosis", "kurtosis"), ("top 0.1% share", "top_share"),
               ("max|Δ|/std", "max_over_std"))  # fmt: skip
WEIGHT_TERMS = ("rel drift", "msd", "kurtosis", "top 0.1% share", "max|Δ|/std", "%")
UNIT_DRIFT_COLS = (("units", "count"), ("mean", "mean"), ("p50", "p50"), ("p90", "p90"),
                   ("p99", "p99"), ("max", "max"))  # fmt: skip
UNIT_DRIFT_TERMS = ("s_j",)
RANK_COLS = (("stable rank", "stable_rank"), ("effective rank", "effective_rank"),
             ("max rank", "max_rank"))  # fmt: skip
OUTPUT_COLS = (("entropy (nats)", "entropy_mean"), ("H / H_base", "entropy_ratio"),
               ("mean p_max", "p_max_mean"), ("p_max > 0.99", "confident_share"),
               ("NLL (nats)", "nll_mean"), ("skill retained", "skill_retained"),
               ("KL to BASE (nats)", "kl_mean"), ("tokens", "tokens"))  # fmt: skip
OUTPUT_TERMS = ("entropy", "H / H_base", "p_max", "NLL", "skill", "KL")
GENERATION_COLS = (("accuracy", "accuracy"), ("accuracy retained", "accuracy_retained"),
                   ("pass@1", "pass_at_1"), ("pass@k", "pass_at_k"),
                   ("learnable", "learnable_share"), ("all wrong", "all_wrong_share"),
                   ("all right", "all_right_share"), ("no answer", "no_answer"))  # fmt: skip
GENERATION_TERMS = ("accuracy", "accuracy retained", "pass@1, pass@k", "learnable share")
UNIT_TERMS = ("ReDo", "dormant ≤τ", "saturated")
# Mixture-of-experts routing (diagnostics/routing.py); KL only for SFT and the candidate.
ROUTING_COLS = (("dead experts", "dead_share"), ("dead, worst layer", "dead_share_max"),
                ("dead rise over BASE", "dead_increase"),
                ("router entropy (nats)", "entropy_mean"),
                ("usage KL, mean (nats)", "kl_mean"), ("usage KL, max (nats)", "kl_max"),
                ("tokens", "tokens"))  # fmt: skip
ROUTING_TERMS = ("dead expert", "dead rise", "router entropy", "usage KL")
LAYER_TERMS = ("rel drift",)
COMPARISON_TERMS = ("change",)


def dormant_label(tau) -> str:
    """The unit tables' head for the dormant share at threshold τ: `dormant ≤0.025`."""
    return f"dormant ≤{float(tau):g}"


# Which term of report/terms.py explains a column, by its label (HTML tooltips).
TERM_OF = {"rel drift": "rel drift", "cosine": "cosine", "msd": "msd", "kurtosis": "kurtosis",
           "top 0.1% share": "top 0.1% share", "max|Δ|/std": "max|Δ|/std",
           "entropy (nats)": "entropy", "H / H_base": "H / H_base", "mean p_max": "p_max",
           "p_max > 0.99": "p_max", "NLL (nats)": "NLL", "skill retained": "skill",
           "KL to BASE (nats)": "KL", "accuracy": "accuracy",
           "accuracy retained": "accuracy retained", "pass@1": "pass@1, pass@k",
           "pass@k": "pass@1, pass@k", "learnable": "learnable share",
           "saturated": "saturated", "dead experts": "dead expert",
           "dead, worst layer": "dead expert", "dead rise over BASE": "dead rise",
           "router entropy (nats)": "router entropy", "usage KL, mean (nats)": "usage KL",
           "usage KL, max (nats)": "usage KL"}  # fmt: skip


# `rejuv sweep`'s table: (JSON key of a row, column head); generation columns only when
# --generate ran. Short heads, so that the table fits 80 columns; the legend spells them out.
SWEEP_COLUMNS = (
    ("entropy_mean", "H"),
    ("entropy_ratio", "H/H_base"),
    ("kl_mean", "KL"),
    ("nll_mean", "NLL"),
    ("skill_retained", "skill"),
)
SWEEP_GENERATION_COLUMNS = (
    ("accuracy", "acc"),
    ("accuracy_retained", "acc kept"),
    ("pass_at_1", "pass@1"),
    ("pass_at_k", "pass@k"),
    ("learnable_share", "learn"),
)
# head -> the term of report/terms.py it stands for
SWEEP_TERMS = {"H": "entropy", "H/H_base": "H / H_base", "KL": "KL", "NLL": "NLL",
               "skill": "skill", "acc": "accuracy", "acc kept": "accuracy retained",
               "pass@1": "pass@1, pass@k", "pass@k": "pass@1, pass@k",
               "learn": "learnable share"}  # fmt: skip


def sweep_rows(report: dict) -> list[tuple[str, dict]]:
    """(label, row) for BASE, SFT and each α, in table order."""
    rows = [("BASE", report["base"]), ("SFT", report["sft"])]
    return rows + [(f"α={r['alpha']:g}", r) for r in report["rows"]]


def sweep_columns(report: dict, console: bool = False) -> tuple[tuple[str, str], ...]:
    """The columns measured in this report; the console leaves out H/H_base (the entropy
    column says the same), so that the table fits 80 characters."""
    cols = SWEEP_COLUMNS + (SWEEP_GENERATION_COLUMNS if report["settings"]["generate"] else ())
    return tuple(c for c in cols if not (console and c[0] == "entropy_ratio"))


def sweep_legend(cols, names: dict[str, str] | None = None) -> str:
    """The sweep table's legend: each head that abbreviates a term, defined; `names` (JSON key
    -> head) where a page shows other heads than the terminal's."""
    from rejuv_cli.report.schema import unit
    from rejuv_cli.report.schema_spec import SHARE
    from rejuv_cli.report.terms import TERMS

    parts, seen = [], set()
    for key, head in cols:
        term = SWEEP_TERMS.get(head)
        if term is None or term in seen:
            continue
        seen.add(term)
        name = "pass@1, pass@k" if term == "pass@1, pass@k" else (names or {}).get(key, head)
        parts.append(f"{name}: {TERMS[term]}")
    if any(unit("output", key) == SHARE for key, _ in cols):
        parts.append(f"%: {TERMS['%']}")
    return "; ".join(parts)
