"""Terminal rendering of a `rejuv diagnose` report (stderr). No torch.

Every number shown carries its `--fail-on` path beside its label: a table's row names its
path and a column header its key, the cell's path being the two joined (`weights.overall` +
`.rel_drift`). `shown_paths` lists them all (tested to resolve in the report).

Numbers are formatted by their kind (report/numbers.py: shares as percentages, the unit in the
label), and every table shows each value whole at the console's width (report/fit.py): one row
per model when that fits, else one row per metric, else one line per value. The terms a table
uses are defined in a legend line under it (report/terms.py).
"""

from __future__ import annotations

from rich.text import Text

from rejuv_cli.report.columns import (
    COMPARISON_TERMS,
    GENERATION_COLS,
    GENERATION_TERMS,
    LAYER_TERMS,
    OUTPUT_COLS,
    OUTPUT_TERMS,
    RANK_COLS,
    ROUTING_COLS,
    ROUTING_TERMS,
    UNIT_DRIFT_COLS,
    UNIT_DRIFT_TERMS,
    UNIT_TERMS,
    WEIGHT_COLS,
    WEIGHT_TERMS,
    dormant_label,
)
from rejuv_cli.report.fit import Col, fit
from rejuv_cli.report.numbers import change, number, shown_at
from rejuv_cli.report.paths import format_path, lookup, model_blocks, parse_path
from rejuv_cli.report.terms import legend

LABEL_STYLE = {"rigid": "bold red", "watch": "bold yellow", "ok": "bold green"}
MAX_LAYERS = 48  # larger models: show the layers with the largest drift only
fmt = number  # a plain number, as the tables show one that is not a share


def render_diagnose(console, r: dict) -> None:
    """The whole report: verdict first, then the measurements behind it."""
    _verdict(console, r["verdict"], r["inputs"])
    _weights(console, r["weights"])
    if r["output"] is not None:
        _output(console, r)
    if r["units"] is not None:
        _units(console, r["units"])
    if r.get("routing") is not None:
        _routing(console, r["routing"])
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
        from rejuv_cli.report.terms import next_step

        command, why = v["suggested_command"], next_step(label)
        if label == "ok":  # the step is RL as it is; the command (a CI gate) is optional
            console.print(f"next: {why}:", soft_wrap=True, highlight=False)
            console.print(f"  {command}", soft_wrap=True, highlight=False)
        else:
            console.print(f"next: {command}", soft_wrap=True, highlight=False)
            console.print(f"  ({why})", style="dim", soft_wrap=True, highlight=False)


SHARPNESS_KEYS = (("base", "base"), ("sft", "sft"), ("ratio", "ratio"),
                  ("candidate", "candidate"), ("ratio", "candidate_ratio"))  # fmt: skip


def _keys(key) -> tuple:
    return key if isinstance(key, tuple) else (key,)


def rel(key) -> str:
    """A column's key(s) as they continue a row's path: `.rel_drift`, `.dormant["0.025"]`."""
    return format_path(("_", *_keys(key)))[1:]


def _legend(console, *terms: str) -> None:
    console.print(legend(*terms), style="dim", highlight=False)


def _metric_table(console, title: str, first: str, cols, rows) -> None:
    """rows: (name, path tuple, values dict or None); cols: (label, key or key tuple). A
    value's gate path is its row's (model's) path joined with its column's key.

    One row per model when that fits the console; else one row per metric, a column per
    model; else one line per value. Each value is formatted by its kind."""
    rows = [(name, path, values) for name, path, values in rows if values is not None]

    def cell(path, values, key) -> str:
        return shown_at((*path, *_keys(key)), lookup(values, _keys(key)))

    width = console.width
    wide = fit(width, [Col(first, "left"), Col("gate path", "left", style="dim")]
               + [Col(f"{label}\n{rel(key)}") for label, key in cols],
               [[name, format_path(path), *(cell(path, v, key) for _, key in cols)]
                for name, path, v in rows])  # fmt: skip
    if wide is not None:
        console.print(Text(f"{title}  (gate path: row path + column key)", style="bold"))
        console.print(wide)
        return
    tall = fit(width, [Col("metric", "left", wrap=True), Col("key", "left", style="dim")]
               + [Col(name) for name, _, _ in rows],
               [[label, rel(key), *(cell(path, v, key) for _, path, v in rows)]
                for label, key in cols])  # fmt: skip
    paths = ", ".join(f"{name} = {format_path(path)}" for name, path, _ in rows)
    if tall is not None:
        console.print(Text(f"{title}  (gate path: column path + row key; {paths})",
                           style="bold"))  # fmt: skip
        console.print(tall)
        return
    console.print(Text(f"{title}  (gate path: model path + key)", style="bold"))
    for name, path, v in rows:
        console.print(Text(f"{name}: {format_path(path)}"))
        for label, key in cols:
            console.print(Text.assemble(f"  {label}: {cell(path, v, key)}  ", (rel(key), "dim")))


def _weight_rows(w: dict):
    rows = [("sft", ("weights", "overall"), w["overall"])]
    if w.get("candidate"):
        rows.append(("candidate", ("weights", "candidate", "overall"), w["candidate"]["overall"]))
    return rows


def _weights(console, w: dict) -> None:
    _metric_table(console, "weights: Δ = SFT − BASE", "model", WEIGHT_COLS, _weight_rows(w))
    _legend(console, *WEIGHT_TERMS)
    drift = shown_at(("weights", "drift_max"), w["drift_max"])
    console.print(f"largest tensor drift (weights.drift_max): {drift} (relative) in "
                  f"{w['drift_max_tensor']} (weights.drift_max_tensor)",
                  highlight=False)  # fmt: skip
    _layer_grid(console, w)
    if w.get("units"):
        rows = [(m, ("weights", "units", m), s) for m, s in w["units"].items()]
        _metric_table(console, "per-unit drift score s_j (the drift scorer's)", "module",
                      UNIT_DRIFT_COLS, rows)  # fmt: skip
        _legend(console, *UNIT_DRIFT_TERMS)
    if w.get("rank"):
        rows = [(m, ("weights", "rank", "modules_mean", m), v)
                for m, v in w["rank"]["modules_mean"].items()]  # fmt: skip
        _metric_table(console, "rank of Δ (mean per module)", "module", RANK_COLS, rows)


def _layer_grid(console, w: dict) -> None:
    """Relative drift per layer × module kind, as numbers (the HTML page has the heatmap); one
    line per layer where the grid does not fit the console."""
    cells = w["layer_modules"]
    kinds = sorted({k.split(".", 1)[1] for k in cells}, key=_kind_order)
    layers = sorted({int(k.split(".", 1)[0]) for k in cells})
    if len(layers) > MAX_LAYERS:
        top = sorted(layers, key=lambda i: -w["layers"][str(i)]["rel_drift"])[:MAX_LAYERS]
        layers = sorted(top)

    def value(v) -> str:
        return shown_at(("weights", "layers", "0", "rel_drift"), v)

    grid = [[str(i), *(value(cells.get(f"{i}.{k}", {}).get("rel_drift")) for k in kinds),
             value(w["layers"][str(i)]["rel_drift"])] for i in layers]  # fmt: skip
    console.print(Text("relative drift per layer × module  (gate paths: "
                       'weights.layer_modules["LAYER.MODULE"].rel_drift; last column: '
                       'weights.layers["LAYER"].rel_drift)', style="bold"))  # fmt: skip
    table = fit(console.width, [Col("layer"), *(Col(k) for k in kinds), Col("layer")], grid)
    if table is not None:
        console.print(table)
    else:
        for row in grid:
            pairs = " ".join(f"{k}={v}" for k, v in zip(kinds, row[1:-1], strict=True))
            console.print(Text(f"layer {row[0]}: {pairs} whole={row[-1]}"))
    _legend(console, *LAYER_TERMS)


_KIND_ORDER = ("q", "k", "v", "o", "attn", "mlp", "norm", "embed", "router", "other")


def _kind_order(kind: str) -> int:
    return _KIND_ORDER.index(kind) if kind in _KIND_ORDER else len(_KIND_ORDER)


def generated(r: dict) -> bool:
    """Whether the report has --generate's numbers."""
    return (r.get("inputs") or {}).get("generation") is not None


def _output(console, r: dict) -> None:
    o = r["output"]
    title = "output: teacher-forced next-token distributions on response tokens"
    _metric_table(console, title, "model", OUTPUT_COLS, model_blocks("output", o))
    _legend(console, *OUTPUT_TERMS)
    if generated(r):
        title = "generation (--generate): greedy accuracy; pass@k and learnable share of k samples"
        _metric_table(console, title, "model", GENERATION_COLS, model_blocks("output", o))
        _legend(console, *GENERATION_TERMS)


def _unit_cols(u: dict):
    return (*((dormant_label(x), ("dormant", str(x))) for x in u["taus"]),
            ("saturated", "saturated"), ("units", "units"))  # fmt: skip


def _units(console, u: dict) -> None:
    _metric_table(console, "unit activity (ReDo score s_j = E|h_j| / module mean)", "model",
                  _unit_cols(u), model_blocks("units", u))  # fmt: skip
    _legend(console, *UNIT_TERMS)
    if u.get("not_measured"):
        missing = u["not_measured"]
        console.print(f"unit activity not measured for {len(missing)} module instance(s), "
                      f"e.g. {missing[0]} (not a module in transformers)")  # fmt: skip
    if u.get("unrouted"):
        unrouted = u["unrouted"]
        console.print(
            f"{len(unrouted)} expert(s) received no calibration token, e.g. "
            f"{unrouted[0]}: their units are not counted (unknown, not dormant)"
        )


def _routing_grid(ro: dict) -> tuple[list[tuple[str, tuple, str]], list[int]]:
    """The per-layer routing grid: its columns (head, model path, key) and the list indices
    of the layers shown (all, or the MAX_LAYERS with the largest usage KL)."""
    cols = []
    for name, path, block in model_blocks("routing", ro):
        if block is not None:
            cols.append((f"dead {name}", path, "dead_share"))
    for name, path, block in model_blocks("routing", ro)[1:]:
        if block is not None:
            cols.append((f"KL {name}", path, "kl_to_base"))
    rows = list(range(len(ro["layers"])))
    if len(rows) > MAX_LAYERS:
        rows = sorted(sorted(rows, key=lambda n: -(ro["layers"][n].get("kl_to_base") or 0))
                      [:MAX_LAYERS])  # fmt: skip
    return cols, rows


def _layer_value(ro: dict, path: tuple, n: int, key: str):
    block = ro if len(path) == 1 else ro[path[1]]
    layers = block["layers"]
    return layers[n].get(key) if n < len(layers) else None


def _routing(console, ro: dict) -> None:
    """Routing of the mixture-of-experts layers: the model-level table, then one row per MoE
    layer (dead-expert shares, usage KL to BASE) and SFT's dead experts."""
    title = (f"routing (mixture of experts; top-{ro['top_k']} of the experts per token, "
             f"{len(ro['layers'])} MoE layers, router {ro['router']})")  # fmt: skip
    _metric_table(console, title, "model", ROUTING_COLS, model_blocks("routing", ro))
    cols, rows = _routing_grid(ro)
    grid = []
    for n in rows:
        row = ro["layers"][n]
        values = [shown_at((*path, "layers", n, key), _layer_value(ro, path, n, key))
                  for _, path, key in cols]  # fmt: skip
        dead = ",".join(str(e) for e in row["dead"]) or "–"
        grid.append([f"[{n}]", str(row["layer"]), *values, dead])
    console.print(Text("routing per MoE layer  (gate paths: routing.layers[N].dead_share, "
                       "routing.layers[N].kl_to_base, routing.layers[N].dead; BASE's and the "
                       "candidate's under routing.base / routing.candidate)",
                       style="bold"))  # fmt: skip
    heads = [Col("[N]"), Col("layer"), *(Col(h) for h, _, _ in cols),
             Col("dead experts (SFT)", "left")]  # fmt: skip
    table = fit(console.width, heads, grid)
    if table is not None:
        console.print(table)
    else:
        for line in grid:
            pairs = " ".join(f"{h}={v}" for (h, _, _), v in zip(cols, line[2:-1], strict=True))
            console.print(Text(f"{line[0]} layer {line[1]}: {pairs} dead={line[-1]}"))
    _legend(console, *ROUTING_TERMS)


def _sharpness(console, s: dict, nulls: dict) -> None:
    shown = [(name, key) for name, key in SHARPNESS_KEYS
             if not key.startswith("candidate") or s.get("candidate") is not None]  # fmt: skip

    def value(key: str) -> str:
        text = shown_at(("sharpness", key), s[key])
        return text if "ratio" in key or s[key] is None else f"{text} nats"

    values = ", ".join(f"{name} {value(key)} [dim](sharpness.{key})[/]" for name, key in shown)
    console.print(f"sharpness (rise of the calibration NLL under random weight noise, mean of "
                  f"(L(θ+u)+L(θ−u))/2 − L(θ), σ_rel {s['sigma_rel']}, {s['draws']} draws of ±u; "
                  f"ratio: over BASE's): {values}", highlight=False)  # fmt: skip
    for key in ("ratio", "candidate_ratio")[: 2 if s.get("candidate") is not None else 1]:
        if s.get(key) is None and f"sharpness.{key}" in nulls:
            console.print(f"  sharpness.{key} is null: {nulls[f'sharpness.{key}']}")


CHANGE_STYLE = {"better": "green", "worse": "yellow", "no change": "dim"}


def _comparison(console, rows: list[dict]) -> None:
    """Before/after: the metric with its two gate paths under it, the two values and the
    change (report/numbers.change: better, worse or no change)."""
    lines = []
    for row in rows:
        sft_path, cand_path = row["metric"], row.get("candidate_metric", "")
        where = [parse_path(sft_path), parse_path(cand_path)]
        verdict = row.get("change") or change(row["sft"], row["candidate"], row["better"])
        lines.append((row, sft_path, cand_path, shown_at(where[0], row["sft"]),
                      shown_at(where[1], row["candidate"]), verdict))  # fmt: skip
    title = "before (SFT) / after (candidate)  (gate paths under each metric: SFT; candidate)"
    table = fit(console.width, [Col("metric", "left", wrap=True), Col("SFT"), Col("candidate"),
                                Col("change", "left")],
                [[Text.assemble(f"{row['label']}; {row['better']} is better\n",
                                (f"{a}; {b}", "dim")), x, y,
                  Text(c, style=CHANGE_STYLE[c])] for row, a, b, x, y, c in lines])  # fmt: skip
    console.print(Text(title, style="bold"))
    if table is not None:
        console.print(table)
    else:
        for row, a, b, x, y, c in lines:
            console.print(Text(f"{row['label']}; {row['better']} is better"))
            console.print(Text(f"  SFT {x} ({a})"))
            console.print(Text.assemble(f"  candidate {y} ({b}): ", (c, CHANGE_STYLE[c])))
    _legend(console, *COMPARISON_TERMS)


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
        if generated(r):
            add(model_blocks("output", r["output"]), GENERATION_COLS)
    if r["units"] is not None:
        add(model_blocks("units", r["units"]), _unit_cols(r["units"]))
    if r.get("routing") is not None:
        ro = r["routing"]
        add(model_blocks("routing", ro), ROUTING_COLS)
        cols, rows = _routing_grid(ro)
        out += [format_path((*path, "layers", n, key)) for n in rows for _, path, key in cols]
    if r["sharpness"] is not None:
        has_candidate = r["sharpness"].get("candidate") is not None
        out += [f"sharpness.{key}" for _, key in SHARPNESS_KEYS
                if has_candidate or not key.startswith("candidate")]  # fmt: skip
    for row in r.get("comparison") or []:
        out += [row["metric"], row["candidate_metric"]]
    candidate = r["verdict"]["candidate"] or {}
    out += [x["metric"] for x in r["verdict"]["reasons"] + candidate.get("reasons", [])]
    return out
