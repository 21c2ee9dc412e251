"""The README's benchmark figures, generated from the recorded results (`make bench`, `make docs`).

Each block sits between `<!-- bench: NAME -->` and `<!-- /bench -->` in README.md and is
written from its result file in bench/results alone (no benchmark runs here):

  fuse   the fuse table (fusion, fusion + reset, the I/O floor, the naive script), the targets,
         the correctness check, start-up and the tools' own timers (bench/fuse_bench.py)
  sweep  `rejuv sweep` against the separate fuse + diagnose runs: wall time, peak RSS, ratio,
         agreement (bench/sweep_bench.py)
  moe    peak RSS of `rejuv diagnose` and `--select dormant` on a mixture-of-experts pair and
         a dense pair of the same size (bench/moe_memory.py, `make bench-moe`)
  inputs `rejuv fuse` from a LoRA adapter, a DCP directory and verl FSDP shards, against
         safetensors and against the usual route, convert then fuse (bench/inputs_bench.py,
         `make bench-inputs`)
  torchrun  `rejuv fuse` on 1 process against 2 torch.distributed ranks, ~1B parameters
         (bench/torchrun_bench.py, `make bench-torchrun`)

Every block opens with one line naming the commit, the date and the machine the figures were
measured on (the results' `provenance`, bench/provenance.py), in bold when the tree had
uncommitted changes. Results written before `provenance` existed fall back to their older
`machine.git` (`dd26e57-dirty`) and `date`; what is missing reads "commit unknown" / "date
unknown". tests/test_bench_readme.py fails when the README's blocks differ from what this
script writes, so a figure cannot drift from its result file.

    python docs/bench_tables.py            # rewrite the blocks in README.md
    python docs/bench_tables.py --check    # exit 1 and show the first difference
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "bench" / "results"
WIDTH = 95  # as docs/usage.py
BLOCK = re.compile(r"(<!-- bench: (\S+) -->\n)(.*?)(<!-- /bench -->)", re.S)
SOURCES = {"fuse": "fuse_bench.json", "sweep": "sweep_bench.json", "moe": "moe_memory.json",
           "inputs": "inputs_bench.json", "torchrun": "torchrun_bench.json"}  # fmt: skip
REGENERATES = {"moe": "make bench-moe", "inputs": "make bench-inputs",
               "torchrun": "make bench-torchrun"}  # else `make bench`  # fmt: skip
INPUT_ROUTES = {
    "lora": "PEFT `merge_and_unload` + `save_pretrained`",
    "dcp": "torch's `dcp_to_torch_save` + `save_pretrained`",
    "fsdp": "every rank file loaded, shards concatenated (verl's merger) + `save_pretrained`",
}
FUSE_LABELS = {
    "rejuv": "`rejuv fuse --reset 0` (fusion)",
    "reset": "`rejuv fuse` (fusion + 1% reset)",
    "floor": "I/O floor (`bench/io_floor.py`)",
    "naive": "naive transformers script (`bench/naive_fuse.py`)",
}
FUSE_WHO = {"rejuv": "fusion", "reset": "fusion + reset"}
DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
AGREEMENT_LIMIT = 1e-5  # sweep_bench.py's limit on the largest relative difference


# Spaces a line must not break at: after ≤, and between a number and its unit.
KEEP = re.compile(r"(?<=[≤≥]) (?=\S)|(?<=\d) (?=(?:s|MB|GB|GiB)\b)")


def _fill(text: str) -> str:
    """A paragraph wrapped at WIDTH, never between a number and its unit or after ≤."""
    glued = KEEP.sub("\0", text)
    wrapped = textwrap.fill(glued, WIDTH, break_long_words=False, break_on_hyphens=False)
    return wrapped.replace("\0", " ")


# -- provenance ------------------------------------------------------------------------------


def provenance_of(result: dict) -> dict:
    """The result's `provenance`, or what an older result file says instead."""
    if result.get("provenance"):
        return result["provenance"]
    old = result.get("machine") or {}
    git = re.fullmatch(r"([0-9a-f]{7,40})(-dirty)?", old.get("git") or "")
    gb = old.get("mem_total_gb")
    return {
        "date": result.get("date"),
        "commit_short": git.group(1)[:7] if git else None,
        "dirty": bool(git.group(2)) if git else None,
        "machine": {
            "cpu": old.get("cpu"),
            "cpu_count": old.get("cpu_count"),
            "cpus_usable": old.get("nproc"),
            "mem_total_bytes": gb * 1e9 if gb else None,
            "system": (old.get("platform") or "").split("-")[0] or None,
            "python": old.get("python"),
            "torch": old.get("torch"),
        },
    }


def machine_summary(m: dict) -> str:
    """`AMD EPYC, 2 cores, 23.6 GiB RAM, no GPU, Linux, Python 3.11.7, torch 2.13.0+cpu`."""
    parts = [m.get("cpu") or "unknown CPU"]
    usable, count = m.get("cpus_usable"), m.get("cpu_count")
    if usable and count and usable != count:
        parts.append(f"{usable} of {count} cores")
    elif usable or count:
        parts.append(f"{usable or count} cores")
    if m.get("mem_total_bytes"):
        parts.append(f"{m['mem_total_bytes'] / 2**30:.1f} GiB RAM")
    gpus = m.get("gpus")
    if gpus is not None:  # unknown in older results
        parts.append(", ".join(gpus) if gpus else "no GPU")
    parts += [m[k] for k in ("system",) if m.get(k)]
    parts += [f"Python {m['python']}"] if m.get("python") else []
    parts += [f"torch {m['torch']}"] if m.get("torch") else []
    return ", ".join(parts)


def provenance_line(result: dict, command: str = "make bench") -> str:
    """`Measured at commit abc1234 (2026-12-03) on <machine>; `make bench` regenerates this.`"""
    p = provenance_of(result)
    commit = f"commit {p['commit_short']}" if p.get("commit_short") else "commit unknown"
    if p.get("dirty"):
        commit += " **with uncommitted changes**"
    date = (p.get("date") or "")[:10] or "date unknown"
    return (
        f"Measured at {commit} ({date}) on {machine_summary(p.get('machine') or {})}; "
        f"`{command}` regenerates this."
    )


# -- blocks ----------------------------------------------------------------------------------


def _fuse_targets(targets: list[dict]) -> str:
    parts, rss = [], []
    for t in targets:
        key, _, kind = t["name"].partition(" ")
        if kind == "wall / floor" and key in FUSE_WHO:
            parts.append(f"{FUSE_WHO[key]} ≤ {t['limit']:g}× the floor ({t['value']:.2f}×)")
        elif kind == "peak RSS / naive":
            rss.append(t)
        else:
            parts.append(f"{t['name']} ≤ {t['limit']:g} ({t['value']:.2f})")
    if rss and len({t["limit"] for t in rss}) == 1:
        values = " and ".join(f"{t['value']:.0%}" for t in rss)
        parts.append(f"peak RSS ≤ {rss[0]['limit']:.0%} of the naive script's ({values})")
    else:
        parts += [f"{t['name']} ≤ {t['limit']:.0%} ({t['value']:.0%})" for t in rss]
    failed = [t["name"] for t in targets if not t["passed"]]
    verdict = "all pass" if not failed else "FAILED: " + ", ".join(failed)
    return f"Targets: {', '.join(parts)}; {verdict}"


def fuse_block(r: dict) -> str:
    cases, pair, repeats = r["cases"], r["pair"], r["repeats"]
    command = (r.get("provenance") or {}).get("command")
    setup = (
        f"A {pair['parameters'] / 1e6:.1f}M-parameter {DTYPES.get(pair['dtype'], pair['dtype'])} "
        f"pair in {pair['base_shards']} shards per model "
        f"({pair['base_weight_bytes'] / 1e6:,.0f} MB each), warm page cache, "
        f"{repeats} run{'s' if repeats != 1 else ''} of each case"
        + (f" (`{command}`)" if command else "")
        + ":"
    )
    floor_wall, naive_rss = cases["floor"]["wall_s_median"], cases["naive"]["peak_rss_bytes"]
    table = [
        f"| case | wall s (median of {repeats}) | peak RSS MB | wall / floor | RSS / naive |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, label in FUSE_LABELS.items():
        c = cases[key]
        table.append(
            f"| {label} | {c['wall_s_median']:.2f} | {c['peak_rss_bytes'] / 1e6:,.0f} | "
            f"{c['wall_s_median'] / floor_wall:.2f}× | {c['peak_rss_bytes'] / naive_rss:.0%} |"
        )
    checks = _fuse_targets(r["targets"])
    runs = cases["floor"].get("wall_s_runs") or []
    if len(runs) > 1:
        checks += f" (single runs of the floor ranged {min(runs):.2f}–{max(runs):.2f} s)"
    checks += "."
    same = r.get("correctness")
    if same is None:
        checks += " The outputs were not compared (a run failed)."
    elif same["bit_identical"] == same["tensors_compared"] and not (
        same["only_in_rejuv"] or same["only_in_naive"]
    ):
        checks += (
            " The fusion-only output is bit-identical to the naive script's for all "
            f"{same['tensors_compared']} tensors."
        )
    else:
        checks += (
            f" The fusion-only output equals the naive script's bit for bit in "
            f"{same['bit_identical']} of {same['tensors_compared']} tensors (largest "
            f"|difference| {same['max_abs_diff']:.3g})."
        )
    start = r["startup"]
    timers = (
        f"Every row includes {start['wall_s_median']:.2f} s of interpreter and torch start-up "
        f"(`python -c 'import torch'`; {start['peak_rss_bytes'] / 1e6:,.0f} MB of the RSS)."
    )
    own, floor_own = r.get("internal_seconds") or {}, r.get("floor_internal_seconds")
    if floor_own and own.get("rejuv") and own.get("reset"):
        fusion, reset = own["rejuv"]["total"], own["reset"]["total"]
        timers += (
            " The streaming work alone, by each tool's own timer (last run), is "
            f"{fusion:.2f} s for fusion and {reset:.2f} s for fusion + reset "
            f"({own['reset'].get('score', 0):.2f} s of it the scoring pass) against "
            f"{floor_own:.2f} s for the floor: {fusion / floor_own:.2f}× and "
            f"{reset / floor_own:.2f}×."
        )
    return "\n\n".join(
        [provenance_line(r), _fill(setup), "\n".join(table), _fill(checks), _fill(timers)]
    )


def sweep_block(r: dict) -> str:
    alphas, rounds = r["alphas"], r["rounds"]
    setup = (
        f"{len(alphas)} α ({', '.join(f'{a:g}' for a in alphas)}), `builtin:math` × "
        f"{r['samples']}, the default reset, median of {rounds} round{'s' if rounds != 1 else ''}:"
    )
    sweep, separate = r["sweep"], r["separate"]
    table = "\n".join(
        [
            "| case | wall s | peak RSS GiB |",
            "|---|---:|---:|",
            f"| `rejuv sweep` (1 process) | {sweep['wall_s']:.1f} | {sweep['peak_rss_gib']:.2f} |",
            f"| `rejuv fuse` + `rejuv diagnose --candidate` per α ({2 * len(alphas)} processes; "
            f"the largest one's RSS) | {separate['wall_s']:.1f} | "
            f"{separate['peak_rss_gib']:.2f} |",
        ]
    )
    ratio, target = r["ratio"], r["target"]
    limit = r.get("max_rel_diff_limit", AGREEMENT_LIMIT)
    diff = r["max_rel_diff"]
    result = (
        f"Ratio sweep / separate: {ratio:.2f} (target ≤ {target:g}; "
        f"{'pass' if ratio <= target else 'FAIL'}). "
    )
    if diff == 0:
        result += (
            "The sweep's rows equal the separate diagnose reports exactly (largest relative "
            "difference 0)."
        )
    else:
        result += (
            f"The sweep's rows agree with the separate diagnose reports to {diff:.1e} relative "
            f"(limit {limit:g}; {'pass' if diff <= limit else 'FAIL'})."
        )
    return "\n\n".join([provenance_line(r), _fill(setup), table, _fill(result)])


def moe_block(r: dict) -> str:
    """Peak RSS of measuring an MoE pair against a dense pair of the same parameter count."""
    pairs, ratio = r["pairs"], r["rss_ratio_moe_to_dense"]

    def mib(run: dict) -> str:
        return f"{run['peak_rss_bytes'] / 2**20:,.0f} MiB ({run['seconds']:g} s)"

    table = "\n".join([
        "| pair | parameters | units measured | not measured | `diagnose` peak RSS | "
        "`fuse --select dormant` peak RSS |",
        "|---|---|---|---|---|---|",
        *(f"| {name} | {p['params'] / 1e6:.1f}M | {p['units_measured']:,} | {p['not_measured']} "
          f"| {mib(p['diagnose'])} | {mib(p['dormant'])} |" for name, p in pairs.items()),
    ])  # fmt: skip
    setup = (
        f"`rejuv diagnose` (BASE and SFT, unit activity and routing hooks) and `rejuv fuse "
        f"--select dormant --dry-run --save-mask` (SFT, activity hooks), {r['samples']} "
        "calibration examples of builtin:math, CPU float32, each in its own process; peak RSS "
        "from the kernel. moe: Mixtral, 8 experts, top 2; moe-dense: Llama whose MLP is as "
        "wide as the 8 experts together."
    )
    moe = pairs["moe"]
    result = (
        f"MoE / dense peak RSS: `diagnose` {ratio['diagnose']:.2f}, `--select dormant` "
        f"{ratio['dormant']:.2f}. The expert hooks recompute one expert's activations at a time "
        "for the tokens routed to it, never experts × tokens. The synthetic pair's random router "
        f"sends most tokens to a few experts: {moe['unrouted']} of its {moe['experts']} experts "
        "got no calibration token (listed under `units.unrouted`, hence fewer units measured), "
        "so the experts computed here are fewer than in a trained, balanced MoE; the hooks' "
        "extra memory is bounded by one expert's routed tokens either way."
    )
    return "\n\n".join([provenance_line(r, REGENERATES["moe"]), _fill(setup), table,
                        _fill(result)])  # fmt: skip


def inputs_block(r: dict) -> str:
    """Fusing from trainer outputs directly against safetensors and against convert-then-fuse."""
    rows = r["rows"]

    def cell(run: dict) -> str:
        return f"{run['peak_rss_bytes'] / 2**20:,.0f} MiB, {run['seconds']:g} s"

    lines = [
        "| SFT given as | `rejuv fuse` directly | convert first | then `rejuv fuse` | "
        "outputs equal |",
        "|---|---|---|---|---|",
        f"| safetensors (reference) | {cell(rows['safetensors']['direct'])} | | | |",
    ]
    for kind, label in (
        ("lora", "LoRA adapter"),
        ("dcp", "DCP directory"),
        ("fsdp", "verl FSDP shards"),
    ):
        k = rows[kind]
        o = k["outputs"]
        same = (
            f"{o['bit_identical']}/{o['tensors_compared']} tensors bit-identical"
            if o["bit_identical"] == o["tensors_compared"]
            else f"{o['bit_identical']}/{o['tensors_compared']} bit-identical, max "
            f"abs diff {o['max_abs_diff']:.2g}"
        )
        lines.append(f"| {label} | {cell(k['direct'])} | {cell(k['convert'])} "
                     f"| {cell(k['then_fuse'])} | {same} |")  # fmt: skip
    setup = (
        f"The fuse benchmark's pair ({r['pair']}, ~301.5M parameters, bf16); SFT also as a PEFT "
        f"adapter over BASE (r = {r['lora_rank']} on every linear layer, made by PEFT; SFT is "
        f"then BASE + s·B·A), and loaded into FSDP2 on {r['world_size']} gloo processes and "
        "saved by `dcp.save` and in verl's rank-file layout. `rejuv fuse` with default flags "
        "(α 0.5, 1% drift reset), each command in its own process, peak RSS from the kernel. "
        "The usual route converts first: " + "; ".join(f"{k}: {v}" for k, v in
                                                         INPUT_ROUTES.items()) + "."
    )  # fmt: skip
    ratios = "; ".join(
        f"{kind}: {rows[kind]['rss_vs_safetensors']:.2f}× the safetensors peak, "
        f"{rows[kind]['rss_direct_vs_route']:.2f}× the route's peak, "
        f"{rows[kind]['time_direct_vs_route']:.2f}× its time"
        for kind in ("lora", "dcp", "fsdp")
    )
    result = (
        f"Direct: {ratios}. Peak memory stays bounded in every case: FSDP's extra over "
        "safetensors is torch.distributed's own modules (importing `torch.distributed.tensor` "
        "adds about 42 MB here); DCP's also holds the chunks of one tensor, each a separate "
        "`torch.save` blob loaded whole (the largest, the 32000 × 1024 bf16 embeddings, is 62.5 "
        "MiB). The LoRA route's output differs because its merge is saved in bf16 (rounded) "
        "while rejuv reads base + s·B·A unrounded; DCP and FSDP hold the same bf16 values "
        "either way."
    )
    return "\n\n".join([provenance_line(r, REGENERATES["inputs"]), _fill(setup),
                         "\n".join(lines), _fill(result)])  # fmt: skip


def torchrun_block(r: dict) -> str:
    """1 process against 2 ranks: wall time, each rank's time and peak memory, the outputs."""
    s = r["summary"]

    def mib(n: int) -> str:
        return f"{n / 2**20:,.0f} MiB"

    lines = [
        "| run | wall time | peak RSS |",
        "|---|---|---|",
        f"| 1 process (torch's default threads) | {s['one']['seconds']:g} s | "
        f"{mib(s['one']['peak_rss_bytes'])} |",
        f"| 1 process, 1 thread | {s['one_1thread']['seconds']:g} s | "
        f"{mib(s['one_1thread']['peak_rss_bytes'])} |",
        f"| {r['world_size']} ranks, 1 thread each | {s['two']['seconds']:g} s | "
        + ", ".join(f"rank {i}: {mib(k['peak_rss_bytes'])} ({k['seconds']:g} s)"
                    for i, k in enumerate(s["two"]["ranks"])) + " |",
    ]  # fmt: skip
    o = r["outputs"]
    same = ("every file but rejuv.json and README.md byte-identical"
            if sorted(o["differ"]) == ["README.md", "rejuv.json"]
            else f"files that differ: {', '.join(o['differ']) or 'none'}")  # fmt: skip
    setup = (
        f"A Llama pair of {r['parameters'] / 1e9:.2f}B parameters ({r['pair']}, bf16, "
        f"{r['tensor_bytes'] / 1e9:.2f} GB of tensors per model), `rejuv fuse BASE SFT --out "
        f"OUT --shard-size {r['shard_size']}` ({sum(r['shards_per_rank'])} output shards to deal "
        "out; otherwise default flags: α 0.5, 1% drift reset), inputs in the page cache, each "
        f"configuration run {r['repeats']} times in turn (medians). The ranks are started as "
        "srun starts them (RANK, WORLD_SIZE, MASTER_ADDR, ... set; one thread each, as torchrun "
        "sets) and reaped one by one, so each rank's own peak RSS and finishing time are known."
    )
    t1, t2 = r["timers"]["one"], r["timers"]["two"]
    result = (
        f"Speed-up of {r['world_size']} ranks (time of 1 process / time of the ranks): "
        f"{r['speedup_vs_one']:.2f}× against the default command, "
        f"{r['speedup_vs_one_1thread']:.2f}× against one process with one thread; shards "
        f"dealt {' / '.join(map(str, r['shards_per_rank']))}; {same}. "
        f"rejuv's own timers (last run): scoring {t1['score']:g} s → {t2['score']:g} s, "
        f"writing {t1['write']:g} s → {t2['write']:g} s."
    )
    return "\n\n".join([provenance_line(r, REGENERATES["torchrun"]), _fill(setup),
                         "\n".join(lines), _fill(result)])  # fmt: skip


BLOCKS = {"fuse": fuse_block, "sweep": sweep_block, "moe": moe_block, "inputs": inputs_block,
          "torchrun": torchrun_block}  # fmt: skip


# -- the README ------------------------------------------------------------------------------


def load(results: Path = RESULTS) -> dict[str, dict]:
    """The result files that exist, by block name."""
    return {
        name: json.loads((results / file).read_text())
        for name, file in SOURCES.items()
        if (results / file).is_file()
    }


def blocks(readme: str) -> list[str]:
    """The names of the bench blocks in the README, in order."""
    return [m.group(2) for m in BLOCK.finditer(readme)]


def render(readme: str, results: dict[str, dict]) -> str:
    """README text with every bench block rewritten from `results` (block name -> result)."""

    def block(m: re.Match) -> str:
        name = m.group(2)
        if name not in BLOCKS:
            raise SystemExit(f"README.md: bench block for unknown benchmark {name!r}")
        if name not in results:
            raise SystemExit(
                f"README.md: bench block {name!r} needs bench/results/{SOURCES[name]}; "
                "run `make bench`"
            )
        return m.group(1) + BLOCKS[name](results[name]) + "\n" + m.group(4)

    return BLOCK.sub(block, readme)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the README differs")
    parser.add_argument("--readme", type=Path, default=README)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from readme_blocks import write_or_check

    text = args.readme.read_text()
    stale = ("README.md: bench blocks differ from bench/results/*.json; run "
             "`python docs/bench_tables.py` (make docs)")  # fmt: skip
    return write_or_check(args.readme, text, render(text, load(args.results)), args.check, stale)


if __name__ == "__main__":
    sys.exit(main())
