"""Every setting declared once: its flag, recipe key, default, accepted values and help.

The Typer options (commands/options.py), the recipe validation (recipe.py), the help-text
defaults and the provenance command line all read `SETTINGS`. Each setting has one validator,
`check(value) -> value`, that raises `Invalid("must be ... (got ...)")`; a flag and a recipe key
put their own name in front of the same phrase:

    --reset: must be >= 0.0 and <= 0.5 (got 0.7)
    recipes/x.yaml: reset.fraction: must be >= 0.0 and <= 0.5 (got 0.7)

Imports nothing heavy (no torch, no typer): `rejuv --help` reads it.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The reset scorers and the calibration parameters of the data scorers, with their defaults.
from rejuv_cli.ops.answers import CHECKERS
from rejuv_cli.reset.registry import CALIB_PARAMS, SCORERS

DTYPES = ("auto", "bf16", "fp16", "fp32", "fp8")
RESET_MODES = ("base", "shrink-perturb", "reinit")
MAX_RESET_FRACTION = 0.5


class Invalid(ValueError):
    """A value a setting does not accept; the message is one phrase without the setting's name."""


def show(value, limit: int = 60) -> str:
    """repr of a user's value for a one-line message, cut to `limit` characters."""
    try:
        text = repr(value)
    except ValueError:  # an int with more digits than Python converts to text
        return "a number too long to show"
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


@dataclass(frozen=True)
class Range:
    """The values one numeric setting accepts. NaN and ±inf never do: NaN compares false with
    every bound, so a plain `lo <= v <= hi` test would let it through."""

    lo: float
    hi: float = math.inf
    lo_open: bool = False  # lo itself excluded
    integer: bool = False

    def problem(self, value) -> str | None:
        """Why `value` does not fit (one phrase, e.g. "must be >= 0.0 and <= 0.5 (got 1.5)"),
        or None when it does."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            kind = "an integer >= " + str(self.lo) if self.integer else "a number"
            return f"must be {kind} (got {show(value)})"
        if not math.isfinite(value):
            return f"must be a finite number (got {value})"
        if self.integer:
            if not isinstance(value, int) or value < self.lo or value > self.hi:
                return f"must be an integer >= {self.lo} (got {show(value)})"
            return None
        if value < self.lo or value > self.hi or (self.lo_open and value == self.lo):
            low = f"> {self.lo}" if self.lo_open else f">= {self.lo}"
            return f"must be {low} and <= {self.hi} (got {value})"
        return None

    def __call__(self, value):
        problem = self.problem(value)
        if problem is not None:
            raise Invalid(problem)
        return value if self.integer else float(value)


# ---- validators: value (a flag's parsed value or a recipe's YAML value) -> the value to use ----
def choice(values: tuple[str, ...] | Callable[[], Any], fold_case: bool = False):
    """One of `values` (a tuple, or a function returning the names, e.g. a registry);
    fold_case: any case is accepted and the value returned in lower case."""

    def check(value):
        names = values() if callable(values) else values
        if isinstance(value, str) and (value.lower() if fold_case else value) in names:
            return value.lower() if fold_case else value
        raise Invalid(f"must be one of {', '.join(names)} (got {show(value)})")

    check.choices = values
    return check


def scorer_names() -> list[str]:
    """The reset scorer registry's names."""
    return sorted(SCORERS)


def size(value):
    """A size such as 5GB, 500MiB or a byte count; returned as given (parse_size reads it)."""
    from rejuv_cli.checkpoint.writer import parse_size

    try:
        parse_size(value)
    except ValueError as e:
        raise Invalid(str(e)) from None
    return value


def calib_spec(value):
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"must be builtin:NAME, a JSONL or Parquet path, or a Hub dataset id "
                      f"(got {show(value)})")  # fmt: skip
    return value


def field_name(value):
    """The name of a key or column of the calibration data (any non-blank text)."""
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"must be a key or column name (got {show(value)})")
    return value


def alpha_list(value) -> tuple[float, ...]:
    """A comma list of distinct fusion coefficients in [0, 1], in the order given."""
    if not isinstance(value, list | tuple) or not value:
        raise Invalid(f"must be a comma list of α values in [0, 1], e.g. 0.3,0.5,0.7 "
                      f"(got {show(value)})")  # fmt: skip
    alphas: list[float] = []
    for item in value:
        try:
            alpha = float(item) if isinstance(item, str) else item
        except ValueError:
            raise Invalid(f"must be numbers in [0, 1] (got {show(item)})") from None
        problem = Range(0.0, 1.0).problem(alpha)
        if problem is not None:
            raise Invalid(f"each α {problem}")
        if float(alpha) in alphas:
            raise Invalid(f"lists {float(alpha):g} twice")
        alphas.append(float(alpha))
    return tuple(alphas)


def modules(value) -> tuple[str, ...]:
    """A list of module names (q, k, v, o, mlp, ...) -> canonical names, aliases expanded."""
    from rejuv_cli.arch.units import resolve_modules

    if not isinstance(value, list) or not value or not all(isinstance(m, str) for m in value):
        raise Invalid(f"must be a non-empty list of module names (got {show(value)})")
    try:
        return resolve_modules(value)
    except ValueError as e:
        raise Invalid(str(e)) from None


def device(value):
    if isinstance(value, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        return value
    raise Invalid(f"must be auto, cpu, cuda or cuda:N (got {show(value)})")


def anything(value):
    return value


@dataclass(frozen=True)
class Setting:
    """One setting. `name` is the field of Recipe / ResetSettings / DiagnoseJob and the command's
    parameter; `key` the recipe key (None: a flag only); `flags` the option names."""

    name: str
    flags: tuple[str, ...]
    type: type
    default: Any
    help: str
    check: Callable[[Any], Any] = anything
    key: str | None = None
    commands: tuple[str, ...] = ("fuse",)
    panel: str | None = None  # --help section of fuse
    metavar: str | None = None
    keep_text: bool = False  # the flag keeps the user's text (parsed where it is used)
    comma_list: bool = False  # the flag's text is a comma list (the recipe's value a list)
    default_help: str | None = None  # the default in words, where `default` is None
    directory: bool = False  # a Path setting that names a directory (else a file)

    @property
    def flag(self) -> str:
        return self.flags[0]

    @property
    def range(self) -> Range | None:
        return self.check if isinstance(self.check, Range) else None

    def parse_flag(self, value):
        """A flag's value through the validator (a comma list split into a list first)."""
        if self.comma_list and isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        return self.check(value)

    def default_text(self) -> str | None:
        """The default as --help shows it, or None where there is none to show."""
        return self.default_help or (None if self.default is None else str(self.default))


def _reset(name, flag, check, default, help, **kw) -> Setting:
    kind = (int if check.integer else float) if isinstance(check, Range) else str
    kw.setdefault("commands", ("fuse", "sweep"))
    return Setting(name, (flag,), kind, default, help, check, f"reset.{name}", panel="Reset", **kw)


_ALL: list[Setting] = [
    Setting("recipe", ("--recipe", "-r"), str, None,
            "Recipe file, or a bundled recipe name (see `rejuv recipes`).",
            commands=("fuse", "sweep"), metavar="FILE|NAME"),
    Setting("alpha", ("--alpha", "-a"), float, 0.5,
            "Fusion coefficient: 0 = base, 1 = SFT [default: recipe's, else 0.5 (paper)].",
            Range(0.0, 1.0), key="fuse.alpha"),
    Setting("dtype", ("--dtype",), str, "auto",
            "Output dtype; auto keeps each SFT tensor's own (bf16 for FP8 weights); fp8 "
            "re-quantizes the block-scaled FP8 weights of an FP8 input.",
            choice(DTYPES, fold_case=True),
            key="output.dtype", commands=("fuse", "sweep")),
    Setting("shard_size", ("--shard-size",), str, "5GB",
            "Largest output shard file, e.g. 5GB, 500MB.", size, key="output.shard_size",
            keep_text=True, commands=("fuse", "sweep")),
    _reset("fraction", "--reset", Range(0.0, MAX_RESET_FRACTION), 0.01,
           "Share of units reset after fusion; 0 = fusion only [default: 0.01 (paper)]."),
    _reset("select", "--select", choice(scorer_names), "drift",
           "How units are scored: drift (weights only), or from SFT's activations on --calib "
           "data: dormant (lowest ReDo score), saturated (always-on), attribution (the paper's; "
           "base + SFT forwards)."),
    _reset("modules", "--modules", modules, None,
           "Comma list of q,k,v,o,mlp (gate/up/down name the MLP unit, which is reset whole; "
           "experts count as mlp); whole_expert: MoE experts reset whole, one unit each "
           "(opt-in, not with mlp or expert; --select drift).", keep_text=True, comma_list=True,
           default_help="all",
           metavar="q,k,v,o,mlp"),
    _reset("max_per_module", "--max-per-module", Range(0.0, 1.0, lo_open=True), 0.1,
           "At most this share of any one module (one layer's k, one expert...)."),
    _reset("protect", "--protect", Range(0.0, 0.5), 0.005,
           "Per module, this share of units with the largest base norm is never reset (super "
           "weights)."),
    _reset("mode", "--reset-mode", choice(RESET_MODES, fold_case=True), "base",
           "base: ω·base + (1−ω)·fused; shrink-perturb: that plus seeded noise; reinit: incoming "
           "weights redrawn, outgoing zeroed (ReDo)."),
    _reset("omega", "--omega", Range(0.0, 1.0), 1.0,
           "Pull of reset units toward BASE; 1 writes the base bytes."),
    _reset("noise", "--noise", Range(0.0, 10.0), 0.01,
           "shrink-perturb noise std, relative to each tensor's std."),
    _reset("seed", "--seed", Range(0, integer=True), 0, "Seed of the reset modes' noise."),
    # Calibration: the data scorers' parameters (reset.registry, CALIB_PARAMS), the same
    # defaults for diagnose, so both read the same tokens (README, "Calibration data").
    _reset("calib", "--calib", calib_spec, CALIB_PARAMS["calib"],
           "Calibration data: builtin:math, builtin:tool_use, a JSONL file with "
           '{"prompt", "response"} or {"messages": [...]} per line, a Parquet file with those '
           "columns, or a Hub dataset id org/name[@revision] (one data file of it; README).",
           commands=("fuse", "diagnose", "sweep")),
    _reset("samples", "--samples", Range(1, integer=True), CALIB_PARAMS["samples"],
           "Calibration examples used (the first N).", commands=("fuse", "diagnose", "sweep")),
    _reset("max_tokens", "--max-tokens", Range(8, integer=True), CALIB_PARAMS["max_tokens"],
           "Longest example, in tokens (longer ones are cut).",
           commands=("fuse", "diagnose", "sweep")),
    Setting("save_mask", ("--save-mask",), Path, None,
            "Write the chosen units to FILE (safetensors); with --dry-run, only that.",
            panel="Reset", metavar="FILE"),
    Setting("mask", ("--mask",), Path, None,
            "Reset the units in FILE (from --save-mask); skips scoring.", panel="Reset",
            commands=("fuse", "sweep"), metavar="FILE"),
    Setting("config_from", ("--config-from",), Path, None,
            "Inputs without a config.json (DCP, FSDP shards without huggingface/): take "
            "config.json, tokenizer and chat template from DIR (e.g. the base model's).",
            commands=("fuse", "diagnose", "sweep", "inspect"), metavar="DIR", directory=True),
    Setting("device", ("--device",), str, "auto", "auto (CUDA when present), cpu, cuda or "
            "cuda:N.", device, commands=("fuse", "diagnose", "sweep"),
            metavar="auto|cpu|cuda|cuda:N"),
    Setting("max_memory", ("--max-memory",), str, None,
            "Forward passes: memory for model weights on the device (GPU memory, or RAM on "
            "CPU), e.g. 20GB; weights beyond it are offloaded (to RAM, then disk) and run "
            "slower [default: what is free].", size, commands=("fuse", "diagnose", "sweep"),
            metavar="SIZE", keep_text=True),
    Setting("sharpness_draws", ("--sharpness-draws",), int, 3,
            "Random directions for sharpness, each probed as ±u; 0 skips it.",
            Range(0, integer=True), commands=("diagnose",)),
    Setting("sharpness_sigma", ("--sharpness-sigma",), float, 0.02,
            "Noise per matrix, relative to its RMS.", Range(1e-6, 1.0), commands=("diagnose",)),
    Setting("min_skill", ("--min-skill",), float, 0.9,
            "Verdict: a candidate keeping less than this share of SFT's skill (NLL gain over "
            "BASE, output.candidate.skill_retained) is at least watch; sweep: the least share an "
            "α must keep to be recommended.", Range(0.0, 1.0), commands=("diagnose", "sweep")),
    Setting("min_learnable", ("--min-learnable",), float, 0.25,
            "Verdict (--generate): SFT with a learnable share (prompts whose samples have mixed "
            "outcomes) below this is at least watch.", Range(0.0, 1.0), commands=("diagnose",)),
    Setting("alphas", ("--alphas",), str, "0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0",
            "Fusion coefficients to try, a comma list in [0, 1].", alpha_list,
            commands=("sweep",), keep_text=True, comma_list=True, metavar="A,B,..."),
    Setting("group_size", ("--group-size",), int, 8,
            "--generate: samples per prompt (temperature 1), as a GRPO group.",
            Range(2, integer=True), commands=("diagnose", "sweep")),
    Setting("max_new_tokens", ("--max-new-tokens",), int, 256,
            "--generate: longest generated answer, in tokens.", Range(1, integer=True),
            commands=("diagnose", "sweep")),
    Setting("checker", ("--checker",), str, "auto",
            "--generate: how answers are compared: auto (numbers numerically, else normalised "
            "text), number, text (README, \"Answer checking\").", choice(CHECKERS),
            commands=("diagnose", "sweep")),
    Setting("batch_tokens", ("--batch-tokens",), int, None,
            "Tokens per forward batch, padding included [default: 4096 CPU, 8192 CUDA].",
            Range(64, integer=True), commands=("diagnose", "sweep"), metavar="N"),
    # The names the user's calibration data gives the parts of an example (calib/data.Fields).
    _reset("prompt_field", "--prompt-field", field_name, CALIB_PARAMS["prompt_field"],
           "--calib data: the key or column holding the prompt (user turn).",
           commands=("fuse", "diagnose", "sweep"), metavar="NAME"),
    _reset("response_field", "--response-field", field_name, CALIB_PARAMS["response_field"],
           "--calib data: the key or column holding the response (assistant turn).",
           commands=("fuse", "diagnose", "sweep"), metavar="NAME"),
    _reset("answer_field", "--answer-field", field_name, CALIB_PARAMS["answer_field"],
           "--calib data: the key or column holding the optional reference answer.",
           commands=("fuse", "diagnose", "sweep"), metavar="NAME"),
    _reset("messages_field", "--messages-field", field_name, CALIB_PARAMS["messages_field"],
           "--calib data: the key or column holding a list of {role, content} messages.",
           commands=("fuse", "diagnose", "sweep"), metavar="NAME"),
]  # fmt: skip
SETTINGS: dict[str, Setting] = {s.name: s for s in _ALL}
BY_KEY: dict[str, Setting] = {s.key: s for s in _ALL if s.key}

# Every numeric recipe setting, by key (each fuse.rules[i].alpha value uses fuse.alpha's).
NUMBERS: dict[str, Range] = {k: s.range for k, s in BY_KEY.items() if s.range is not None}


def check(name: str, value):
    """SETTINGS[name]'s validator; Invalid(problem) when the value does not fit."""
    return SETTINGS[name].check(value)


def command_line(words: list[str], values: dict[str, Any], command: str = "fuse") -> str:
    """The exact command for provenance: `words` (program, positionals), then each setting of
    `command` that was given (not None, not the flag's own default) in declaration order."""
    args = list(words)
    for s in _ALL:
        value = values.get(s.name)
        if command in s.commands and value is not None and value != flag_default(s, command):
            args += [s.flag, str(value)]
    return shlex.join(args)


def flag_default(s: Setting, command: str):
    """The flag's own default: None where a recipe may supply the value (the recipe keys of
    fuse and sweep, recipe-free flags without one), else the setting's default."""
    if command in ("fuse", "sweep") and (s.key or s.default is None):
        return None
    return s.default
