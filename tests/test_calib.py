"""Calibration data: built-in sets, JSONL validation, response masks, batching."""

from __future__ import annotations

import ast
import json
import operator
import re
import subprocess
import sys
from fractions import Fraction
from importlib import resources
from pathlib import Path

import pytest
import torch

from rejuv_cli.calib.data import BUILTIN, Example, load_examples
from rejuv_cli.calib.encode import Encoded, batches, encode, pad_id_of
from rejuv_cli.errors import CalibError, RejuvError
from rejuv_cli.testing.synth import tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
BUILTIN_DIR = ROOT / "src" / "rejuv_cli" / "calib" / "builtin"
OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: Fraction}


def exact(expr: str) -> Fraction:
    """Evaluate `A op B ...` exactly (whole numbers, + - * /, parentheses) without eval."""

    def walk(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return Fraction(str(node.value))
        if isinstance(node, ast.BinOp) and type(node.op) in OPS:
            return OPS[type(node.op)](walk(node.left), walk(node.right))
        raise AssertionError(f"unexpected syntax in {expr!r}")

    return walk(ast.parse(expr, mode="eval").body)


def write(tmp_path: Path, *lines: str) -> str:
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def msgs(*pairs: tuple[str, str]) -> tuple[dict, ...]:
    return tuple({"role": r, "content": c} for r, c in pairs)


# --- built-in sets ------------------------------------------------------------------------


def test_builtin_math_loads_and_every_step_is_right():
    examples = load_examples("builtin:math")
    assert len(examples) >= 64
    assert examples[2].source == "builtin:math:3"
    step = re.compile(r"^[^:\n]+: ([\d+\-*/() ]+) = (\d+)\b", re.MULTILINE)
    for ex in examples:
        assert [m["role"] for m in ex.messages] == ["user", "assistant"], ex.source
        response = ex.messages[1]["content"]
        answer = re.search(r"\nAnswer: (\d+)\Z", response)
        assert answer, ex.source
        steps = step.findall(response)
        assert len(steps) >= 2, ex.source
        for expr, value in steps:
            assert exact(expr) == int(value), (ex.source, expr, value)
        assert answer.group(1) == steps[-1][1], ex.source  # the answer is the last result
    assert len({ex.messages[0]["content"] for ex in examples}) == len(examples)


def test_builtin_tool_use_dialogues_are_well_formed():
    examples = load_examples("builtin:tool_use")
    assert len(examples) >= 32
    multi = 0
    for ex in examples:
        roles = [m["role"] for m in ex.messages]
        assert roles[0] == "system" and roles[-1] == "assistant", ex.source
        calls = 0
        for m, nxt in zip(ex.messages, ex.messages[1:], strict=False):
            if m["role"] == "assistant" and m["content"].startswith("{"):
                call = json.loads(m["content"])
                assert set(call) == {"tool", "arguments"} and nxt["role"] == "tool", ex.source
                res = json.loads(nxt["content"])["result"]
                if call["tool"] == "calculator":  # results rounded to 2 decimals
                    assert abs(float(exact(call["arguments"]["expression"])) - res) < 0.006
                calls += 1
        assert calls >= 1 and not ex.messages[-1]["content"].startswith("{"), ex.source
        multi += roles.count("assistant") >= 3
    assert multi >= 8


def test_generator_reproduces_checked_in_files(tmp_path):
    script = ROOT / "bench" / "calib" / "make_builtin.py"
    subprocess.run([sys.executable, script, "--out", tmp_path], check=True, capture_output=True)
    for name in BUILTIN:
        assert (tmp_path / f"{name}.jsonl").read_bytes() == (
            BUILTIN_DIR / f"{name}.jsonl"
        ).read_bytes(), name


def test_builtins_are_package_data():
    root = resources.files("rejuv_cli.calib") / "builtin"
    assert sorted(p.name for p in root.iterdir() if p.name.endswith(".jsonl")) == [
        f"{n}.jsonl" for n in sorted(BUILTIN)
    ]
    assert (root / "math.jsonl").read_text(encoding="utf-8").startswith('{"prompt": ')


def test_limit_takes_the_first_examples():
    everything = load_examples("builtin:math")
    assert load_examples("builtin:math", limit=5) == everything[:5]
    assert load_examples("builtin:math", limit=10_000) == everything
    with pytest.raises(CalibError, match="at least 1"):
        load_examples("builtin:math", limit=0)


# --- files and errors -----------------------------------------------------------------------


def test_both_formats_with_blank_lines_keep_file_line_numbers(tmp_path):
    conv = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "2 + 2 ?"},
        {"role": "assistant", "content": "4", "tool_calls": []},  # extra keys are dropped
    ]
    spec = write(
        tmp_path,
        json.dumps({"prompt": "1 + 1 ?", "response": "2", "id": 7}),
        "",
        "   ",
        json.dumps({"messages": conv}),
    )
    examples = load_examples(spec)
    assert examples == [
        Example(msgs(("user", "1 + 1 ?"), ("assistant", "2")), f"{spec}:1"),
        Example(msgs(("system", "be brief"), ("user", "2 + 2 ?"), ("assistant", "4")), f"{spec}:4"),
    ]


def test_every_malformed_line_is_reported_with_its_line_number(tmp_path):
    spec = write(
        tmp_path,
        '{"prompt": "ok", "response": "fine"}',
        '{"prompt": "unterminated',
        "",
        "[1, 2]",
        '{"prompt": "no answer"}',
        '{"prompt": 3, "response": "  "}',
        '{"messages": [{"role": "user", "content": "hi"}]}',
        '{"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": ""}]}',
        '{"messages": [], "prompt": "p", "response": "r"}',
        '{"messages": "hello"}',
        '{"text": "raw"}',
        '{"messages": [{"role": "assistant"}, "loose"]}',
    )
    with pytest.raises(CalibError) as info:
        load_examples(spec)
    assert str(info.value).splitlines() == [
        f"{spec}:2: not valid JSON at column 12: Unterminated string starting at",
        f"{spec}:4: expected a JSON object, got array",
        f"{spec}:5: response: missing",
        f"{spec}:6: prompt: must be a string (got number)",
        f"{spec}:6: response: is empty",
        f"{spec}:7: no assistant message (nothing to score)",
        f"{spec}:8: messages[0].role: 'bot' is not one of system, user, assistant, tool",
        f"{spec}:8: messages[1].content: is empty",
        f"{spec}:9: has both 'messages' and 'prompt'/'response'; use one format per line",
        f"{spec}:10: 'messages' must be a non-empty list (got string)",
        f"{spec}:11: expected 'messages' or 'prompt' and 'response' (keys found: 'text')",
        f"{spec}:12: messages[0].content: missing",
        f"{spec}:12: messages[1]: expected an object with 'role' and 'content', got string",
    ]
    assert isinstance(info.value, RejuvError) and info.value.exit_code == 1


def test_problem_list_is_capped(tmp_path):
    spec = write(tmp_path, *["not json"] * 25)
    with pytest.raises(CalibError) as info:
        load_examples(spec)
    lines = str(info.value).splitlines()
    assert len(lines) == 21 and lines[19].startswith(f"{spec}:20: not valid JSON")
    assert lines[20] == "... and 5 more"


def test_unknown_builtin_lists_the_known_names():
    with pytest.raises(CalibError) as info:
        load_examples("builtin:poetry")
    msg = str(info.value)
    assert "'poetry'" in msg and "builtin:math, builtin:tool_use" in msg and "JSONL" in msg


def test_missing_directory_and_empty_files(tmp_path):
    with pytest.raises(CalibError, match=r"does not exist.*builtin:math"):
        load_examples(str(tmp_path / "nope.jsonl"))
    with pytest.raises(CalibError, match="such as builtin:tool_use"):
        load_examples("tool_use")  # a built-in name without the prefix
    with pytest.raises(CalibError, match="is a directory"):
        load_examples(str(tmp_path))
    with pytest.raises(CalibError, match="no examples"):
        load_examples(write(tmp_path, "", "  "))


# --- encoding -------------------------------------------------------------------------------


def runs(enc: Encoded) -> list[list[int]]:
    """The maximal stretches of response tokens, in order."""
    out: list[list[int]] = []
    for i, (tid, r) in enumerate(zip(enc.input_ids, enc.response, strict=True)):
        if r:
            if i == 0 or not enc.response[i - 1]:
                out.append([])
            out[-1].append(tid)
    return out


def ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def test_encode_marks_exactly_the_assistant_tokens():
    tok = tiny_tokenizer()
    ex = Example(msgs(("user", "1 + 2 ?"), ("assistant", "the answer is 3 .")), "t:1")
    (enc,), warnings = encode([ex], tok, 64)
    assert warnings == []
    full = tok.apply_chat_template(list(ex.messages), tokenize=False)
    assert enc.input_ids == ids(tok, full)
    # The turn's content and its end-of-turn marker are targets; "<s>assistant:" is context.
    assert runs(enc) == [ids(tok, "the answer is 3 . </s>")]
    assert tok.convert_ids_to_tokens(runs(enc)[0]) == "the answer is 3 . </s>".split()
    context = [t for t, r in zip(enc.input_ids, enc.response, strict=True) if not r]
    assert context == ids(tok, "<s>user: 1 + 2 ? </s> <s>assistant: ")


def test_every_assistant_turn_of_a_tool_dialogue_is_marked():
    tok = tiny_tokenizer()
    examples = [ex for ex in load_examples("builtin:tool_use") if len(ex.messages) >= 7]
    encoded, warnings = encode(examples, tok, 4096)
    # the tiny word-level tokenizer knows few of these words: only that warning
    assert len(warnings) == 1 and "the tokenizer's unknown token '<unk>'" in warnings[0]
    assert len(encoded) == len(examples) >= 8
    for ex, enc in zip(examples, encoded, strict=True):
        turns = [m["content"] for m in ex.messages if m["role"] == "assistant"]
        assert runs(enc) == [ids(tok, c + "</s>") for c in turns], ex.source


def test_template_that_rewrites_history_marks_only_the_last_turn():
    tok = tiny_tokenizer()
    # Earlier assistant turns render empty (like templates that strip old reasoning).
    tok.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}: "
        "{% if m['role'] != 'assistant' or loop.last %}{{ m['content'] }}{% endif %}</s>"
        "{% endfor %}{% if add_generation_prompt %}<s>assistant: {% endif %}"
    )
    ex = Example(
        msgs(("user", "1 + 1 ?"), ("assistant", "2"), ("tool", "3"), ("assistant", "answer 3")),
        "t:9",
    )
    (enc,), warnings = encode([ex], tok, 64)
    assert runs(enc) == [ids(tok, "answer 3 </s>")]
    assert warnings == [
        "1 of 1 examples: the chat template re-renders earlier turns differently, so only "
        "their last assistant turn is marked as response"
    ]


def test_unusable_templates_name_the_example():
    tok = tiny_tokenizer()
    ex = Example(msgs(("user", "1"), ("assistant", "2")), "data.jsonl:4")
    tok.chat_template = CHAT_TEMPLATE_GEN_MISMATCH
    with pytest.raises(CalibError, match=r"^data\.jsonl:4: .*cannot be located"):
        encode([ex], tok, 64)
    tok.chat_template = "{{ raise_exception('tool role not supported') }}"
    with pytest.raises(CalibError, match=r"^data\.jsonl:4: .*\(tool role not supported\)"):
        encode([ex], tok, 64)


CHAT_TEMPLATE_GEN_MISMATCH = (  # the generation prompt is not how assistant turns render
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>bot: {% endif %}"
)


def test_truncation_keeps_the_first_tokens_and_drops_examples_without_response():
    tok = tiny_tokenizer()
    long_prompt = " ".join(str(i) for i in range(30))
    examples = [
        Example(msgs(("user", "1 ?"), ("assistant", "2 3 4 5 6 7 8 9")), "a:1"),  # cut inside
        Example(msgs(("user", long_prompt), ("assistant", "1")), "a:2"),  # response cut away
        Example(msgs(("user", "1 ?"), ("assistant", "2")), "a:3"),  # fits
    ]
    encoded, warnings = encode(examples, tok, 12)
    assert [e.source for e in encoded] == ["a:1", "a:3"]
    first = encoded[0]
    assert len(first.input_ids) == len(first.response) == 12
    full, _ = encode(examples[:1], tok, 1000)
    assert first.input_ids == full[0].input_ids[:12] and first.response == full[0].response[:12]
    assert warnings == [
        "a:2: no response tokens within the first 12 tokens; example dropped",
        "2 of 3 examples were longer than 12 tokens and were cut to their first 12",
    ]


def test_without_a_chat_template_contents_are_plain_lines():
    tok = tiny_tokenizer()
    tok.chat_template = None
    turns = (("system", "be brief"), ("user", "1 + 2 ?"), ("assistant", "3 ."), ("user", "4"))
    ex = Example(msgs(*turns), "p:1")  # the trailing user turn has no targets: left out
    (enc,), _ = encode([ex], tok, 64)
    assert enc.input_ids == [tok.bos_token_id] + ids(tok, "be brief\n1 + 2 ?\n3 .\n")
    assert runs(enc) == [ids(tok, "3 .")] and enc.response[0] is False
    tok.bos_token = None
    (enc,), _ = encode([ex], tok, 64)
    assert enc.input_ids == ids(tok, "be brief\n1 + 2 ?\n3 .\n")


# --- batching -------------------------------------------------------------------------------


def fake(n: int, k: int) -> Encoded:
    """n tokens with ids k*100 + i; the second half is response."""
    return Encoded([k * 100 + i for i in range(n)], [i >= n // 2 for i in range(n)], f"f:{k}")


def test_batches_group_in_order_within_the_token_budget():
    encoded = [fake(n, k) for k, n in enumerate([5, 3, 8, 2, 2, 9, 20], start=1)]
    out = list(batches(encoded, 16, pad_id=-7))
    assert [tuple(b[0].shape) for b in out] == [(2, 5), (2, 8), (1, 2), (1, 9), (1, 20)]
    for ids_, attn, resp in out:
        assert ids_.dtype == attn.dtype == torch.long and resp.dtype == torch.bool
        assert ids_.shape == attn.shape == resp.shape
        assert ids_.numel() <= 16 or ids_.shape[0] == 1  # an over-long example stands alone
    rows = [(i, a, r) for b in out for i, a, r in zip(*b, strict=True)]
    for (row_ids, row_attn, row_resp), enc in zip(rows, encoded, strict=True):
        n = len(enc.input_ids)
        assert row_ids[:n].tolist() == enc.input_ids and row_resp[:n].tolist() == enc.response
        assert row_attn.tolist() == [1] * n + [0] * (len(row_attn) - n)
        assert (row_ids[n:] == -7).all() and not row_resp[n:].any()


class _Tok:
    def __init__(self, pad, eos):
        self.pad_token_id, self.eos_token_id = pad, eos


def test_pad_id_falls_back_to_eos_then_zero():
    assert pad_id_of(_Tok(5, 2)) == 5
    assert pad_id_of(_Tok(None, 2)) == 2
    assert pad_id_of(_Tok(None, None)) == 0


def test_importing_the_calib_modules_does_not_import_torch():
    code = (
        "import sys, rejuv_cli.calib.data, rejuv_cli.calib.encode; "
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
