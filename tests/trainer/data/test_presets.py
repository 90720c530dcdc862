"""Presets on real rows from ../shared/datasets."""

from __future__ import annotations

import csv
import json

import pytest

from kubetune.api.tasks import QA_TOKENS
from kubetune_trainer.data.formatters import RowError, parse_options, strip_wrapping_quotes
from kubetune_trainer.data.presets import make_preset
from tests.trainer.conftest import read_jsonl

pytestmark = pytest.mark.unit


def test_gsm8k_question_to_reasoning_ending_in_answer(datasets_dir):
    row = read_jsonl(datasets_dir / "gsm8k" / "test.jsonl", limit=1)[0]
    prompt, completion = make_preset("gsm8k")(row)
    assert prompt == f"<START_Q>{row['question']}<END_Q><START_A>"
    assert completion.endswith("#### 18<END_A>")
    assert make_preset("gsm8k").stop_token == "<END_A>"


def test_viggo_is_inverted_utterance_to_meaning_representation(datasets_dir):
    row = read_jsonl(datasets_dir / "viggo" / "viggo-validation.jsonl", limit=1)[0]
    prompt, completion = make_preset("viggo")(row)
    assert row["target"] in prompt and "give_opinion(" not in prompt
    assert completion == row["meaning_representation"] + "<END_A>"


def test_viggo_accepts_the_csv_field_names(datasets_dir):
    with (datasets_dir / "viggo" / "viggo-valid.csv").open(newline="") as handle:
        row = next(csv.DictReader(handle))
    prompt, completion = make_preset("viggo")(row)
    assert row["ref"] in prompt and completion.startswith("give_opinion(name[SpellForce 3]")


def test_sql_prompt_has_context_and_question(datasets_dir):
    row = read_jsonl(datasets_dir / "sql-create-context" / "train.jsonl", limit=1)[0]
    prompt, completion = make_preset("sql")(row)
    assert "CREATE TABLE head (age INTEGER)" in prompt and row["question"] in prompt
    assert completion == "SELECT COUNT(*) FROM head WHERE age > 56<END_A>"


def test_mathqa_strips_quotes_and_appends_the_letter(datasets_dir):
    row = json.loads((datasets_dir / "mathqa" / "dev.json").read_text())[0]
    prompt, completion = make_preset("mathqa")(row)
    assert "a) 24\nb) 120\nc) 625" in prompt
    assert not completion.startswith('"') and completion.endswith("\nAnswer: c<END_A>")


def test_mathqa_python_list_options_are_parsed(datasets_dir):
    rows = json.loads((datasets_dir / "mathqa" / "dev.json").read_text())
    listed = [r for r in rows if r["options"].startswith("[")]
    assert len(listed) == 115
    for row in listed:
        assert [letter for letter, _ in parse_options(row["options"])][:4] == ["a", "b", "c", "d"]


def test_parse_options_plain_and_list_forms():
    assert parse_options("a ) 129 , b ) 130 , c ) 1,000") == [
        ("a", "129"),
        ("b", "130"),
        ("c", "1,000"),
    ]
    assert parse_options("['a ) 4', 'b ) 4 π']") == [("a", "4"), ("b", "4 π")]


def test_strip_wrapping_quotes_only_removes_one_pair():
    assert strip_wrapping_quotes('"x = 1 "') == "x = 1"
    assert strip_wrapping_quotes('say "hi"') == 'say "hi"'


def test_custom_templates_render_row_fields():
    preset = make_preset(
        "custom", prompt_template="Q: {question}\nA:", completion_template=" {answer}"
    )
    assert preset({"question": "2+2?", "answer": 4}) == ("Q: 2+2?\nA:", " 4<END_A>")


def test_custom_template_missing_field_names_the_field():
    preset = make_preset("custom", prompt_template="Q: {questoin}", completion_template="{answer}")
    with pytest.raises(RowError, match="missing field questoin"):
        preset({"question": "x", "answer": "y"})


def test_missing_preset_field_is_a_row_error():
    with pytest.raises(RowError) as info:
        make_preset("gsm8k")({"question": "only a question"})
    assert info.value.reason == "missing field answer"


def test_custom_special_tokens_last_one_is_stop():
    preset = make_preset("gsm8k", special_tokens=["[Q]", "[/Q]", "[A]", "[/A]"])
    prompt, completion = preset({"question": "q", "answer": "r\n#### 1"})
    assert (prompt, completion, preset.stop_token) == ("[Q]q[/Q][A]", "r\n#### 1[/A]", "[/A]")
    assert make_preset("gsm8k").special_tokens == QA_TOKENS
