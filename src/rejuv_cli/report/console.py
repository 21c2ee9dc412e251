"""Terminal rendering of plans, run summaries and warnings (stderr) and of `rejuv inspect`'s table
(stdout, or stderr beside --json)."""

from __future__ import annotations

from rich.table import Table

from rejuv_cli.checkpoint.source import describe_line
from rejuv_cli.checkpoint.writer import format_size as human_bytes

MAX_WARNINGS = 8


def render_warnings(console, warnings: list[str]) -> None:
    """`warning: ...`, one line each however long (soft wrap: a terminal folds it, a log file
    keeps it whole); the text is never read as Rich markup."""
    from rich.markup import escape

    for w in warnings[:MAX_WARNINGS]:
        console.print(f"[yellow]warning:[/yellow] {escape(w)}", soft_wrap=True)
    if len(warnings) > MAX_WARNINGS:
        console.print(
            f"[yellow]warning:[/yellow] ... {len(warnings) - MAX_WARNINGS} more "
            "(all of them are in rejuv.json / --json)",
            soft_wrap=True,
        )


def _table(title: str, summary: dict) -> Table:
    c = summary["counts"]
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("BASE", _model(summary["base"]))
    t.add_row("SFT", _model(summary["sft"]))
    t.add_row("OUT", summary["out"])
    t.add_row(
        "tensors",
        f"{c['tensors']}: {c['fused']} fused, {c['from_sft']} SFT's (α = 1), "
        f"{c['from_base']} BASE's (α = 0), {c['copied']} copied from SFT"
        + ("" if c["reset"] is None else f"; {c['reset']} of them with units reset"),
    )
    if c["sft_only"] or c["base_only_dropped"] or c["added_token_rows"]:
        t.add_row(
            "mismatches",
            f"{c['sft_only']} only in SFT (copied), {c['base_only_dropped']} "
            f"only in BASE (left out), {c['added_token_rows']} added-token rows kept",
        )
    a = summary["alpha"]
    values = ", ".join(f"{v} ×{n}" for v, n in a["values"].items()) or "-"
    t.add_row("alpha", f"default {a['default']}, {a['rules']} rule(s); used: {values}")
    t.add_row("dtype", ", ".join(f"{d} ×{n}" for d, n in summary["out_dtypes"].items()))
    _reset_rows(t, summary.get("reset"))
    t.add_row(
        "size",
        f"{human_bytes(summary['out_bytes'])} in {c['shards']} shard(s) "
        f"of at most {human_bytes(summary['shard_limit'])}",
    )
    return t


def _reset_rows(t: Table, r: dict | None) -> None:
    """The reset: settings, then units reset per module kind once they are chosen."""
    if r is None:
        t.add_row("reset", "off (fusion only)")
        return
    cfg = r["settings"]
    how = f"mode {cfg['mode']}, ω {cfg['omega']}"
    if "selected" not in r:
        t.add_row("reset", f"{cfg['fraction']:.2%} of {r['units']:,} units (~{r['target']}) by "
                  f"{r['source']}, cap {cfg['max_per_module']:.0%} per module, {how}")  # fmt: skip
        return
    short = f" (target {r['target']}; per-module caps)" if r["selected"] < r["target"] else ""
    t.add_row("reset", f"{r['selected']:,} of {r['units']:,} units{short} by {r['source']}, "
              f"{r['protected']:,} protected, {how}")  # fmt: skip
    for name, m in r["by_module"].items():
        share = m["reset"] / m["units"] if m["units"] else 0.0
        t.add_row(f"  reset {name}", f"{m['reset']:,} of {m['units']:,} ({share:.2%})")
    top = sorted(r["by_layer"].items(), key=lambda kv: (-kv[1], int(kv[0])))[:3]
    if top and top[0][1]:
        t.add_row("  most reset", ", ".join(f"layer {k}: {n}" for k, n in top if n))
    if r.get("scorer"):
        t.add_row("  data", _scorer_text(r["scorer"]))
    if r.get("mask_saved"):
        t.add_row("  mask", r["mask_saved"])


def _scorer_text(info: dict) -> str:
    """What a data scorer ran on: the calibration set and, for attribution, the fit."""
    text = (
        f"{info['calib']}: {info['samples']} examples, {info['response_tokens']:,} response tokens"
    )
    rec = info.get("reconstruction")
    if rec:
        text += (f"; {info['positions']} positions, linearised logit error "
                 f"{rec['mean_abs_error']:.2g} (relative {rec['relative']:.2g})")  # fmt: skip
    if info.get("not_measured"):
        text += f"; {len(info['not_measured'])} module instance(s) not measured"
    if info.get("unrouted"):
        text += (f"; {len(info['unrouted'])} expert(s) got no calibration token (their units "
                 "are not ranked)")  # fmt: skip
    return text


def _model(m: dict) -> str:
    rev = f" @ {m['commit'][:12]}" if m.get("commit") else ""
    return f"{m['spec']}{rev} ({m['format']})"


def render_plan(console, summary: dict) -> None:
    t = _table("rejuv fuse --dry-run: plan (nothing written)", summary)
    d = summary["disk"]
    t.add_row("disk", f"needs {human_bytes(d['needed_bytes'])}; {human_bytes(d['free_bytes'])} "
              f"free on the filesystem of {d['filesystem_of']}")  # fmt: skip
    for s in summary["shards"]:
        t.add_row("shard", f"{s['file']}: {s['tensors']} tensors, {human_bytes(s['bytes'])}")
    console.print(t)


def render_summary(console, summary: dict) -> None:
    t = _table("rejuv fuse: done", summary)
    s = summary["seconds"]
    t.add_row(
        "time",
        f"{s['total']:.2f} s (plan {s['plan']:.2f} s, score {s['score']:.2f} s, "
        f"write {s['write']:.2f} s, "
        f"{summary['throughput_mb_s']} MB/s written) on {summary['device']}",
    )
    t.add_row(
        "digest",
        f"BASE xxh3 {summary['base']['tensor_digest'][:16]}…, "
        f"SFT xxh3 {summary['sft']['tensor_digest'][:16]}…",
    )
    console.print(t)


def inspect_table(r: dict) -> Table:
    """`rejuv inspect`'s table (its warnings are not in it: they go to stderr)."""
    t = Table(title=f"rejuv inspect: {r['spec']}", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("input", describe_line(r["input"]))
    if r.get("adapter_only"):  # no BASE given: the adapter's own facts are all there is
        t.add_row("model", "pass --base BASE to see the model this adapter makes")
        return t
    experts = f", {r['experts']} experts per layer" if r["experts"] else ""
    t.add_row("family", f"{r['model_type']} (unit map: {r['unit_map'] or 'none'})")
    t.add_row("layers", f"{r['layers']}{experts}")
    t.add_row("parameters", f"{r['parameters']:,} in {r['tensors']} tensors"
              + (", tied embeddings" if r["tied_embeddings"] else ""))  # fmt: skip
    t.add_row("dtype", ", ".join(f"{d} ×{n}" for d, n in r["dtypes"].items()))
    t.add_row(
        "size", f"{human_bytes(r['disk_bytes'])} on disk in {r['files']} {r['format']} file(s)"
    )
    for name, m in r["modules"].items():
        opt_in = " (opt-in: --modules, not in the total)" if m.get("opt_in") else ""
        t.add_row(f"units: {name}", f"{m['units_per_instance']} × {m['instances']} = {m['units']:,}"
                  f"  ({', '.join(m['tensors'])}){opt_in}")  # fmt: skip
    if r["modules"]:
        t.add_row("units total", f"{r['units_total']:,}")
    if r.get("unit_map_error"):
        t.add_row("reset", r["unit_map_error"])
    t.add_row("unaccounted", ", ".join(r["unaccounted"]) or "none")
    for problem in r["misfits"]:
        t.add_row("[red]misfit[/red]", problem)
    return t
