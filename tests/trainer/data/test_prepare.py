"""Data preparation: maxSamples, seeded validation split, bad rows counted with row numbers."""

from __future__ import annotations

import json

import pytest

from kubetune.api.v1alpha1 import DataSpec
from kubetune_trainer.data.prepare import prepare_data, split_validation
from kubetune_trainer.data.presets import make_preset

pytestmark = pytest.mark.unit


def write_bad_gsm8k(path, good_rows):
    lines = [json.dumps(r) for r in good_rows[:20]]
    lines[3] = '{"question": "broken'  # row 4: malformed JSON
    lines[6] = json.dumps({"question": "no answer here"})  # row 7: missing field
    lines[9] = json.dumps({"question": "long " * 400, "answer": "x\n#### 1"})  # row 10: too long
    path.write_text("\n".join(lines) + "\n")


def test_bad_rows_are_reported_with_row_numbers(tmp_path, tiny_tokenizer, gsm8k_rows):
    write_bad_gsm8k(tmp_path / "train.jsonl", gsm8k_rows)
    data = DataSpec(train={"uri": "train.jsonl"}, validation_fraction=0.2)
    prepared = prepare_data(
        data, make_preset("gsm8k"), tiny_tokenizer, context_length=256, seed=3, base_dir=tmp_path
    )
    train, validation = prepared.reports
    dropped: dict[str, list[int]] = {}
    for report in prepared.reports:
        for d in report.dropped:
            dropped.setdefault(d.reason, []).extend(d.examples)
    assert dropped["missing field answer"] == [7]
    too_long = dropped["longer than contextLength 256 tokens"]
    assert 10 in too_long
    assert any(
        reason.startswith("malformed JSON") and rows == [4] for reason, rows in dropped.items()
    )
    assert train.rows_read + validation.rows_read == 20
    assert len(prepared.train) + len(prepared.validation) == 20 - 2 - len(too_long)
    assert train.rows_used == len(prepared.train) and validation.split == "validation"


def test_split_is_seeded_and_disjoint():
    rows = [(i, {"i": i}) for i in range(1, 101)]
    train, val = split_validation(rows, 0.1, seed=5)
    assert len(val) == 10 and not {n for n, _ in train} & {n for n, _ in val}
    assert split_validation(rows, 0.1, seed=5) == (train, val)
    assert split_validation(rows, 0.1, seed=6)[1] != val


def test_max_samples_and_test_split(tiny_tokenizer, datasets_dir):
    data = DataSpec(
        train={"uri": str(datasets_dir / "gsm8k" / "train.jsonl")},
        test={"uri": str(datasets_dir / "gsm8k" / "test.jsonl")},
        max_samples=50,
    )
    prepared = prepare_data(
        data,
        make_preset("gsm8k"),
        tiny_tokenizer,
        context_length=512,
        seed=1,
        test_limit=5,
        stage="gsm8k",
    )
    assert prepared.reports[0].split == "gsm8k/train"
    assert len(prepared.train) + len(prepared.validation) == 50
    assert len(prepared.test) == 5 and prepared.test[0].completion.endswith("#### 18")
    test_report = prepared.reports[2]
    assert (test_report.rows_read, test_report.rows_used) == (1319, 5)
    assert test_report.dropped[0].reason == "beyond evaluation.maxSamples 5"
    assert test_report.dropped[0].count == 1314
