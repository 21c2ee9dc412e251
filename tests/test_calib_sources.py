"""Calibration data beyond JSONL: Parquet tables, Hugging Face Hub datasets, and field names.

Parquet files are written by pyarrow; Hub datasets are downloaded by huggingface_hub's real
snapshot_download from the local stand-in for the Hub (tests/hub_cache.py), in a subprocess
whose environment points huggingface_hub at it (online) or at nothing (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import fails, run_cli
from hub_cache import FakeHub, HubRepo, hub_env, rejuv_offline
from safetensors import safe_open
from safetensors.torch import load_file

from rejuv_cli.calib.data import Example, load_examples
from rejuv_cli.calib.fields import Fields
from rejuv_cli.errors import CalibError


def msgs(*pairs: tuple[str, str]) -> tuple[dict, ...]:
    return tuple({"role": r, "content": c} for r, c in pairs)


def parquet(path: Path, columns: dict, **kw) -> str:
    """A Parquet file written by pyarrow from {column: values}."""
    pq.write_table(pa.table(columns), path, **kw)
    return str(path)


def jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


CONV = [
    {"role": "system", "content": "be brief", "tool_calls": None},
    {"role": "user", "content": "2 + 2 ?", "tool_calls": None},
    {"role": "assistant", "content": "4\nAnswer: 4", "tool_calls": "[]"},  # extra fields dropped
]


# --- Parquet --------------------------------------------------------------------------------


def test_parquet_rows_read_like_the_same_jsonl_lines(tmp_path):
    rows = [{"prompt": "1 + 1 ?", "response": "2", "answer": 2},
            {"prompt": "3 * 4 ?", "response": "12\nAnswer: 12"},
            {"prompt": "half of 3 ?", "response": "1.5", "answer": 1.5}]  # fmt: skip
    table = parquet(tmp_path / "d.parquet", {
        "prompt": [r["prompt"] for r in rows], "response": [r["response"] for r in rows],
        "answer": [2.0, None, 1.5], "id": [7, 8, 9]})  # fmt: skip
    text = jsonl(tmp_path / "d.jsonl", rows)
    from_table, from_text = load_examples(table), load_examples(text)
    assert [(e.messages, e.answer) for e in from_table] == [
        (msgs(("user", "1 + 1 ?"), ("assistant", "2")), "2.0"),  # a float column: 2.0
        (msgs(("user", "3 * 4 ?"), ("assistant", "12\nAnswer: 12")), "12"),  # null: the text's
        (msgs(("user", "half of 3 ?"), ("assistant", "1.5")), "1.5"),
    ]
    assert [e.messages for e in from_table] == [e.messages for e in from_text]
    # rows count from 0 (as pandas and datasets index them), lines from 1
    assert [e.source for e in from_table] == [f"{table}:row {i}" for i in range(3)]
    assert [e.source for e in from_text] == [f"{text}:{i}" for i in (1, 2, 3)]
    assert load_examples(table, limit=2) == from_table[:2]


def test_parquet_messages_as_structs_and_mixed_rows(tmp_path):
    """A list of {role, content} structs is a conversation; a null cell is an absent field, so
    one table can mix prompt/response rows with messages rows."""
    spec = parquet(tmp_path / "chat.parquet", {
        "messages": [CONV, None],
        "prompt": [None, "hi"],
        "response": [None, "hello"],
    })  # fmt: skip
    assert load_examples(spec) == [
        Example(msgs(("system", "be brief"), ("user", "2 + 2 ?"), ("assistant", "4\nAnswer: 4")),
                f"{spec}:row 0", "4"),
        Example(msgs(("user", "hi"), ("assistant", "hello")), f"{spec}:row 1"),
    ]  # fmt: skip


def test_a_parquet_file_is_known_by_its_magic_bytes(tmp_path):
    spec = parquet(tmp_path / "export.bin", {"prompt": ["p"], "response": ["r"]})
    assert Path(spec).read_bytes()[:4] == b"PAR1"
    assert load_examples(spec)[0].source == f"{spec}:row 0"


def test_field_names_for_parquet_and_jsonl(tmp_path):
    fields = Fields(prompt="question", response="solution", answer="gold", messages="chat")
    table = parquet(tmp_path / "qa.parquet", {
        "question": ["1 + 1 ?", None], "solution": ["2", None], "gold": ["2", None],
        "chat": [None, CONV]})  # fmt: skip
    text = jsonl(tmp_path / "qa.jsonl", [{"question": "1 + 1 ?", "solution": "2", "gold": "2"},
                                         {"chat": CONV}])  # fmt: skip
    want = [
        msgs(("user", "1 + 1 ?"), ("assistant", "2")),
        msgs(("system", "be brief"), ("user", "2 + 2 ?"), ("assistant", "4\nAnswer: 4")),
    ]
    for spec in (table, text):
        examples = load_examples(spec, fields=fields)
        assert [(e.messages, e.answer) for e in examples] == [(want[0], "2"), (want[1], "4")]
    with pytest.raises(CalibError) as e:  # the default names are not there
        load_examples(text)
    assert str(e.value).splitlines()[0] == (
        f"{text}:1: expected 'messages' or 'prompt' and 'response' (keys found: 'question', "
        "'solution', 'gold')"
    )
    # Fields from the settings that name them: a ResetSettings, a DiagnoseJob, a command's values
    values = {"prompt_field": "question", "response_field": "solution", "answer_field": "gold",
              "messages_field": "chat"}  # fmt: skip
    assert Fields.of(values) == fields
    from rejuv_cli.recipe import ResetSettings

    assert Fields.of(ResetSettings(**values)) == fields and Fields.of(ResetSettings()) == Fields()


def test_missing_columns_are_one_line_naming_file_and_field(tmp_path):
    spec = parquet(tmp_path / "q.parquet", {"q": ["a"], "a": ["b"]})
    with pytest.raises(CalibError) as e:
        load_examples(spec)
    assert str(e.value) == (
        f"{spec}: no column 'messages', nor 'prompt' and 'response' (columns: 'q', 'a'); name "
        "yours with --messages-field, or --prompt-field and --response-field"
    )
    with pytest.raises(CalibError) as e:
        load_examples(spec, fields=Fields(prompt="q"))
    assert str(e.value) == (
        f"{spec}: no column 'response', which the q/response format needs (columns: 'q', 'a'); "
        "name yours with --response-field"
    )


def test_bad_cells_name_file_row_and_field(tmp_path):
    spec = parquet(tmp_path / "bad.parquet", {
        "q": ["ok", "no answer", None, "bytes"],
        "response": ["fine", None, "orphan", "x"],
        "gold": ["1", "2", "3", ""],
    })  # fmt: skip
    with pytest.raises(CalibError) as e:
        load_examples(spec, fields=Fields(prompt="q", answer="gold"))
    assert str(e.value).splitlines() == [
        f"{spec}:row 1: response: missing",
        f"{spec}:row 2: q: missing",
        f"{spec}:row 3: gold: must be a non-empty string or a number (got string)",
    ]
    typed = parquet(tmp_path / "typed.parquet", {"prompt": [b"raw"], "response": [3]})
    with pytest.raises(CalibError) as e:
        load_examples(typed)
    assert str(e.value).splitlines() == [
        f"{typed}:row 0: prompt: must be a string (got bytes)",
        f"{typed}:row 0: response: must be a string (got number)",
    ]
    convs = parquet(tmp_path / "conv.parquet",
                    {"messages": [[{"role": "user", "content": "hi"}],
                                  [{"role": "user", "content": "hi"},
                                   {"role": "assistant", "content": None}]]})  # fmt: skip
    with pytest.raises(CalibError) as e:
        load_examples(convs)
    assert str(e.value).splitlines() == [
        f"{convs}:row 0: no assistant message (nothing to score)",
        f"{convs}:row 1: messages[1].content: must be a string (got null)",
    ]


def test_a_table_is_read_only_as_far_as_the_limit(tmp_path):
    """A Hub dataset may hold millions of rows: --samples N reads (and checks) the first N."""
    spec = parquet(tmp_path / "long.parquet",
                   {"prompt": ["a", "b", "c", None], "response": ["1", "2", "3", "4"]},
                   row_group_size=2)  # fmt: skip
    assert len(load_examples(spec, 3)) == 3
    with pytest.raises(CalibError, match=r"long.parquet:row 3: prompt: missing"):
        load_examples(spec)
    empty = parquet(
        tmp_path / "empty.parquet",
        {"prompt": pa.array([], pa.string()), "response": pa.array([], pa.string())},
    )
    with pytest.raises(CalibError, match=r"empty.parquet: no examples \(the table has no rows\)"):
        load_examples(empty)


def test_corrupt_parquet_is_one_error(tmp_path):
    good = Path(parquet(tmp_path / "good.parquet", {"prompt": ["p"] * 50, "response": ["r"] * 50}))
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"PAR1 this is not a table")
    for path in (cut, junk):
        with pytest.raises(CalibError) as e:
            load_examples(str(path))
        msg = str(e.value)
        assert msg.startswith(f"{path}: not a readable Parquet file (") and "\n" not in msg, msg


def test_a_json_array_is_one_error(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([{"prompt": "p", "response": "r"}] * 3, indent=2))
    with pytest.raises(CalibError) as e:
        load_examples(str(path))
    assert str(e.value) == (
        f"{path}: a JSON array, not JSON Lines; write one object per line (e.g. `jq -c '.[]' FILE`)"
    )


def test_a_missing_file_that_looks_like_a_path_is_not_a_hub_id(tmp_path):
    for spec in ("acme/calib.jsonl", "./acme/set", str(tmp_path / "a" / "b")):
        with pytest.raises(CalibError, match=r"does not exist; pass a JSONL or Parquet file"):
            load_examples(spec)


# --- the commands -----------------------------------------------------------------------------

RUN = ("--samples", "4", "--max-tokens", "32", "--sharpness-draws", "0", "--json", "-")
RENAMED = ("--prompt-field", "question", "--response-field", "solution")


@pytest.fixture(scope="module")
def same_data(tmp_path_factory):
    """builtin:math's first 4 examples as JSONL (prompt/response) and as Parquet (question,
    solution)."""
    root = tmp_path_factory.mktemp("same-data")
    examples = load_examples("builtin:math", 4)
    rows = [{"prompt": e.messages[0]["content"], "response": e.messages[1]["content"]}
            for e in examples]  # fmt: skip
    table = parquet(
        root / "math.parquet",
        {"question": [r["prompt"] for r in rows], "solution": [r["response"] for r in rows]},
    )
    return jsonl(root / "math.jsonl", rows), table


def _measurements(report: dict) -> dict:
    inputs = {k: report["inputs"][k] for k in ("samples", "response_tokens", "batches")}
    return {"inputs": inputs, "output": report["output"], "units": report["units"]}


def test_diagnose_on_parquet_with_field_flags_measures_what_jsonl_does(llama, same_data):
    text, table = same_data
    a = run_cli("diagnose", *llama, *RUN, "--calib", text)
    b = run_cli("diagnose", *llama, *RUN, "--calib", table, *RENAMED)
    assert a.exit_code == 0 and b.exit_code == 0, (a.stderr, b.stderr)
    ra, rb = json.loads(a.stdout), json.loads(b.stdout)
    assert rb["inputs"]["calib"] == table and rb["inputs"]["samples"] == 4
    assert _measurements(ra) == _measurements(rb)
    assert ra["output"]["entropy_mean"] is not None
    # without the flags: one error line naming the file and the missing columns, exit 1
    line = fails(run_cli("diagnose", *llama, *RUN, "--calib", table), 1, one_line=True)
    assert line == (f"rejuv: error: {table}: no column 'messages', nor 'prompt' and 'response' "
                    "(columns: 'question', 'solution'); name yours with --messages-field, or "
                    "--prompt-field and --response-field")  # fmt: skip


def test_fuse_data_scorer_reads_the_fields_of_a_recipe(llama, same_data, tmp_path):
    """The recipe keys reset.prompt_field/... reach the data scorers; the mask records them."""
    text, table = same_data
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"reset:\n  select: dormant\n  fraction: 0.05\n  calib: {table}\n"
                      "  prompt_field: question\n  response_field: solution\n  samples: 4\n"
                      "  max_tokens: 32\n")  # fmt: skip
    masks = {"jsonl": tmp_path / "a.safetensors", "parquet": tmp_path / "b.safetensors"}
    runs = [run_cli("fuse", *llama, "--out", tmp_path / "o", "--select", "dormant", "--reset",
                    "0.05", "--calib", text, "--samples", "4", "--max-tokens", "32",
                    "--dry-run", "--save-mask", masks["jsonl"], "-q"),
            run_cli("fuse", *llama, "--out", tmp_path / "o", "--recipe", recipe, "--dry-run",
                    "--save-mask", masks["parquet"], "-q")]  # fmt: skip
    for r in runs:
        assert r.exit_code == 0, r.stderr
    a, b = load_file(masks["jsonl"]), load_file(masks["parquet"])
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    with safe_open(masks["parquet"], "pt") as f:
        meta = f.metadata()
    assert meta["input.calib"] == table and meta["input.prompt_field"] == "question"
    assert meta["input.response_field"] == "solution" and "input.answer_field" not in meta


def test_field_flags_need_a_data_scorer(tmp_path):
    r = run_cli("fuse", "b", "s", "--out", tmp_path / "o", "--prompt-field", "q")
    fails(r, 2, "--prompt-field: the drift scorer reads no data")
    r = run_cli("diagnose", "b", "s", "--messages-field", " ")
    fails(r, 2, "--messages-field: must be a key or column name (got ' ')")


# --- Hub datasets -----------------------------------------------------------------------------

SET, CHATS = "acme/calib-set", "acme/chat-set"

_LOAD = """
import json, sys
from rejuv_cli.calib.data import load_examples
from rejuv_cli.errors import CalibError
out = {}
for spec in json.loads(sys.argv[1]):
    notes = []
    try:
        ex = load_examples(spec, None, None, notes)
        out[spec] = {"examples": [[e.source, list(e.messages), e.answer] for e in ex],
                     "notes": notes}
    except CalibError as e:
        out[spec] = {"error": str(e)}
print(json.dumps(out))
"""


def load_in(env: dict, cwd: Path, specs: list[str]) -> dict:
    """load_examples for each spec in a fresh process with `env` (huggingface_hub reads its
    settings at import): spec -> {examples: [[source, messages, answer]], notes} or {error}."""
    r = subprocess.run([sys.executable, "-c", _LOAD, json.dumps(specs)], env=env, cwd=cwd,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def hub_data(tmp_path_factory):
    """Two dataset repos on the stand-in Hub, loaded online into a fresh cache: acme/calib-set
    (train and test Parquet files, LFS) and acme/chat-set (one JSONL file). Yields the hub, the
    cache, the working directory and the online results."""
    root = tmp_path_factory.mktemp("hub-data")
    src = root / "src"
    (src / "data").mkdir(parents=True)
    parquet(
        src / "data" / "train-00000-of-00001.parquet",
        {"prompt": ["1 + 1 ?", "2 + 3 ?"], "response": ["2", "5"], "answer": [2, 5]},
    )
    parquet(src / "data" / "test-00000-of-00001.parquet", {"prompt": ["x"], "response": ["y"]})
    chats = root / "chats"
    chats.mkdir()
    jsonl(chats / "chats.jsonl", [{"messages": CONV}])
    cwd = root / "cwd"
    (cwd / "acme").mkdir(parents=True)  # acme/local-wins: a local file named like an id
    jsonl(cwd / "acme" / "local-wins", [{"prompt": "local", "response": "yes"}])
    repos = [HubRepo.from_dir(SET, src, repo_type="dataset"),
             HubRepo.from_dir(CHATS, chats, repo_type="dataset"),
             HubRepo.from_dir("acme/a-model", chats)]  # fmt: skip
    with FakeHub(repos) as hub:
        commit = hub.repos[SET].commit
        specs = [SET, f"{SET}@{commit}", CHATS, "acme/local-wins", "acme/nothing",
                 "acme/a-model", f"{SET}@v9"]  # fmt: skip
        online = load_in(hub_env(root / "hub", hub.endpoint), cwd, specs)
        yield hub, root / "hub", cwd, online


def test_hub_dataset_reads_its_train_file_and_says_so(hub_data):
    hub, cache, _, online = hub_data
    got = online[SET]
    train = f"hf://datasets/{SET}/data/train-00000-of-00001.parquet"
    assert got["examples"] == [
        [f"{train}:row 0", list(msgs(("user", "1 + 1 ?"), ("assistant", "2"))), "2"],
        [f"{train}:row 1", list(msgs(("user", "2 + 3 ?"), ("assistant", "5"))), "5"],
    ]
    assert got["notes"] == [
        f"{SET}: 2 data files (data/test-00000-of-00001.parquet, "
        "data/train-00000-of-00001.parquet); using data/train-00000-of-00001.parquet (the first "
        "train-split file in sorted order); to read another, download it and pass its path to "
        "--calib"
    ]
    commit = hub.repos[SET].commit
    pinned = online[f"{SET}@{commit}"]
    assert [e[0] for e in pinned["examples"]] == [
        f"hf://datasets/{SET}@{commit}/data/train-00000-of-00001.parquet:row {i}" for i in (0, 1)
    ]
    # huggingface_hub's own cache layout; only the data files were fetched (no README.md)
    snap = cache / "datasets--acme--calib-set" / "snapshots" / commit
    files = sorted(p.relative_to(snap).as_posix() for p in snap.rglob("*") if not p.is_dir())
    assert files == ["data/test-00000-of-00001.parquet", "data/train-00000-of-00001.parquet"]
    assert all(os.path.islink(snap / f) for f in files)
    requested = {path for _, path in hub.requests}
    assert f"/api/datasets/{SET}/revision/main" in requested


def test_hub_dataset_with_one_jsonl_file(hub_data):
    got = hub_data[3][CHATS]
    assert got["notes"] == []
    assert got["examples"] == [[f"hf://datasets/{CHATS}/chats.jsonl:1",
                                [{"role": m["role"], "content": m["content"]} for m in CONV],
                                "4"]]  # fmt: skip


def test_a_local_path_wins_over_a_hub_id(hub_data):
    hub, _, _, online = hub_data
    assert online["acme/local-wins"]["examples"][0][0] == "acme/local-wins:1"
    assert not any("local-wins" in path for _, path in hub.requests)


def test_unknown_hub_dataset_and_revision_online(hub_data):
    online = hub_data[3]
    for spec in ("acme/nothing", "acme/a-model"):  # a model repo is no dataset
        assert online[spec]["error"] == (
            f"calibration data {spec}: no such file, and no such Hub dataset (or it is private: "
            "set HF_TOKEN); pass a JSONL or Parquet file, a Hub dataset id org/name[@revision] "
            "or builtin:math"
        )
    assert online[f"{SET}@v9"]["error"] == (
        f"calibration data {SET}@v9: revision 'v9' not found in dataset {SET}"
    )


def test_hub_dataset_offline_from_the_cache(hub_data):
    hub, cache, cwd, online = hub_data
    pinned = f"{SET}@{hub.repos[SET].commit}"
    offline = load_in(hub_env(cache), cwd, [SET, pinned, CHATS, "acme/nothing"])
    for spec in (SET, pinned, CHATS):
        assert offline[spec] == online[spec], spec
    assert offline["acme/nothing"]["error"] == (
        "calibration data acme/nothing: no such file, and the dataset is not in the local Hub "
        "cache and the Hub cannot be reached (HF_HUB_OFFLINE=1). Run `hf download acme/nothing "
        "--repo-type dataset` where there is network, or pass a local file."
    )
    # the command: one error line before any model is read (BASE and SFT need not exist)
    (run,) = rejuv_offline(cache, ["diagnose", "b", "s", "--calib", "acme/nothing"])
    assert run.code == 1 and run.stderr == f"rejuv: error: {offline['acme/nothing']['error']}\n"
