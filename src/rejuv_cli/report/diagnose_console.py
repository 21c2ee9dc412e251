"""Terminal rendering of a `rejuv diagnose` report (stderr). No torch.

Every number shown carries its `--fail-on` path beside its label: a table's row names its
path and a column header its key, the cell's path being the two joined (`weights.overall` +
`.rel_drift`). `shown_paths` lists them all (tested to resolve in the report).
"""

from __future__ import annotations

from rich.table import Table

from rejuv_cli.report.paths import format_path, lookup, model_blocks

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
        _sharpness(console, r["sharpness"], r.get("null_reasons") or {})
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


WEIGHT_COLS = (("rel drift", "rel_drift"), ("cosine", "cosine"), ("msd", "msd"),
               ("kurtosis", "kurtosis"), ("top 0.1% share", "top_share"),
               ("max|Δ|/std", "max_over_std"))  # fmt: skip
UNIT_DRIFT_COLS = (("units", "count"), ("mean", "mean"), ("p50", "p50"), ("p90", "p90"),
                   ("p99", "p99"), ("max", "max"))  # fmt: skip
RANK_COLS = (("stable rank", "stable_rank"), ("effective rank", "effective_rank"),
             ("max rank", "max_rank"))  # fmt: skip
OUTPUT_COLS = (("entropy (nats)", "entropy_mean"), ("H / H_base", "entropy_ratio"),
               ("mean p_max", "p_max_mean"), ("p_max > 0.99", "confident_share"),
               ("NLL", "nll_mean"), ("skill retained", "skill_retained"), ("KL to BASE", "kl_mean"),
               ("tokens", "tokens"))  # fmt: skip
GENERATION_COLS = (("accuracy", "accuracy"), ("accuracy retained", "accuracy_retained"),
                   ("pass@1", "pass_at_1"), ("pass@k", "pass_at_k"),
                   ("learnable", "learnable_share"), ("all wrong", "all_wrong_share"),
                   ("all right", "all_right_share"), ("no answer", "no_answer"))  # fmt: skip
SHARPNESS_KEYS = (("base", "base"), ("sft", "sft"), ("ratio", "ratio"),
                  ("candidate", "candidate"), ("ratio", "candidate_ratio"))  # fmt: skip


def _keys(key) -> tuple:
    return key if isinstance(key, tuple) else (key,)


def rel(key) -> str:
    """A column's key(s) as they continue a row's path: `.rel_drift`, `.dormant["0.025"]`."""
    return format_path(("_", *_keys(key)))[1:]


def _metric_table(title: str, first: str, cols, rows, percent=()) -> Table:
    """rows: (name, path tuple, values dict or None); cols: (label, key or key tuple). Each
    row shows its gate path and each column header its key: a cell's path is the two joined.
    Columns whose key is in `percent` show as percentages."""
    t = Table(title=f"{title}  (gate path: row path + column key)", title_justify="left")
    t.add_column(first, justify="left")
    t.add_column("gate path", justify="left", style="dim")
    for label, key in cols:
        t.add_column(f"{label}\n[dim]{rel(key)}[/]", justify="right")
    for name, path, values in rows:
        if values is None:
            continue
        cells = []
        for _, key in cols:
            v = lookup(values, _keys(key))
            cells.append(f"{v:.2%}" if key in percent and v is not None else fmt(v))
        t.add_row(name, format_path(path), *cells)
    return t


def _weight_rows(w: dict):
    rows = [("sft", ("weights", "overall"), w["overall"])]
    if "candidate" in w:
        rows.append(("candidate", ("weights", "candidate", "overall"), w["candidate"]["overall"]))
    return rows


def _weights(console, w: dict) -> None:
    console.print(_metric_table("weights: Δ = SFT − BASE", "model", WEIGHT_COLS, _weight_rows(w)))
    console.print(f"largest tensor drift (weights.drift_max): {fmt(w['drift_max'])} in "
                  f"{w['drift_max_tensor']} (weights.drift_max_tensor)")  # fmt: skip
    _layer_grid(console, w)
    if w.get("units"):
        rows = [(m, ("weights", "units", m), s) for m, s in w["units"].items()]
        console.print(_metric_table("per-unit drift score s_j (the drift scorer's)", "module",
                                    UNIT_DRIFT_COLS, rows))  # fmt: skip
    if w.get("rank"):
        rows = [(m, ("weights", "rank", "modules_mean", m), v)
                for m, v in w["rank"]["modules_mean"].items()]  # fmt: skip
        console.print(_metric_table("rank of Δ (mean per module)", "module", RANK_COLS, rows))


def _layer_grid(console, w: dict) -> None:
    """Relative drift per layer × module kind, as numbers (the HTML page has the heatmap)."""
    cells = w["layer_modules"]
    kinds = sorted({k.split(".", 1)[1] for k in cells}, key=_kind_order)
    layers = sorted({int(k.split(".", 1)[0]) for k in cells})
    if len(layers) > MAX_LAYERS:
        top = sorted(layers, key=lambda i: -w["layers"][str(i)]["rel_drift"])[:MAX_LAYERS]
        layers = sorted(top)
    t = Table(title="relative drift per layer × module  (gate paths: "
              'weights.layer_modules["LAYER.MODULE"].rel_drift; last column: '
              'weights.layers["LAYER"].rel_drift)', title_justify="left")  # fmt: skip
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
    title = "output: teacher-forced next-token distributions on response tokens"
    console.print(_metric_table(title, "model", OUTPUT_COLS, model_blocks("output", o)))
    if "accuracy" in o:
        title = "generation (--generate): greedy accuracy; pass@k and learnable share of k samples"
        console.print(_metric_table(title, "model", GENERATION_COLS, model_blocks("output", o)))


def _unit_cols(u: dict):
    return (*((f"dormant ≤{x}", ("dormant", str(x))) for x in u["taus"]),
            ("saturated", "saturated"), ("units", "units"))  # fmt: skip


def _units(console, u: dict) -> None:
    cols = _unit_cols(u)
    percent = [key for _, key in cols if key != "units"]
    console.print(_metric_table("unit activity (ReDo score s_j = E|h_j| / layer mean)", "model",
                                cols, model_blocks("units", u), percent))  # fmt: skip
    if u.get("not_measured"):
        missing = u["not_measured"]
        console.print(f"unit activity not measured for {len(missing)} module instance(s), "
                      f"e.g. {missing[0]} (not a module in transformers)")  # fmt: skip


def _sharpness(console, s: dict, nulls: dict) -> None:
    shown = [(name, key) for name, key in SHARPNESS_KEYS
             if not key.startswith("candidate") or s.get("candidate") is not None]  # fmt: skip
    values = ", ".join(f"{name} {fmt(s[key])} [dim](sharpness.{key})[/]" for name, key in shown)
    console.print(f"sharpness (loss rise under random weight noise, mean of (L(θ+u)+L(θ−u))/2 − "
                  f"L(θ), σ_rel {s['sigma_rel']}, {s['draws']} draws of ±u): {values}")  # fmt: skip
    for key in ("ratio", "candidate_ratio")[: 2 if s.get("candidate") is not None else 1]:
        if s.get(key) is None and f"sharpness.{key}" in nulls:
            console.print(f"  sharpness.{key} is null: {nulls[f'sharpness.{key}']}")


def _comparison(console, rows: list[dict]) -> None:
    t = Table(title="before (SFT) / after (candidate)", title_justify="left")
    for col in ("metric", "gate path (SFT; candidate)", "SFT", "candidate", "better", ""):
        t.add_column(col, justify="left" if col in ("metric", "", "gate path (SFT; candidate)")
                     else "right")  # fmt: skip
    for row in rows:
        mark = "[green]improved[/]" if row["improved"] else "[yellow]not improved[/]"
        paths = f"[dim]{row['metric']}; {row.get('candidate_metric', '')}[/]"
        t.add_row(row["label"], paths, fmt(row["sft"]), fmt(row["candidate"]), row["better"],
                  mark)  # fmt: skip
    console.print(t)


def shown_paths(r: dict) -> list[str]:
    """The gate path of every number the terminal report shows, as it labels them."""
    out: list[str] = []

    def add(rows, cols) -> None:
        for _, path, values in rows:
            if values is not None:
                for _, key in cols:
                    v = values
                    for k in _keys(key):
                        v = v.get(k, KeyError) if isinstance(v, dict) else KeyError
                    if v is not KeyError:  # shown as "–" where the model has no such value
                        out.append(format_path((*path, *_keys(key))))

    w = r["weights"]
    add(_weight_rows(w), WEIGHT_COLS)
    out += ["weights.drift_max", "weights.drift_max_tensor"]
    for k in w["layer_modules"]:
        out.append(format_path(("weights", "layer_modules", k, "rel_drift")))
    for k in w["layers"]:
        out.append(format_path(("weights", "layers", k, "rel_drift")))
    if w.get("units"):
        add([(m, ("weights", "units", m), s) for m, s in w["units"].items()], UNIT_DRIFT_COLS)
    if w.get("rank"):
        add([(m, ("weights", "rank", "modules_mean", m), v)
             for m, v in w["rank"]["modules_mean"].items()], RANK_COLS)  # fmt: skip
    if r["output"] is not None:
        add(model_blocks("output", r["output"]), OUTPUT_COLS)
        if "accuracy" in r["output"]:
            add(model_blocks("output", r["output"]), GENERATION_COLS)
    if r["units"] is not None:
        add(model_blocks("units", r["units"]), _unit_cols(r["units"]))
    if r["sharpness"] is not None:
        has_candidate = r["sharpness"].get("candidate") is not None
        out += [f"sharpness.{key}" for _, key in SHARPNESS_KEYS
                if has_candidate or not key.startswith("candidate")]  # fmt: skip
    for row in r.get("comparison") or []:
        out += [row["metric"], row["candidate_metric"]]
    candidate = r["verdict"]["candidate"] or {}
    out += [x["metric"] for x in r["verdict"]["reasons"] + candidate.get("reasons", [])]
    return out
