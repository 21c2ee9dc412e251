"""ops/answers.py (final-answer extraction and checking) and ops/passk.py (pass@k, readiness)
against hand-made cases with known outcomes and a brute-force enumeration."""

from __future__ import annotations

import itertools
import re
from fractions import Fraction
from math import comb

import pytest

from rejuv_cli.ops.answers import extract_answer, grade, is_correct, normalise, parse_number
from rejuv_cli.ops.passk import group_summary, pass_at_k

# --- extraction ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, numeric, expected",
    [
        ("Total: 18 + 48 = 66 dollars.\nAnswer: 66", True, "66"),
        ("answer: 12\nQuestion: next?\nAnswer: 99", True, "12"),  # the first one
        ("Final Answer: $1,234.", True, "$1,234."),  # kept as written; is_correct parses it
        ("Answer: 66 apples", True, "66"),  # not a bare number: its last number
        ("Answer: 12 + 54 = 66", True, "66"),
        ("Answer:\n\n  42\nmore", True, "42"),  # nothing after it: the next non-empty line
        ("Answer: sixty-six", True, "sixty-six"),  # no number on the line: the line (wrong)
        ("Answer:", True, None),
        ("Answer:   \n  \n", True, None),
        ("27+5=32", True, "32"),  # no Answer: the last number
        ("32-5=27 so 27-5", True, "5"),  # `-` after a digit is subtraction, not a sign
        ("it is -3.5, not 2", True, "2"),
        ("it is -3.5.", True, "-3.5"),
        ("we owe \u22127 now", True, "\u22127"),  # U+2212 minus
        ("costs $1,234,567 in all", True, "$1,234,567"),
        ("list 1,2,3", True, "3"),  # not a thousands group
        ("version v2 and x3", True, None),  # digits inside words are not numbers
        ("no digits at all", True, None),
        ("", True, None),
        ("The capital is\nParis\n\n", False, "Paris"),  # text reference: the last line
        ("   \n", False, None),
        ("Answer: Paris. Next question", False, "Paris. Next question"),
    ],
)
def test_extract_answer(text, numeric, expected):
    assert extract_answer(text, numeric=numeric) == expected


@pytest.mark.parametrize(
    "text, value",
    [
        ("66", 66.0),
        ("66.0", 66.0),
        ("66.", 66.0),
        ("$66", 66.0),
        ("1,234", 1234.0),
        ("$1,234.50", 1234.5),
        ("-.5", -0.5),
        ("\u22127", -7.0),
        ("+3", 3.0),
        ("50%", 50.0),
        ("**42**", 42.0),
        ("(7)", 7.0),
        ("1,23", None),
        ("12 apples", None),
        ("1.2.3", None),
        ("-", None),
        ("$", None),
        ("", None),
        ("inf", None),
        ("1e5", None),
    ],
)
def test_parse_number(text, value):
    assert parse_number(text) == value


def test_normalise():
    assert normalise("  **(B).**  ") == "b"
    assert normalise("New\t  York\nCity.") == "new york city"
    assert normalise("\uff21\uff22") == "ab"  # NFKC: full-width letters
    assert normalise("Stra\u00dfe") == normalise("STRASSE")  # case-folded, not lower-cased
    assert normalise("C++") == "c++"  # symbols inside or at the end are kept


# --- checking -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "predicted, reference, ok",
    [
        ("66", "66.0", True),
        ("66.0", "66", True),
        ("$1,234", "1234", True),
        ("1234.0000001", "1234", True),  # within 1e-6 relative
        ("1234.01", "1234", False),
        ("0.0000001", "0", True),  # tolerance is absolute below |ref| = 1
        ("0.00001", "0", False),
        ("-5", "5", False),
        ("65", "66", False),
        (None, "66", False),  # no answer is wrong
        ("Paris", "paris", True),
        ('"Paris."', "Paris", True),
        ("New  York", "new york", True),
        ("Paris, France", "Paris", False),
        ("66 apples", "66", False),  # extract_answer would have taken the number out
        ("sixty-six", "66", False),
    ],
)
def test_is_correct(predicted, reference, ok):
    assert is_correct(predicted, reference) is ok


def test_grade_end_to_end():
    response = "Cost: 2 * 11 = 22 dollars.\nChange: 50 - 22 = 28 dollars.\nAnswer: 28"
    assert grade(response, "28") == ("28", True)
    assert grade("Answer: 66", "66.0") == ("66", True)
    assert grade("So the total is 1,234 dollars.", "1234") == ("1,234", True)
    assert grade("The total is 12.", "13") == ("12", False)
    assert grade("I am not sure.", "13") == (None, False)  # numeric reference, no number
    assert grade("I think it is\nParis", "Paris") == ("Paris", True)
    assert grade("Answer: (B)", "B") == ("(B)", True)
    assert grade("", "Paris") == (None, False)


def _toy_reward(total: int, response: str) -> float:
    """bench/handoff/task.py `reward`, copied (tests/ never imports bench/): 1.0 when the last
    number of the response is the total."""
    match = re.search(r"(\d+)$", response.strip())
    return float(match is not None and int(match.group(1)) == total)


@pytest.mark.parametrize(
    "response",
    ["27+5=32", "27+5=31", "32", "27+5=", "", "3+2=5\n27+5=32", "27+5=32 ", "27+5=032"],
)
def test_toy_task_reward_agrees(response):
    # The toy task's prompt 23+4+5= has total 32; its responses are digits, + and = only.
    assert grade(response, "32")[1] == bool(_toy_reward(32, response))


def test_toy_task_reward_differs_after_the_last_number():
    # The one known difference: text after the last number. The toy reward wants the number at
    # the very end; the general rule takes the last number anywhere ("... 32 dollars.").
    assert _toy_reward(32, "27+5=32+") == 0.0
    assert grade("27+5=32+", "32") == ("32", True)


# --- pass@k -------------------------------------------------------------------------------


def _brute_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """Share of the k-subsets of n samples (c of them correct) that hold a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(samples[i] for i in s) for s in subsets), len(subsets))


def test_pass_at_k_matches_enumeration():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(float(_brute_pass_at_k(n, c, k)),
                                                           abs=1e-12), (n, c, k)  # fmt: skip


def test_pass_at_k_large_n_is_stable():
    # Exact value from integer binomials; the product form keeps full precision at n = 2000.
    n, c, k = 2000, 3, 100
    exact = 1 - Fraction(comb(n - c, k), comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)
    assert pass_at_k(n, 0, k) == 0.0
    assert pass_at_k(n, n - k + 1, k) == 1.0


@pytest.mark.parametrize("n, c, k", [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError, match="pass_at_k needs"):
        pass_at_k(n, c, k)


def test_group_summary_known_counts():
    # Four prompts, k = 4 samples each: all wrong, one right, three right, all right.
    s = group_summary([0, 1, 3, 4], k=4)
    assert s == {
        "prompts": 4,
        "k": 4,
        "pass_at_1": (0 + 0.25 + 0.75 + 1) / 4,
        "pass_at_k": 0.75,  # three of four prompts have a success
        "learnable_share": 0.5,  # c = 1 and c = 3: nonzero GRPO advantage
        "all_wrong_share": 0.25,
        "all_right_share": 0.25,
    }
    # The three classes partition the prompts; pass@1 is the mean of the estimator at k = 1.
    assert s["learnable_share"] + s["all_wrong_share"] + s["all_right_share"] == 1.0
    assert s["pass_at_1"] == sum(pass_at_k(4, c, 1) for c in [0, 1, 3, 4]) / 4


def test_group_summary_edges():
    assert group_summary([1, 0, 1], k=1) == {
        "prompts": 3, "k": 1, "pass_at_1": 2 / 3, "pass_at_k": 2 / 3,
        "learnable_share": 0.0, "all_wrong_share": 1 / 3, "all_right_share": 2 / 3,
    }  # fmt: skip
    empty = group_summary([], k=8)
    assert empty["prompts"] == 0 and empty["pass_at_1"] is None and empty["learnable_share"] is None
    with pytest.raises(ValueError, match=r"0\.\.4"):
        group_summary([5], k=4)
    with pytest.raises(ValueError, match="k must be"):
        group_summary([0], k=0)
