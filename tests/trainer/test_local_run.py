"""`kubetune run` pieces that need no Ray: status mapping, outputs, summary, the subcommand."""

from __future__ import annotations

import json

import pytest

from kubetune.api.report import DroppedRows, SplitReport, TrainerReport
from kubetune.api.v1alpha1 import BestCheckpoint, EpochMetrics, FineTuneJobStatus
from kubetune_trainer.local_run import Outputs, report_to_status, summary_table

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


def test_status_is_what_the_operator_would_write():
    status = report_to_status(finished_report(), "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z")
    wire = status.to_wire()
    FineTuneJobStatus.model_validate(wire)
    assert wire["phase"] == "Succeeded" and wire["completionTime"] == "2026-01-01T00:05:00Z"
    assert wire["bestCheckpoint"]["epoch"] == 2 and len(wire["epochs"]) == 2
    assert wire["progress"] == {
        "stage": "gsm8k",
        "epoch": 2,
        "totalEpochs": 2,
        "step": 8,
        "totalSteps": 8,
    }
    failed = report_to_status(TrainerReport(phase="Failed", error="boom"), "t0", "t1")
    assert failed.phase == "Failed" and failed.message == "boom"
    assert any(c.type == "Succeeded" and c.status == "False" for c in failed.conditions)


def test_outputs_and_summary(tmp_path):
    Outputs(tmp_path)(finished_report())
    assert json.loads((tmp_path / "status.json").read_text())["phase"] == "Succeeded"
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
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
    assert job.spec.model.name == "builtin:tiny-llama" and job.spec.task.preset == "gsm8k"
    assert job.spec.compute.workers == 2 and not job.spec.training.deepspeed.enabled
    assert Path(resolve_local(job.spec.data.train.uri, manifest.parent)).exists()
