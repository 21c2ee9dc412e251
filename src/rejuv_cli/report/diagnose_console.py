"""Terminal rendering of a `rejuv diagnose` report (stderr). No torch."""

from __future__ import annotations

from rich.table import Table

LABEL_STYLE = {"rigid": "bold red", "watch": "bold yellow", "ok": "bold green"}
MAX_LAYERS = 48  # larger models: show the layers with the largest drift only


def fmt(v, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.{digits}g}"


def render_diagnose(console, r: dict) -> None:
    """The whole report: verdict first, then the measurements behind it."""
    _verdict(console, r["verdict"], r["inputs"])
    _weights(console, r["weights"])
    if r["output"] is not None:
        _output(console, r["output"])
    if r["units"] is not None:
        _units(console, r["units"])
    if r["sharpness"] is not None:
        _sharpness(console, r["sharpness"])
    if r.get("comparison"):
        _comparison(console, r["comparison"])
    if r["output"] is None:
        console.print("output, units, sharpness: not measured (--weights-only)")


def _verdict(console, v: dict, inputs: dict) -> None:
    label = v["label"]
    console.print(
        f"rejuv diagnose: SFT {inputs['sft']} vs BASE {inputs['base']}\n"
        f"verdict: [{LABEL_STYLE[label]}]{label}[/] (a heuristic, measured: {v['measured']})"
    )
    for reason in v["reasons"]:
        level = reason["level"]
        console.print(f"  [{LABEL_STYLE[level]}]{level}[/] {reason['id']}: {reason['message']}")
    if v["candidate"] is not None:
        c = v["candidate"]["label"]
        console.print(f"candidate {inputs['candidate']}: [{LABEL_STYLE[c]}]{c}[/]")
        for reason in v["candidate"]["reasons"]:
            console.print(f"  {reason['level']} {reason['id']}: {reason['message']}")
    if v["suggested_command"]:
        console.print(f"next: {v['suggested_command']}", soft_wrap=True)


def _weights(console, w: dict) -> None:
    t = Table(title="weights: Δ = SFT − BASE", title_justify="left")
    for col in ("", "rel drift", "cosine", "msd", "kurtosis", "top 0.1% share", "max|Δ|/std"):
        t.add_column(col, justify="right" if col else "left")
    rows = [("overall", w["overall"])]
    if "candidate" in w:
        rows.append(("candidate", w["candidate"]["overall"]))
    keys = ("rel_drift", "cosine", "msd", "kurtosis", "top_share", "max_over_std")
    for name, o in rows:
        t.add_row(name, *(fmt(o[k]) for k in keys))
    console.print(t)
    console.print(f"largest tensor drift: {fmt(w['drift_max'])} ({w['drift_max_tensor']})")
    _layer_grid(console, w)
    if w.get("units"):
        u = Table(title="per-unit drift score s_j (the drift scorer's)", title_justify="left")
        for col in ("module", "units", "mean", "p50", "p90", "p99", "max"):
            u.add_column(col, justify="left" if col == "module" else "right")
        for module, s in w["units"].items():
            u.add_row(module, *(fmt(s[k]) for k in ("count", "mean", "p50", "p90", "p99", "max")))
        console.print(u)
    if w.get("rank"):
        rk = Table(title="rank of Δ (mean per module)", title_justify="left")
        for col in ("module", "stable rank", "effective rank", "max rank"):
            rk.add_column(col, justify="left" if col == "module" else "right")
        for module, m in w["rank"]["modules_mean"].items():
            rk.add_row(module, fmt(m["stable_rank"]), fmt(m["effective_rank"]),
                       fmt(m["max_rank"]))  # fmt: skip
        console.print(rk)


def _layer_grid(console, w: dict) -> None:
    """Relative drift per layer × module kind, as numbers (the HTML page has the heatmap)."""
    cells = w["layer_modules"]
    kinds = sorted({k.split(".", 1)[1] for k in cells}, key=_kind_order)
    layers = sorted({int(k.split(".", 1)[0]) for k in cells})
    if len(layers) > MAX_LAYERS:
        top = sorted(layers, key=lambda i: -w["layers"][str(i)]["rel_drift"])[:MAX_LAYERS]
        layers = sorted(top)
    t = Table(title="relative drift per layer × module", title_justify="left")
    t.add_column("layer", justify="right")
    for k in kinds:
        t.add_column(k, justify="right")
    t.add_column("layer", justify="right")
    for i in layers:
        t.add_row(str(i), *(fmt(cells.get(f"{i}.{k}", {}).get("rel_drift"), 3) for k in kinds),
                  fmt(w["layers"][str(i)]["rel_drift"], 3))  # fmt: skip
    console.print(t)


_KIND_ORDER = ("q", "k", "v", "o", "attn", "mlp", "norm", "embed", "router", "other")


def _kind_order(kind: str) -> int:
    return _KIND_ORDER.index(kind) if kind in _KIND_ORDER else len(_KIND_ORDER)


def _output(console, o: dict) -> None:
    t = Table(title="output: teacher-forced next-token distributions on response tokens",
              title_justify="left")  # fmt: skip
    cols = ("model", "entropy (nats)", "H / H_base", "mean p_max", "p_max > 0.99", "NLL",
            "KL to BASE", "tokens")  # fmt: skip
    for col in cols:
        t.add_column(col, justify="left" if col == "model" else "right")
    for name, m in (("base", o["base"]), ("sft", o), ("candidate", o.get("candidate"))):
        if m is None:
            continue
        t.add_row(name, fmt(m["entropy_mean"]), fmt(m.get("entropy_ratio")), fmt(m["p_max_mean"]),
                  fmt(m["confident_share"]), fmt(m["nll_mean"]), fmt(m.get("kl_mean")),
                  fmt(m["tokens"]))  # fmt: skip
    console.print(t)


def _units(console, u: dict) -> None:
    t = Table(title="unit activity (ReDo score s_j = E|h_j| / layer mean)", title_justify="left")
    taus = [str(x) for x in u["taus"]]
    for col in ("model", *(f"dormant ≤{x}" for x in taus), "saturated", "units"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for name, m in (("base", u["base"]), ("sft", u), ("candidate", u.get("candidate"))):
        if m is None:
            continue
        t.add_row(name, *(f"{m['dormant'][x]:.2%}" for x in taus), f"{m['saturated']:.2%}",
                  fmt(m["units"]))  # fmt: skip
    console.print(t)
    if u.get("not_measured"):
        missing = u["not_measured"]
        console.print(f"unit activity not measured for {len(missing)} module instance(s), "
                      f"e.g. {missing[0]} (not a module in transformers)")  # fmt: skip


def _sharpness(console, s: dict) -> None:
    line = (f"sharpness (loss rise under random weight noise, σ_rel {s['sigma_rel']}, "
            f"{s['draws']} draws): base {fmt(s['base'])}, sft {fmt(s['sft'])}, "
            f"ratio {fmt(s['ratio'])}")  # fmt: skip
    if s.get("candidate") is not None:
        line += f"; candidate {fmt(s['candidate'])}, ratio {fmt(s['candidate_ratio'])}"
    console.print(line)


def _comparison(console, rows: list[dict]) -> None:
    t = Table(title="before (SFT) / after (candidate)", title_justify="left")
    for col in ("metric", "SFT", "candidate", "better", ""):
        t.add_column(col, justify="left" if col in ("metric", "") else "right")
    for row in rows:
        mark = "[green]improved[/]" if row["improved"] else "[yellow]not improved[/]"
        t.add_row(row["label"], fmt(row["sft"]), fmt(row["candidate"]), row["better"], mark)
    console.print(t)
