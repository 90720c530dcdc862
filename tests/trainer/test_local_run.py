"""`kubetune run` pieces that need no Ray: status mapping, outputs, summary, the subcommand."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubetune.api.report import DroppedRows, SplitReport, TrainerReport
from kubetune.api.v1alpha1 import (
    BestCheckpoint,
    EpochMetrics,
    EvaluationResult,
    FineTuneJob,
    FineTuneJobStatus,
)
from kubetune.status_mapping import map_rayjob_status
from kubetune_trainer.local_run import Outputs, local_status, summary_table

pytestmark = pytest.mark.unit


def finished_report() -> TrainerReport:
    epochs = [
        EpochMetrics(
            stage="gsm8k",
            epoch=i,
            train_loss=3.0 - i,
            validation_loss=2.5 - i / 2,
            validation_perplexity=10.0 - i,
        )
        for i in (1, 2)
    ]
    return TrainerReport(
        phase="Succeeded",
        stage="gsm8k",
        epoch=2,
        total_epochs=2,
        step=8,
        total_steps=8,
        epochs=epochs,
        best_checkpoint=BestCheckpoint(
            uri="/c/e2", stage="gsm8k", epoch=2, validation_perplexity=8.0
        ),
        evaluation=EvaluationResult(
            task="viggo",
            samples=10,
            primary_metric="accuracy",
            score=0.4,
            metrics={"accuracy": 0.4},
        ),
        data=[
            SplitReport(
                split="train",
                source="t.jsonl",
                rows_read=10,
                rows_used=9,
                dropped=[DroppedRows(reason="missing field answer", count=1, examples=[4])],
            )
        ],
    )


def quickstart_job() -> FineTuneJob:
    from pathlib import Path

    from kubetune_trainer.local_run import load_manifest

    return load_manifest(Path(__file__).resolve().parents[2] / "examples" / "quickstart-local.yaml")


def _visible(status: FineTuneJobStatus) -> dict[str, Any]:
    """What a user reads: phase, message, conditions (without timestamps), results."""
    wire = status.to_wire()
    for key in ("startTime", "completionTime", "rayJob", "observedGeneration"):
        wire.pop(key, None)
    for condition in wire["conditions"]:
        condition.pop("lastTransitionTime")
        condition.pop("observedGeneration", None)
    return wire


RUNS = {
    "success": [
        (
            TrainerReport(phase="Preparing"),
            {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
        ),
        (
            TrainerReport(phase="Training", stage="gsm8k", epoch=1, total_epochs=2),
            {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
        ),
        (finished_report(), {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}),
    ],
    "failure": [
        (
            TrainerReport(phase="Preparing"),
            {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
        ),
        (
            TrainerReport(phase="Failed", error="boom"),
            {"jobDeploymentStatus": "Complete", "jobStatus": "FAILED"},
        ),
    ],
}


@pytest.mark.parametrize("run", sorted(RUNS))
def test_local_status_is_what_the_operator_writes_for_the_same_report(run: str) -> None:
    """One status mapper: `kubetune run` and the operator (its reconcile loop, fed the
    RayJob status KubeRay writes for such a run) agree on phase, conditions and messages."""
    job = quickstart_job()
    local, operator_status = None, None
    for report, rayjob_status in RUNS[run]:
        local = local_status(job, report, local)
        operator_status = map_rayjob_status(job, rayjob_status, report, operator_status, "t")
        assert _visible(local) == _visible(operator_status)
    assert local is not None
    FineTuneJobStatus.model_validate(local.to_wire())
    if run == "failure":
        assert local.phase == "Failed" and "Trainer error: boom" in (local.message or "")
    else:
        assert local.phase == "Succeeded" and local.best_checkpoint is not None
        assert local.progress is not None and local.progress.step == 8


def test_outputs_and_summary(tmp_path):
    Outputs(tmp_path, quickstart_job())(finished_report())
    assert json.loads((tmp_path / "status.json").read_text())["phase"] == "Succeeded"
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3  # 2 epochs, 1 eval
    assert (tmp_path / "learning_curve.png").stat().st_size > 1000
    table = summary_table(finished_report(), 12.0)
    assert "1 missing field answer" in table and "best checkpoint: /c/e2" in table


def test_run_is_a_kubetune_subcommand():
    from kubetune.cli import SUBCOMMANDS

    assert SUBCOMMANDS["run"] == "kubetune_trainer.local_run:add_run"


def test_quickstart_example_resolves_relative_to_the_manifest():
    from pathlib import Path

    from kubetune_trainer.data.loaders import resolve_local
    from kubetune_trainer.local_run import load_manifest

    manifest = Path(__file__).resolve().parents[2] / "examples" / "quickstart-local.yaml"
    job = load_manifest(manifest)
    assert job.spec.model.name == "builtin:small-llama" and job.spec.task.preset == "viggo"
    assert job.spec.compute.workers == 2 and not job.spec.training.deepspeed.enabled
    assert Path(resolve_local(job.spec.data.train.uri, manifest.parent)).exists()


def test_summary_shows_base_model_trained_and_gain_per_metric_and_the_files(tmp_path):
    report = finished_report()
    report.evaluation = EvaluationResult(
        task="viggo",
        samples=200,
        primary_metric="exact_match",
        score=0.62,
        metrics={"function_accuracy": 0.95, "exact_match": 0.62},
        baseline={"function_accuracy": 0.05, "exact_match": 0.0},
    )
    files = {"status": tmp_path / "status.json", "log": tmp_path / "run.log"}
    table = summary_table(report, 95.0, files).splitlines()
    assert any(line.split() == ["function_accuracy", "0.050", "0.950", "+0.900"] for line in table)
    assert any(line.split() == ["exact_match", "0.000", "0.620", "+0.620"] for line in table)
    assert "Succeeded in 95 s" in table
    assert any(line.split() == ["log", str(tmp_path / "run.log")] for line in table)
    best = [line for line in table if line.endswith("<- best")]
    assert len(best) == 1 and best[0].split()[:2] == ["gsm8k", "2"]


def test_progress_bar_shows_epoch_loss_lr_tokens_and_perplexity():
    from kubetune.api.v1alpha1 import StepMetrics
    from kubetune_trainer.local_run import bar_fields

    report = finished_report().model_copy(update={"phase": "Training", "epoch": 2})
    report.steps = [
        StepMetrics(
            stage="gsm8k",
            epoch=2,
            step=8,
            train_loss=0.8123,
            learning_rate=2.5e-4,
            tokens_per_second=1234.5,
            useful_tokens_per_second=600.0,
            packing_fill=0.9,
        )
    ]
    assert bar_fields(report) == {
        "epoch": "2/2",
        "loss": "0.812",
        "lr": "2.50e-04",
        "tok/s": "1,234",
        "val_ppl": "8.00",
    }


def test_console_sends_process_output_to_the_log_and_keeps_the_terminal(tmp_path):
    """What Ray, its forwarded workers and C-level libraries write to file descriptors 1 and 2
    lands in the log; what kubetune writes to the console reaches the terminal; after restore,
    the process writes to the terminal again."""
    import subprocess
    import sys

    script = f"""
import os, sys
from pathlib import Path
from kubetune_trainer.local_run import Console
console = Console(Path({str(tmp_path / "run.log")!r}))
print("python chatter")
os.write(2, b"fd chatter\\n")
console.out.write("progress for the user\\n")
console.restore()
print("after restore")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.splitlines() == ["progress for the user", "after restore"]
    assert result.stderr == ""
    assert (tmp_path / "run.log").read_text().splitlines() == ["python chatter", "fd chatter"]
