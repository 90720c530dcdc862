"""The scorers a user picks in spec.task.scorer: the built-in ones, the user's own function,
the checks that stop a bad one before training, and `kubetune eval --scorer`."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from kubetune.api.tasks import SCORERS
from kubetune.api.v1alpha1 import TaskSpec
from kubetune_trainer.evaluation.scoring import score_predictions
from kubetune_trainer.tasks.scorers import ScorerError, UserScorer, headline, load_entry_point

pytestmark = pytest.mark.unit


def scored(scorer: dict, predictions: list[str], answers: list[str], task: str = "chat"):
    references = [{"completion": answer} for answer in answers]
    return score_predictions(task, predictions, references, scorer=scorer)


def test_exact_match_is_the_default_and_normalises_whitespace():
    metrics, _ = score_predictions(
        "chat", ["Paris ", "Lyon"], [{"completion": "Paris"}, {"completion": "Paris"}]
    )
    assert metrics == {"exact_match": 0.5}


def test_regex_compares_what_the_pattern_extracts():
    scorer = {"kind": "regex", "pattern": r"^(\w+)\("}
    metrics, details = scored(
        scorer,
        ["inform(name[Halo])", "request(name[X])", "no function here"],
        ["inform(name[Doom])", "inform(name[X])", "inform(name[X])"],
    )
    assert [d["regex_match"] for d in details] == [True, False, False]
    assert metrics == {"regex_match": pytest.approx(1 / 3), "extracted_rate": pytest.approx(2 / 3)}


def test_json_fields_compares_only_the_named_fields():
    scorer = {"kind": "json_fields", "fields": ["city", "days"]}
    answer = json.dumps({"city": "Oslo", "days": 3, "note": "x"})
    metrics, details = scored(
        scorer,
        ['{"city": "Oslo", "days": 3, "note": "other"}', '{"city": "Oslo", "days": 4}', "Oslo"],
        [answer] * 3,
    )
    assert [d["json_fields_match"] for d in details] == [True, False, False]
    assert metrics["json_valid_rate"] == pytest.approx(2 / 3)
    with pytest.raises(ScorerError, match="reference answer is not a JSON object"):
        scored(scorer, ["{}"], ["not json"])


def test_numeric_takes_the_last_number_within_the_tolerance():
    scorer = {"kind": "numeric", "tolerance": 0.01}
    _, details = scored(
        scorer,
        ["so it is 1,234.005", "about 12", "no idea"],
        ["#### 1234", "12.5", "3"],
    )
    assert [d["numeric_match"] for d in details] == [True, False, False]
    assert [d["parsed_rate"] for d in details] == [True, True, False]


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    """A user's scorer module on the import path, as one baked into the trainer image."""
    (tmp_path / "my_scorers.py").write_text(
        textwrap.dedent(
            """
            def first_word(prediction, reference):
                same = prediction.split()[:1] == reference["completion"].split()[:1]
                return {"first_word": same, "length": len(prediction)}

            def wrong_arguments(prediction):
                return {}

            def returns_text(prediction, reference):
                return "good"

            def fails(prediction, reference):
                raise KeyError("label")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_a_user_function_scores_and_its_first_metric_is_the_headline(user_module):
    scorer = {"kind": "python", "entryPoint": "my_scorers:first_word"}
    metrics, details = scored(scorer, ["Paris is", "Rome"], ["Paris", "Paris"])
    assert metrics == {"first_word": 0.5, "length": 6.0}
    assert details[0] == {"id": 0, "first_word": True, "length": 8}
    assert headline("chat", scorer, metrics) == "first_word"
    assert headline("chat", {"kind": "regex", "pattern": "x"}, {}) == "regex_match"
    assert headline("sql", None, {}) == "execution_accuracy"


@pytest.mark.parametrize(
    ("entry_point", "message"),
    [
        ("no_such_module:score", "cannot import no_such_module: ModuleNotFoundError"),
        ("my_scorers:missing", "module my_scorers has no function missing"),
        ("my_scorers:wrong_arguments", r"must take \(prediction: str, reference: dict\)"),
    ],
)
def test_an_entry_point_that_cannot_work_is_refused_when_loaded(user_module, entry_point, message):
    with pytest.raises(ScorerError, match=message) as error:
        load_entry_point(entry_point)
    assert "task.scorer.entryPoint" in str(error.value)


@pytest.mark.parametrize(
    ("name", "message"),
    [("returns_text", "must return a non-empty dict"), ("fails", "raised KeyError")],
)
def test_a_user_function_that_misbehaves_is_a_scorer_error(user_module, name, message):
    with pytest.raises(ScorerError, match=message):
        scored({"kind": "python", "entryPoint": f"my_scorers:{name}"}, ["a"], ["a"])


def test_the_spec_takes_each_scorer_with_exactly_its_option():
    options = {"pattern": "(\\d+)", "fields": ["a"], "entryPoint": "m:f", "tolerance": 0.5}
    for kind, info in SCORERS.items():
        wanted = {info.option: options[info.option]} if info.option else {}
        spec = TaskSpec.model_validate({"preset": "chat", "scorer": {"kind": kind, **wanted}})
        assert spec.scorer is not None and UserScorer(spec.scorer.to_wire()).kind == kind
    bad = [
        ({"preset": "chat", "scorer": {"kind": "regex"}}, "scorer regex needs pattern"),
        ({"preset": "chat", "scorer": {"kind": "numeric", "fields": ["a"]}}, "needs fields"),
        ({"preset": "chat", "scorer": {"kind": "regex", "pattern": "("}}, "not a valid regular"),
        ({"preset": "chat", "scorer": {"kind": "python", "entryPoint": "a b"}}, "entryPoint"),
        ({"preset": "sql", "scorer": {"kind": "exact_match"}}, "only used with preset custom"),
        ({"preset": "chat", "scorer": {"kind": "exact_match", "tolerance": 1}}, "tolerance"),
    ]
    for doc, message in bad:
        with pytest.raises(ValueError, match=message):
            TaskSpec.model_validate(doc)


def test_kubetune_eval_takes_a_scorer(tmp_path):
    predictions = tmp_path / "p.jsonl"
    references = tmp_path / "r.jsonl"
    predictions.write_text('{"prediction": "42 apples"}\n{"prediction": "7"}\n')
    references.write_text('{"completion": "#### 42"}\n{"completion": "#### 8"}\n')
    base = [sys.executable, "-m", "kubetune.cli", "eval", "--task", "custom"]
    files = ["--predictions", str(predictions), "--references", str(references)]
    result = subprocess.run(
        [*base, *files, "--scorer", '{"kind": "numeric"}', "--output", str(tmp_path / "m.json")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert " *numeric_match  0.5000" in result.stdout
    assert json.loads((tmp_path / "m.json").read_text())["metrics"]["parsed_rate"] == 1.0
    refused = subprocess.run(
        [*base, *files, "--scorer", '{"kind": "regex"}'], capture_output=True, text=True
    )
    assert refused.returncode == 1 and "scorer regex needs pattern" in refused.stderr
