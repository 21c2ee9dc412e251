"""Every parser turns malformed input into one line and exit 1 or 2, quickly and in bounded
memory (issue #13, points 5 and 8); no setting or JSON output ever holds NaN or infinity.

One table drives the malformed-input test: recipes, config.json, calibration files, --fail-on
expressions and sizes. Cases that could blow up (alias bombs, deep nesting, huge lines and
numbers) run in a subprocess whose own peak RSS (os.wait4) and wall time are bounded; the rest
run in-process, which is faster.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import run_cli

from rejuv_cli.errors import RecipeError, RejuvError
from rejuv_cli.jsonio import dumps, json_safe
from rejuv_cli.recipe import NUMBERS, Recipe, ResetSettings, bundled_recipes, load_recipe
from rejuv_cli.testing.synth import make_pair


def strict_loads(text: str):
    """json.loads that refuses NaN, Infinity and -Infinity, as a strict parser would."""

    def refuse(constant: str):
        raise ValueError(f"{constant} is not standard JSON")

    return json.loads(text, parse_constant=refuse)


SECONDS = 10
MAX_RSS = 500 * 2**20

ALIAS_BOMB = (
    "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(
        f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n"
        for p, n in zip("abcdefgh", "bcdefghi", strict=True)
    )
    + "reset:\n  modules: *i\n"  # 9**9 = 387M strings once expanded
)
OK_LINE = '{"prompt": "1 + 1", "response": "2"}'
CONFIG = json.dumps({"model_type": "llama", "num_hidden_layers": 2})  # replaced per case


@dataclasses.dataclass(frozen=True)
class Case:
    """`args` may name {in} (the input file or checkpoint written from `data`), {dir} (a
    scratch directory) and {base} (a valid BASE). kind: recipe, calib, config (data replaces
    SFT's config.json in a copy of a real checkpoint) or none."""

    id: str
    args: tuple[str, ...]
    data: bytes | str | None
    code: int
    fragment: str
    kind: str = "none"
    bounded: bool = False  # run in a subprocess with time and memory limits


def _config(**fields) -> str:
    base = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 32}
    return json.dumps(base | fields)


VALIDATE = ("validate", "{in}")
INSPECT = ("inspect", "{in}")
CALIB = ("diagnose", "{dir}/b", "{dir}/s", "--calib", "{in}")
FUSE = ("fuse", "{dir}/b", "{dir}/s", "--out", "{dir}/o")
GATE = ("diagnose", "{dir}/b", "{dir}/s", "--weights-only", "--fail-on")

CASES = [
    # ---- recipes
    Case("recipe-alias-bomb", VALIDATE, ALIAS_BOMB, 1, "aliases (*a) are not supported", "recipe",
         bounded=True),
    Case("recipe-alias-bomb-fuse", (*FUSE, "--recipe", "{in}"), ALIAS_BOMB, 1, "aliases",
         "recipe"),
    Case("recipe-duplicate-key", VALIDATE, "fuse:\n  alpha: 0.5\n  alpha: 0.7\n", 1,
         "duplicate key 'alpha' (first at line 2) (line 3", "recipe"),
    Case("recipe-duplicate-section", VALIDATE, "reset: {}\nfuse: {}\nreset: {seed: 1}\n", 1,
         "duplicate key 'reset' (first at line 1) (line 3", "recipe"),
    Case("recipe-not-utf8", VALIDATE, "description: caf\xe9\n".encode("latin-1"), 1,
         "not UTF-8 text (byte 0xe9 at offset 16)", "recipe"),
    Case("recipe-lone-surrogate", VALIDATE, 'description: "x\\ud800"\n', 1,
         "description: not valid Unicode text (lone surrogate \\ud800", "recipe"),
    Case("recipe-nested-too-deep", VALIDATE, "a: " + "[" * 50_000 + "]" * 50_000, 1,
         "nested too deeply", "recipe", bounded=True),
    Case("recipe-huge-integer", VALIDATE, "reset:\n  seed: " + "9" * 5000 + "\n", 1,
         "a number has too many digits", "recipe", bounded=True),
    Case("recipe-too-large", VALIDATE, "# " + "x" * 300_000 + "\n", 1, "larger than 256 KiB",
         "recipe", bounded=True),
    Case("recipe-not-a-mapping", VALIDATE, "- 1\n- 2\n", 1, "must be a mapping (got list)",
         "recipe"),
    Case("recipe-syntax", VALIDATE, "fuse: [unclosed\n", 1, "not valid YAML", "recipe"),
    Case("recipe-tab", VALIDATE, "fuse:\n\talpha: 1\n", 1, "not valid YAML", "recipe"),
    Case("recipe-python-tag", VALIDATE, "fuse: !!python/object:os.system {}\n", 1,
         "could not determine a constructor", "recipe"),
    Case("recipe-nan", VALIDATE, "reset:\n  protect: .nan\n", 1,
         "reset.protect: must be a finite number (got nan)", "recipe"),
    Case("recipe-inf-size", VALIDATE, "output:\n  shard_size: .inf\n", 1,
         "output.shard_size: size must be a finite number", "recipe"),
    Case("recipe-select-list", VALIDATE, "reset:\n  select: [drift]\n", 1,
         "reset.select: must be one of", "recipe"),
    # ---- config.json (read by every command through Checkpoint.open)
    Case("config-list", INSPECT, "[1, 2]", 1, "must hold a JSON object, not an array", "config"),
    Case("config-string", INSPECT, '"llama"', 1, "not a string", "config"),
    Case("config-null", INSPECT, "null", 1, "not null", "config"),
    Case("config-empty", INSPECT, "", 1, "not valid JSON: Expecting value", "config"),
    Case("config-layers-word", INSPECT, _config(num_hidden_layers="two"), 1,
         'num_hidden_layers: must be an integer from 0 to 100000 (got "two")', "config"),
    Case("config-layers-huge", INSPECT, _config(num_hidden_layers=10**30), 1,
         "num_hidden_layers: must be an integer", "config", bounded=True),
    Case("config-tie-yes", INSPECT, _config(tie_word_embeddings="yes"), 1,
         'tie_word_embeddings: must be true or false or null (got "yes")', "config"),
    Case("config-model-type-int", INSPECT, _config(model_type=5), 1,
         "model_type: must be a string", "config"),
    Case("config-heads-zero", INSPECT, _config(num_attention_heads=0, head_dim=None), 1,
         "config.json gives no attention head count", "config"),
    Case("config-width-word", INSPECT, _config(intermediate_size="64"), 1,
         "config.json intermediate_size: must be an integer from 0 to", "config"),
    Case("config-text-config-list", INSPECT, _config(text_config=[1]), 1,
         "text_config: must be an object", "config"),
    Case("config-text-config-field", INSPECT, _config(text_config={"vocab_size": 1.5}), 1,
         "text_config.vocab_size: must be an integer", "config"),
    Case("config-text-config-width", INSPECT, _config(text_config={"head_dim": [8]}), 1,
         "config.json head_dim: must be an integer", "config"),
    Case("config-quantization-string", INSPECT, _config(quantization_config="fp8"), 1,
         "quantization_config: must be an object", "config"),
    Case("config-nan", INSPECT, _config(rms_norm_eps=float("nan")), 1,
         "rms_norm_eps is NaN, which is not standard JSON", "config"),
    Case("config-bom", INSPECT, "\ufeff" + _config(), 1, "byte-order mark", "config"),
    Case("config-not-utf8", INSPECT, _config(name="caf").replace("caf", "caf\xe9").encode(
        "latin-1"), 1, "not UTF-8 text (byte 0xe9", "config"),
    Case("config-nested-too-deep", INSPECT, "[" * 100_000 + "]" * 100_000, 1,
         "nested too deeply", "config", bounded=True),
    Case("config-huge-number", INSPECT, '{"x": 1' + "0" * 5000 + "}", 1,
         "a number is too long", "config", bounded=True),
    Case("config-fuse", ("fuse", "{base}", "{in}", "--out", "{dir}/o"), _config(
        tie_word_embeddings="yes"), 1, "SFT: ", "config"),
    Case("config-diagnose", ("diagnose", "{base}", "{in}", "--weights-only"), _config(
        vocab_size="x"), 1, "vocab_size: must be an integer", "config"),
    # transformers' own config validation (a field rejuv does not read), one line from diagnose
    Case("config-transformers-raises", ("diagnose", "{base}", "{in}", "--samples", "2",
         "--sharpness-draws", "0"), "rms_norm_eps=x", 1, "rms_norm_eps", "config"),
    # ---- calibration files
    Case("calib-lone-surrogate", CALIB, '{"prompt": "a\\ud800", "response": "2"}\n', 1,
         ":1: prompt: not valid Unicode text (lone surrogate \\ud800", "calib"),
    Case("calib-raw-nul", CALIB, b'{"prompt": "a\x00", "response": "2"}\n', 1,
         ":1: not valid JSON at column 14: Invalid control character", "calib"),
    Case("calib-not-utf8", CALIB, b'{"prompt": "caf\xe9", "response": "2"}\n', 1,
         "not UTF-8 text", "calib"),
    Case("calib-bom-then-bad-line", CALIB, "\ufeff" + OK_LINE + "\n[1]\n", 1,
         ":2: expected a JSON object, got array", "calib"),  # line 1 (after the BOM) is fine
    Case("calib-not-object", CALIB, "[1, 2]\n", 1, ":1: expected a JSON object, got array",
         "calib"),
    Case("calib-string-line", CALIB, '"hello"\n', 1, "got string", "calib"),
    Case("calib-huge-line", CALIB, '{"prompt": "' + "x" * 30_000_000 + "\n", 1,
         ":1: not valid JSON at column 12: Unterminated string", "calib", bounded=True),
    Case("calib-nested-too-deep", CALIB, "[" * 100_000 + "]" * 100_000 + "\n", 1,
         ":1: not valid JSON: nested too deeply", "calib", bounded=True),
    Case("calib-huge-number", CALIB, '{"prompt": 1' + "0" * 5000 + "}\n", 1,
         ":1: not valid JSON: a number has too many digits", "calib", bounded=True),
    Case("calib-many-keys", CALIB, json.dumps({f"k{i}": 1 for i in range(50_000)}) + "\n", 1,
         "... (49992 more)", "calib", bounded=True),
    Case("calib-empty", CALIB, "", 1, "no examples", "calib"),
    Case("calib-fuse", (*FUSE, "--select", "dormant", "--calib", "{in}"), "[1]\n", 1,
         ":1: expected a JSON object", "calib"),
    # ---- --fail-on expressions (parsed before anything is read)
    *[Case(f"gate-{i}", (*GATE, text), None, 2, fragment) for i, (text, fragment) in enumerate([
        ("", "expected a key at column 1"),
        ("weights.drift_max", "expected an operator"),
        ("weights.drift_max=~1", "'=' alone is not one"),
        ("weights.drift_max<>1", "expected a number after '<'"),
        ("weights.drift_max<nan", "expected a finite number"),
        ("weights.drift_max>-inf", "expected a finite number"),
        ("weights.drift_max<1e999", "expected a finite number"),
        ("weights[" + "9" * 5000 + "]<1", "at most 18 digits"),
        ("weights.<1", "expected a key after '.'"),
        ("weights.drift_max<'x", "strings compare only with == or !="),
        ("weights.drift_max < 1 extra", "expected the end of the expression"),
        ('verdict.label=="unclosed', "expected a closing \""),
    ])],
    # ---- sizes
    *[Case(f"size-{i}", (*FUSE, flag, text), None, 2, fragment)
      for i, (flag, text, fragment) in enumerate([
          ("--shard-size", "", "--shard-size: not a size: ''"),
          ("--shard-size", "5XB", "not a size: '5XB'"),
          ("--shard-size", "-1", "size must be positive (got '-1')"),
          ("--shard-size", "0.1", "size must be positive"),
          ("--shard-size", "inf", "size must be a finite number (got 'inf')"),
          ("--shard-size", "nan", "size must be a finite number (got 'nan')"),
          ("--shard-size", "1e400", "size must be a finite number"),
          ("--shard-size", "9" * 5000, "size must be a finite number"),
          ("--shard-size", "1e30GB", "size too large"),
          ("--max-memory", "inf", "--max-memory: size must be a finite number"),
          ("--max-memory", "-1GB", "--max-memory: size must be positive"),
      ])],
    Case("size-diagnose-max-memory", ("diagnose", "{dir}/b", "{dir}/s", "--max-memory", "nan"),
         None, 2, "--max-memory: size must be a finite number"),
    # ---- flags (Click's own usage errors are one line too)
    Case("flag-not-a-number", (*FUSE, "--alpha", "half"), None, 2, "Invalid value for '--alpha'"),
    Case("flag-unknown", (*FUSE, "--alfa", "0.5"), None, 2, "No such option: --alfa"),
    Case("flag-huge-integer", (*FUSE, "--samples", "9" * 5000), None, 2,
         "Invalid value for '--samples'"),
]  # fmt: skip


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_pair(tmp_path_factory.mktemp("malformed") / "llama", "llama", seed=3)


def _prepare(case: Case, tmp_path: Path, pair) -> list[str]:
    """Write the case's input; returns the command line."""
    target = tmp_path / "input"
    if case.kind == "config":
        shutil.copytree(pair[1], target)
        data = case.data
        if data == "rms_norm_eps=x":
            config = json.loads((pair[1] / "config.json").read_text())
            data = json.dumps(config | {"rms_norm_eps": "x"})
        (target / "config.json").write_bytes(data if isinstance(data, bytes) else data.encode())
    elif case.data is not None:
        data = case.data
        raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
        target = target.with_suffix(".yaml" if case.kind == "recipe" else ".jsonl")
        target.write_bytes(raw)
    fill = {"{in}": str(target), "{dir}": str(tmp_path), "{base}": str(pair[0])}
    args = []
    for arg in case.args:
        for token, value in fill.items():
            arg = arg.replace(token, value)
        args.append(arg)
    return args


# The child reports its own peak RSS (VmHWM of the process image after exec). The kernel's
# ru_maxrss, from wait4, would also count the pytest process's resident pages at fork time:
# several hundred MB late in the suite, whatever rejuv itself used.
PEAK_RSS_REPORTER = """
import sys
report, sys.argv = sys.argv[1], ["rejuv", *sys.argv[2:]]
try:
    from rejuv_cli.cli import main
    main()
finally:
    status = open("/proc/self/status").read()
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    open(report, "w").write(kib)
"""


def _run_bounded(args: list[str]) -> tuple[int, str, str, float, int]:
    """Run rejuv in a subprocess; (exit code, stdout, stderr, seconds, peak RSS in bytes of
    that process alone, as it reports it)."""
    with tempfile.TemporaryDirectory() as scratch:
        out, err, peak = (Path(scratch) / name for name in ("out", "err", "peak"))
        env = {k: v for k, v in os.environ.items() if k != "REJUV_DEBUG"}
        command = [sys.executable, "-c", PEAK_RSS_REPORTER, str(peak), *args]
        t0 = time.perf_counter()
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env)
            try:
                proc.wait(timeout=SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                pytest.fail(f"{args[:3]}... ran longer than {SECONDS} s")
        seconds = time.perf_counter() - t0
        return (proc.returncode, out.read_bytes().decode(errors="replace"),
                err.read_bytes().decode(errors="replace"), seconds,
                int(peak.read_text()) * 1024)  # fmt: skip


# The 30 MB, deeply nested and 5000-digit calibration lines take ~4 s each in their bounded
# subprocess; the recipe and config files' cases of the same kinds stay in make test.
SLOW_CASES = {"calib-huge-line", "calib-nested-too-deep", "calib-huge-number"}


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=pytest.mark.slow) if c.id in SLOW_CASES else c for c in CASES],
    ids=[c.id for c in CASES],
)
def test_malformed_input_is_one_line(case: Case, tmp_path, pair):
    args = _prepare(case, tmp_path, pair)
    if case.bounded:
        code, stdout, stderr, seconds, rss = _run_bounded(args)
        assert rss < MAX_RSS, f"peak RSS {rss >> 20} MiB"
    else:
        t0 = time.perf_counter()
        result = run_cli(*args)
        code, stdout, stderr = result.exit_code, result.stdout, result.stderr
        seconds = time.perf_counter() - t0
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(
            result.exception
        )
    assert seconds < SECONDS
    assert "Traceback" not in stderr + stdout
    lines = stderr.splitlines()
    assert code == case.code, (code, stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("rejuv: error: "), stderr[-2000:]
    assert case.fragment in lines[0], lines[0][:2000]
    assert not (tmp_path / "o").exists()


# ---- point 5: no numeric setting takes NaN or ±inf, from a flag or from a recipe -----------
SIZE_FLAGS = {"fuse": ["--shard-size", "--max-memory"], "diagnose": ["--max-memory"]}
REQUIRED = {"fuse": ["b", "s", "--out", "o"], "diagnose": ["b", "s"]}


def _numeric_flags():
    """(command, flag, kind) for every float and int option of every command, read from the
    CLI itself, so a new numeric flag is covered without editing this test."""
    import typer

    from rejuv_cli.cli import app

    found = []
    for name, command in typer.main.get_command(app).commands.items():
        for param in command.params:
            annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
            if annotation in (float, int) and getattr(param, "opts", None):
                found.append((name, param.opts[0], annotation.__name__))
    return found


def test_every_numeric_flag_refuses_non_finite_values(tmp_path):
    flags = _numeric_flags()
    assert {f for _, f, _ in flags} >= {"--alpha", "--reset", "--omega", "--seed",
                                          "--sharpness-sigma", "--batch-tokens"}  # fmt: skip
    for command, flag, kind in flags:
        for value in ("nan", "inf", "-inf", "1e400"):
            r = run_cli(command, *REQUIRED.get(command, []), flag, value)
            lines = r.stderr.splitlines()
            want = "must be a finite number" if kind == "float" else "valid integer"
            assert r.exit_code == 2 and len(lines) == 1 and want in lines[0], (flag, r.stderr)
    for command, size_flags in SIZE_FLAGS.items():
        for flag in size_flags:
            for value in ("nan", "inf", "-inf", "1e400"):
                r = run_cli(command, *REQUIRED[command], flag, value)
                assert r.exit_code == 2 and "size must be a finite number" in r.stderr, r.stderr


def test_every_numeric_recipe_setting_refuses_non_finite_values(tmp_path):
    # Every numeric field of Recipe and ResetSettings must be declared in NUMBERS.
    numeric = {f"reset.{f.name}" for f in dataclasses.fields(ResetSettings)
               if f.type in ("float", "int")} | {"fuse.alpha"}  # fmt: skip
    assert numeric <= set(NUMBERS), numeric - set(NUMBERS)
    assert not [f.name for f in dataclasses.fields(Recipe) if f.type in ("float", "int")
                and f.name != "alpha"]  # fmt: skip
    p = tmp_path / "r.yaml"
    for key in [*NUMBERS, "fuse.rules", "output.shard_size"]:
        section, field = key.split(".")
        for value in (".nan", ".inf", "-.inf", "1.0e+400"):  # YAML 1.1 floats need the dot
            body = (f"  {field}: {value}\n" if field != "rules"
                    else f"  rules:\n    - match: '*'\n      alpha: [0.5, {value}]\n")  # fmt: skip
            p.write_text(f"{section}:\n{body}")
            with pytest.raises(RecipeError) as e:
                load_recipe(p)
            message = str(e.value)
            assert "\n" not in message and key in message, message
            assert "finite" in message, message


def test_flag_ranges_match_the_recipe_ranges(tmp_path):
    """A flag and its recipe key share one validator (rejuv_cli.settings): a value outside
    the range gives the same phrase from both, `--reset: P` and `r.yaml: reset.fraction: P`."""
    from rejuv_cli.settings import BY_KEY

    p = tmp_path / "r.yaml"
    for key, rng in NUMBERS.items():
        setting = BY_KEY[key]
        value = rng.lo - 1 if rng.integer else rng.lo - 0.5
        r = run_cli("fuse", "b", "s", "--out", "o", setting.flag, str(value))
        assert r.exit_code == 2, (key, r.stderr)
        flag_problem = r.stderr.strip().removeprefix(f"rejuv: error: {setting.flag}: ")
        section, field = key.split(".")
        p.write_text(f"{section}:\n  {field}: {value}\n")
        with pytest.raises(RecipeError) as e:
            load_recipe(p)
        assert str(e.value) == f"{p}: {key}: {flag_problem}", (str(e.value), r.stderr)


# ---- every JSON rejuv writes is standard JSON ----------------------------------------------
def test_dumps_refuses_non_finite_and_json_safe_nulls_them():
    with pytest.raises(RejuvError, match=r"rejuv.json: reset\.scores\[1\] is nan"):
        dumps({"reset": {"scores": [1.0, float("nan")]}}, "rejuv.json")
    assert json_safe({"a": [float("inf"), 1.0], "b": (float("-inf"),)}) == {
        "a": [None, 1.0],
        "b": [None],
    }
    with pytest.raises(ValueError, match="NaN is not standard JSON"):
        strict_loads('{"a": NaN}')


def test_every_json_output_parses_strictly(pair, tmp_path):
    base, sft = pair
    out = tmp_path / "o"
    runs = {
        "fuse": run_cli(
            "fuse", base, sft, "-o", out, "--dtype", "fp32", "--shard-size", "20KB", "--json", "-q"
        ),
        "dry-run": run_cli("fuse", base, sft, "--out", tmp_path / "d", "--dry-run", "--json"),
        "inspect": run_cli("inspect", sft, "--json"),
        "recipes": run_cli("recipes", "--json"),
        "validate": run_cli("validate", *bundled_recipes(), "--json"),
        "diagnose": run_cli("diagnose", base, sft, "--weights-only", "--json", "-"),
    }
    for name, r in runs.items():
        assert r.exit_code == 0, (name, r.stderr)
        strict_loads(r.stdout)
    files = [out / "rejuv.json", out / "config.json", out / "model.safetensors.index.json"]
    for path in files:
        strict_loads(path.read_text())
    assert strict_loads((out / "rejuv.json").read_text())["recipe"]["reset"]["protect"] == 0.005


def test_unusual_but_valid_inputs_are_accepted(pair, tmp_path):
    """The checks refuse what is malformed, not what is merely unusual: a per-layer list of
    widths in an unmapped family's config, a calibration file with a BOM, NUL and bidi marks."""
    sft = tmp_path / "sft"
    shutil.copytree(pair[1], sft)
    config = json.loads((sft / "config.json").read_text())
    config |= {"model_type": "mystery", "intermediate_size": [64, 64]}
    (sft / "config.json").write_text(json.dumps(config))
    r = run_cli("inspect", sft, "--json")
    assert r.exit_code == 0 and strict_loads(r.stdout)["unit_map"] is None, r.stderr

    from rejuv_cli.calib.data import load_examples

    calib = tmp_path / "c.jsonl"
    lines = ['{"prompt": "1 + 1\\u0000 \\u202e?", "response": "\\u200f2"}', OK_LINE]
    calib.write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")
    examples = load_examples(str(calib))
    assert examples[0].messages[0]["content"] == "1 + 1\x00 \u202e?" and len(examples) == 2
