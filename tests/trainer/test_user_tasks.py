"""A chat task and a custom task with the user's own scorer, each trained, evaluated and scored
end to end by `kubetune run` in its own process, as a user runs it; and a scorer that cannot
work stops the run before any training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.trainer.conftest import read_jsonl
from tests.trainer.data.test_chat import viggo_chats

pytestmark = pytest.mark.trainer

USER_SCORER = '''
import re

def final_answer(prediction, reference):
    """GSM8k: the number after '####' (else the last number) against the reference's."""
    def number(text):
        found = re.findall(r"-?\\d[\\d,]*\\.?\\d*", text.split("####")[-1])
        return found[-1].replace(",", "").rstrip(".") if found else None
    predicted = number(prediction)
    return {"answer_match": predicted is not None and predicted == number(reference["answer"]),
            "has_number": predicted is not None}
'''


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def manifest(tmp_path: Path, name: str, task: dict, data: dict) -> Path:
    doc = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "builtin:tiny-llama"},
            "task": task,
            "data": data,
            "training": {
                "epochs": 1,
                "learningRate": 2.0e-3,
                "batchSizePerDevice": 8,
                "contextLength": 512,
                "precision": "fp32",
                "gradientCheckpointing": False,
                "deepspeed": {"enabled": False, "offloadOptimizer": False},
            },
            "evaluation": {"maxSamples": 6, "batchSize": 2, "maxNewTokens": 16},
            "compute": {"workers": 2},
            "output": {"storageURI": str(tmp_path / "checkpoints")},
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def kubetune_run(path: Path, output: Path, pythonpath: Path | None = None):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    if pythonpath is not None:  # the user's module, as if installed in the trainer image
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-m", "kubetune.cli", "run", "-f", str(path), "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    status_file = output / "status.json"
    status = json.loads(status_file.read_text()) if status_file.exists() else {}
    return result, status


def predictions(output: Path, model: str = "checkpoint") -> list[dict]:
    return read_jsonl(output / f"predictions-{model}.jsonl")


def test_a_chat_task_is_trained_and_scored_with_a_regex_scorer(tmp_path, datasets_dir):
    viggo = datasets_dir / "viggo"
    train = viggo_chats(read_jsonl(viggo / "viggo-train.jsonl", limit=240), 3)
    test = viggo_chats(read_jsonl(viggo / "viggo-test.jsonl", limit=12), 2)
    data = {
        "train": {"uri": write_jsonl(tmp_path / "train.jsonl", train)},
        "test": {"uri": write_jsonl(tmp_path / "test.jsonl", test)},
    }
    # The dialogue act (inform, request, ...) of the last answer: what the regex extracts.
    task = {"preset": "chat", "scorer": {"kind": "regex", "pattern": r"^\s*(\w+)\("}}
    output = tmp_path / "out"
    path = manifest(tmp_path, "chat", task, data)
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["evaluation"].update(baseline=True, fewShotExamples=2)
    path.write_text(yaml.safe_dump(doc))
    result, status = kubetune_run(path, output)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert status["phase"] == "Succeeded"
    ev = status["evaluation"]
    assert ev["task"] == "chat" and ev["samples"] == 6 and ev["primaryMetric"] == "regex_match"
    assert {"regex_match", "extracted_rate", "stop_token_rate"} <= set(ev["metrics"])
    assert ev["score"] == ev["metrics"]["regex_match"]
    rows = predictions(output)
    # Each row is scored on the last assistant turn, generated from the turns before it.
    assert [row["reference"] for row in rows] == [chat["messages"][-1]["content"] for chat in test]
    assert all(row["prompt"].endswith("<|assistant|>") for row in rows)
    assert all(set(row["verdict"]) == {"id", "regex_match", "extracted_rate"} for row in rows)
    assert ev["metrics"]["regex_match"] == pytest.approx(
        sum(row["verdict"]["regex_match"] for row in rows) / 6
    )
    # The base model is asked in the chat template too: two worked conversations' turns (not
    # their system lines) before the row's own, its answer ended by the template's end of turn.
    assert set(ev["baseline"]) == set(ev["metrics"]) and set(ev["gain"]) == set(ev["metrics"])
    asked = predictions(output, "baseline")
    assert len(asked) == 6
    for row, chat in zip(asked, test, strict=True):
        prompt, turns = row["prompt"], chat["messages"]
        assert prompt.count("<|system|>") == 1 and prompt.endswith("<|assistant|>")
        # 2 examples x 3 exchanges, then the row's own 2 user turns and 1 earlier answer
        assert (prompt.count("<|user|>"), prompt.count("<|assistant|>")) == (8, 8), prompt
        assert prompt.endswith(
            "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in turns[1:-1]) + "<|assistant|>"
        )
        assert row["reference"] == turns[-1]["content"]


def gsm8k_data(tmp_path: Path, datasets_dir: Path) -> dict:
    return {
        "train": {"uri": str(datasets_dir / "gsm8k" / "train.jsonl")},
        "test": {"uri": str(datasets_dir / "gsm8k" / "test.jsonl")},
        "maxSamples": 160,
    }


def custom_task(entry_point: str) -> dict:
    return {
        "preset": "custom",
        "promptTemplate": "Question: {question}\nAnswer: ",
        "completionTemplate": "{answer}",
        "scorer": {"kind": "python", "entryPoint": entry_point},
    }


def test_a_custom_task_is_scored_by_the_users_function(tmp_path, datasets_dir):
    modules = tmp_path / "site"
    modules.mkdir()
    (modules / "gsm_scorer.py").write_text(textwrap.dedent(USER_SCORER))
    path = manifest(
        tmp_path,
        "custom",
        custom_task("gsm_scorer:final_answer"),
        gsm8k_data(tmp_path, datasets_dir),
    )
    output = tmp_path / "out"
    result, status = kubetune_run(path, output, pythonpath=modules)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    ev = status["evaluation"]
    assert ev["task"] == "custom" and ev["primaryMetric"] == "answer_match"
    assert list(ev["metrics"])[:2] == ["answer_match", "has_number"]
    rows = predictions(output)
    assert len(rows) == 6
    assert all(set(row["verdict"]) == {"id", "answer_match", "has_number"} for row in rows)
    assert ev["metrics"]["has_number"] == pytest.approx(
        sum(row["verdict"]["has_number"] for row in rows) / 6
    )


def test_a_scorer_that_cannot_be_imported_stops_the_run_before_training(tmp_path, datasets_dir):
    path = manifest(
        tmp_path, "bad", custom_task("gsm_scorer:final_answer"), gsm8k_data(tmp_path, datasets_dir)
    )
    output = tmp_path / "out"
    result, status = kubetune_run(path, output)  # the module is not on the path
    assert result.returncode != 0
    assert status["phase"] == "Failed"
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "ScorerError"
    assert (
        "task.scorer.entryPoint 'gsm_scorer:final_answer': cannot import gsm_scorer"
        in (failed["message"])
    )
    assert not status.get("epochs") and not (tmp_path / "checkpoints").exists()
