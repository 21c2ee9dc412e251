"""The GitHub Action (action.yml) without a runner: its metadata against GitHub's rules for
composite actions, zizmor on it and shellcheck on its scripts; then its steps' own `run:` lines
run as the runner runs them (bash --noprofile --norc -eo pipefail, the step's `env:` filled in
from the inputs as the runner fills it, $GITHUB_STEP_SUMMARY and $GITHUB_OUTPUT as files) with
the real rejuv on the llama fixture pair. The install step is left out: rejuv is already on
PATH here (it takes minutes: a venv with torch and rejuv's dependencies)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ACTION_FILE = ROOT / "action.yml"
ACTION = yaml.safe_load(ACTION_FILE.read_text())
STEPS = ACTION["runs"]["steps"]
INPUTS = ACTION["inputs"]
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
# How the runner starts a `shell: bash` step (GitHub's docs, "jobs.<job_id>.steps[*].shell").
BASH = ["bash", "--noprofile", "--norc", "-eo", "pipefail"]
USAGE_ERROR, GATE_TRIPPED = 2, 3

QUOTED_GATE = 'weights.tensors["model.layers.0.mlp.up_proj.weight"].rel_drift > 0.5'
SPACED_GATE = 'verdict.label == "not a label"'


def dev_tool(name: str) -> str:
    """A linter the dev extras install, from this interpreter's environment first."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} is not installed: pip install -e '.[dev]' (it is in the dev extras)"
    return found


def step(name: str) -> dict:
    return next(s for s in STEPS if s.get("name") == name)


def expressions(value) -> list[str]:
    """Every `${{ ... }}` in a value of the metadata, in nested mappings and lists too."""
    if isinstance(value, dict):
        return [e for v in value.values() for e in expressions(v)]
    if isinstance(value, list):
        return [e for v in value for e in expressions(v)]
    return EXPRESSION.findall(str(value))


# --------------------------------------------------------------------------------------------
# the metadata


def test_the_action_is_composite_and_each_run_step_names_its_shell():
    assert ACTION["name"] and ACTION["description"]  # required by GitHub
    assert ACTION["runs"]["using"] == "composite"
    for s in STEPS:
        assert ("run" in s) != ("uses" in s), s  # a step runs a command or uses an action
        if "run" in s:
            assert s["shell"] == "bash", s  # `shell` is required in a composite action


def test_inputs_reach_run_steps_only_through_env():
    """A `${{ }}` in a `run:` line is pasted into the shell code before bash reads it."""
    for s in STEPS:
        assert "${{" not in s.get("run", ""), s["name"]


def test_every_input_is_used_and_every_used_input_is_declared():
    used = {m[1] for e in expressions(ACTION["runs"]) + expressions(ACTION["outputs"])
            for m in re.finditer(r"\binputs\.([\w-]+)", e)}  # fmt: skip
    assert used == set(INPUTS)
    assert all(INPUTS[name].get("description") for name in INPUTS)


def test_outputs_come_from_a_step_that_exists():
    ids = {s["id"] for s in STEPS if "id" in s}
    for name, output in ACTION["outputs"].items():
        (expr,) = expressions(output["value"])
        step_id, key = re.fullmatch(r"steps\.([\w-]+)\.outputs\.([\w-]+)", expr).groups()
        assert step_id in ids and key == name


def test_the_scripts_the_steps_run_exist():
    scripts = [m[1] for s in STEPS for m in re.finditer(r'"\$GITHUB_ACTION_PATH/([^"]+)"',
                                                         s.get("run", ""))]  # fmt: skip
    assert scripts == ["ci/action/install.sh", "ci/action/diagnose.sh"]
    assert all((ROOT / p).is_file() for p in scripts)


def test_actions_used_are_pinned_to_a_commit():
    """A tag can be moved to other code; a commit cannot (the version tag is the comment)."""
    for s in STEPS:
        if "uses" in s:
            assert re.fullmatch(r"[\w-]+/[\w-]+@[0-9a-f]{40}", s["uses"]), s["uses"]


def test_the_upload_runs_also_when_the_gate_fails():
    upload = step("Upload the reports")
    assert upload["if"].startswith("always()")
    assert step("rejuv diagnose")["continue-on-error"] is True
    uploaded = {e for e in expressions(upload["with"]["path"])}
    assert uploaded == {f"inputs.{r}" for r in ("json", "html", "markdown", "junit")}
    assert STEPS.index(step("Fail the job on rejuv diagnose's exit code")) == len(STEPS) - 1


def test_torch_is_the_build_make_install_pins():
    """One torch for CI, the Action and the Dockerfile: the Makefile's pin."""
    pin = re.search(r"^TORCH\s*\?=\s*(\S+)$", (ROOT / "Makefile").read_text(), re.M)[1]
    assert INPUTS["torch"]["default"] == pin
    assert INPUTS["torch-index-url"]["default"] == "https://download.pytorch.org/whl/cpu"


def zizmor(path: Path) -> list[str]:
    """The audits zizmor finds failing in an action file (all of them; offline)."""
    done = subprocess.run([dev_tool("zizmor"), "--offline", "--no-progress", "--format", "json",
                           str(path)], capture_output=True, text=True)  # fmt: skip
    return [finding["ident"] for finding in json.loads(done.stdout)]


def test_zizmor_finds_nothing():
    assert zizmor(ACTION_FILE) == []


def test_zizmor_would_catch_an_input_in_a_run_line_or_a_tag(tmp_path):
    """The check above can fail: the same file with the inputs pasted into the shell code and
    setup-python by tag."""
    text = ACTION_FILE.read_text()
    pin = next(s["uses"] for s in STEPS if "setup-python" in s.get("uses", ""))
    bad = text.replace('bash "$GITHUB_ACTION_PATH/ci/action/diagnose.sh"',
                       "rejuv diagnose ${{ inputs.base }} ${{ inputs.sft }}")  # fmt: skip
    bad = bad.replace(pin, "actions/setup-python@v7")
    (tmp_path / "action.yml").write_text(bad)
    assert sorted(zizmor(tmp_path / "action.yml")) == ["template-injection"] * 2 + ["unpinned-uses"]


def test_shellcheck_finds_nothing_in_the_scripts():
    scripts = sorted((ROOT / "ci" / "action").glob("*.sh"))
    result = subprocess.run([dev_tool("shellcheck"), *map(str, scripts)],
                            capture_output=True, text=True)  # fmt: skip
    assert len(scripts) == 2 and result.returncode == 0, result.stdout


# --------------------------------------------------------------------------------------------
# the steps, run as the runner runs them


@dataclass
class StepRun:
    code: int
    stdout: str  # workflow commands (::error ...) go here
    stderr: str
    summary: str  # what the step appended to $GITHUB_STEP_SUMMARY
    outputs: dict[str, str]  # what it wrote to $GITHUB_OUTPUT


def step_env(s: dict, inputs: dict[str, str], outputs: dict[str, dict[str, str]]) -> dict:
    """The step's `env:` as the runner fills it: `${{ inputs.x }}` is the workflow's `with:`
    value or the input's default, `${{ steps.id.outputs.y }}` an earlier step's output (empty
    when it wrote none). Any other expression fails here rather than be guessed."""
    env = {}
    for name, value in s.get("env", {}).items():
        expr = re.fullmatch(EXPRESSION, value)[1]
        if m := re.fullmatch(r"inputs\.([\w-]+)", expr):
            env[name] = inputs.get(m[1], INPUTS[m[1]].get("default", ""))
        elif m := re.fullmatch(r"steps\.([\w-]+)\.outputs\.([\w-]+)", expr):
            env[name] = outputs.get(m[1], {}).get(m[2], "")
        else:
            raise AssertionError(f"{s['name']}: env {name}: no stand-in for {value!r}")
    return env


def run_step(name: str, inputs: dict[str, str], work: Path,
             outputs: dict[str, dict[str, str]] | None = None) -> StepRun:  # fmt: skip
    s = step(name)
    runner = work.parent / f"runner-{work.name}"
    runner.mkdir(exist_ok=True)
    summary, output, script = (runner / n for n in ("summary.md", "output", "step.sh"))
    summary.write_text("")
    output.write_text("")
    script.write_text(s["run"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "INPUT_"))}
    env.update(
        # rejuv and python3 from this environment: what the install step puts on PATH
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        GITHUB_ACTIONS="true", GITHUB_ACTION_PATH=str(ROOT), RUNNER_TEMP=str(runner),
        GITHUB_STEP_SUMMARY=str(summary), GITHUB_OUTPUT=str(output),
        **step_env(s, inputs, outputs or {}),
    )  # fmt: skip
    done = subprocess.run([*BASH, str(script)], cwd=work, env=env, capture_output=True,
                          text=True)  # fmt: skip
    pairs = [line.split("=", 1) for line in output.read_text().splitlines()]
    return StepRun(done.returncode, done.stdout, done.stderr, summary.read_text(), dict(pairs))


@pytest.fixture(scope="module")
def spaced_pair(llama, tmp_path_factory):
    """The llama pair under folder names with spaces and both kinds of quotes."""
    root = tmp_path_factory.mktemp("action") / 'it\'s "our" models'
    return tuple(shutil.copytree(src, root / f"{name} v1") for name, src in
                 zip(("base", "sft"), llama, strict=True))  # fmt: skip


def report_paths(work: Path) -> dict[str, Path]:
    return {r: work / INPUTS[r]["default"] for r in ("json", "html", "markdown", "junit")}


def junit_cases(path: Path) -> dict[str, bool]:
    """Gate test case name -> failed, from the JUnit file."""
    return {case.get("name"): case.find("failure") is not None
            for case in ET.parse(path).getroot().iter("testcase")
            if case.get("name", "").startswith("gate: ")}  # fmt: skip


@pytest.fixture(scope="module")
def passing_run(spaced_pair, tmp_path_factory):
    """Gates that hold for no model (one per line, blank lines and surrounding spaces), with
    quotes and spaces inside them, and two extra arguments, one per line."""
    work = tmp_path_factory.mktemp("passing")
    base, sft = spaced_pair
    inputs = {"base": str(base), "sft": str(sft),
              "fail-on": f"{QUOTED_GATE}\n\n   {SPACED_GATE}   \n",
              "args": "--weights-only\n  --rank\n"}  # fmt: skip
    return run_step("rejuv diagnose", inputs, work), work


def test_no_gate_trips_exit_0_and_a_summary(passing_run, spaced_pair):
    run, work = passing_run
    assert run.code == 0, run.stderr
    paths = report_paths(work)
    assert all(p.is_file() for p in paths.values())
    report = json.loads(paths["json"].read_text())
    assert run.summary == paths["markdown"].read_text()
    heading = run.summary.splitlines()[0]
    assert "rejuv diagnose" in heading and report["verdict"]["label"] in heading
    assert run.outputs == {"exit-code": "0", "verdict": report["verdict"]["label"]}
    # every value arrived intact, one argument each
    assert (report["inputs"]["base"], report["inputs"]["sft"]) == tuple(map(str, spaced_pair))
    assert report["weights"]["rank"] is not None  # --rank, the second line of `args`


def test_a_multi_line_fail_on_gives_one_flag_per_gate(passing_run):
    run, work = passing_run
    report = json.loads(report_paths(work)["json"].read_text())
    tensor = report["weights"]["tensors"]["model.layers.0.mlp.up_proj.weight"]
    assert report["gates"] == [
        {"gate": QUOTED_GATE, "actual": tensor["rel_drift"], "tripped": tensor["rel_drift"] > 0.5},
        {"gate": SPACED_GATE, "actual": report["verdict"]["label"], "tripped": False},
    ]
    assert junit_cases(report_paths(work)["junit"]) == {
        f"gate: {g}": False for g in (QUOTED_GATE, SPACED_GATE)
    }


def test_a_tripped_gate_exits_3_after_the_summary_and_the_reports(spaced_pair, tmp_path):
    base, sft = spaced_pair
    work = tmp_path / "work"
    work.mkdir()
    inputs = {"base": str(base), "sft": str(sft), "args": "--weights-only",
              "fail-on": "weights.drift_max>0\nverdict.label==rigid"}  # fmt: skip
    run = run_step("rejuv diagnose", inputs, work)
    assert run.code == GATE_TRIPPED, run.stderr
    paths = report_paths(work)
    assert all(p.is_file() for p in paths.values())
    report = json.loads(paths["json"].read_text())
    rigid = report["verdict"]["label"] == "rigid"
    assert report["weights"]["drift_max"] > 0  # so the first gate trips
    assert [g["tripped"] for g in report["gates"]] == [True, rigid]
    assert junit_cases(paths["junit"]) == {"gate: weights.drift_max>0": True,
                                           "gate: verdict.label==rigid": rigid}  # fmt: skip
    assert run.summary == paths["markdown"].read_text() and "tripped" in run.summary
    assert run.outputs == {"exit-code": "3", "verdict": report["verdict"]["label"]}
    assert run.stdout.strip() == (
        "::error title=rejuv diagnose::rejuv diagnose failed: a "
        "--fail-on gate tripped (see the job summary)"
    )
    # the last step turns the recorded code into the job's failure, after the upload
    last = run_step("Fail the job on rejuv diagnose's exit code", inputs, work,
                    outputs={"diagnose": run.outputs})  # fmt: skip
    assert last.code == GATE_TRIPPED


@pytest.mark.slow  # a fourth real run of the Action's step
def test_an_unusable_gate_still_writes_a_summary_and_the_exit_code(llama, tmp_path):
    """rejuv refuses the gate before any work (exit 2): no report, so the summary says so;
    reports left by an earlier run are gone rather than passed off as this run's."""
    inputs = {"base": str(llama[0]), "sft": str(llama[1]), "args": "--weights-only",
              "fail-on": "output.entropy_mean<0.18"}  # fmt: skip
    stale = report_paths(tmp_path)
    stale["json"].parent.mkdir(parents=True)
    stale["json"].write_text(json.dumps({"verdict": {"label": "ok"}}))
    stale["markdown"].write_text("### rejuv diagnose: ok")
    run = run_step("rejuv diagnose", inputs, tmp_path)
    assert run.code == USAGE_ERROR
    assert "'output' is not measured with --weights-only" in run.stderr
    assert run.summary.startswith("**rejuv diagnose** exited with code 2")
    assert run.outputs == {"exit-code": "2", "verdict": ""}
    assert not any(p.exists() for p in report_paths(tmp_path).values())


@pytest.mark.parametrize("empty", ["base", "sft"])
def test_an_empty_required_input_is_one_line(llama, tmp_path, empty):
    """GitHub does not enforce `required: true`; the script does, before rejuv starts."""
    inputs = {"base": str(llama[0]), "sft": str(llama[1]), empty: ""}
    run = run_step("rejuv diagnose", inputs, tmp_path)
    assert run.code == USAGE_ERROR
    assert run.stderr.strip().splitlines() == [
        f"rejuv action: error: input '{empty}' is empty; set it under with: (a folder or Hub id)"
    ]


@pytest.mark.parametrize(("code", "expected"), [("3", 3), ("1", 1), ("", 1)])
def test_the_last_step_exits_with_the_recorded_code(tmp_path, code, expected):
    """No recorded code (the script failed before rejuv ran) still fails the job."""
    run = run_step("Fail the job on rejuv diagnose's exit code", {}, tmp_path,
                   outputs={"diagnose": {"exit-code": code}})  # fmt: skip
    assert run.code == expected


@pytest.mark.slow  # a third real run of the step; make test keeps the pass and the trip
def test_a_model_named_like_an_option_stays_a_model(llama, tmp_path):
    """Without the script's `--`, base: --help would print the help and exit 0."""
    inputs = {"base": "--help", "sft": str(llama[1]), "args": "--weights-only"}
    run = run_step("rejuv diagnose", inputs, tmp_path)
    assert run.code == 1
    assert "rejuv: error: BASE '--help': no such directory" in run.stderr
    assert run.outputs == {"exit-code": "1", "verdict": ""}
