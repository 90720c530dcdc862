"""`kubetune eval` exactly as a user runs it: the console script, files in, files out."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]
DATASETS = REPO.parent / "shared" / "datasets"
SCRIPT = Path(sys.executable).parent / "kubetune"


def kubetune(*args: object) -> subprocess.CompletedProcess[str]:
    command = [str(SCRIPT)] if SCRIPT.exists() else [shutil.which("kubetune") or "kubetune"]
    return subprocess.run(
        [*command, *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=300
    )


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_eval(tmp_path: Path, task: str, predictions: list, references: list, *extra: str):
    prediction_file = write_jsonl(tmp_path / "P.jsonl", predictions)
    reference_file = write_jsonl(tmp_path / "R.jsonl", references)
    metrics_file, details_file = tmp_path / "out" / "M.json", tmp_path / "out" / "D.jsonl"
    completed = kubetune(
        "eval",
        "--task",
        task,
        "--predictions",
        prediction_file,
        "--references",
        reference_file,
        "--output",
        metrics_file,
        "--details",
        details_file,
        *extra,
    )
    return completed, metrics_file, details_file


def assert_fractions(metrics: dict) -> None:
    assert metrics and all(0.0 <= value <= 1.0 for value in metrics.values()), metrics


MR = "inform(name[Tetris], rating[excellent], platforms[PC, Game Boy])"


# ----------------------------------------------------------------------------- viggo


def test_viggo_end_to_end_matched_by_id(tmp_path):
    references = [
        {"id": "a", "meaning_representation": MR, "target": "..."},
        {"id": "b", "meaning_representation": "request_attribute(has_mac_release[])"},
    ]
    predictions = [  # in another order: matched by id
        {"id": "b", "prediction": "request_attribute(has_mac_release[])</s>"},
        {"id": "a", "prediction": "inform(rating[excellent], name[Tetris], platforms[PC])"},
    ]
    completed, metrics_file, details_file = run_eval(tmp_path, "viggo", predictions, references)
    assert completed.returncode == 0, completed.stderr
    report = json.loads(metrics_file.read_text())
    assert report["task"] == "viggo" and report["samples"] == 2
    metrics = report["metrics"]
    assert_fractions(metrics)
    assert metrics["function_accuracy"] == 1.0
    assert metrics["attribute_accuracy"] == 1.0
    assert metrics["attribute_order_accuracy"] == 0.5
    assert metrics["exact_match"] == 0.5
    details = read_jsonl(details_file)
    assert [row["id"] for row in details] == ["a", "b"]
    assert details[0]["function_correct"] is True
    assert details[0]["attributes_order_correct"] is False
    assert details[0]["breaks_precedence"] is True
    assert details[1]["exact_match"] is True
    assert "exact_match" in completed.stdout and "0.5000" in completed.stdout


def test_matching_by_line_order_when_ids_are_missing(tmp_path):
    references = [{"meaning_representation": MR}, {"meaning_representation": "inform()"}]
    predictions = [{"prediction": MR}, {"prediction": "garbage"}]
    completed, metrics_file, details_file = run_eval(tmp_path, "viggo", predictions, references)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(metrics_file.read_text())["metrics"]["exact_match"] == 0.5
    assert [row["id"] for row in read_jsonl(details_file)] == [0, 1]


def test_ids_on_one_side_only_fall_back_to_line_order(tmp_path):
    references = [{"id": 7, "meaning_representation": MR}]
    predictions = [{"prediction": MR}]
    completed, _, details_file = run_eval(tmp_path, "viggo", predictions, references)
    assert completed.returncode == 0, completed.stderr
    assert read_jsonl(details_file)[0]["id"] == 7


# ----------------------------------------------------------------------------- gsm8k


def test_gsm8k_strict_and_lenient(tmp_path):
    references = [
        {"id": i, "question": "q", "answer": f"work\n#### {n}"}
        for i, n in enumerate(["18", "1,080", "-3"])
    ]
    predictions = [
        {"id": 0, "prediction": "so #### 18</s>"},
        {"id": 1, "prediction": "The answer is $1,080."},
        {"id": 2, "prediction": "#### 3"},
    ]
    lenient, metrics_file, details_file = run_eval(tmp_path, "gsm8k", predictions, references)
    assert lenient.returncode == 0, lenient.stderr
    report = json.loads(metrics_file.read_text())
    assert report["strict"] is False
    assert report["metrics"]["accuracy"] == pytest.approx(2 / 3)
    details = read_jsonl(details_file)
    assert details[1] == {
        "id": 1,
        "extracted": "1080",
        "gold": "1080",
        "correct": True,
        "fallback": True,
    }
    assert details[2]["extracted"] == "3" and details[2]["correct"] is False

    strict, metrics_file, details_file = run_eval(
        tmp_path, "gsm8k", predictions, references, "--strict"
    )
    assert strict.returncode == 0, strict.stderr
    report = json.loads(metrics_file.read_text())
    assert report["strict"] is True
    assert report["metrics"]["accuracy"] == pytest.approx(1 / 3)
    assert read_jsonl(details_file)[1]["correct"] is False


# ----------------------------------------------------------------------------- sql


def test_sql_statuses_and_metrics(tmp_path):
    context = "CREATE TABLE head (name VARCHAR, age INTEGER)"
    gold = "SELECT name FROM head WHERE age > 56"
    references = [
        {"id": "ok", "question": "?", "context": context, "answer": gold},
        {"id": "near", "context": context, "answer": f"[SQL] {gold} [/SQL]"},
        {"id": "broken", "context": context, "answer": gold},
        {"id": "impossible", "context": context, "answer": "SELECT name FROM head WHERE 1 = 0"},
    ]
    predictions = [
        {"id": "ok", "prediction": f"<SQL>{gold.lower()}</SQL>"},
        {"id": "near", "prediction": "SELECT name FROM head WHERE age >= 56"},
        {"id": "broken", "prediction": "SELEKT name"},
        {"id": "impossible", "prediction": "SELECT name FROM head"},
    ]
    completed, metrics_file, details_file = run_eval(tmp_path, "sql", predictions, references)
    assert completed.returncode == 0, completed.stderr
    report = json.loads(metrics_file.read_text())
    metrics = report["metrics"]
    assert_fractions(metrics)
    assert metrics["scorable"] == 0.75
    assert metrics["execution_accuracy"] == pytest.approx(1 / 3)
    assert set(metrics) == {
        "execution_accuracy",
        "scorable",
        "wrong_result_rate",
        "prediction_error_rate",
    }
    assert report["counts"]["unscorable"] == 1
    statuses = {row["id"]: row["status"] for row in read_jsonl(details_file)}
    assert statuses == {
        "ok": "correct",
        "near": "wrong_result",
        "broken": "prediction_error",
        "impossible": "unscorable",
    }


def test_sql_real_rows_through_the_cli_in_parallel(tmp_path):
    rows = [
        json.loads(line)
        for line in (DATASETS / "sql-create-context" / "heldout.jsonl")
        .read_text()
        .splitlines()[:240]
    ]
    predictions = [{"id": row["row"], "prediction": row["answer"]} for row in rows]
    references = [{"id": row["row"], **row} for row in rows]
    one, _, details_one = run_eval(tmp_path, "sql", predictions, references, "--workers", "1")
    assert one.returncode == 0, one.stderr
    first_details = details_one.read_text()
    two, metrics_two, details_two = run_eval(
        tmp_path, "sql", predictions, references, "--workers", "2"
    )
    assert two.returncode == 0, two.stderr
    assert details_two.read_text() == first_details  # deterministic, whatever the workers
    metrics = json.loads(metrics_two.read_text())["metrics"]
    assert metrics["execution_accuracy"] == 1.0
    assert metrics["scorable"] >= 0.9


# ----------------------------------------------------------------------------- errors


def eval_files(task, predictions, references, *extra):
    return kubetune(
        "eval", "--task", task, "--predictions", predictions, "--references", references, *extra
    )


def error_of(tmp_path, task, predictions_text, references_text, *extra):
    (tmp_path / "P.jsonl").write_text(predictions_text, encoding="utf-8")
    (tmp_path / "R.jsonl").write_text(references_text, encoding="utf-8")
    completed = eval_files(task, tmp_path / "P.jsonl", tmp_path / "R.jsonl", *extra)
    assert completed.returncode == 1, (completed.stdout, completed.stderr)
    return completed.stderr


REF = json.dumps({"answer": "#### 1"}) + "\n"
PRED = json.dumps({"prediction": "#### 1"}) + "\n"


def test_invalid_json_names_file_and_line(tmp_path):
    stderr = error_of(tmp_path, "gsm8k", PRED + PRED + "{not json\n", REF * 3)
    assert "P.jsonl:3: invalid JSON" in stderr


def test_non_object_row_names_file_and_line(tmp_path):
    stderr = error_of(tmp_path, "gsm8k", PRED, "\n[1, 2]\n")
    assert "R.jsonl:2: expected a JSON object, got an array" in stderr


def test_missing_field_names_file_and_line(tmp_path):
    stderr = error_of(tmp_path, "gsm8k", PRED + '{"text": "x"}\n', REF * 2)
    assert "P.jsonl:2: prediction row has no 'prediction' field" in stderr


def test_missing_reference_field_for_the_task(tmp_path):
    stderr = error_of(tmp_path, "sql", PRED, json.dumps({"answer": "SELECT 1"}) + "\n")
    assert "R.jsonl:1: sql reference row has no 'context' field" in stderr


def test_wrong_field_type(tmp_path):
    stderr = error_of(tmp_path, "gsm8k", '{"prediction": 18}\n', REF)
    assert "P.jsonl:1: 'prediction' must be a string, got a number" in stderr


def test_different_counts_without_ids(tmp_path):
    stderr = error_of(tmp_path, "gsm8k", PRED * 2, REF * 3)
    assert "has 2 rows but" in stderr and "has 3" in stderr


def test_duplicate_ids(tmp_path):
    predictions = '{"id": 1, "prediction": "a"}\n{"id": 1, "prediction": "b"}\n'
    references = '{"id": 1, "answer": "#### 1"}\n{"id": 2, "answer": "#### 2"}\n'
    stderr = error_of(tmp_path, "gsm8k", predictions, references)
    assert "P.jsonl:2: duplicate id 1 (first on line 1)" in stderr


def test_prediction_with_an_unknown_id(tmp_path):
    predictions = '{"id": 1, "prediction": "a"}\n{"id": 9, "prediction": "b"}\n'
    references = '{"id": 1, "answer": "#### 1"}\n{"id": 2, "answer": "#### 2"}\n'
    stderr = error_of(tmp_path, "gsm8k", predictions, references)
    assert "P.jsonl:2: id 9 is not in" in stderr


def test_reference_without_a_prediction(tmp_path):
    predictions = '{"id": 1, "prediction": "a"}\n'
    references = '{"id": 1, "answer": "#### 1"}\n{"id": 2, "answer": "#### 2"}\n'
    stderr = error_of(tmp_path, "gsm8k", predictions, references)
    assert "R.jsonl:2: no prediction with id 2" in stderr


def test_invalid_reference_content_names_the_line(tmp_path):
    references = json.dumps({"meaning_representation": "inform(name[x])"}) + "\n"
    references += json.dumps({"meaning_representation": "not an mr"}) + "\n"
    stderr = error_of(tmp_path, "viggo", PRED * 2, references)
    assert "R.jsonl:2: meaning_representation does not parse" in stderr


def test_empty_file(tmp_path):
    assert "P.jsonl: no rows" in error_of(tmp_path, "gsm8k", "\n\n", REF)


def test_missing_file(tmp_path):
    completed = eval_files("gsm8k", tmp_path / "nope.jsonl", tmp_path / "nope.jsonl")
    assert completed.returncode == 1
    assert "nope.jsonl: cannot read" in completed.stderr


def test_not_utf8(tmp_path):
    (tmp_path / "P.jsonl").write_bytes(PRED.encode() + b'{"prediction": "\xff"}\n')
    (tmp_path / "R.jsonl").write_text(REF * 2)
    completed = eval_files("gsm8k", tmp_path / "P.jsonl", tmp_path / "R.jsonl")
    assert completed.returncode == 1
    assert "P.jsonl:2: not UTF-8" in completed.stderr


def test_unknown_task_is_a_usage_error(tmp_path):
    completed = kubetune("eval", "--task", "mathqaa", "--predictions", "P", "--references", "R")
    assert completed.returncode == 2
    assert "invalid choice" in completed.stderr


def test_unicode_line_separator_inside_a_json_string_is_not_a_new_line(tmp_path):
    predictions = json.dumps({"prediction": "#### 1 \u2028 done"}, ensure_ascii=False) + "\n"
    metrics_file = tmp_path / "M.json"
    (tmp_path / "P.jsonl").write_text(predictions, encoding="utf-8")
    (tmp_path / "R.jsonl").write_text(REF, encoding="utf-8")
    completed = kubetune(
        "eval",
        "--task",
        "gsm8k",
        "--predictions",
        tmp_path / "P.jsonl",
        "--references",
        tmp_path / "R.jsonl",
        "--output",
        metrics_file,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(metrics_file.read_text())["metrics"]["accuracy"] == 1.0


def test_module_entry_point_works_too(tmp_path):
    write_jsonl(tmp_path / "P.jsonl", [{"prediction": "#### 4"}])
    write_jsonl(tmp_path / "R.jsonl", [{"answer": "#### 4"}])
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubetune.cli",
            "eval",
            "--task",
            "gsm8k",
            "--predictions",
            str(tmp_path / "P.jsonl"),
            "--references",
            str(tmp_path / "R.jsonl"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "accuracy" in completed.stdout
