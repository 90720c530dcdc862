"""GSM8k answer extraction: the `####` convention, its fallback, --strict, real data."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from kubetune_trainer.evaluation import InvalidReference
from kubetune_trainer.evaluation.gsm8k import (
    aggregate,
    extract_answer,
    format_number,
    gold_answer,
    score_example,
)

pytestmark = pytest.mark.unit

DATASETS = Path(__file__).resolve().parents[3].parent / "shared" / "datasets"
GOLD = "She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18"


@pytest.mark.parametrize(
    ("output", "number"),
    [
        ("#### 18", "18"),
        ("####18", "18"),
        ("#### 1,080", "1080"),
        ("#### $1,080.00", "1080"),
        ("#### -5", "-5"),
        ("#### \u22125", "-5"),
        ("#### $-3", "-3"),
        ("#### -$3", "-3"),
        ("#### +7", "7"),
        ("#### 0.5", "0.5"),
        ("#### .5", "0.5"),
        ("#### 18 dollars", "18"),
        ("#### 18.", "18"),
        ("#### 18</s>", "18"),
        ("#### 18<|endoftext|>#### 99", "18"),
        ("####\n 42\n\nQuestion: how many is 7?", "42"),
        ("#### 50%", "50"),
        ("#### 1,000,000", "1000000"),
        ("#### 12,5", "12"),
        ("#### The answer is 18", "18"),
        ("step 1: 3+4=7\n#### 7\n#### 8", "7"),
        ("#### no number here\n#### 9", "9"),
        ("#### 0", "0"),
        ("#### -0", "0"),
    ],
)
def test_number_after_the_marker(output, number):
    value, fallback = extract_answer(output)
    assert value is not None and format_number(value) == number
    assert fallback is False


def test_marker_without_any_number_gives_no_answer():
    assert extract_answer("#### I am not sure") == (None, False)


@pytest.mark.parametrize(
    ("output", "number"),
    [
        ("She has 16 - 3 - 4 = 9 eggs left.", "9"),
        ("So the answer is $1,234.", "1234"),
        ("The total is 18-3", "3"),
        ("It drops to -4 degrees", "-4"),
        ("version2 and 5th place", "5"),
    ],
)
def test_fallback_takes_the_last_number(output, number):
    value, fallback = extract_answer(output)
    assert value is not None and format_number(value) == number
    assert fallback is True


def test_fallback_without_any_number():
    assert extract_answer("no idea") == (None, True)


def test_numbers_compare_numerically():
    assert score_example("#### 18.00", GOLD)["correct"]
    assert score_example("#### 018", GOLD)["correct"]
    assert not score_example("#### 18.01", GOLD)["correct"]
    assert not score_example("#### -18", GOLD)["correct"]


def test_thousands_separators_in_the_gold_answer():
    assert score_example("#### 1080", "so\n#### 1,080")["correct"]


def test_fallback_counts_unless_strict():
    lenient = score_example("The answer is 18.", GOLD)
    strict = score_example("The answer is 18.", GOLD, strict=True)
    assert lenient == {"extracted": "18", "gold": "18", "correct": True, "fallback": True}
    assert strict == {"extracted": "18", "gold": "18", "correct": False, "fallback": True}


def test_strict_does_not_affect_marked_answers():
    assert score_example("#### 18", GOLD, strict=True)["correct"]


def test_no_answer_is_wrong():
    result = score_example("####", GOLD)
    assert result == {"extracted": None, "gold": "18", "correct": False, "fallback": False}


def test_gold_answer_may_be_a_bare_number():
    assert gold_answer(" 1,080 ") == Decimal("1080")


def test_gold_answer_without_a_number_is_invalid():
    with pytest.raises(InvalidReference):
        score_example("#### 1", "no final answer")


def test_aggregate():
    details = [
        score_example("#### 18", GOLD),
        score_example("18", GOLD),
        score_example("####", GOLD),
        score_example("#### 3", GOLD),
    ]
    metrics = aggregate(details)
    assert metrics == {"accuracy": 0.5, "fallback_rate": 0.25, "no_answer_rate": 0.25}


def test_gold_against_gold_on_the_whole_test_split():
    path = DATASETS / "gsm8k" / "test.jsonl"
    assert path.exists(), f"missing shared dataset {path}"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 1319
    details = [score_example(row["answer"], row["answer"], strict=True) for row in rows]
    assert aggregate(details)["accuracy"] == 1.0
    assert not any(detail["fallback"] for detail in details)
