"""The quick start as a user runs it: `kubetune run` in its own process on the example manifest
(fewer rows and epochs so it fits the test budget; `bench/bench_quality.py` runs it whole).

One run checks what the user sees and what is recorded: the console holds kubetune's progress
and summary (base model, trained, gain per metric, the files) and none of Ray's chatter, which
is in run.log; status.json carries the baseline, the scores and the gain; metrics.jsonl the
per-step series; the evaluation says how generations ended.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.trainer

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "quickstart-local.yaml"
RAY_CHATTER = (
    "PlacementGroupCleaner",
    "RayTrainWorker pid",
    "TrainController pid",
    "INFO worker.py",
)
SCORES = ("function_accuracy", "attribute_accuracy", "exact_match")


def smaller_quickstart(tmp_path: Path) -> Path:
    doc = yaml.safe_load(EXAMPLE.read_text())
    spec = doc["spec"]
    for split in ("train", "validation", "test"):  # absolute: the manifest moves to tmp_path
        spec["data"][split]["uri"] = str((EXAMPLE.parent / spec["data"][split]["uri"]).resolve())
    spec["data"]["maxSamples"] = 640
    spec["training"]["epochs"] = 3
    spec["evaluation"]["maxSamples"] = 24
    spec["output"]["storageURI"] = "checkpoints"
    manifest = tmp_path / "quickstart.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    return manifest


def test_quickstart_console_status_and_metrics(tmp_path: Path) -> None:
    output = tmp_path / "out"
    manifest = smaller_quickstart(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "kubetune.cli", "run", "-f", str(manifest), "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        check=False,
    )
    console = result.stdout + result.stderr
    assert result.returncode == 0, console[-3000:]

    # The console: progress and the summary, no Ray chatter (that is in the log).
    assert not [word for word in RAY_CHATTER if word in console], console[-3000:]
    log = (output / "run.log").read_text()
    assert "RayTrainWorker" in log or "TrainController" in log
    lines = result.stdout.splitlines()
    assert any(line.split()[:4] == ["metric", "base", "trained", "gain"] for line in lines)
    assert any(line.startswith("Succeeded in ") for line in lines)
    assert any(line.split() == ["log", str(output / "run.log")] for line in lines)
    assert "train viggo" in result.stderr  # the progress bar

    # status.json: the untrained baseline, the trained scores and their difference.
    status = json.loads((output / "status.json").read_text())
    assert status["phase"] == "Succeeded"
    ev = status["evaluation"]
    assert ev["task"] == "viggo" and ev["samples"] == 24 and ev["primaryMetric"] == "exact_match"
    for metric in SCORES:
        assert ev["gain"][metric] == pytest.approx(ev["metrics"][metric] - ev["baseline"][metric])
    # An untrained model never emits the stop token it has never seen: every answer runs to
    # maxNewTokens and none parses. After these few steps the trained one has learnt to stop
    # and the shape of an MR (its scores are the benchmark's business: bench_quality.py).
    assert ev["baseline"]["truncated_rate"] > 0.9 and ev["baseline"]["stop_token_rate"] < 0.1
    assert ev["metrics"]["stop_token_rate"] > 0.5 + ev["baseline"]["stop_token_rate"]
    assert ev["metrics"]["unparseable_rate"] < ev["baseline"]["unparseable_rate"]

    # metrics.jsonl: step points every logEverySteps (5) and at each epoch's end.
    metrics = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in metrics if m["type"] == "step"]
    epoch_ends = [m["step"] for m in metrics if m["type"] == "epoch"]
    assert set(epoch_ends) <= set(steps)
    assert {s for s in steps if s not in epoch_ends} == set(range(5, max(steps) + 1, 5)) - set(
        epoch_ends
    )
    assert metrics[-1]["type"] == "evaluation"
    assert (output / "learning_curve.png").stat().st_size > 1000
