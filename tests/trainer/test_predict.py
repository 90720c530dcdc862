"""`kubetune predict` as a user runs it, chained into `kubetune eval`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.trainer

KUBETUNE = [sys.executable, "-m", "kubetune.cli"]


def kubetune(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KUBETUNE, *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_predict_then_eval(tiny_model_dir: Path, datasets_dir: Path, tmp_path: Path):
    test_file = datasets_dir / "gsm8k" / "test.jsonl"
    references = tmp_path / "references.jsonl"
    references.write_text("".join(test_file.read_text().splitlines(keepends=True)[:3]))
    predictions = tmp_path / "predictions.jsonl"
    result = kubetune(
        "predict",
        "--checkpoint",
        str(tiny_model_dir),
        "--task",
        "gsm8k",
        "--data",
        str(references),
        "--output",
        str(predictions),
        "--few-shot",
        "--train",
        str(datasets_dir / "gsm8k" / "train.jsonl"),
        "--shots",
        "2",
        "--max-new-tokens",
        "8",
        "--batch-size",
        "2",
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [r["id"] for r in rows] == [1, 2, 3]  # row numbers: the file has no id field
    assert all(isinstance(r["prediction"], str) for r in rows)
    metrics_file = tmp_path / "metrics.json"
    scored = kubetune(
        "eval",
        "--task",
        "gsm8k",
        "--predictions",
        str(predictions),
        "--references",
        str(references),
        "--output",
        str(metrics_file),
    )
    assert scored.returncode == 0, scored.stderr
    metrics = json.loads(metrics_file.read_text())
    assert metrics["samples"] == 3 and 0.0 <= metrics["metrics"]["accuracy"] <= 1.0


def test_predict_names_the_bad_row(tiny_model_dir: Path, tmp_path: Path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"question": "1+1?", "answer": "2\\n#### 2"}\n{"question": "no answer"}\n')
    result = kubetune(
        "predict",
        "--checkpoint",
        str(tiny_model_dir),
        "--task",
        "gsm8k",
        "--data",
        str(data),
        "--output",
        str(tmp_path / "p.jsonl"),
    )
    assert result.returncode == 2
    assert f"{data}: row 2:" in result.stderr and "answer" in result.stderr
    assert not (tmp_path / "p.jsonl").exists()


def test_few_shot_needs_training_rows(tiny_model_dir: Path, tmp_path: Path):
    result = kubetune(
        "predict",
        "--checkpoint",
        str(tiny_model_dir),
        "--task",
        "gsm8k",
        "--data",
        "x.jsonl",
        "--output",
        str(tmp_path / "p.jsonl"),
        "--few-shot",
    )
    assert result.returncode == 2 and "--train" in result.stderr


def test_predict_on_chat_rows_gives_the_same_text_with_two_workers(
    tiny_model_dir: Path, datasets_dir: Path, tmp_path: Path
):
    """A chat checkpoint's own template formats the prompts; two copies of the model (Ray
    Data actors) write exactly what one process writes, in the same order."""
    from tests.trainer.conftest import read_jsonl
    from tests.trainer.data.test_chat import viggo_chats

    chats = viggo_chats(read_jsonl(datasets_dir / "viggo" / "viggo-test.jsonl", limit=10), 2)
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(chat) + "\n" for chat in chats))
    outputs = []
    for workers in ("1", "2"):
        output = tmp_path / f"predictions-{workers}.jsonl"
        common = ["--checkpoint", str(tiny_model_dir), "--task", "chat", "--data", str(data)]
        sizes = ["--batch-size", "2", "--max-new-tokens", "6", "--workers", workers]
        result = kubetune("predict", *common, "--output", str(output), *sizes)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append([json.loads(line) for line in output.read_text().splitlines()])
    assert [row["id"] for row in outputs[0]] == [1, 2, 3, 4, 5]
    assert outputs[1] == outputs[0]
