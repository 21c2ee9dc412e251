"""The published JSON Schemas (#21, point 5): the files equal their declaration, `rejuv schema`
prints them, each version has one structure, and the schemas reject what they should.

Every report the suite's CLI runs write is validated against its schema in conftest.run_cli
(`check_reports`); the tests here check the schemas themselves and that hook.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import check_reports, run_cli, validate_report

from rejuv_cli.report.json_schemas import NAMES, VERSIONS, render, schema_file

ROOT = Path(__file__).resolve().parents[1]

# Each schema version's structure, by the sha256 of its file. A change to a schema must come with
# a new schema_version (report/json_schemas.VERSIONS): record the new digest under the new
# version here; a digest recorded under an older version may not change.
DIGESTS = {
    ("diagnose", 1): "61ddd7b6e35272a4144ef78e7cc9a23e9ed60decd206f14909c82b94a41cbd42",
    ("sweep", 1): "2c5497c5bf108a8ad2dfc59a2d03a12010c319769559c3a06b4bf1eafbbc8ee3",
    ("rejuv.json", 1): "021ea320c589c088f9fd6074e376038cdaf5de3e649d2244be719d0f1cd566e2",
}


def digest(name: str) -> str:
    return hashlib.sha256(render(name).encode()).hexdigest()


def test_shipped_files_equal_their_declaration():
    r = subprocess.run([sys.executable, ROOT / "docs" / "schemas.py", "--check"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("name", NAMES)
def test_a_changed_schema_has_a_new_version(name):
    version = VERSIONS[name]
    recorded = {v: d for (n, v), d in DIGESTS.items() if n == name}
    assert version == max(recorded), f"record {name}'s schema version {version} in DIGESTS"
    assert recorded[version] == digest(name), (
        f"{name}'s schema changed: give it a new version (report/json_schemas.VERSIONS, now "
        f"{version}) and record its digest {digest(name)} under that version here"
    )


@pytest.mark.parametrize("name", NAMES)
def test_rejuv_schema_prints_the_shipped_file(name):
    r = run_cli("schema", name)
    assert r.exit_code == 0, r.output
    shipped = (ROOT / "src" / "rejuv_cli" / "schemas" / schema_file(name)).read_text()
    assert r.stdout == shipped
    schema = json.loads(r.stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["schema_version"] == {"const": VERSIONS[name]}


def test_unknown_schema_is_a_usage_error():
    r = run_cli("schema", "fuse.json")
    assert r.exit_code == 2
    assert "no schema named 'fuse.json'; choose one of diagnose, sweep, rejuv.json" in r.stderr


def test_the_schemas_are_valid_json_schema():
    import jsonschema

    for name in NAMES:
        jsonschema.Draft202012Validator.check_schema(json.loads(render(name)))


# ---- the schemas reject what they should, and the hook checks what the commands write ---------
@pytest.fixture(scope="module")
def reports(llama, tmp_path_factory):
    """A real diagnose report (weights only), a fused checkpoint's rejuv.json."""
    tmp = tmp_path_factory.mktemp("schemas")
    base, sft = llama
    r = run_cli("diagnose", base, sft, "--weights-only", "--json", "-", "-q")
    assert r.exit_code == 0, r.output
    out = tmp / "fused"
    assert run_cli("fuse", base, sft, "--out", out, "-q").exit_code == 0
    return {"diagnose": json.loads(r.stdout), "rejuv.json": json.loads((out / "rejuv.json")
            .read_text()), "out": out}  # fmt: skip


def test_written_reports_carry_their_schema_version(reports):
    assert reports["diagnose"]["schema_version"] == VERSIONS["diagnose"]
    assert reports["rejuv.json"]["schema_version"] == VERSIONS["rejuv.json"]


@pytest.mark.parametrize(
    "name, edit, where",
    [
        ("diagnose", lambda d: d["weights"]["overall"].update(extra=1.0), "weights.overall"),
        ("diagnose", lambda d: d["weights"]["overall"].update(rel_drift="high"),
         "weights.overall.rel_drift"),
        ("diagnose", lambda d: d.pop("verdict"), "(top)"),
        ("diagnose", lambda d: d.update(schema_version=2), "schema_version"),
        ("rejuv.json", lambda d: d["shards"][0].update(bytes=-0.5), "shards.0.bytes"),
        ("rejuv.json", lambda d: d["inputs"]["sft"].pop("tensor_digest"), "inputs.sft"),
        ("rejuv.json", lambda d: d["tensors"].update(x={"action": "fused"}), "tensors.x"),
    ],
    ids=["undeclared-key", "wrong-type", "missing-section", "other-version", "not-integer",
         "missing-digest", "incomplete-tensor"],
)  # fmt: skip
def test_schemas_reject_a_changed_report(reports, name, edit, where):
    validate_report(name, reports[name])  # the real one passes
    bad = copy.deepcopy(reports[name])
    edit(bad)
    with pytest.raises(AssertionError, match=re.escape(f"  {where}: ")):
        validate_report(name, bad)


def test_the_hook_validates_what_a_command_wrote(reports, tmp_path):
    out = reports["out"]
    assert check_reports(["fuse", "B", "S", "--out", str(out)], 0, "") == 1
    assert check_reports(["fuse", "B", "S", "--out", str(out), "--dry-run"], 0, "") == 0
    report = tmp_path / "d.json"
    report.write_text(json.dumps(reports["diagnose"]))
    assert check_reports(["diagnose", "B", "S", "--json", str(report)], 3, "") == 1
    report.write_text(json.dumps(reports["diagnose"] | {"verdict": 1}))
    with pytest.raises(AssertionError, match="verdict: 1 is not of type 'object', 'null'"):
        check_reports(["diagnose", "B", "S", "--json", str(report)], 0, "")
