"""`--fail-on` gates: the grammar, its error messages, evaluation against a report, one-liners."""

from __future__ import annotations

import pytest

from rejuv_cli.errors import UsageError
from rejuv_cli.report.gates import (
    Gate,
    GateResult,
    describe,
    evaluate,
    format_path,
    parse_gate,
)

EXAMPLE = '; example: --fail-on "output.entropy_mean<0.18"'
TENSOR = "model.layers.0.mlp.up_proj.weight"

REPORT = {
    "output": {"entropy_mean": 0.0241, "confident_share": 0.9, "top1_agree": 1},
    "units": {"dormant": {"0.025": 0.31, "0.05": 0.42}, "count": 12345},
    "weights": {
        "tensors": {
            TENSOR: {"rel_drift": 0.05, "shape": [8, 16]},
            'odd"name': {"rel_drift": 0.5},
        },
        "overall": {"rel_drift": 0.02},
    },
    "verdict": {
        "label": "rigid",
        "reasons": [{"id": "low-entropy", "value": 0.0241}, {"id": "dormant", "value": 0.31}],
        "empty": [],
        "flags": {"collapsed": True, "diverged": False},
        "nothing": {},
        "weird": float("nan"),
    },
    "activations": None,
}


def usage_error(fn, *args) -> str:
    with pytest.raises(UsageError) as info:
        fn(*args)
    assert info.value.exit_code == 2
    return str(info.value)


def parse_error(text: str) -> str:
    return usage_error(parse_gate, text)


def eval_error(text: str, report: dict | None = None) -> str:
    return usage_error(evaluate, [parse_gate(text)], REPORT if report is None else report)


def trips(text: str, report: dict | None = None) -> bool:
    (result,) = evaluate([parse_gate(text)], REPORT if report is None else report)
    return result.tripped


# --------------------------------------------------------------------------------------------
# parsing


def test_parse_simple_gate():
    gate = parse_gate("output.entropy_mean<0.18")
    assert gate == Gate(
        text="output.entropy_mean<0.18", path=("output", "entropy_mean"), op="<", value=0.18
    )


@pytest.mark.parametrize("op", ["<", "<=", ">", ">=", "==", "!="])
def test_parse_every_operator(op):
    gate = parse_gate(f"a.b{op}1")
    assert (gate.path, gate.op, gate.value) == (("a", "b"), op, 1.0)


def test_parse_whitespace_around_every_token():
    gate = parse_gate('  weights . tensors [ "x.y" ] [ 2 ] . rel_drift   >=   -1.5e-3  ')
    assert gate.path == ("weights", "tensors", "x.y", 2, "rel_drift")
    assert (gate.op, gate.value) == (">=", -0.0015)
    assert gate.text == '  weights . tensors [ "x.y" ] [ 2 ] . rel_drift   >=   -1.5e-3  '


def test_parse_quoted_keys_with_dots_either_quote():
    gate = parse_gate(f'weights.tensors["{TENSOR}"].rel_drift>0.01')
    assert gate.path == ("weights", "tensors", TENSOR, "rel_drift")
    assert parse_gate("units.dormant['0.025']>0.3").path == ("units", "dormant", "0.025")
    # the other quote character may appear inside
    assert parse_gate("a['say \"hi\"']==x").path == ("a", 'say "hi"')


def test_parse_list_indexes():
    assert parse_gate("verdict.reasons[0].id==ok").path == ("verdict", "reasons", 0, "id")
    assert parse_gate("a[12][-1]<3").path == ("a", 12, -1)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("x<1", 1.0),
        ("x<+2", 2.0),
        ("x<-3", -3.0),
        ("x<0.5", 0.5),
        ("x<.5", 0.5),
        ("x<5.", 5.0),
        ("x<1e3", 1000.0),
        ("x<2.5E-2", 0.025),
        ("x<-1e+2", -100.0),
        ("x==true", 1.0),
        ("x!=False", 0.0),
    ],
)
def test_parse_numbers(text, value):
    gate = parse_gate(text)
    assert gate.value == value and isinstance(gate.value, float)


def test_parse_bare_words_and_quoted_strings():
    assert parse_gate("verdict.label==rigid").value == "rigid"
    assert parse_gate("verdict.label != over-plastic").value == "over-plastic"
    assert parse_gate("x==v1.2_b").value == "v1.2_b"
    assert parse_gate('verdict.label=="two words"').value == "two words"
    assert parse_gate("verdict.label=='3.5'").value == "3.5"  # quoted: a string, not a number
    assert parse_gate("x==''").value == ""
    assert parse_gate("x=='nan'").value == "nan"


def test_parse_error_example_from_the_brief():
    assert parse_error("output.entropy_mean<<0.18") == (
        "--fail-on 'output.entropy_mean<<0.18': expected a number after '<' at column 21" + EXAMPLE
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # empty path / bad key
        ("", "expected a key at column 1"),
        ("   ", "expected a key at column 4"),
        ("<0.18", "expected a key at column 1"),
        (".x<1", "expected a key at column 1"),
        ("1x<1", "expected a key at column 1"),
        ("x.<1", "expected a key after '.' at column 3"),
        ("x..y<1", "expected a key after '.' at column 3"),
        ("x.1<1", "expected a key after '.' at column 3"),
        ("x. <1", "expected a key after '.' at column 4"),
        # brackets
        ("x[]<1", "expected an integer index or a quoted key after '[' at column 3"),
        ("x[a]<1", "expected an integer index or a quoted key after '[' at column 3"),
        ("x[0.5]<1", "expected ']' at column 4"),
        ('x["a"<1', "expected ']' at column 6"),
        ('x["a<1', 'expected a closing " at column 7; the string opened at column 3 never ends'),
        ("x['a<1", "expected a closing ' at column 7; the string opened at column 3 never ends"),
        # operator
        ("x", "expected an operator (<, <=, >, >=, ==, !=) at column 2"),
        ("x 0.18", "expected an operator (<, <=, >, >=, ==, !=) at column 3"),
        (
            "x=1",
            "expected an operator (<, <=, >, >=, ==, !=) at column 2; "
            "'=' alone is not one, use '=='",
        ),
        (
            "x!1",
            "expected an operator (<, <=, >, >=, ==, !=) at column 2; "
            "'!' alone is not one, use '!='",
        ),
        (
            "x=<1",
            "expected an operator (<, <=, >, >=, ==, !=) at column 2; "
            "'=' alone is not one, use '=='",
        ),
        # value
        ("x<", "expected a number after '<' at column 3"),
        ("x <= ", "expected a number after '<=' at column 6"),
        ("x==", "expected a number, a word or a quoted string after '==' at column 4"),
        ("x!=-", "expected a number, a word or a quoted string after '!=' at column 4"),
        ("x>-abc", "expected a number after '>' at column 3"),
        # strings with ordering operators
        (
            "verdict.label<rigid",
            "expected a number after '<' at column 15; strings compare only with == or !=",
        ),
        (
            "x >= 'a'",
            "expected a number after '>=' at column 6; strings compare only with == or !=",
        ),
        ('x>"1"', "expected a number after '>' at column 3; strings compare only with == or !="),
        # non-finite values
        ("x<nan", "expected a finite number after '<' at column 3"),
        ("x<NaN", "expected a finite number after '<' at column 3"),
        ("x>-inf", "expected a finite number after '>' at column 3"),
        ("x<Infinity", "expected a finite number after '<' at column 3"),
        ("x<1e999", "expected a finite number after '<' at column 3"),
        (
            "x==nan",
            "expected a finite number after '==' at column 4; quote it to compare as a string",
        ),
        # trailing garbage
        ("x<0.18 0.2", "expected the end of the expression at column 8"),
        ("x<0.18abc", "expected the end of the expression at column 7"),
        ("x<1<2", "expected the end of the expression at column 4"),
        ("x==rigid plastic", "expected the end of the expression at column 10"),
        ("x=='a'b", "expected the end of the expression at column 7"),
        ("x<1]", "expected the end of the expression at column 4"),
    ],
)
def test_parse_errors_name_expression_column_expectation_and_example(text, message):
    assert parse_error(text) == f"--fail-on {text!r}: {message}{EXAMPLE}"


def test_words_that_merely_start_like_inf_are_words():
    assert parse_gate("x==information").value == "information"
    assert parse_gate("x==nano").value == "nano"


# --------------------------------------------------------------------------------------------
# evaluation: operators at the boundary


@pytest.mark.parametrize(
    ("op", "below", "equal", "above"),
    [
        ("<", True, False, False),
        ("<=", True, True, False),
        (">", False, False, True),
        (">=", False, True, True),
        ("==", False, True, False),
        ("!=", True, False, True),
    ],
)
def test_each_operator_true_and_false_at_the_boundary(op, below, equal, above):
    def at(actual: float) -> bool:
        return trips(f"m.v{op}0.25", {"m": {"v": actual}})

    assert at(0.2499) is below
    assert at(0.25) is equal
    assert at(0.2501) is above


def test_integer_actuals_compare_with_float_values():
    assert trips("units.count>=12345")
    assert not trips("units.count>12345")
    assert trips("units.count==1.2345e4")


def test_gate_trips_when_the_failure_condition_holds():
    (result,) = evaluate([parse_gate("output.entropy_mean<0.18")], REPORT)
    assert result == GateResult(
        gate=parse_gate("output.entropy_mean<0.18"), actual=0.0241, tripped=True
    )
    assert not trips("output.entropy_mean>0.18")


def test_booleans_count_as_numbers():
    assert trips("verdict.flags.collapsed==1")
    assert trips("verdict.flags.collapsed==true")
    assert trips("verdict.flags.diverged==0")
    assert trips("verdict.flags.diverged<0.5")
    assert not trips("verdict.flags.collapsed!=true")
    (result,) = evaluate([parse_gate("verdict.flags.collapsed>0")], REPORT)
    assert result.actual == 1 and result.tripped


def test_nested_quoted_keys_and_list_indexes_resolve():
    assert trips(f'weights.tensors["{TENSOR}"].rel_drift>=0.05')
    assert not trips(f"weights.tensors['{TENSOR}'].rel_drift>0.05")
    assert trips('units.dormant["0.025"]>0.3')
    assert not trips("units.dormant['0.05']<0.3")
    assert trips("verdict.reasons[0].id==low-entropy")
    assert trips("verdict.reasons[1].value>0.3")
    assert trips("verdict.reasons[-1].id==dormant")
    assert trips(f'weights.tensors["{TENSOR}"].shape[1]==16')
    assert trips("weights.tensors['odd\"name'].rel_drift==0.5")


def test_string_comparisons_bare_and_quoted():
    assert trips("verdict.label==rigid")
    assert not trips("verdict.label!=rigid")
    assert trips("verdict.label=='rigid'")
    assert trips('verdict.label!="plastic"')
    assert not trips("verdict.label==Rigid")  # case-sensitive


def test_nan_in_the_report_trips_every_operator():
    for op in ("<", "<=", ">", ">=", "==", "!="):
        (result,) = evaluate([parse_gate(f"verdict.weird{op}0")], REPORT)
        assert result.tripped
    assert describe(result) == "gate tripped: verdict.weird!=0 (actual nan)"


def test_several_gates_are_evaluated_independently_and_in_order():
    texts = [
        "output.entropy_mean<0.18",
        "output.entropy_mean>0.18",
        "verdict.label==rigid",
        "units.dormant['0.05']>=0.5",
        "output.entropy_mean<0.18",
    ]
    results = evaluate([parse_gate(t) for t in texts], REPORT)
    assert [r.gate.text for r in results] == texts
    assert [r.tripped for r in results] == [True, False, True, False, True]
    assert [r.actual for r in results] == [0.0241, 0.0241, "rigid", 0.42, 0.0241]
    assert evaluate([], REPORT) == []


def test_evaluate_does_not_modify_the_report():
    before = repr(REPORT)
    evaluate([parse_gate("verdict.flags.collapsed==1")], REPORT)
    assert repr(REPORT) == before


# --------------------------------------------------------------------------------------------
# evaluation errors


def test_missing_key_lists_the_available_keys():
    assert eval_error("output.entropy_meen<0.18") == (
        "--fail-on 'output.entropy_meen<0.18': 'entropy_meen' not found under 'output'; "
        "available: confident_share, entropy_mean, top1_agree"
    )


def test_missing_top_level_key():
    assert eval_error("outptu.entropy_mean<0.18") == (
        "--fail-on 'outptu.entropy_mean<0.18': 'outptu' not found at the top level; "
        "available: activations, output, units, verdict, weights"
    )


def test_missing_quoted_key_names_the_canonical_prefix():
    text = f'weights.tensors["{TENSOR}"].rel_drfit>0.1'
    assert eval_error(text) == (
        f"--fail-on {text!r}: 'rel_drfit' not found under "
        f"'weights.tensors[\"{TENSOR}\"]'; available: rel_drift, shape"
    )
    assert eval_error("units.dormant['0.1']>0.3") == (
        "--fail-on \"units.dormant['0.1']>0.3\": '0.1' not found under 'units.dormant'; "
        "available: 0.025, 0.05"
    )


def test_missing_key_suggestions_stop_at_fifteen():
    report = {"big": {f"k{i:02d}": i for i in range(20)}}
    listed = ", ".join(f"k{i:02d}" for i in range(15))
    assert eval_error("big.nope<1", report) == (
        f"--fail-on 'big.nope<1': 'nope' not found under 'big'; available: {listed}, ... (5 more)"
    )


def test_missing_key_under_an_empty_object():
    assert eval_error("verdict.nothing.x<1") == (
        "--fail-on 'verdict.nothing.x<1': 'x' not found under 'verdict.nothing'; it is empty"
    )


def test_list_index_out_of_range():
    assert eval_error("verdict.reasons[2].id==x") == (
        "--fail-on 'verdict.reasons[2].id==x': index 2 not found under 'verdict.reasons' "
        "(a list of 2 items)"
    )
    assert eval_error("verdict.reasons[-3].id==x").endswith(
        "index -3 not found under 'verdict.reasons' (a list of 2 items)"
    )
    assert eval_error("verdict.empty[0]<1").endswith(
        "index 0 not found under 'verdict.empty' (a list of 0 items)"
    )


def test_null_section_says_not_measured():
    assert eval_error("activations.mean<1") == (
        "--fail-on 'activations.mean<1': 'activations' is null in this report "
        "(not measured in this run)"
    )
    weights_only = {"output": None, "weights": {"overall": {"rel_drift": 0.02}}}
    assert eval_error("output.entropy_mean<0.18", weights_only) == (
        "--fail-on 'output.entropy_mean<0.18': 'output' is null in this report "
        "(not measured in this run)"
    )


def test_null_leaf_says_not_measured():
    report = {"output": {"entropy_mean": None}}
    assert eval_error("output.entropy_mean<0.18", report) == (
        "--fail-on 'output.entropy_mean<0.18': 'output.entropy_mean' is null in this report "
        "(not measured in this run)"
    )


def test_non_scalar_targets():
    assert eval_error("units.dormant>0.3") == (
        "--fail-on 'units.dormant>0.3': 'units.dormant' is an object, not a number or string; "
        "available: 0.025, 0.05"
    )
    assert eval_error("verdict.reasons==x") == (
        "--fail-on 'verdict.reasons==x': 'verdict.reasons' is a list (2 items), "
        "not a number or string; index it, e.g. verdict.reasons[0]"
    )
    assert eval_error("verdict.empty==x") == (
        "--fail-on 'verdict.empty==x': 'verdict.empty' is an empty list, not a number or string"
    )


def test_wrong_container_kind_on_the_way():
    assert eval_error("verdict.reasons.id==x") == (
        "--fail-on 'verdict.reasons.id==x': 'verdict.reasons' is a list (2 items), "
        "not an object; index it, e.g. verdict.reasons[0]"
    )
    assert eval_error("units.dormant[0]>0.3") == (
        "--fail-on 'units.dormant[0]>0.3': 'units.dormant' is an object, not a list; "
        "available: 0.025, 0.05"
    )
    assert eval_error("output.entropy_mean.x<1") == (
        "--fail-on 'output.entropy_mean.x<1': 'output.entropy_mean' is a number, "
        "not an object; it has no 'x'"
    )
    assert eval_error("verdict.label[0]==r") == (
        "--fail-on 'verdict.label[0]==r': 'verdict.label' is a string, not a list; it has no [0]"
    )


def test_number_gate_on_a_string_is_a_usage_error():
    assert eval_error("verdict.label==0.5") == (
        "--fail-on 'verdict.label==0.5': 'verdict.label' is a string ('rigid'), but the gate "
        "compares it with a number; use == or != with a word, e.g. verdict.label==rigid"
    )
    assert eval_error("verdict.label<0.5").startswith(
        "--fail-on 'verdict.label<0.5': 'verdict.label' is a string ('rigid')"
    )


def test_string_gate_on_a_number_or_boolean_is_a_usage_error():
    assert eval_error("output.entropy_mean==low") == (
        "--fail-on 'output.entropy_mean==low': 'output.entropy_mean' is a number (0.0241), "
        "but the gate compares it with the string 'low'; use a number"
    )
    assert eval_error("verdict.flags.collapsed=='yes'") == (
        "--fail-on \"verdict.flags.collapsed=='yes'\": 'verdict.flags.collapsed' is a boolean "
        "(true), but the gate compares it with the string 'yes'; use a number"
    )


def test_first_bad_gate_raises_even_after_good_ones():
    gates = [parse_gate("output.entropy_mean<0.18"), parse_gate("output.nope<1")]
    message = usage_error(evaluate, gates, REPORT)
    assert message.startswith("--fail-on 'output.nope<1': 'nope' not found under 'output'")


# --------------------------------------------------------------------------------------------
# describe / format_path


def test_describe_tripped_and_passed():
    tripped, passed = evaluate(
        [parse_gate("output.entropy_mean<0.18"), parse_gate(" output.entropy_mean > 0.18 ")],
        REPORT,
    )
    assert describe(tripped) == "gate tripped: output.entropy_mean<0.18 (actual 0.0241)"
    assert describe(passed) == "gate passed: output.entropy_mean > 0.18 (actual 0.0241)"


@pytest.mark.parametrize(
    ("actual", "shown"),
    [
        (0.024137, "0.02414"),
        (1234.5678, "1235"),
        (123456.7, "1.235e+05"),
        (1e-7, "1e-07"),
        (0.0, "0"),
        (12345, "12345"),
        ("rigid", "'rigid'"),
        (None, "null"),
    ],
)
def test_describe_formats_actual_values(actual, shown):
    result = GateResult(gate=parse_gate("a<1"), actual=actual, tripped=False)
    assert describe(result) == f"gate passed: a<1 (actual {shown})"


def test_format_path_round_trips():
    for text in [
        "a",
        "a.b_c",
        "a[0][-1]",
        f'weights.tensors["{TENSOR}"].rel_drift',
        'units.dormant["0.025"]',
        'x["with space"]',
        "x['say \"hi\"']",
    ]:
        path = parse_gate(f"{text}<1").path
        assert format_path(path) == text
        assert parse_gate(f"{format_path(path)}<1").path == path
