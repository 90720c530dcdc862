"""The trainer's heartbeat: what the operator's stall clock reads (kubetune.status_mapping)."""

from __future__ import annotations

import time

import pytest

from kubetune.api.report import TrainerReport
from kubetune_trainer import runner
from kubetune_trainer.reporting import ThrottledReporter

pytestmark = pytest.mark.trainer


class Recorder:
    def __init__(self) -> None:
        self.reports: list[TrainerReport] = []

    def write(self, report: TrainerReport) -> None:
        self.reports.append(report.model_copy(deep=True))


def test_generated_batches_are_counted(tiny_model_dir, tiny_tokenizer):
    from kubetune_trainer.generation import generate
    from kubetune_trainer.model import load_model

    calls: list[tuple[int, int]] = []
    prompts = ["Question: 1?", "Question: 2?", "Question: 3?"]
    generate(
        load_model(str(tiny_model_dir)),
        tiny_tokenizer,
        prompts,
        "<END_A>",
        batch_size=2,
        max_new_tokens=2,
        on_batch=lambda done, total: calls.append((done, total)),
    )
    assert calls == [(2, 3), (3, 3)]


def test_a_long_ray_task_publishes_heartbeats_while_it_runs(tmp_path, monkeypatch):
    """Evaluation runs as one Ray task elsewhere: each batch it reports to the counter
    actor becomes a heartbeat in the driver's report, before the task returns."""
    import ray

    runner.init_ray(True)
    monkeypatch.setattr(runner, "HEARTBEAT_POLL_S", 0.2)
    box = ray.remote(num_cpus=0)(runner.BatchCounter).remote()

    @ray.remote(num_cpus=1)
    def evaluation(counter):
        for done in (1, 2, 3):
            ray.get(counter.batch.remote(done, 3))
            time.sleep(1.1)  # heartbeats are stamped to the second
        return "scores"

    recorder = Recorder()
    options = runner.RunOptions(
        job_name="hb", reporter=ThrottledReporter(recorder, 0), workdir=tmp_path, local=True
    )
    report = TrainerReport(phase="Evaluating", step=7)
    assert (
        runner.wait_beating(evaluation.remote(box), box, report, options, "the model") == "scores"
    )
    activities = [r.heartbeat.activity for r in recorder.reports if r.heartbeat is not None]
    assert activities[0] == "evaluating the model: loading it"
    assert [a for a in activities if "rows generated" in a] == [
        f"evaluating the model: {done}/3 rows generated" for done in (1, 2, 3)
    ]
    stamps = [r.heartbeat.at for r in recorder.reports if r.heartbeat is not None]
    assert stamps == sorted(stamps) and all(r.heartbeat.step == 7 for r in recorder.reports)
