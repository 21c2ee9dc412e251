"""`rejuv diagnose --generate`: task accuracy and RL-readiness of BASE, SFT and the candidate.

Greedy accuracy on the calibration examples that state a reference answer, and from
--group-size samples per prompt at temperature 1: pass@1, pass@k and the learnable share
(calib/generate.py). The values join each model's block of the output section, next to its
NLL and skill retained, so gates read them as `output.learnable_share`,
`output.candidate.accuracy`, ...
"""

from __future__ import annotations

# The keys each model's output block gains (JSON; labels in report/schema_spec.py).
GENERATION_KEYS = ("accuracy", "pass_at_1", "pass_at_k", "learnable_share", "all_wrong_share",
                   "all_right_share", "no_answer", "truncated")  # fmt: skip


def generation_sections(job, models: dict, tokenizer_dir, device, output: dict, report: dict,
                        progress) -> None:  # fmt: skip
    """Generate with every model in `models` (role -> loaded model) and write the results into
    `output` (SFT's block, with "base" and "candidate" inside) and report["inputs"]."""
    from rejuv_cli.calib.data import load_examples
    from rejuv_cli.calib.fields import Fields
    from rejuv_cli.calib.generate import generation_cost, generation_metrics
    from rejuv_cli.calib.models import load_tokenizer
    from rejuv_cli.diagnostics.output import accuracy_retained

    examples = load_examples(job.calib, job.samples, Fields.of(job))
    checkable = [e for e in examples if e.answer is not None]
    tokenizer = load_tokenizer(tokenizer_dir, "SFT")
    cost = generation_cost(len(checkable), job.group_size, job.max_new_tokens)
    blocks = {"sft": output, "base": output["base"], "candidate": output.get("candidate")}
    for role, model in models.items():
        step = progress(f"generate ({role.upper()})", cost["sequences"], "sequences")
        m = generation_metrics(model, tokenizer, checkable, device, group_size=job.group_size,
                               max_new_tokens=job.max_new_tokens, checker=job.checker,
                               on_step=step)  # fmt: skip
        blocks[role].update({key: m[key] for key in GENERATION_KEYS})
    base, sft = output["base"]["accuracy"], output["accuracy"]
    for block in (b for b in blocks.values() if b is not None):
        block["accuracy_retained"] = accuracy_retained(base, sft, block["accuracy"],
                                                       len(checkable))  # fmt: skip
    report["inputs"]["generation"] = {
        "checkable": len(checkable),
        "group_size": job.group_size,
        "max_new_tokens": job.max_new_tokens,
        "checker": job.checker,
        "seed": 0,
        "temperature": 1.0,
    }
