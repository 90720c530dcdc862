"""The cluster entrypoint's contract: Failed report with the error and a non-zero exit."""

from __future__ import annotations

import json

import pytest

from kubetune_trainer.entrypoint import main

pytestmark = pytest.mark.unit


def spec(train_uri: str) -> dict:
    return {
        "model": {"name": "builtin:tiny-llama"},
        "task": {"preset": "gsm8k"},
        "data": {"train": {"uri": train_uri}},
        "evaluation": {"enabled": False},
        "output": {"storageURI": "/tmp/kubetune-never-written"},
    }


def test_invalid_spec_reports_failed_and_exits_2(tmp_path):
    report = tmp_path / "report.json"
    code = main(
        ["--spec-json", json.dumps({"model": {}}), "--job-name", "x", "--report", f"file:{report}"]
    )
    document = json.loads(report.read_text())
    assert code == 2 and document["phase"] == "Failed" and "invalid spec" in document["error"]


def test_runtime_failure_reports_the_error_and_exits_1(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_do_not_leak_me")
    report = tmp_path / "report.json"
    missing = str(tmp_path / "hf_do_not_leak_me" / "train.jsonl")
    code = main(
        [
            "--spec-json",
            json.dumps(spec(missing)),
            "--job-name",
            "x",
            "--report",
            f"file:{report}",
            "--output-dir",
            str(tmp_path / "work"),
        ]
    )
    document = json.loads(report.read_text())
    assert code == 1 and document["phase"] == "Failed"
    assert document["error"].startswith("DataError: FileNotFoundError")
    assert document["errorReason"] == "DataError"  # the operator's reason
    assert "hf_do_not_leak_me" not in report.read_text()
